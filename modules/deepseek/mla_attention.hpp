// DeepSeek MLA attention of one layer over a ragged batch: the prefill rows (new tokens of
// requests with a prompt chunk) first, then the decode rows (one new token after a cached
// prefix). Prefill decompresses the latent cache (mla_prefill); decode absorbs W_UK into q and
// W_UV into the output and attends over the 576-wide latent rows (mla_decode).
#pragma once

#include <cstdint>

#include "kernels/attention/attention.hpp"
#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_kv_prepare.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/rope.hpp"
#include "lightcore/io/hf_config.hpp"
#include "modules/deepseek/linear.hpp"

namespace lightcore::modules::deepseek {

// The batch's layout on the device, shared by every layer (i32 views).
struct attention_batch {
  std::int64_t tokens = 0;             // T: prefill tokens, then one per decode row
  std::int64_t prefill_tokens = 0;     // Tp: rows [0, Tp) of the activations
  std::int64_t prefill_kv_tokens = 0;  // sum of the prefill requests' whole lengths
  tensor_view positions;               // [T] position of each token in its request
  tensor_view token_req_rows;          // [T] req_to_token row of each token
  tensor_view req_to_token;            // [requests, columns]
  tensor_view prefill_req_rows;        // [Bp]
  tensor_view cu_seqlens_q;            // [Bp + 1]
  tensor_view cu_seqlens_k;            // [Bp + 1]
  tensor_view decode_req_rows;         // [Bd]
  tensor_view decode_seq_lens;         // [Bd], the new token included
  tensor_view cos_sin;                 // [max_positions, 64] f32
  float softmax_scale = 0;
};

// mla_decode works on head tiles of 16: a narrower rank's heads are padded with zero queries
// whose outputs are dropped.
inline constexpr std::int64_t mla_decode_head_multiple = 16;

// out [T, H] bf16 = o_proj(attention(x)); writes the new tokens' latent rows into kv_cache.
// Under tensor parallelism the weights hold this rank's heads (weights.hpp): the latent and
// k_rope are replicated (every rank writes the same KV rows), attention runs over the local heads,
// and o_proj's columns give a partial product for the caller to all-reduce. out may then be f32
// (bf16 o_proj weights only), so that the partials are summed before any rounding to bf16.
template <Backend B>
void mla_attention(forward_context<B>& ctx, io::model_config const& c,
                   models::deepseek_v3::attention_weights const& w, attention_batch const& b,
                   tensor_view const& x, tensor_view const& kv_cache, tensor_view const& out) {
  std::int64_t const t = b.tokens, tp = b.prefill_tokens, td = t - tp;
  std::int64_t const heads = w.w_uk.size(0), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim,
                     qk = nope + rope, lora = c.kv_lora_rank, vdim = c.v_head_dim;
  LC_CHECK(nope == 128 && rope == 64 && vdim == 128 && lora == 512,
           "mla_attention supports qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128 and "
           "kv_lora_rank 512 (DeepSeek-V2/V3's MLA); got "
               << nope << ", " << rope << ", " << vdim << ", " << lora);
  float const eps = float(c.rms_norm_eps);
  std::int64_t const hp = round_up(heads, mla_decode_head_multiple);

  // q [T, Hp, 192] (heads past `heads` zero, for the decode tiles) and kv_a [T, 576]. Without
  // q_lora and with no padded heads, one GEMM over q_kv_a writes both side by side: q is then
  // the first Hp * 192 columns of rows Hp * 192 + 576 wide.
  bool const q_kv_fused = !c.q_lora_rank && w.q_kv_a.w.data() != nullptr && hp == heads;
  typename forward_context<B>::lease q =
      ctx.acquire("attn.q", dtype::bf16, {t, q_kv_fused ? hp * qk + lora + rope : hp * qk});
  if (hp != heads) ctx.zero(q.view());
  std::int64_t const q_stride = q.view().size(1);
  tensor_view const q_all(q.view().data(), dtype::bf16, {t, hp, qk}, {q_stride, qk, 1},
                          q.view().where());
  tensor_view const q_rows = q.view().slice(1, 0, heads * qk);
  typename forward_context<B>::lease fused, qa_norm, kva;
  tensor_view kv_a;
  if (q_kv_fused) {
    linear(ctx, x, w.q_kv_a, q.view());
    kv_a = q.view().slice(1, hp * qk, hp * qk + lora + rope);
  } else if (c.q_lora_rank) {
    std::int64_t const ql = *c.q_lora_rank;
    fused = ctx.acquire("attn.q_a_kv_a", dtype::bf16, {t, ql + lora + rope});
    linear(ctx, x, w.q_a_kv_a, fused.view());
    qa_norm = ctx.acquire("attn.q_a_norm", dtype::bf16, {t, ql});
    kernels::rmsnorm(ctx.backend, fused.view().slice(1, 0, ql), w.q_a_norm, qa_norm.view(), eps,
                     ctx.stream);
    linear(ctx, qa_norm.view(), w.q_b, q_rows);
    qa_norm.reset();
    kv_a = fused.view().slice(1, ql, ql + lora + rope);
  } else {
    linear(ctx, x, w.q, q_rows);
    kva = ctx.acquire("attn.kv_a", dtype::bf16, {t, lora + rope});
    linear(ctx, x, w.kv_a, kva.view());
    kv_a = kva.view();
  }
  // kv_a_layernorm, the rope of q and of the key, and the new tokens' cache rows, in one step.
  kernels::mla_kv_prepare_args kp;
  kp.kv_a = kv_a;
  kp.norm_weight = w.kv_a_norm;
  kp.eps = eps;
  kp.q_rope = q_all.slice(1, 0, heads).slice(2, nope, qk);
  kp.positions = b.positions;
  kp.cos_sin = b.cos_sin;
  kp.slots = kernels::kv_slots::table(b.req_to_token, b.token_req_rows, b.positions);
  kp.kv_cache = kv_cache;
  // q_abs[:, h] = q_nope[:, h] . W_UK[h] of the decode rows: [heads] x [Td, 128] . [128, 512]. On
  // CUDA a small decode batch computes it in the same launch (a few CTAs beside the step); the
  // CPU and larger batches run the GEMM.
  tensor_view const qd = q_all.slice(0, tp, t);
  bool const fold_w_uk =
      B::kind != device_kind::cpu && td > 0 && td <= kernels::mla_fold_w_uk_max_rows;
  typename forward_context<B>::lease q_abs;
  if (td > 0) {
    q_abs = ctx.acquire("attn.q_absorbed", dtype::bf16, {td, hp, lora});
    if (hp != heads) ctx.zero(q_abs.view());
  }
  if (fold_w_uk) {
    kp.q_nope = qd.slice(1, 0, heads).slice(2, 0, nope);
    kp.w_uk = w.w_uk;
    kp.q_absorbed = q_abs.view().slice(1, 0, heads);
  }
  kernels::mla_kv_prepare(ctx.backend, kp, ctx.stream);

  auto attn = ctx.acquire("attn.out", dtype::bf16, {t, heads, vdim});
  if (tp > 0) {
    auto const layout = kernels::mla_prefill_workspace_layout(b.prefill_kv_tokens, heads);
    auto ws = ctx.acquire("attn.prefill_workspace", dtype::u8, {layout.bytes});
    kernels::mla_prefill_args a;
    a.q = q_all.slice(0, 0, tp).slice(1, 0, heads);
    a.kv_cache = kv_cache;
    a.req_to_token = b.req_to_token;
    a.req_rows = b.prefill_req_rows;
    a.cu_seqlens_q = b.cu_seqlens_q;
    a.cu_seqlens_k = b.cu_seqlens_k;
    a.w_uk = w.w_uk;
    a.w_uv = w.w_uv;
    a.out = attn.view().slice(0, 0, tp);
    a.kv_tokens = b.prefill_kv_tokens;
    a.softmax_scale = b.softmax_scale;
    kernels::mla_prefill(ctx.backend, ctx.gemm, a, ws.view(), ctx.stream);
  }
  if (td > 0) {
    if (!fold_w_uk) {
      auto ws = ctx.gemm_workspace();
      kernels::gemm_options opt;
      opt.layout = kernels::b_layout::k_by_n;
      opt.b_constant = true;
      kernels::gemm(ctx.backend, ctx.gemm, qd.slice(1, 0, heads).slice(2, 0, nope).transpose(0, 1),
                    w.w_uk, q_abs.view().slice(1, 0, heads).transpose(0, 1), ws.view(), ctx.stream,
                    opt);
    }
    auto const plan = kernels::plan_mla_decode(ctx.backend, td, hp);
    // On CUDA a small split decode folds W_UV into its merge (one launch, no latent round trip);
    // the CPU keeps the GEMM, its reference.
    bool const fold_w_uv = B::kind != device_kind::cpu && hp == heads &&
                           kernels::mla_decode_folds_w_uv(ctx.backend, plan, td);
    typename forward_context<B>::lease o_lat;
    if (!fold_w_uv) o_lat = ctx.acquire("attn.decode_latent_out", dtype::bf16, {td, hp, lora});
    typename forward_context<B>::lease dws;
    tensor_view dws_view;
    if (plan.workspace_bytes > 0) {
      dws = ctx.acquire("attn.decode_workspace", dtype::u8, {plan.workspace_bytes});
      dws_view = dws.view();
    }
    kernels::mla_decode_args a;
    a.q_nope = q_abs.view();
    a.q_rope = qd.slice(2, nope, qk);
    a.kv_cache = kv_cache;
    a.req_to_token = b.req_to_token;
    a.req_rows = b.decode_req_rows;
    a.seq_lens = b.decode_seq_lens;
    a.softmax_scale = b.softmax_scale;
    // attn[:, h] = o_lat[:, h] . W_UV[h]^T: [heads] x [Td, 512] . [512, 128].
    if (fold_w_uv) {
      a.w_uv = w.w_uv;
      a.out_v = attn.view().slice(0, tp, t);
      kernels::mla_decode(ctx.backend, a, plan, dws_view, ctx.stream);
    } else {
      a.out = o_lat.view();
      kernels::mla_decode(ctx.backend, a, plan, dws_view, ctx.stream);
      auto ws = ctx.gemm_workspace();
      kernels::gemm(ctx.backend, ctx.gemm, o_lat.view().slice(1, 0, heads).transpose(0, 1), w.w_uv,
                    attn.view().slice(0, tp, t).transpose(0, 1), ws.view(), ctx.stream,
                    kernels::gemm_weight_options());
    }
  }
  q.reset();
  fused.reset();
  kva.reset();
  linear(ctx, attn.view().reshape({t, heads * vdim}), w.o, out);
}

}  // namespace lightcore::modules::deepseek
