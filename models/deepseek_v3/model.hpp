// The DeepSeek-V3/R1 (and V2/V2-Lite) forward over a ragged batch on a backend: embedding, the
// decoder layers (MLA attention, dense MLP or MoE block), final norm and lm head. Each request
// brings the token ids of this step, how many of its tokens the token pool already holds, and
// its req_to_token row; the forward writes the new tokens' KV and returns f32 logits.
// Tensor parallelism: give the model a Communicator and the weights of its rank (weights.hpp);
// the forward sums the row-parallel partial products over the ranks (see `model` below).
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernels/convert/convert.hpp"
#include "kernels/embedding/embedding.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/core/tensor.hpp"
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
  tensor_view forward(context& ctx, std::vector<request_step> const& reqs,
                      std::vector<tensor_view> const& kv, tensor_view const& req_to_token,
                      bool all_positions = false) {
    io::model_config const& c = config();
    LC_CHECK(std::int64_t(kv.size()) == c.num_hidden_layers, "forward needs one KV pool per layer ("
                                                                 << c.num_hidden_layers << "); got "
                                                                 << kv.size());
    // Prefill requests first, then decode rows; `order` maps rows back to requests.
    std::vector<std::size_t> order;
    for (std::size_t r = 0; r < reqs.size(); ++r)
      if (!is_decode(reqs[r])) order.push_back(r);
    std::size_t const n_prefill = order.size();
    for (std::size_t r = 0; r < reqs.size(); ++r)
      if (is_decode(reqs[r])) order.push_back(r);

    std::vector<std::int32_t> ids, pos, rows, p_rows, cu_q{0}, cu_k{0}, d_rows, d_lens;
    std::vector<std::int64_t> first(reqs.size()), last(reqs.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
      request_step const& r = reqs[order[i]];
      LC_CHECK(!r.tokens.empty(), "forward: request " << order[i] << " has no new tokens");
      LC_CHECK(r.cached + std::int64_t(r.tokens.size()) <= options_.max_positions,
               "forward: request " << order[i] << " reaches position "
                                   << r.cached + std::int64_t(r.tokens.size()) - 1
                                   << "; allowed below max_positions " << options_.max_positions);
      first[order[i]] = std::int64_t(ids.size());
      for (std::size_t j = 0; j < r.tokens.size(); ++j) {
        ids.push_back(r.tokens[j]);
        pos.push_back(std::int32_t(r.cached + std::int64_t(j)));
        rows.push_back(r.req_row);
      }
      last[order[i]] = std::int64_t(ids.size()) - 1;
      std::int32_t const len = std::int32_t(r.cached + std::int64_t(r.tokens.size()));
      if (i < n_prefill) {
        p_rows.push_back(r.req_row);
        cu_q.push_back(std::int32_t(ids.size()));
        cu_k.push_back(cu_k.back() + len);
      } else {
        d_rows.push_back(r.req_row);
        d_lens.push_back(len);
      }
    }
    std::int64_t const t = std::int64_t(ids.size()), hidden = c.hidden_size;
    auto upload = [&](char const* role, std::vector<std::int32_t> const& v) {
      auto l = ctx.acquire(role, dtype::i32, {std::int64_t(v.size())});
      backend_->copy(l.view().data(), v.data(), v.size() * 4, ctx.stream);
      return l;
    };
    auto d_ids = upload("fwd.ids", ids), d_pos = upload("fwd.positions", pos),
         d_tok_rows = upload("fwd.token_req_rows", rows),
         d_prows = upload("fwd.prefill_rows", p_rows), d_cuq = upload("fwd.cu_seqlens_q", cu_q),
         d_cuk = upload("fwd.cu_seqlens_k", cu_k), d_drows = upload("fwd.decode_rows", d_rows),
         d_dlens = upload("fwd.decode_lens", d_lens);
    modules::deepseek::attention_batch b;
    b.tokens = t;
    b.prefill_tokens = cu_q.back();
    b.prefill_kv_tokens = cu_k.back();
    b.positions = d_pos.view();
    b.token_req_rows = d_tok_rows.view();
    b.req_to_token = req_to_token;
    b.prefill_req_rows = d_prows.view();
    b.cu_seqlens_q = d_cuq.view();
    b.cu_seqlens_k = d_cuk.view();
    b.decode_req_rows = d_drows.view();
    b.decode_seq_lens = d_dlens.view();
    b.cos_sin = cos_sin_.view();
    b.softmax_scale = softmax_scale_;

    model_views const& v = w_->views();
    auto residual = ctx.acquire("fwd.residual", dtype::bf16, {t, hidden});
    kernels::embedding(*backend_, d_ids.view(), v.embed, residual.view(),
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

    std::int64_t const rows_out = all_positions ? t : std::int64_t(reqs.size());
    bool const gather = distributed && options_.logits == logits_layout::full;
    tensor_view const logits = ctx.mem.persistent(
        "fwd.logits", dtype::f32, {rows_out, gather ? c.vocab_size : w_->vocab().size()});
    typename context::lease gathered;
    tensor_view head_in = xn.view();
    if (all_positions) {
      // Back to request order: rows were laid out prefill requests first.
      gathered = ctx.acquire("fwd.head_in", dtype::bf16, {t, hidden});
      std::int64_t o = 0;
      for (std::size_t r = 0; r < reqs.size(); ++r) {
        std::int64_t const n = last[r] - first[r] + 1;
        backend_->copy(gathered.view().select(0, o).data(), xn.view().select(0, first[r]).data(),
                       std::size_t(n * hidden) * 2, ctx.stream);
        o += n;
      }
    } else {
      gathered = ctx.acquire("fwd.head_in", dtype::bf16, {rows_out, hidden});
      for (std::size_t r = 0; r < reqs.size(); ++r)
        backend_->copy(gathered.view().select(0, std::int64_t(r)).data(),
                       xn.view().select(0, last[r]).data(), std::size_t(hidden) * 2, ctx.stream);
    }
    head_in = gathered.view();
    if (!gather) {
      auto ws = ctx.gemm_workspace();
      kernels::gemm(*backend_, ctx.gemm, head_in, v.lm_head, logits, ws.view(), ctx.stream);
      return logits;
    }
    if constexpr (distributed) gather_logits(ctx, head_in, logits);
    return logits;
  }

 private:
  static bool is_decode(request_step const& r) { return r.tokens.size() == 1 && r.cached > 0; }

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
                    part.view().slice(1, 0, w_->vocab().size()), ws.view(), ctx.stream);
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

}  // namespace lightcore::models::deepseek_v3
