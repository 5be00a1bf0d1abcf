// Grouped-query attention of one layer over a ragged batch, from the attention kernels: partial
// rotary (DeepSeek's rope kernel over the first 64 dims of every q and k head), the KV write into
// the token pool, varlen causal prefill for the prompt rows and paged decode for the decode rows.
// The KV pool of a layer is [slots, 2 * kv_heads * head_dim]: a slot's k heads, then its v heads,
// each head contiguous (what gqa_write_kv writes and gqa_decode reads, as two strided views).
#pragma once

#include <cstdint>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/gqa_decode.hpp"
#include "kernels/embedding/embedding.hpp"
#include "kernels/mla/mla.hpp"
#include "kernels/rope/rope.hpp"
#include "lightcore/core/error.hpp"
#include "modules/common/context.hpp"

namespace lightcore::modules::gqa {

// Heads of one layer. Rotary over the first kernels::rope_dim (64) dims of each head.
struct gqa_heads {
  std::int64_t q_heads = 8;     // query heads; a multiple of kv_heads, at most 8 per kv head
  std::int64_t kv_heads = 2;    // key/value heads
  std::int64_t head_dim = 128;  // dims per head: 64 or 128 (the kernels' instantiations)

  std::int64_t qkv_width() const noexcept { return (q_heads + 2 * kv_heads) * head_dim; }
  std::int64_t kv_width() const noexcept { return 2 * kv_heads * head_dim; }
};

// The batch's layout on the device, shared by every layer (i32 views). Token rows: the prefill
// requests' new tokens first, then one row per decode request.
struct gqa_batch {
  std::int64_t tokens = 0;             // T
  std::int64_t prefill_tokens = 0;     // Tp: rows [0, Tp)
  std::int64_t prefill_kv_tokens = 0;  // Sk: sum of the prefill requests' whole lengths
  tensor_view positions;               // [T] position of each token in its request
  tensor_view token_req_rows;          // [T] req_to_token row of each token
  tensor_view req_to_token;            // [requests, columns]
  tensor_view prefill_slots;           // [Sk] slot of every position of every prefill request
  tensor_view cu_seqlens_q;            // [Bp + 1]
  tensor_view cu_seqlens_k;            // [Bp + 1], over prefill_slots
  tensor_view decode_req_rows;         // [Bd]
  tensor_view decode_seq_lens;         // [Bd], the new token included
  tensor_view cos_sin;                 // [max_positions, 64] f32 (kernels/rope/yarn.hpp)
  float softmax_scale = 0;             // 1 / sqrt(head_dim) for plain attention
};

// The k or v half of a layer's pool [slots, 2 * kv_heads * head_dim] as [slots, kv_heads,
// head_dim] (part 0: k, 1: v).
inline tensor_view kv_half(tensor_view const& pool, gqa_heads const& h, int part) {
  LC_CHECK(pool.rank() == 2 && pool.size(1) == h.kv_width() && pool.is_contiguous(),
           "gqa: a KV pool must be a contiguous [slots, "
               << h.kv_width() << "] tensor (k then v heads); got " << pool);
  return pool.reshape({pool.size(0), 2, h.kv_heads, h.head_dim}).select(1, part);
}

// out [T, q_heads, head_dim] bf16 = attention of qkv [T, qkv_width] bf16 (q heads, k heads, v
// heads, contiguous rows); rotates q and k in place and writes k and v into the pool.
template <Backend B>
void gqa_attention(common::forward_context<B>& ctx, gqa_heads const& h, gqa_batch const& b,
                   tensor_view const& qkv, tensor_view const& pool, tensor_view const& out) {
  std::int64_t const t = b.tokens, tp = b.prefill_tokens, td = t - tp;
  std::int64_t const nq = h.q_heads, nkv = h.kv_heads, hd = h.head_dim;
  LC_CHECK(hd >= kernels::rope_dim && qkv.rank() == 2 && qkv.size(0) == t &&
               qkv.size(1) == h.qkv_width() && qkv.is_contiguous(),
           "gqa_attention needs head_dim >= " << kernels::rope_dim << " and qkv [" << t << ", "
                                              << h.qkv_width() << "] contiguous; got head_dim "
                                              << hd << ", qkv " << qkv);
  if (t == 0) return;
  tensor_view const heads = qkv.reshape({t, nq + 2 * nkv, hd});
  // One launch rotates every q head and every k head: the rope kernel takes [T, n, 64] "q" rows
  // and one [T, 64] "k" row per token, so the last k head plays k and the rest ride along as q.
  kernels::apply_rope(ctx.backend, heads.slice(1, 0, nq + nkv - 1).slice(2, 0, kernels::rope_dim),
                      heads.select(1, nq + nkv - 1).slice(1, 0, kernels::rope_dim), b.positions,
                      b.cos_sin, ctx.stream);
  tensor_view const q = heads.slice(1, 0, nq), k = heads.slice(1, nq, nq + nkv),
                    v = heads.slice(1, nq + nkv, nq + 2 * nkv);
  tensor_view const k_cache = kv_half(pool, h, 0), v_cache = kv_half(pool, h, 1);
  kernels::gqa_write_kv(ctx.backend, k, v,
                        kernels::kv_slots::table(b.req_to_token, b.token_req_rows, b.positions),
                        k_cache, v_cache, ctx.stream);

  if (tp > 0) {
    // The prefill kernel reads whole sequences from contiguous k and v: gather every position of
    // the prefill requests (cached prefix and the rows just written) from the pool, a slot per
    // row (the embedding kernel is a row gather by index).
    std::int64_t const sk = b.prefill_kv_tokens;
    auto kv = ctx.acquire("gqa.prefill_kv", dtype::bf16, {sk, h.kv_width()});
    kernels::embedding(ctx.backend, b.prefill_slots, pool, kv.view(), {0, pool.size(0)},
                       ctx.stream);
    tensor_view const kv4 = kv.view().reshape({sk, 2, nkv, hd});
    kernels::prefill_args a;
    a.q = q.slice(0, 0, tp);
    a.k = kv4.select(1, 0);
    a.v = kv4.select(1, 1);
    a.cu_seqlens_q = b.cu_seqlens_q;
    a.cu_seqlens_k = b.cu_seqlens_k;
    a.out = out.slice(0, 0, tp);
    a.softmax_scale = b.softmax_scale;
    kernels::prefill_attention(ctx.backend, a, ctx.stream);
  }
  if (td > 0) {
    auto const plan = kernels::plan_gqa_decode(ctx.backend, td, nq, nkv, hd);
    typename common::forward_context<B>::lease ws;
    tensor_view ws_view;
    if (plan.workspace_bytes > 0) {
      ws = ctx.acquire("gqa.decode_workspace", dtype::u8, {plan.workspace_bytes});
      ws_view = ws.view();
    }
    kernels::gqa_decode_args a;
    a.q = q.slice(0, tp, t);
    a.k_cache = k_cache;
    a.v_cache = v_cache;
    a.req_to_token = b.req_to_token;
    a.req_rows = b.decode_req_rows;
    a.seq_lens = b.decode_seq_lens;
    a.out = out.slice(0, tp, t);
    a.softmax_scale = b.softmax_scale;
    kernels::gqa_decode(ctx.backend, a, plan, ws_view, ctx.stream);
  }
}

}  // namespace lightcore::modules::gqa
