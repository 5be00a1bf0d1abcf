// gqa_decode: the params that the CPU reference and the CUDA kernels of GQA paged decode share,
// and the split plan that fixes the CUDA launch geometry.
#pragma once

#include <cstdint>

#include "kernels/mla/kv_cache.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore::kernels {

// Head dims the kernels are built for (the CPU reference is held to the same list, so that both
// backends accept the same arguments).
inline constexpr int gqa_decode_head_dims[] = {64, 128};
// Most query heads per kv head: a CTA's query rows are one m16 MMA tile, padded when smaller.
inline constexpr int gqa_decode_max_group = 8;
// Most KV splits per row: the merge reads every split's partial result.
inline constexpr int gqa_decode_max_splits = 128;

// GQA decode over a token-slot cache (one new token per row). For batch row b and query head h,
// with kv head g = h / group (group = q_heads / kv_heads) and len = seq_lens[b]:
//   s[j] = scale * q[b, h, :] . k_pool[slot(b, j), g, :]            for j < len
//   out[b, h, :] = sum_j softmax(s)[j] v_pool[slot(b, j), g, :],   lse = log(sum_j exp(s[j]))
// slot(b, j) comes from req_to_token through req_rows[b] (kv_cache.hpp). A row of length 0 gets
// zeros and lse -inf.
struct gqa_decode_params {
  bf16 const* q = nullptr;  // [batch, q_heads, head_dim]
  std::int64_t q_batch_stride = 0, q_head_stride = 0;
  kv_pool_view<bf16 const> k;  // [slots, kv_heads * head_dim]: the kv heads of a slot contiguous
  kv_pool_view<bf16 const> v;  // [slots, kv_heads * head_dim], same slot count as k
  req_to_token_view table;     // [requests, columns] page (slot) ids
  std::int32_t const* req_rows = nullptr;  // [batch] row of each batch row in the table
  std::int32_t const* seq_lens = nullptr;  // [batch] tokens in the cache, the new one included
  bf16* out = nullptr;                     // [batch, q_heads, head_dim]
  std::int64_t out_batch_stride = 0, out_head_stride = 0;
  float* lse = nullptr;        // [batch, q_heads] natural-log sum of exp, or null
  float softmax_scale = 0.0f;  // scale of q.k, usually 1 / sqrt(head_dim)
  int batch = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int num_splits = 1;  // KV splits per row; > 1 writes the partial results below, then merges
  float* partial_out = nullptr;  // [batch, num_splits, q_heads, head_dim] f32, normalised
  float* partial_lse = nullptr;  // [batch, num_splits, q_heads] f32, log2 units; -inf: empty
};

// How a decode batch is cut: fixed for a (batch, heads, head dim, device) whatever the lengths,
// so that one captured graph replays for any mix of lengths. workspace_bytes of device memory
// hold the partial results when num_splits > 1.
struct gqa_decode_plan {
  int num_splits = 1;
  std::int64_t workspace_bytes = 0;
};

}  // namespace lightcore::kernels
