// The DeepSeek-V3/R1 (and V2/V2-Lite) forward over a ragged batch on a backend: embedding, the
// decoder layers (MLA attention, dense MLP or MoE block), final norm and lm head. Each request
// brings the token ids of this step, how many of its tokens the token pool already holds, and
// its req_to_token row; the forward writes the new tokens' KV and returns f32 logits.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/embedding/embedding.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/core/tensor.hpp"
#include "models/deepseek_v3/weights.hpp"
#include "modules/deepseek/mla_attention.hpp"
#include "modules/deepseek/mlp.hpp"

namespace lightcore::models::deepseek_v3 {

// One request of a step.
struct request_step {
  std::vector<std::int32_t> tokens;  // new token ids; one after a cached prefix: a decode row
  std::int64_t cached = 0;           // tokens of this request already in the pool (positions)
  std::int32_t req_row = 0;          // its row in req_to_token
};

struct model_options {
  std::int64_t max_positions = 4096;  // rows of the rope cos/sin cache (longest sequence)
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

template <Backend B>
class model {
 public:
  using context = modules::deepseek::forward_context<B>;

  model(B& backend, model_weights<B> const& w, model_options const& o = {})
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
  }

  io::model_config const& config() const noexcept { return w_->config(); }

  // Runs one step. kv: one [slots, 576] bf16 pool per layer; req_to_token [rows, columns] i32 on
  // the device, holding every position of every request up to cached + new tokens. Returns
  // logits [R, vocab shard] f32 (R = requests: each one's last token) or, with all_positions,
  // [T, vocab] for every new token in request order. The view lives in `ctx.mem` until the next
  // forward.
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
    auto xn = ctx.acquire("fwd.normed", dtype::bf16, {t, hidden});
    auto delta = ctx.acquire("fwd.delta", dtype::bf16, {t, hidden});
    auto extra = ctx.acquire("fwd.delta_shared", dtype::bf16, {t, hidden});
    bool has_extra = false;
    float const eps = float(c.rms_norm_eps);
    // residual += delta (and the shared experts' part when it came separately); xn = norm.
    auto add_norm = [&](tensor_view const& weight) {
      if (has_extra)
        kernels::fused_add_rmsnorm(*backend_, residual.view(), extra.view(), weight, xn.view(), eps,
                                   ctx.stream);
      has_extra = false;
      kernels::fused_add_rmsnorm(*backend_, residual.view(), delta.view(), weight, xn.view(), eps,
                                 ctx.stream);
    };
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layer_weights const& l = w_->layer(i);
      if (i == 0)
        kernels::rmsnorm(*backend_, residual.view(), l.input_norm, xn.view(), eps, ctx.stream);
      else
        add_norm(l.input_norm);
      modules::deepseek::mla_attention(ctx, c, l.attn, b, xn.view(), kv[std::size_t(i)],
                                       delta.view());
      add_norm(l.post_attention_norm);
      if (l.moe) {
        modules::deepseek::moe_block(ctx, c, *l.moe, *experts_[std::size_t(i)], xn.view(),
                                     delta.view(), extra.view());
        has_extra = l.moe->shared && l.moe->shared->down.fp8();
      } else {
        modules::deepseek::dense_mlp(ctx, xn.view(), *l.mlp, delta.view());
      }
    }
    add_norm(v.norm);

    std::int64_t const rows_out = all_positions ? t : std::int64_t(reqs.size());
    tensor_view const logits =
        ctx.mem.persistent("fwd.logits", dtype::f32, {rows_out, w_->vocab().size()});
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
    auto ws = ctx.gemm_workspace();
    kernels::gemm(*backend_, ctx.gemm, head_in, v.lm_head, logits, ws.view(), ctx.stream);
    return logits;
  }

 private:
  static bool is_decode(request_step const& r) { return r.tokens.size() == 1 && r.cached > 0; }

  B* backend_;
  model_weights<B> const* w_;
  model_options options_;
  tensor<B> cos_sin_;
  float softmax_scale_ = 0;
  std::vector<std::optional<modules::deepseek::moe_experts_weights<B>>> experts_;
};

}  // namespace lightcore::models::deepseek_v3
