// The DeepSeek forward as the engine runs it: one step = one forward pass over a mixed batch
// (prefill chunks and decode rows), then one sampling launch over the rows that produce a token,
// with the sampled ids, their logprobs and the top-n alternatives copied back to the host.
// It owns what a step needs besides the weights and the KV pool: the activation manager, the
// GEMM plans, the stream, the sampler's buffers and, on CUDA, the decode graphs: a decode-only
// step replays the graph of its batch bucket (decode_graphs in model.hpp); a step with prefill
// rows runs eagerly. The CPU backend never captures.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
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
    // Reused across steps: each row's token vector keeps its capacity, so a decode step
    // allocates nothing here.
    std::vector<request_step>& reqs = reqs_;
    reqs.resize(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      row_type const& r = rows[i];
      reqs[i].tokens.assign(r.tokens.begin(), r.tokens.end());
      reqs[i].cached = r.cached;
      reqs[i].req_row = r.req_row;
      reqs[i].prefill = r.prefill;
    }
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
    // What this step's rows ask for: the history only feeds penalties, the logprob outputs only
    // rows that want them; what nobody asks for is neither uploaded nor copied back.
    bool penalties = false, want_lp = false, want_top = false;
    for (row_type const& r : rows) {
      kernels::sampling_request const& q = r.sampling;
      penalties |=
          q.repetition_penalty != 1.0f || q.presence_penalty != 0.0f || q.frequency_penalty != 0.0f;
      want_lp |= q.num_logprobs >= 0;
      want_top |= q.num_logprobs > 0;
    }
    // The inputs in one staging block and one copy: [n] requests, [n] positions, [n + 1] history
    // offsets, then the history.
    constexpr std::size_t align = 16;
    auto padded = [](std::size_t b) { return (b + align - 1) / align * align; };
    std::size_t const params_at = 0;
    std::size_t const pos_at = padded(std::size_t(n) * sizeof(kernels::sampling_request));
    std::size_t const off_at = pos_at + padded(std::size_t(n) * 4);
    std::size_t const hist_at = off_at + padded(std::size_t(n + 1) * 4);
    std::size_t history = 0;
    if (penalties)
      for (row_type const& r : rows) history += r.history.size();
    std::size_t const total = hist_at + padded(std::max<std::size_t>(history, 1) * 4);
    staging_.resize(total);
    auto* params = reinterpret_cast<kernels::sampling_request*>(staging_.data() + params_at);
    auto* positions = reinterpret_cast<std::int32_t*>(staging_.data() + pos_at);
    auto* offsets = reinterpret_cast<std::int32_t*>(staging_.data() + off_at);
    auto* hist = reinterpret_cast<std::int32_t*>(staging_.data() + hist_at);
    offsets[0] = 0;
    std::size_t h = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      params[i] = rows[i].sampling;
      positions[i] = rows[i].generated;
      if (penalties)
        for (std::int32_t const id : rows[i].history) hist[h++] = id;
      offsets[i + 1] = std::int32_t(h);
    }
    auto inputs = mem_.acquire("sample.inputs", dtype::u8, {std::int64_t(total)});
    backend_->copy(inputs.view().data(), staging_.data(), total, stream_);
    auto* base = static_cast<std::byte*>(inputs.view().data());
    device const where = backend_->where();
    tensor_view const d_params(base + params_at, dtype::u8,
                               {n, std::int64_t(sizeof(kernels::sampling_request))}, where);
    tensor_view const d_pos(base + pos_at, dtype::i32, {n}, where);
    tensor_view const d_off(base + off_at, dtype::i32, {n + 1}, where);
    tensor_view const d_hist(base + hist_at, dtype::i32, {std::int64_t(h)}, where);
    constexpr std::int64_t k = kernels::sampling_max_logprobs;
    auto tokens = mem_.acquire("sample.tokens", dtype::i32, {n});
    auto lp = mem_.acquire("sample.logprobs", dtype::f32, {n});
    auto top_ids = mem_.acquire("sample.top_ids", dtype::i32, {n, k});
    auto top_lp = mem_.acquire("sample.top_logprobs", dtype::f32, {n, k});
    auto ws = mem_.acquire(
        "sample.workspace", dtype::u8,
        {std::max<std::int64_t>(1, kernels::sampling_workspace_bytes(n, logits.size(1)))});
    kernels::sample(*backend_, {logits, d_params, d_pos, d_hist, d_off},
                    {tokens.view(), lp.view(), top_ids.view(), top_lp.view()}, ws.view(), stream_);
    // Everything is queued: the copies below wait for the device.
    out.host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    h_tokens_.resize(std::size_t(n));
    backend_->copy(h_tokens_.data(), tokens.view().data(), h_tokens_.size() * 4, stream_);
    h_lp_.assign(std::size_t(n), std::numeric_limits<float>::quiet_NaN());
    if (want_lp) backend_->copy(h_lp_.data(), lp.view().data(), h_lp_.size() * 4, stream_);
    if (want_top) {
      h_top_.resize(std::size_t(n * k));
      h_top_lp_.resize(std::size_t(n * k));
      backend_->copy(h_top_.data(), top_ids.view().data(), h_top_.size() * 4, stream_);
      backend_->copy(h_top_lp_.data(), top_lp.view().data(), h_top_lp_.size() * 4, stream_);
    }
    stream_.synchronize();
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (!rows[i].sample) continue;
      out.tokens.push_back(h_tokens_[i]);
      out.logprobs.push_back(h_lp_[i]);
      if (want_top) {
        out.top_ids.insert(out.top_ids.end(), h_top_.begin() + long(i * k),
                           h_top_.begin() + long((i + 1) * k));
        out.top_logprobs.insert(out.top_logprobs.end(), h_top_lp_.begin() + long(i * k),
                                h_top_lp_.begin() + long((i + 1) * k));
      }
    }
    out.top_n = want_top ? std::int32_t(k) : 0;
    return out;
  }

 private:
  B* backend_;
  model<B> model_;
  memory::cache_tensor_manager<B> mem_;
  kernels::gemm_context<B> gemm_;
  typename B::stream_type stream_;
  // Host buffers reused by every step.
  std::vector<request_step> reqs_;
  std::vector<std::byte> staging_;
  std::vector<std::int32_t> h_tokens_, h_top_;
  std::vector<float> h_lp_, h_top_lp_;
  std::optional<graphs_type> graphs_;  // after model_, which it refers to
};

}  // namespace lightcore::models::deepseek_v3
