// The DeepSeek-V3/R1 (and V2/V2-Lite) forward over a ragged batch on a backend: embedding, the
// decoder layers (MLA attention, dense MLP or MoE block), final norm and lm head. Each request
// brings the token ids of this step, how many of its tokens the token pool already holds, and
// its req_to_token row; the forward writes the new tokens' KV and returns f32 logits.
// Tensor parallelism: give the model a Communicator and the weights of its rank (weights.hpp);
// the forward sums the row-parallel partial products over the ranks (see `model` below).
// A step is a host part (the requests as device batch metadata) and a device part
// (forward_device: device work only), so that decode-only steps replay CUDA graphs per batch
// bucket (decode_graphs, at the end of this file).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernels/convert/convert.hpp"
#include "kernels/embedding/embedding.hpp"
#include "kernels/index/index.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/graph/decode_graphs.hpp"
#include "lightcore/memory/staging_ring.hpp"
#include "models/deepseek_v3/weights.hpp"
#include "modules/deepseek/mla_attention.hpp"
#include "modules/deepseek/mlp.hpp"
#include "modules/deepseek/moe_dispatch.hpp"

namespace lightcore::models::deepseek_v3 {

// One request of a step.
struct request_step {
  std::vector<std::int32_t> tokens;  // new token ids; one after a cached prefix: a decode row
  std::int64_t cached = 0;           // tokens of this request already in the pool (positions)
  std::int32_t req_row = 0;          // its row in req_to_token
  // A prompt chunk of one token takes the prefill path too (not the absorbed decode path), so
  // that a prompt's KV has the same bits however it is chunked; default false.
  bool prefill = false;
  // Overlapped scheduling: >= 0 for a decode row whose token the previous step sampled and the
  // host does not know yet: its id is pending_ids[pending] on the device (the forward's
  // pending_ids argument), and tokens[0] is a placeholder. -1 (default): tokens are the ids.
  std::int32_t pending = -1;
};

// What a tensor-parallel forward returns as logits.
enum class logits_layout : std::uint8_t {
  full,         // every rank: [rows, vocab_size], the shards all-gathered (the default)
  vocab_shard,  // each rank its own columns [rows, vocab().size()] (a sampler that reduces them)
};

struct model_options {
  std::int64_t max_positions = 4096;           // rows of the rope cos/sin cache (longest sequence)
  logits_layout logits = logits_layout::full;  // tensor parallelism only; default full
  // Tensor parallelism only: o_proj's and the dense MLPs' partial products (bf16 weights) are
  // written and all-reduced in f32 and rounded to bf16 once, as at world 1, instead of rounded
  // per rank and all-reduced in bf16 (half the bytes). Default false (bf16). The MoE block's
  // partials are bf16 either way (moe_experts writes bf16).
  bool reduce_f32 = false;
};

// How decode-only steps run through CUDA graphs (decode_graphs below; the executor's option).
// A batch of n rows replays the graph of the smallest bucket >= n; its rows past n are padding:
// with a scratch row and slot they write their KV into that slot and attend over it alone
// (length 1); without one, each repeats the batch's first row (same token, position and row: it
// writes the very bytes that row writes into the same slot). Their logits rows are ignored.
struct decode_graph_options {
  bool enabled = true;           // the executor replays graphs for decode-only steps (CUDA only)
  std::int64_t max_batch = 256;  // rows of the largest bucket (the executor: its max_rows)
  // Buckets: every batch size 1..dense_buckets, then every bucket_step rows, then max_batch
  // (graph::batch_buckets). Defaults 32 and 16.
  std::int64_t dense_buckets = 32;
  std::int64_t bucket_step = 16;
  // A req_to_token row no request uses and a KV slot no request holds, reserved for the padding
  // rows (the graphs write the slot's id into the row's position 0); -1 (default): none.
  std::int32_t scratch_row = -1;
  std::int32_t scratch_slot = -1;
};

// The YaRN parameters of a config (no rope_scaling: factor 1, which is plain RoPE).
inline kernels::yarn_config yarn_of(io::model_config const& c, std::int64_t max_positions) {
  kernels::yarn_config y;
  y.rope_theta = c.rope_theta;
  y.rotary_dim = int(c.qk_rope_head_dim);
  y.max_position_embeddings = max_positions;
  if (c.rope_scaling) {
    y.factor = c.rope_scaling->factor;
    y.original_max_position_embeddings = c.rope_scaling->original_max_position_embeddings;
    y.beta_fast = c.rope_scaling->beta_fast;
    y.beta_slow = c.rope_scaling->beta_slow;
    y.mscale = c.rope_scaling->mscale;
    y.mscale_all_dim = c.rope_scaling->mscale_all_dim;
  } else {
    y.factor = 1.0;
  }
  return y;
}

// The forward of one rank. C: the tensor-parallel communicator (dist::Communicator on backend B),
// or no_communicator (the default: world 1, no collective compiled in). Dispatch: the MoE
// placement (moe_dispatch.hpp); by default local at world 1, tensor_parallel over a group.
//
// Under tensor parallelism (weights of rank r of W, communicator of the same rank and world):
//  - embedding: each rank writes its vocabulary rows and zeros for the others; an all-reduce
//    assembles the rows (exact: one non-zero term per element).
//  - attention: local heads; o_proj's partial product all-reduced (bf16, or f32 with
//    model_options::reduce_f32 and bf16 weights).
//  - dense MLP: intermediate split; the down projection's partial all-reduced likewise.
//  - MoE: routing replicated; the routed experts' and the shared experts' partials summed by the
//    dispatch policy in one all-reduce (bf16).
//  - lm head: vocabulary-sharded logits, all-gathered to [rows, vocab] (model_options::logits).
// Every all-reduce sums a buffer that holds this rank's partial product only; the residual is
// added after the sum (fused_add_rmsnorm), so that it is counted once.
// Rounding against world 1 (where each projection rounds its fp32 sum to bf16 once): a bf16
// all-reduce rounds each rank's partial to bf16 and then the sum (the in-process communicator sums
// in fp32 and rounds once; NCCL may round at every step of its ring), so the delta added to the
// residual moves by up to about 2^-8 of the partials' magnitude; later layers carry it on.
template <Backend B,
          modules::deepseek::forward_communicator<B> C = modules::deepseek::no_communicator,
          class Dispatch = modules::deepseek::default_moe_dispatch<C>>
class model {
 public:
  using context = modules::deepseek::forward_context<B>;
  static constexpr bool distributed = !std::same_as<C, modules::deepseek::no_communicator>;

  // World 1: the weights must be unsharded.
  model(B& backend, model_weights<B> const& w, model_options const& o = {}) requires(!distributed)
      : model(backend, w, o, 0) {
    LC_CHECK(w.shard().world == 1, "model: the weights are rank "
                                       << w.shard().rank << " of a tensor-parallel world of "
                                       << w.shard().world
                                       << "; a sharded model needs a communicator");
  }

  // Tensor parallelism: comm's rank and world must be the weights' shard.
  model(B& backend, model_weights<B> const& w, C& comm,
        model_options const& o = {}) requires distributed : model(backend, w, o, 0) {
    comm_ = &comm;
    LC_CHECK(comm.world_size() == w.shard().world && comm.rank() == w.shard().rank,
             "model: the communicator is rank " << comm.rank() << " of world " << comm.world_size()
                                                << " but the weights are rank " << w.shard().rank
                                                << " of world " << w.shard().world
                                                << "; load the weights with the communicator's "
                                                   "rank and world (load_options::shard)");
    dispatch_.emplace(comm);
  }

 private:
  model(B& backend, model_weights<B> const& w, model_options const& o, int /*delegated*/)
      : backend_(&backend), w_(&w), options_(o) {
    io::model_config const& c = w.config();
    auto const y = yarn_of(c, o.max_positions);
    std::vector<float> const cs = kernels::yarn_cos_sin_cache(y, o.max_positions);
    cos_sin_ = tensor<B>(backend, dtype::f32, {o.max_positions, c.qk_rope_head_dim});
    auto stream = backend.make_stream();
    backend.copy(cos_sin_.data(), cs.data(), cs.size() * sizeof(float), stream);
    stream.synchronize();
    softmax_scale_ = float(kernels::yarn_softmax_scale(y, int(c.qk_head_dim())));
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      auto const& l = w.layer(i);
      if (l.moe)
        experts_.emplace_back(std::in_place, backend, *l.moe);
      else
        experts_.emplace_back(std::nullopt);
    }
    if constexpr (!distributed) dispatch_.emplace();
  }

 public:
  io::model_config const& config() const noexcept { return w_->config(); }

  // Runs one step. kv: one [slots, 576] bf16 pool per layer; req_to_token [rows, columns] i32 on
  // the device, holding every position of every request up to cached + new tokens. Returns
  // logits [R, vocab] f32 (R = requests: each one's last token) or, with all_positions,
  // [T, vocab] for every new token in request order; under tensor parallelism with
  // logits_layout::vocab_shard, the rank's columns [R or T, vocab().size()]. The view lives in
  // `ctx.mem` until the next forward. Every rank calls it with the same requests.
  // The host part (plan_step: the requests as batch metadata, uploaded from host vectors) runs
  // first; the rest is forward_device's device work, plus the row gather of the lm head's input
  // when the token rows are not in request order.
  // pending_ids: the previous step's sampled ids on the device (i32), read by rows with
  // pending >= 0.
  tensor_view forward(context& ctx, std::vector<request_step> const& reqs,
                      std::vector<tensor_view> const& kv, tensor_view const& req_to_token,
                      bool all_positions = false, tensor_view const& pending_ids = {}) {
    check_pools(kv);
    step_plan const p = plan_step(reqs);
    auto upload = [&](char const* role, std::vector<std::int32_t> const& v) {
      auto l = ctx.acquire(role, dtype::i32, {std::int64_t(v.size())});
      backend_->copy(l.view().data(), v.data(), v.size() * 4, ctx.stream);
      return l;
    };
    auto d_ids = upload("fwd.ids", p.ids), d_pos = upload("fwd.positions", p.positions),
         d_tok_rows = upload("fwd.token_req_rows", p.token_rows),
         d_prows = upload("fwd.prefill_rows", p.prefill_rows),
         d_cuq = upload("fwd.cu_seqlens_q", p.cu_q), d_cuk = upload("fwd.cu_seqlens_k", p.cu_k),
         d_drows = upload("fwd.decode_rows", p.decode_rows),
         d_dlens = upload("fwd.decode_lens", p.decode_lens);
    if (!p.pending_to.empty()) {
      LC_CHECK(pending_ids.data() != nullptr, "forward: " << p.pending_to.size()
                                                          << " rows wait for a pending id but no "
                                                          << "pending_ids were given");
      auto to = upload("fwd.pending_to", p.pending_to),
           from = upload("fwd.pending_from", p.pending_from);
      kernels::copy_indexed(*backend_, d_ids.view(), to.view(), pending_ids, from.view(),
                            ctx.stream);
    }
    device_batch d;
    d.ids = d_ids.view();
    d.attn.tokens = std::int64_t(p.ids.size());
    d.attn.prefill_tokens = p.cu_q.back();
    d.attn.prefill_kv_tokens = p.cu_k.back();
    d.attn.positions = d_pos.view();
    d.attn.token_req_rows = d_tok_rows.view();
    d.attn.req_to_token = req_to_token;
    d.attn.prefill_req_rows = d_prows.view();
    d.attn.cu_seqlens_q = d_cuq.view();
    d.attn.cu_seqlens_k = d_cuk.view();
    d.attn.decode_req_rows = d_drows.view();
    d.attn.decode_seq_lens = d_dlens.view();

    std::int64_t const t = d.attn.tokens, hidden = config().hidden_size;
    std::int64_t const rows_out = all_positions ? t : std::int64_t(reqs.size());
    tensor_view const logits = logits_buffer(ctx, rows_out);
    auto xn = run_layers(ctx, d, kv);
    // The lm head reads its rows in request order: xn itself when the token rows already are
    // (every decode-only step), else a gather (rows were laid out prefill requests first).
    bool const direct = p.in_order && rows_out == t;
    if (direct) {
      lm_head(ctx, xn.view(), logits);
      return logits;
    }
    auto gathered = ctx.acquire("fwd.head_in", dtype::bf16, {rows_out, hidden});
    std::int64_t o = 0;
    for (std::size_t r = 0; r < reqs.size(); ++r) {
      std::int64_t const from = all_positions ? p.first[r] : p.last[r];
      std::int64_t const n = p.last[r] - from + 1;
      backend_->copy(gathered.view().select(0, o).data(), xn.view().select(0, from).data(),
                     std::size_t(n * hidden) * 2, ctx.stream);
      o += n;
    }
    xn.reset();
    lm_head(ctx, gathered.view(), logits);
    return logits;
  }

  // The device part's inputs: the batch metadata already on the device. attn's cos_sin and
  // softmax_scale are the model's and need not be set.
  struct device_batch {
    tensor_view ids;                          // [T] i32 token ids
    modules::deepseek::attention_batch attn;  // the layout every layer reads
  };

  // The device part of a step: embedding, layers, final norm and lm head for every token row of
  // `d`, logits [T, logits_columns()] f32 in token-row order. Pure device work ordered on
  // ctx.stream (no host data, no pageable copy, no host synchronisation; the launch geometry
  // depends on the row counts of `d` only), so a decode-only batch can be captured in a graph.
  void forward_device(context& ctx, device_batch const& d, std::vector<tensor_view> const& kv,
                      tensor_view const& logits) {
    check_pools(kv);
    LC_CHECK(logits.rank() == 2 && logits.size(0) == d.attn.tokens &&
                 logits.size(1) == logits_columns() && logits.type() == dtype::f32,
             "forward_device: logits must be [" << d.attn.tokens << ", " << logits_columns()
                                                << "] f32; got " << logits);
    auto xn = run_layers(ctx, d, kv);
    lm_head(ctx, xn.view(), logits);
  }

  // Columns of the logits: the vocabulary, or this rank's shard with logits_layout::vocab_shard.
  std::int64_t logits_columns() const noexcept {
    return distributed && options_.logits == logits_layout::vocab_shard ? w_->vocab().size()
                                                                        : config().vocab_size;
  }
  model_options const& options() const noexcept { return options_; }
  B& backend() const noexcept { return *backend_; }

  // The persistent logits buffer ("fwd.logits") viewed as [rows, logits_columns()]: its first
  // request sizes it, so make the largest first.
  tensor_view logits_buffer(context& ctx, std::int64_t rows) const {
    return ctx.mem.persistent("fwd.logits", dtype::f32, {rows, logits_columns()});
  }

 private:
  // The host part of a step: the requests as batch metadata, token rows laid out prefill
  // requests first, then decode rows.
  struct step_plan {
    std::vector<std::int32_t> ids, positions, token_rows, prefill_rows, cu_q{0}, cu_k{0},
        decode_rows, decode_lens;
    std::vector<std::int64_t> first, last;               // each request's first and last token row
    bool in_order = true;                                // token rows follow the requests' order
    std::vector<std::int32_t> pending_to, pending_from;  // ids[to[k]] = pending_ids[from[k]]
  };

  step_plan plan_step(std::vector<request_step> const& reqs) const {
    // Prefill requests first, then decode rows; `order` maps rows back to requests.
    std::vector<std::size_t> order;
    for (std::size_t r = 0; r < reqs.size(); ++r)
      if (!is_decode(reqs[r])) order.push_back(r);
    std::size_t const n_prefill = order.size();
    for (std::size_t r = 0; r < reqs.size(); ++r)
      if (is_decode(reqs[r])) order.push_back(r);
    step_plan p;
    p.first.resize(reqs.size());
    p.last.resize(reqs.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
      request_step const& r = reqs[order[i]];
      LC_CHECK(!r.tokens.empty(), "forward: request " << order[i] << " has no new tokens");
      LC_CHECK(r.cached + std::int64_t(r.tokens.size()) <= options_.max_positions,
               "forward: request " << order[i] << " reaches position "
                                   << r.cached + std::int64_t(r.tokens.size()) - 1
                                   << "; allowed below max_positions " << options_.max_positions);
      p.in_order = p.in_order && order[i] == i;
      p.first[order[i]] = std::int64_t(p.ids.size());
      if (r.pending >= 0) {
        LC_CHECK(i >= n_prefill, "forward: request " << order[i] << " waits for a pending id but "
                                                     << "is not a decode row");
        p.pending_to.push_back(std::int32_t(p.ids.size()));
        p.pending_from.push_back(r.pending);
      }
      for (std::size_t j = 0; j < r.tokens.size(); ++j) {
        p.ids.push_back(r.tokens[j]);
        p.positions.push_back(std::int32_t(r.cached + std::int64_t(j)));
        p.token_rows.push_back(r.req_row);
      }
      p.last[order[i]] = std::int64_t(p.ids.size()) - 1;
      std::int32_t const len = std::int32_t(r.cached + std::int64_t(r.tokens.size()));
      if (i < n_prefill) {
        p.prefill_rows.push_back(r.req_row);
        p.cu_q.push_back(std::int32_t(p.ids.size()));
        p.cu_k.push_back(p.cu_k.back() + len);
      } else {
        p.decode_rows.push_back(r.req_row);
        p.decode_lens.push_back(len);
      }
    }
    return p;
  }

  void check_pools(std::vector<tensor_view> const& kv) const {
    LC_CHECK(std::int64_t(kv.size()) == config().num_hidden_layers,
             "forward needs one KV pool per layer (" << config().num_hidden_layers << "); got "
                                                     << kv.size());
  }

  // Embedding, decoder layers and final norm: the normed hidden states [T, hidden] bf16.
  typename context::lease run_layers(context& ctx, device_batch const& d,
                                     std::vector<tensor_view> const& kv) {
    io::model_config const& c = config();
    modules::deepseek::attention_batch b = d.attn;
    b.cos_sin = cos_sin_.view();
    b.softmax_scale = softmax_scale_;
    std::int64_t const t = b.tokens, hidden = c.hidden_size;

    model_views const& v = w_->views();
    auto residual = ctx.acquire("fwd.residual", dtype::bf16, {t, hidden});
    kernels::embedding(*backend_, d.ids, v.embed, residual.view(),
                       {w_->vocab().start, c.vocab_size}, ctx.stream);
    if constexpr (distributed) comm_->all_reduce_sum(residual.view(), ctx.stream);
    auto xn = ctx.acquire("fwd.normed", dtype::bf16, {t, hidden});
    // The layer's output (delta) and, when it comes separately, the shared experts' (extra), one
    // after the other so that one all-reduce sums both.
    auto deltas = ctx.acquire("fwd.delta", dtype::bf16, {2, t, hidden});
    tensor_view const delta = deltas.view().select(0, 0), extra = deltas.view().select(0, 1);
    bool has_extra = false;
    typename context::lease delta_f32;
    if (distributed && options_.reduce_f32)
      delta_f32 = ctx.acquire("fwd.delta_f32", dtype::f32, {t, hidden});
    // delta = the sum over ranks of run(partial): run writes this rank's partial product of a
    // row-parallel projection (bf16, or f32 when reduce_f32 and `f32_ok`: a bf16 weight).
    auto row_parallel = [&](bool f32_ok, auto&& run) {
      if constexpr (!distributed) {
        run(delta);
      } else if (options_.reduce_f32 && f32_ok) {
        run(delta_f32.view());
        comm_->all_reduce_sum(delta_f32.view(), ctx.stream);
        kernels::convert(*backend_, delta_f32.view(), delta, ctx.stream);
      } else {
        run(delta);
        comm_->all_reduce_sum(delta, ctx.stream);
      }
    };
    float const eps = float(c.rms_norm_eps);
    // residual += delta (and the shared experts' part when it came separately); xn = norm.
    auto add_norm = [&](tensor_view const& weight) {
      if (has_extra)
        kernels::fused_add_rmsnorm(*backend_, residual.view(), extra, weight, xn.view(), eps,
                                   ctx.stream);
      has_extra = false;
      kernels::fused_add_rmsnorm(*backend_, residual.view(), delta, weight, xn.view(), eps,
                                 ctx.stream);
    };
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layer_weights const& l = w_->layer(i);
      if (i == 0)
        kernels::rmsnorm(*backend_, residual.view(), l.input_norm, xn.view(), eps, ctx.stream);
      else
        add_norm(l.input_norm);
      row_parallel(!l.attn.o.fp8(), [&](tensor_view const& out) {
        modules::deepseek::mla_attention(ctx, c, l.attn, b, xn.view(), kv[std::size_t(i)], out);
      });
      if (ctx.after_layer_kv != nullptr) (*ctx.after_layer_kv)(i);
      add_norm(l.post_attention_norm);
      if (l.moe) {
        // The dispatch policy sums the ranks' partials (routed and shared) itself.
        modules::deepseek::moe_block(ctx, c, *l.moe, *experts_[std::size_t(i)], xn.view(), delta,
                                     extra, *dispatch_);
        has_extra = l.moe->shared && l.moe->shared->down.fp8();
      } else {
        row_parallel(!l.mlp->down.fp8(), [&](tensor_view const& out) {
          modules::deepseek::dense_mlp(ctx, xn.view(), *l.mlp, out);
        });
      }
    }
    add_norm(v.norm);
    return xn;
  }

  // logits [rows, logits_columns()] = lm_head(head_in); all-gathered under tensor parallelism
  // with logits_layout::full.
  void lm_head(context& ctx, tensor_view const& head_in, tensor_view const& logits) {
    if constexpr (distributed) {
      if (options_.logits == logits_layout::full) {
        gather_logits(ctx, head_in, logits);
        return;
      }
    }
    auto ws = ctx.gemm_workspace();
    kernels::gemm(*backend_, ctx.gemm, head_in, w_->views().lm_head, logits, ws.view(), ctx.stream,
                  kernels::gemm_weight_options());
  }

 public:
  // A decode row: one new token after a cached prefix.
  static bool is_decode(request_step const& r) {
    return !r.prefill && r.tokens.size() == 1 && r.cached > 0;
  }

 private:
  // logits [rows, vocab] = the ranks' vocab-sharded products, all-gathered. The shards are
  // ceil(vocab / world) columns but the last one (weights.hpp), so each rank writes its product
  // into a [rows, ceil(vocab / world)] block (columns past its shard unset, never read) and the
  // gathered blocks are copied to their columns, a row at a time.
  void gather_logits(context& ctx, tensor_view const& head_in,
                     tensor_view const& logits) requires distributed {
    io::model_config const& c = config();
    int const world = comm_->world_size();
    std::int64_t const rows = head_in.size(0), per = (c.vocab_size + world - 1) / world;
    auto part = ctx.acquire("fwd.logits_shard", dtype::f32, {rows, per});
    {
      auto ws = ctx.gemm_workspace();
      kernels::gemm(*backend_, ctx.gemm, head_in, w_->views().lm_head,
                    part.view().slice(1, 0, w_->vocab().size()), ws.view(), ctx.stream,
                    kernels::gemm_weight_options());
    }
    auto all = ctx.acquire("fwd.logits_gathered", dtype::f32, {world * rows, per});
    comm_->all_gather(part.view(), all.view(), ctx.stream);
    for (int r = 0; r < world; ++r) {
      vocab_range const shard = vocab_shard(c, {r, world});
      for (std::int64_t i = 0; i < rows; ++i)
        backend_->copy(logits.select(0, i).slice(0, shard.start, shard.end).data(),
                       all.view().select(0, r * rows + i).data(), std::size_t(shard.size()) * 4,
                       ctx.stream);
    }
  }

  B* backend_;
  model_weights<B> const* w_;
  model_options options_;
  tensor<B> cos_sin_;
  float softmax_scale_ = 0;
  std::vector<std::optional<modules::deepseek::moe_experts_weights<B>>> experts_;
  C* comm_ = nullptr;                 // distributed only
  std::optional<Dispatch> dispatch_;  // built with the communicator (local: without one)
};

#if defined(LIGHTCORE_WITH_CUDA)

// Decode-only steps of a model through one CUDA graph per batch bucket (decode_graph_options).
// The host part fills the bucket's metadata (ids, positions, req rows, lengths) into one
// persistent device buffer, copied on the stream before the launch; the graph holds the device
// part (model::forward_device) over that buffer, with the logits in the persistent "fwd.logits".
// The graphs are captured at the first step, largest bucket first, inside the manager's
// graph_scope, and again whenever the KV pools or req_to_token move (their addresses are in the
// graphs). One object per model and manager; not thread-safe.
template <modules::deepseek::forward_communicator<backend::cuda> C =
              modules::deepseek::no_communicator,
          class Dispatch = modules::deepseek::default_moe_dispatch<C>>
class decode_graphs {
 public:
  using model_type = model<backend::cuda, C, Dispatch>;
  using context = typename model_type::context;

  decode_graphs(model_type& m, decode_graph_options const& o)
      : model_(&m),
        options_(o),
        graphs_(graph::batch_buckets(o.max_batch, o.dense_buckets, o.bucket_step)) {
    LC_CHECK((o.scratch_row < 0) == (o.scratch_slot < 0),
             "decode_graphs: scratch_row " << o.scratch_row << " and scratch_slot "
                                           << o.scratch_slot
                                           << " must both be set (>= 0) or both be -1");
    // (host_ points into the staging ring, page-locked: a new buffer per step, see stage().)
  }

  decode_graph_options const& options() const noexcept { return options_; }
  graph::bucket_graphs const& graphs() const noexcept { return graphs_; }

  // Whether forward() takes this step: every request a decode row, 1..max_batch of them.
  bool accepts(std::vector<request_step> const& reqs) const {
    return !reqs.empty() && std::int64_t(reqs.size()) <= graphs_.max_batch() &&
           std::all_of(reqs.begin(), reqs.end(), model_type::is_decode);
  }

  // Captures every bucket over these buffers now (the first forward() would otherwise).
  void capture(context& ctx, std::vector<tensor_view> const& kv, tensor_view const& req_to_token) {
    bind(ctx, kv, req_to_token);
  }

  // The step through its bucket's graph: logits [n, logits_columns()] f32 for the n requests in
  // their order, in "fwd.logits" (valid until the next step). Same inputs as model::forward.
  tensor_view forward(context& ctx, std::vector<request_step> const& reqs,
                      std::vector<tensor_view> const& kv, tensor_view const& req_to_token,
                      tensor_view const& pending_ids = {}) {
    check(reqs);
    bind(ctx, kv, req_to_token);
    std::int64_t const bucket = stage(ctx, reqs, req_to_token, pending_ids);
    graphs_.replay(bucket, ctx.stream);
    return model_->logits_buffer(ctx, std::int64_t(reqs.size()));
  }

  // The same work as forward() without a graph (same bucket, padding and kernels): what a replay
  // must reproduce bit for bit.
  tensor_view forward_eager(context& ctx, std::vector<request_step> const& reqs,
                            std::vector<tensor_view> const& kv, tensor_view const& req_to_token,
                            tensor_view const& pending_ids = {}) {
    check(reqs);
    prepare(ctx, req_to_token);
    std::int64_t const bucket = stage(ctx, reqs, req_to_token, pending_ids);
    model_->forward_device(ctx, batch(bucket, req_to_token), kv,
                           model_->logits_buffer(ctx, graphs_.max_batch()).slice(0, 0, bucket));
    return model_->logits_buffer(ctx, std::int64_t(reqs.size()));
  }

 private:
  // Rows of the persistent input buffer [inputs, max_batch] i32.
  // pending_to / pending_from: the rows whose id the previous step sampled (request_step::pending)
  // and where it is in pending_ids; rows past the step's pending count are unused.
  static constexpr std::int64_t inputs = 6;
  enum row : std::int64_t { ids, positions, req_rows, lengths, pending_to, pending_from };

  void check(std::vector<request_step> const& reqs) const {
    LC_CHECK(accepts(reqs), "decode_graphs: a step of "
                                << reqs.size() << " requests is not decode-only or exceeds "
                                << graphs_.max_batch()
                                << " rows; allowed: 1..max_batch requests of one new token "
                                   "after a cached prefix each");
  }

  // Sizes the persistent buffers (largest first) and writes the scratch row's entry.
  void prepare(context& ctx, tensor_view const& req_to_token) {
    LC_CHECK(mem_ == nullptr || mem_ == &ctx.mem,
             "decode_graphs: one object serves one cache_tensor_manager");
    if (mem_ == nullptr) {
      mem_ = &ctx.mem;
      model_->logits_buffer(ctx, graphs_.max_batch());
      device_ =
          ctx.mem.persistent("graph.decode_inputs", dtype::i32, {inputs, graphs_.max_batch()});
    }
    if (options_.scratch_row < 0) return;
    LC_CHECK(options_.scratch_row < req_to_token.size(0),
             "decode_graphs: scratch_row " << options_.scratch_row << " is outside req_to_token "
                                           << req_to_token);
    auto* const entry =
        static_cast<std::int32_t*>(req_to_token.select(0, options_.scratch_row).data());
    model_->backend().copy(entry, &options_.scratch_slot, sizeof(std::int32_t), ctx.stream);
  }

  // Captures every bucket unless the graphs were captured over these very buffers.
  void bind(context& ctx, std::vector<tensor_view> const& kv, tensor_view const& req_to_token) {
    std::vector<void const*> where{req_to_token.data()};
    for (tensor_view const& v : kv) where.push_back(v.data());
    if (graphs_.captured() && where == bound_ && req_to_token.shape() == bound_table_) return;
    prepare(ctx, req_to_token);
    if (options_.scratch_slot >= 0)
      for (tensor_view const& v : kv)
        LC_CHECK(options_.scratch_slot < v.size(0), "decode_graphs: scratch_slot "
                                                        << options_.scratch_slot
                                                        << " is outside the KV pool " << v);
    tensor_view const logits = model_->logits_buffer(ctx, graphs_.max_batch());
    graphs_.capture(ctx.mem, ctx.stream, [&](std::int64_t rows) {
      model_->forward_device(ctx, batch(rows, req_to_token), kv, logits.slice(0, 0, rows));
    });
    bound_ = std::move(where);
    bound_table_ = req_to_token.shape();
  }

  // The host part: the requests and the bucket's padding rows into the input buffer, copied on
  // the stream. Returns the bucket.
  std::int64_t stage(context& ctx, std::vector<request_step> const& reqs,
                     tensor_view const& req_to_token, tensor_view const& pending_ids) {
    std::int64_t const n = std::int64_t(reqs.size()), bucket = graphs_.bucket_for(n);
    std::int64_t const stride = graphs_.max_batch();
    std::size_t const bytes = std::size_t(inputs * stride) * sizeof(std::int32_t);
    auto* const host = reinterpret_cast<std::int32_t*>(ring_.next(bytes, ctx.stream));
    auto at = [&](row r, std::int64_t i) -> std::int32_t& {
      return host[std::size_t(r * stride + i)];
    };
    std::int64_t pending = 0;
    for (std::int64_t i = 0; i < n; ++i)
      if (reqs[std::size_t(i)].pending >= 0) {
        at(pending_to, pending) = std::int32_t(i);
        at(pending_from, pending++) = reqs[std::size_t(i)].pending;
      }
    LC_CHECK(pending == 0 || pending_ids.data() != nullptr,
             "decode_graphs: " << pending << " rows wait for a pending id but no pending_ids "
                               << "were given");
    for (std::int64_t i = 0; i < bucket; ++i) {
      if (i < n) {
        request_step const& r = reqs[std::size_t(i)];
        LC_CHECK(
            r.cached + 1 <= model_->options().max_positions && r.cached + 1 <= req_to_token.size(1),
            "decode_graphs: request "
                << i << " reaches position " << r.cached << "; allowed below max_positions "
                << model_->options().max_positions << " and the columns of req_to_token "
                << req_to_token.size(1));
        LC_CHECK(r.req_row >= 0 && r.req_row < req_to_token.size(0),
                 "decode_graphs: request " << i << " has req_row " << r.req_row << "; allowed: 0.."
                                           << req_to_token.size(0) - 1);
        at(ids, i) = r.tokens[0];
        at(positions, i) = std::int32_t(r.cached);
        at(req_rows, i) = r.req_row;
        at(lengths, i) = std::int32_t(r.cached + 1);
      } else if (options_.scratch_row >= 0) {
        at(ids, i) = 0;
        at(positions, i) = 0;
        at(req_rows, i) = options_.scratch_row;
        at(lengths, i) = 1;
      } else {
        for (row r : {ids, positions, req_rows, lengths}) at(r, i) = at(r, 0);
        // A copy of row 0 writes row 0's KV slot: it must see row 0's id, pending or not.
        if (reqs[0].pending >= 0) {
          at(pending_to, pending) = std::int32_t(i);
          at(pending_from, pending++) = reqs[0].pending;
        }
      }
    }
    // Page-locked memory: the copy is queued without waiting; the ring's next turns leave this
    // buffer alone until it has run.
    model_->backend().copy(device_.data(), host, bytes, ctx.stream);
    if (pending > 0)
      kernels::copy_indexed(model_->backend(), device_.select(0, ids),
                            device_.select(0, pending_to).slice(0, 0, pending), pending_ids,
                            device_.select(0, pending_from).slice(0, 0, pending), ctx.stream);
    return bucket;
  }

  // The device metadata of a bucket of `rows` decode rows.
  typename model_type::device_batch batch(std::int64_t rows,
                                          tensor_view const& req_to_token) const {
    typename model_type::device_batch d;
    auto input = [&](row r) { return device_.select(0, r).slice(0, 0, rows); };
    d.ids = input(ids);
    d.attn.tokens = rows;
    d.attn.positions = input(positions);
    d.attn.token_req_rows = input(req_rows);
    d.attn.req_to_token = req_to_token;
    d.attn.decode_req_rows = input(req_rows);
    d.attn.decode_seq_lens = input(lengths);
    return d;
  }

  model_type* model_;
  decode_graph_options options_;
  graph::bucket_graphs graphs_;
  memory::cache_tensor_manager<backend::cuda>* mem_ = nullptr;
  tensor_view device_;  // [inputs, max_batch] i32, persistent
  memory::staging_ring<backend::cuda> ring_{model_->backend()};  // its host images, in turn
  std::vector<void const*> bound_;  // req_to_token and the KV pools the graphs were captured on
  dims bound_table_;
};

#endif  // LIGHTCORE_WITH_CUDA

}  // namespace lightcore::models::deepseek_v3
