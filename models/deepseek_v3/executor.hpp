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
#include <cstring>
#include <deque>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/index/index.hpp"
#include "kernels/sampling/sampling.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"
#include "lightcore/memory/staging_ring.hpp"
#include "models/deepseek_v3/model.hpp"

namespace lightcore::models::deepseek_v3 {

// What an executor on a backend without graphs holds in their place.
// It takes no step.
struct no_decode_graphs {
  bool accepts(std::vector<request_step> const&) const noexcept { return false; }
  template <class Context>
  void capture(Context&, std::vector<tensor_view> const&, tensor_view const&) {}
  struct no_buckets {
    double capture_seconds() const noexcept { return 0.0; }
  };
  no_buckets graphs() const noexcept { return {}; }
  template <class Context>
  tensor_view forward(Context&, std::vector<request_step> const&, std::vector<tensor_view> const&,
                      tensor_view const&, tensor_view const&) {
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
    max_rows_ = max_rows;
    mem_.persistent("fwd.logits", dtype::f32, {max_rows, w.config().vocab_size});
    tokens_ = mem_.persistent("sample.tokens", dtype::i32, {max_rows});
    // Three host slots in turn: two steps in flight and the previous one's end event.
    constexpr std::size_t k = std::size_t(kernels::sampling_max_logprobs);
    std::size_t const per_slot = std::size_t(max_rows) * (2 + 2 * k) * 4;
    pinned_ = memory::host_buffer<B>(backend, 3 * per_slot);
    for (std::size_t i = 0; i < 3; ++i) {
      host_slot& h = host_.emplace_back(host_slot{backend.make_event(), backend.make_event()});
      std::byte* at = pinned_.data() + i * per_slot;
      h.tokens = reinterpret_cast<std::int32_t*>(at);
      h.logprobs = reinterpret_cast<float*>(at + std::size_t(max_rows) * 4);
      h.top_ids = reinterpret_cast<std::int32_t*>(at + std::size_t(max_rows) * 8);
      h.top_logprobs = reinterpret_cast<float*>(at + std::size_t(max_rows) * (8 + 4 * k));
    }
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
    launch(rows, kv, req_to_token);
    return collect();
  }

  // Queues a step (forward, sampling, the copies of its results into page-locked host memory)
  // and returns without waiting, so that the host can prepare the next one meanwhile. At most
  // two steps are in flight; collect() returns the older one's results. A row with pending >= 0
  // takes its token from the previous launched step's sampled id of that row index.
  void launch(std::vector<row_type> const& rows, std::vector<tensor_view> const& kv,
              tensor_view const& req_to_token) {
    LC_CHECK(flight_.size() < 2, "executor: two steps are in flight; collect() one first");
    LC_CHECK(std::int64_t(rows.size()) <= max_rows_,
             "executor: a step of " << rows.size() << " rows; at most " << max_rows_);
    auto const t0 = std::chrono::steady_clock::now();
    in_flight& f = flight_.emplace_back();
    f.parity = next_slot_;
    next_slot_ = (next_slot_ + 1) % std::int32_t(host_.size());
    f.rows = std::int64_t(rows.size());
    host_[std::size_t(f.parity)].sample.assign(rows.size(), 0);  // keeps its capacity
    if (rows.empty()) return;
    host_slot& h = host_[std::size_t(f.parity)];
    h.begin.record(stream_);
    // Reused across steps: each row's token vector keeps its capacity, so a decode step
    // allocates nothing here.
    std::vector<request_step>& reqs = reqs_;
    reqs.resize(rows.size());
    bool any_pending = false;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      row_type const& r = rows[i];
      LC_CHECK(r.pending < 0 || (r.pending < prev_rows_ && r.tokens.size() == 1 && !r.prefill),
               "executor: row " << i << " waits for id " << r.pending << " of the previous step, "
                                << "which had " << prev_rows_ << " rows; allowed: a decode row "
                                << "of one token, pending below that count");
      reqs[i].tokens.assign(r.tokens.begin(), r.tokens.end());
      reqs[i].cached = r.cached;
      reqs[i].req_row = r.req_row;
      reqs[i].prefill = r.prefill;
      reqs[i].pending = r.pending;
      any_pending |= r.pending >= 0;
      h.sample[i] = r.sample ? 1 : 0;
    }
    tensor_view const prev = any_pending ? tokens_.slice(0, 0, prev_rows_) : tensor_view{};
    modules::deepseek::forward_context<B> ctx{*backend_, stream_, gemm_, mem_, after_layer_kv_};
    tensor_view logits;
    bool graphed = false;
    if (graphs_ && graphs_->accepts(reqs)) {
      logits = graphs_->forward(ctx, reqs, kv, req_to_token, prev);
      graphed = true;
    }
    if (!graphed) logits = model_.forward(ctx, reqs, kv, req_to_token, false, prev);
    sample(rows, logits, f, prev);
    prev_rows_ = f.rows;
    h.end.record(stream_);
    f.host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Waits for the oldest launched step and returns what it drew.
  engine::step_output collect() {
    LC_CHECK(!flight_.empty(), "executor: collect() with no step in flight");
    in_flight const f = std::move(flight_.front());
    flight_.pop_front();
    engine::step_output out;
    out.host_seconds = f.host_seconds;
    out.top_n = 0;
    if (f.rows == 0) return out;
    host_slot& h = host_[std::size_t(f.parity)];
    h.end.synchronize();
    out.device_seconds = double(B::elapsed_ms(h.begin, h.end)) * 1e-3;
    // The device's idle time between the previous step's end and this one's start. Three slots
    // in turn: the previous step's events are not recorded again before this step is collected.
    if (last_slot_ >= 0)
      out.idle_before_seconds =
          std::max(0.0, double(B::elapsed_ms(host_[std::size_t(last_slot_)].end, h.begin)) * 1e-3);
    last_slot_ = f.parity;
    constexpr std::int64_t k = kernels::sampling_max_logprobs;
    for (std::size_t i = 0; i < std::size_t(f.rows); ++i) {
      if (h.sample[i] == 0) continue;
      out.tokens.push_back(h.tokens[i]);
      out.logprobs.push_back(f.want_lp ? h.logprobs[i] : std::numeric_limits<float>::quiet_NaN());
      if (f.want_top) {
        out.top_ids.insert(out.top_ids.end(), h.top_ids + i * k, h.top_ids + (i + 1) * k);
        out.top_logprobs.insert(out.top_logprobs.end(), h.top_logprobs + i * k,
                                h.top_logprobs + (i + 1) * k);
      }
    }
    out.top_n = f.want_top ? std::int32_t(k) : 0;
    return out;
  }

  // Writes req_to_token entries (flat index row * columns + position) on the step stream, before
  // the next launched step: one copy from page-locked memory and one scatter, however many
  // requests changed (the engine batches a step's slot updates here).
  void update_table(tensor_view const& req_to_token, std::span<std::int32_t const> index,
                    std::span<std::int32_t const> values) {
    LC_CHECK(index.size() == values.size(),
             "executor::update_table: " << index.size() << " indices for " << values.size()
                                        << " values");
    if (index.empty()) return;
    std::size_t const n = index.size();
    std::byte* const h = table_ring_.next(2 * n * 4, stream_);
    std::memcpy(h, index.data(), n * 4);
    std::memcpy(h + n * 4, values.data(), n * 4);
    auto d = mem_.acquire("table.updates", dtype::i32, {2 * std::int64_t(n)});
    backend_->copy(d.view().data(), h, 2 * n * 4, stream_);
    tensor_view const flat(req_to_token.data(), dtype::i32,
                           {req_to_token.size(0) * req_to_token.size(1)}, req_to_token.where());
    kernels::copy_indexed(*backend_, flat, d.view().slice(0, 0, std::int64_t(n)),
                          d.view().slice(0, std::int64_t(n), 2 * std::int64_t(n)), tensor_view{},
                          stream_);
  }

  // Captures the decode graphs over the engine's KV pools and req_to_token (at start-up, so that
  // no step pays for it); a no-op without graphs. They are captured again if those move.
  void prepare(std::vector<tensor_view> const& kv, tensor_view const& req_to_token) {
    if (!graphs_) return;
    modules::deepseek::forward_context<B> ctx{*backend_, stream_, gemm_, mem_};
    graphs_->capture(ctx, kv, req_to_token);
    stream_.synchronize();
  }
  // Wall time of the last graph capture (every bucket), 0 without graphs.
  double graph_capture_seconds() const noexcept {
    return graphs_ ? graphs_->graphs().capture_seconds() : 0.0;
  }

  // Steps launched and not collected.
  std::size_t in_flight_steps() const noexcept { return flight_.size(); }

  // Called with each layer's index while the next launched steps issue their forward eagerly,
  // once the layer's KV rows are written in stream order (forward_context::after_layer_kv); null
  // (the default) for none. The function must outlive its use; the engine sets it for a step
  // that completes a prompt whose KV is streamed elsewhere.
  void set_after_layer_kv(std::function<void(std::int64_t)> const* f) noexcept {
    after_layer_kv_ = f;
  }

 private:
  // Page-locked host memory for one step's results, and the events around its device work.
  struct host_slot {
    typename B::event_type begin, end;
    std::int32_t* tokens = nullptr;      // [max_rows]
    float* logprobs = nullptr;           // [max_rows]
    std::int32_t* top_ids = nullptr;     // [max_rows, sampling_max_logprobs]
    float* top_logprobs = nullptr;       // [max_rows, sampling_max_logprobs]
    std::vector<std::uint8_t> sample{};  // per row of its step: it draws a token the caller keeps
  };
  struct in_flight {
    std::int64_t rows = 0;
    std::int32_t parity = 0;  // its host_slot
    bool want_lp = false, want_top = false;
    double host_seconds = 0.0;
  };

  // One sampling launch over every row (a chunk that does not end its prompt draws too and is
  // dropped: one launch over [R, vocab] costs far less than the forward that produced it), into
  // the persistent tokens_ (the next step's pending ids read them), then the results' copies to
  // the step's host slot.
  void sample(std::vector<row_type> const& rows, tensor_view const& logits, in_flight& f,
              tensor_view const& prev) {
    std::int64_t const n = std::int64_t(rows.size());
    // What this step's rows ask for: the history only feeds penalties, the logprob outputs only
    // rows that want them; what nobody asks for is neither uploaded nor copied back.
    // And a batch whose every row takes the exact path anyway (temperature-only or logprob rows)
    // goes straight there.
    bool penalties = false, all_exact = true;
    for (row_type const& r : rows) {
      kernels::sampling_request const& q = r.sampling;
      penalties |=
          q.repetition_penalty != 1.0f || q.presence_penalty != 0.0f || q.frequency_penalty != 0.0f;
      f.want_lp |= q.num_logprobs >= 0;
      f.want_top |= q.num_logprobs > 0;
      all_exact =
          all_exact && kernels::sampling_row_kind(q, logits.size(1)) == kernels::sampling_row_exact;
    }
    // The inputs in one staging block and one copy: [n] requests, [n] positions, [n + 1] history
    // offsets, the history, and the history entries that are a pending id (where, from which
    // row of the previous step).
    std::size_t history = 0, pending = 0;
    if (penalties)
      for (row_type const& r : rows) {
        history += r.history.size() + (r.pending >= 0 ? 1 : 0);
        pending += r.pending >= 0 ? 1 : 0;
      }
    constexpr std::size_t align = 16;
    auto padded = [](std::size_t b) { return (b + align - 1) / align * align; };
    std::size_t const params_at = 0;
    std::size_t const pos_at = padded(std::size_t(n) * sizeof(kernels::sampling_request));
    std::size_t const off_at = pos_at + padded(std::size_t(n) * 4);
    std::size_t const hist_at = off_at + padded(std::size_t(n + 1) * 4);
    std::size_t const to_at = hist_at + padded(std::max<std::size_t>(history, 1) * 4);
    std::size_t const from_at = to_at + padded(std::max<std::size_t>(pending, 1) * 4);
    std::size_t const total = from_at + padded(std::max<std::size_t>(pending, 1) * 4);
    std::byte* const staging = sample_ring_.next(total, stream_);
    auto* params = reinterpret_cast<kernels::sampling_request*>(staging + params_at);
    auto* positions = reinterpret_cast<std::int32_t*>(staging + pos_at);
    auto* offsets = reinterpret_cast<std::int32_t*>(staging + off_at);
    auto* hist = reinterpret_cast<std::int32_t*>(staging + hist_at);
    auto* to = reinterpret_cast<std::int32_t*>(staging + to_at);
    auto* from = reinterpret_cast<std::int32_t*>(staging + from_at);
    offsets[0] = 0;
    std::size_t h = 0, k_pending = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      params[i] = rows[i].sampling;
      positions[i] = rows[i].generated;
      if (penalties) {
        for (std::int32_t const id : rows[i].history) hist[h++] = id;
        if (rows[i].pending >= 0) {
          to[k_pending] = std::int32_t(h);
          from[k_pending++] = rows[i].pending;
          hist[h++] = 0;  // filled on the device
        }
      }
      offsets[i + 1] = std::int32_t(h);
    }
    auto inputs = mem_.acquire("sample.inputs", dtype::u8, {std::int64_t(total)});
    backend_->copy(inputs.view().data(), staging, total, stream_);
    auto* base = static_cast<std::byte*>(inputs.view().data());
    device const where = backend_->where();
    tensor_view const d_params(base + params_at, dtype::u8,
                               {n, std::int64_t(sizeof(kernels::sampling_request))}, where);
    tensor_view const d_pos(base + pos_at, dtype::i32, {n}, where);
    tensor_view const d_off(base + off_at, dtype::i32, {n + 1}, where);
    tensor_view const d_hist(base + hist_at, dtype::i32, {std::int64_t(h)}, where);
    if (k_pending > 0)
      kernels::copy_indexed(
          *backend_, d_hist,
          tensor_view(base + to_at, dtype::i32, {std::int64_t(k_pending)}, where), prev,
          tensor_view(base + from_at, dtype::i32, {std::int64_t(k_pending)}, where), stream_);
    constexpr std::int64_t k = kernels::sampling_max_logprobs;
    tensor_view const tokens = tokens_.slice(0, 0, n);
    auto lp = mem_.acquire("sample.logprobs", dtype::f32, {n});
    auto top_ids = mem_.acquire("sample.top_ids", dtype::i32, {n, k});
    auto top_lp = mem_.acquire("sample.top_logprobs", dtype::f32, {n, k});
    auto ws = mem_.acquire(
        "sample.workspace", dtype::u8,
        {std::max<std::int64_t>(1, kernels::sampling_workspace_bytes(n, logits.size(1)))});
    kernels::sample(
        *backend_, {logits, d_params, d_pos, d_hist, d_off},
        {tokens, lp.view(), top_ids.view(), top_lp.view()}, ws.view(), stream_,
        all_exact ? kernels::sampling_route::exact : kernels::sampling_route::automatic);
    host_slot& hs = host_[std::size_t(f.parity)];
    backend_->copy(hs.tokens, tokens.data(), std::size_t(n) * 4, stream_);
    if (f.want_lp) backend_->copy(hs.logprobs, lp.view().data(), std::size_t(n) * 4, stream_);
    if (f.want_top) {
      backend_->copy(hs.top_ids, top_ids.view().data(), std::size_t(n * k) * 4, stream_);
      backend_->copy(hs.top_logprobs, top_lp.view().data(), std::size_t(n * k) * 4, stream_);
    }
  }

  B* backend_;
  model<B> model_;
  memory::cache_tensor_manager<B> mem_;
  kernels::gemm_context<B> gemm_;
  typename B::stream_type stream_;
  std::int64_t max_rows_ = 0;
  tensor_view tokens_;  // [max_rows] i32 on the device: the last launched step's sampled ids
  std::int64_t prev_rows_ = 0;  // rows of the last launched step
  std::vector<host_slot> host_;
  memory::host_buffer<B> pinned_;  // the host slots' arrays
  memory::staging_ring<B> sample_ring_{*backend_}, table_ring_{*backend_};
  std::deque<in_flight> flight_;
  std::int32_t next_slot_ = 0, last_slot_ = -1;
  std::function<void(std::int64_t)> const* after_layer_kv_ = nullptr;
  // Host buffers reused by every step.
  std::vector<request_step> reqs_;
  std::optional<graphs_type> graphs_;  // after model_, which it refers to
};

}  // namespace lightcore::models::deepseek_v3
