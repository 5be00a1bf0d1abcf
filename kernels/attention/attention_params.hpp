// attention: the params that the CPU reference and the CUDA kernels share: varlen causal prefill
// attention (FlashAttention-2 style) and the gather of MLA latent rows that MLA prefill
// decompresses.
#pragma once

#include <cstdint>

#include "kernels/mla/kv_cache.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore::kernels {

// The (qk, v) head dims the prefill kernel is built for: DeepSeek MLA after decompression (192 =
// 128 nope + 64 rope, v 128) and the GQA head dims of dense models.
inline constexpr int prefill_mla_qk_dim = 192;
inline constexpr int prefill_mla_v_dim = 128;
inline constexpr int prefill_mla_rope_dim = 64;  // the part of k shared by every head
// Most query heads per key head (GQA group).
inline constexpr int prefill_max_group = 8;

// Varlen causal prefill over a ragged batch. Request b owns query rows [cu_q[b], cu_q[b+1]) of q
// (its new tokens) and key rows [cu_k[b], cu_k[b+1]) of k and v (its whole sequence: the cached
// prefix, then the new tokens). With len_q = cu_q[b+1] - cu_q[b], len_k likewise and prefix =
// len_k - len_q, query i of the request sees keys 0 .. prefix + i. For query head h the key head is
// h / group (group = heads_q / heads_k):
//   s[j]  = scale * q[t, h, :] . k[j, h / group, :]
//   out   = sum_j softmax(s)[j] v[j, h / group, :],   lse = log(sum_j exp(s[j]))  (natural log)
// A query that sees no key (len_k < len_q) gets zeros and lse -inf. The last rope_dim dims of each
// key come from k_rope (one row per key token, the same for every head) when rope_dim > 0: k then
// holds the first qk_dim - rope_dim dims only.
struct prefill_params {
  bf16 const* q = nullptr;  // [T, heads_q, qk_dim]
  std::int64_t q_token_stride = 0, q_head_stride = 0;
  bf16 const* k = nullptr;  // [S, heads_k, qk_dim - rope_dim]
  std::int64_t k_token_stride = 0, k_head_stride = 0;
  bf16 const* k_rope = nullptr;  // [S, rope_dim], broadcast over heads (head stride 0), or null
  std::int64_t k_rope_token_stride = 0;
  bf16 const* v = nullptr;  // [S, heads_k, v_dim]
  std::int64_t v_token_stride = 0, v_head_stride = 0;
  std::int32_t const* cu_seqlens_q = nullptr;  // [batch + 1] prefix sums of new-token counts
  std::int32_t const* cu_seqlens_k = nullptr;  // [batch + 1] prefix sums of sequence lengths
  bf16* out = nullptr;                         // [T, heads_q, v_dim]
  std::int64_t out_token_stride = 0, out_head_stride = 0;
  float* lse = nullptr;  // [T, heads_q] contiguous, natural log, or null
  float softmax_scale = 0.0f;
  int batch = 0;
  std::int64_t total_q = 0;  // T: rows of q and out (cu_q[batch] <= T; rows past it untouched)
  std::int64_t total_k = 0;  // S: rows of k and v (cu_k[batch] <= S)
  int heads_q = 0;
  int heads_k = 0;
  int qk_dim = 0;
  int v_dim = 0;
  int rope_dim = 0;  // 0, or prefill_mla_rope_dim with k_rope set
};

// The gather of MLA prefill: row r of dst [rows, 576] is the latent row of position r - cu_k[b] of
// request b (cu_k[b] <= r < cu_k[b + 1]), found through req_to_token; rows at or past cu_k[batch]
// are written as zeros (the decompression GEMM runs over all `rows`).
struct latent_gather_params {
  kv_pool_view<bf16 const> kv;                 // [slots, 576]
  req_to_token_view table;                     // [requests, columns]
  std::int32_t const* req_rows = nullptr;      // [batch] request row of each request
  std::int32_t const* cu_seqlens_k = nullptr;  // [batch + 1]
  bf16* dst = nullptr;                         // [rows, 576], rows dst_stride apart
  std::int64_t dst_stride = 0;
  std::int64_t rows = 0;
  int batch = 0;
};

}  // namespace lightcore::kernels
