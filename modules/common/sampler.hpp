// The sampling stage of a step, reusable by any executor: uploads the rows' sampling records,
// RNG positions and generated-token histories, runs kernels::sample over the logits of every row
// and copies the chosen ids, their logprobs and the top-n alternatives back to the host as an
// engine::step_output (the rows with sample = true, in row order).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "kernels/sampling/sampling.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

namespace lightcore::modules::common {

template <Backend B>
class sampler {
 public:
  using params_type = kernels::sampling_request;
  using row_type = engine::step_row<params_type>;

  sampler(B& backend, memory::cache_tensor_manager<B>& mem) : backend_(&backend), mem_(&mem) {}

  // Draws from logits [rows.size(), vocab] f32 (row i: rows[i]) and waits for the results.
  // Every row is sampled in the one launch (a chunk that does not end its prompt too, and is
  // dropped: cheaper than a gather of the rows that count). host_seconds: from `started` until
  // everything is queued.
  engine::step_output run(std::vector<row_type> const& rows, tensor_view const& logits,
                          typename B::stream_type const& stream,
                          std::chrono::steady_clock::time_point started) {
    engine::step_output out;
    constexpr std::int64_t k = kernels::sampling_max_logprobs;
    out.top_n = std::int32_t(k);
    if (rows.empty()) return out;
    std::int64_t const n = std::int64_t(rows.size());
    LC_CHECK(
        logits.rank() == 2 && logits.size(0) == n && logits.type() == dtype::f32,
        "sampler: logits must be [" << n << ", vocab] f32 (one row per step row); got " << logits);
    params_.clear();
    positions_.clear();
    history_.clear();
    offsets_.assign(1, 0);
    for (row_type const& r : rows) {
      params_.push_back(r.sampling);
      positions_.push_back(r.generated);
      history_.insert(history_.end(), r.history.begin(), r.history.end());
      offsets_.push_back(std::int32_t(history_.size()));
    }
    auto upload = [&](char const* role, dtype t, dims shape, void const* src, std::size_t bytes) {
      auto l = mem_->acquire(role, t, shape);
      if (bytes) backend_->copy(l.view().data(), src, bytes, stream);
      return l;
    };
    auto d_params = upload("sample.requests", dtype::u8, {n, std::int64_t(sizeof(params_type))},
                           params_.data(), params_.size() * sizeof(params_type));
    auto d_pos =
        upload("sample.positions", dtype::i32, {n}, positions_.data(), positions_.size() * 4);
    auto d_hist = upload("sample.history", dtype::i32, {std::int64_t(history_.size())},
                         history_.data(), history_.size() * 4);
    auto d_off =
        upload("sample.history_offsets", dtype::i32, {n + 1}, offsets_.data(), offsets_.size() * 4);
    auto tokens = mem_->acquire("sample.tokens", dtype::i32, {n});
    auto lp = mem_->acquire("sample.logprobs", dtype::f32, {n});
    auto top_ids = mem_->acquire("sample.top_ids", dtype::i32, {n, k});
    auto top_lp = mem_->acquire("sample.top_logprobs", dtype::f32, {n, k});
    auto ws = mem_->acquire(
        "sample.workspace", dtype::u8,
        {std::max<std::int64_t>(1, kernels::sampling_workspace_bytes(n, logits.size(1)))});
    kernels::sample(*backend_, {logits, d_params.view(), d_pos.view(), d_hist.view(), d_off.view()},
                    {tokens.view(), lp.view(), top_ids.view(), top_lp.view()}, ws.view(), stream);
    out.host_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::vector<std::int32_t> h_tokens(std::size_t(n) + 0), h_top(std::size_t(n * k));
    std::vector<float> h_lp(std::size_t(n) + 0), h_top_lp(std::size_t(n * k));
    backend_->copy(h_tokens.data(), tokens.view().data(), h_tokens.size() * 4, stream);
    backend_->copy(h_lp.data(), lp.view().data(), h_lp.size() * 4, stream);
    backend_->copy(h_top.data(), top_ids.view().data(), h_top.size() * 4, stream);
    backend_->copy(h_top_lp.data(), top_lp.view().data(), h_top_lp.size() * 4, stream);
    stream.synchronize();
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (!rows[i].sample) continue;
      out.tokens.push_back(h_tokens[i]);
      out.logprobs.push_back(h_lp[i]);
      out.top_ids.insert(out.top_ids.end(), h_top.begin() + long(i * k),
                         h_top.begin() + long((i + 1) * k));
      out.top_logprobs.insert(out.top_logprobs.end(), h_top_lp.begin() + long(i * k),
                              h_top_lp.begin() + long((i + 1) * k));
    }
    return out;
  }

 private:
  B* backend_;
  memory::cache_tensor_manager<B>* mem_;
  // Host staging, reused from step to step.
  std::vector<params_type> params_;
  std::vector<std::int32_t> positions_, history_, offsets_;
};

}  // namespace lightcore::modules::common
