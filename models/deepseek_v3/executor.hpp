// The DeepSeek forward as the engine runs it: one step = one forward pass over a mixed batch
// (prefill chunks and decode rows), then one sampling launch over the rows that produce a token,
// with the sampled ids, their logprobs and the top-n alternatives copied back to the host.
// It owns what a step needs besides the weights and the KV pool: the activation manager, the
// GEMM plans, the stream, the sampler's buffers and, on CUDA, the decode graphs: a decode-only
// step replays the graph of its batch bucket (decode_graphs in model.hpp); a step with prefill
// rows runs eagerly. The CPU backend never captures.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/sampling/sampling.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"
#include "models/deepseek_v3/model.hpp"

namespace lightcore::models::deepseek_v3 {

// What an executor on a backend without graphs holds in their place.
// It takes no step.
struct no_decode_graphs {
  bool accepts(std::vector<request_step> const&) const noexcept { return false; }
  template <class Context>
  tensor_view forward(Context&, std::vector<request_step> const&, std::vector<tensor_view> const&,
                      tensor_view const&) {
    LC_THROW("executor: this backend runs no decode graphs");
  }
};

template <Backend B>
class executor {
#if defined(LIGHTCORE_WITH_CUDA)
  using graphs_type =
      std::conditional_t<B::kind == device_kind::cuda, decode_graphs<>, no_decode_graphs>;
#else
  using graphs_type = no_decode_graphs;
#endif

 public:
  using params_type = kernels::sampling_request;
  using row_type = engine::step_row<params_type>;

  // max_rows: the most requests one step may carry (the scheduler's max_running_requests). The
  // forward's logits live in a persistent buffer sized by its first use, so it is sized here for
  // the largest step. graphs: decode graphs on CUDA (on by default; their largest bucket is
  // max_rows, whatever graphs.max_batch says); ignored by the CPU backend.
  executor(B& backend, model_weights<B> const& w, model_options const& o = {},
           std::int64_t max_rows = 256, decode_graph_options graphs = {})
      : backend_(&backend),
        model_(backend, w, o),
        mem_(backend),
        gemm_(backend),
        stream_(backend.make_stream()) {
    LC_CHECK(max_rows >= 1, "executor: max_rows must be >= 1; got " << max_rows);
    mem_.persistent("fwd.logits", dtype::f32, {max_rows, w.config().vocab_size});
    graphs.max_batch = max_rows;
    if constexpr (!std::is_same_v<graphs_type, no_decode_graphs>) {
      if (graphs.enabled) graphs_.emplace(model_, graphs);
    }
  }

  // Whether decode-only steps replay CUDA graphs.
  bool uses_graphs() const noexcept { return graphs_.has_value(); }

  io::model_config const& config() const noexcept { return model_.config(); }
  memory::cache_tensor_manager<B>& memory() noexcept { return mem_; }
  typename B::stream_type const& stream() const noexcept { return stream_; }

  // Runs a step and waits for its results. kv: one pool per layer; req_to_token on the device.
  engine::step_output run(std::vector<row_type> const& rows, std::vector<tensor_view> const& kv,
                          tensor_view const& req_to_token) {
    engine::step_output out;
    out.top_n = std::int32_t(kernels::sampling_max_logprobs);
    if (rows.empty()) return out;
    auto const t0 = std::chrono::steady_clock::now();
    std::vector<request_step> reqs;
    reqs.reserve(rows.size());
    for (row_type const& r : rows)
      reqs.push_back({std::vector<std::int32_t>(r.tokens.begin(), r.tokens.end()), r.cached,
                      r.req_row, r.prefill});
    modules::deepseek::forward_context<B> ctx{*backend_, stream_, gemm_, mem_};
    tensor_view logits;
    bool graphed = false;
    if (graphs_ && graphs_->accepts(reqs)) {
      logits = graphs_->forward(ctx, reqs, kv, req_to_token);
      graphed = true;
    }
    if (!graphed) logits = model_.forward(ctx, reqs, kv, req_to_token);

    // Sample every row (a chunk that does not end its prompt draws too and is dropped: one
    // launch over [R, vocab] costs far less than the forward that produced it).
    std::int64_t const n = std::int64_t(rows.size());
    std::vector<kernels::sampling_request> params;
    std::vector<std::int32_t> positions, history, offsets{0};
    for (row_type const& r : rows) {
      params.push_back(r.sampling);
      positions.push_back(r.generated);
      history.insert(history.end(), r.history.begin(), r.history.end());
      offsets.push_back(std::int32_t(history.size()));
    }
    auto upload = [&](char const* role, dtype t, dims shape, void const* src, std::size_t bytes) {
      auto l = mem_.acquire(role, t, shape);
      if (bytes) backend_->copy(l.view().data(), src, bytes, stream_);
      return l;
    };
    auto d_params =
        upload("sample.requests", dtype::u8, {n, std::int64_t(sizeof(kernels::sampling_request))},
               params.data(), params.size() * sizeof(kernels::sampling_request));
    auto d_pos =
        upload("sample.positions", dtype::i32, {n}, positions.data(), positions.size() * 4);
    auto d_hist = upload("sample.history", dtype::i32, {std::int64_t(history.size())},
                         history.data(), history.size() * 4);
    auto d_off =
        upload("sample.history_offsets", dtype::i32, {n + 1}, offsets.data(), offsets.size() * 4);
    constexpr std::int64_t k = kernels::sampling_max_logprobs;
    auto tokens = mem_.acquire("sample.tokens", dtype::i32, {n});
    auto lp = mem_.acquire("sample.logprobs", dtype::f32, {n});
    auto top_ids = mem_.acquire("sample.top_ids", dtype::i32, {n, k});
    auto top_lp = mem_.acquire("sample.top_logprobs", dtype::f32, {n, k});
    auto ws = mem_.acquire(
        "sample.workspace", dtype::u8,
        {std::max<std::int64_t>(1, kernels::sampling_workspace_bytes(n, logits.size(1)))});
    kernels::sample(*backend_, {logits, d_params.view(), d_pos.view(), d_hist.view(), d_off.view()},
                    {tokens.view(), lp.view(), top_ids.view(), top_lp.view()}, ws.view(), stream_);
    // Everything is queued: the copies below wait for the device.
    out.host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<std::int32_t> h_tokens(std::size_t(n) + 0), h_top(std::size_t(n * k));
    std::vector<float> h_lp(std::size_t(n) + 0), h_top_lp(std::size_t(n * k));
    backend_->copy(h_tokens.data(), tokens.view().data(), h_tokens.size() * 4, stream_);
    backend_->copy(h_lp.data(), lp.view().data(), h_lp.size() * 4, stream_);
    backend_->copy(h_top.data(), top_ids.view().data(), h_top.size() * 4, stream_);
    backend_->copy(h_top_lp.data(), top_lp.view().data(), h_top_lp.size() * 4, stream_);
    stream_.synchronize();
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
  model<B> model_;
  memory::cache_tensor_manager<B> mem_;
  kernels::gemm_context<B> gemm_;
  typename B::stream_type stream_;
  std::optional<graphs_type> graphs_;  // after model_, which it refers to
};

}  // namespace lightcore::models::deepseek_v3
