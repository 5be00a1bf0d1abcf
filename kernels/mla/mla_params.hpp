// mla: the params that the CPU references and the CUDA kernels share: KV writes into the token
// pool (MLA latent rows, GQA k/v rows) and the absorbed MLA decode with its split-KV plan.
#pragma once

#include <cstdint>

#include "kernels/mla/kv_cache.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore::kernels {

// DeepSeek-V3/R1 (and V2/V2-Lite) latent widths: kv_lora_rank 512, qk_rope_head_dim 64.
inline constexpr std::int64_t mla_latent_dim = 512;  // compressed kv: keys and values
inline constexpr std::int64_t mla_rope_dim = 64;     // roped key, shared by all heads
inline constexpr std::int64_t mla_kv_width = mla_latent_dim + mla_rope_dim;  // 576 per slot

// Heads of one decode tile: one m16 MMA tile when H is not a multiple of 64 (H = 16 at TP8 and
// V2-Lite), four (64 heads) otherwise, so that H = 128 reads each latent block twice, not eight
// times. H must be a multiple of 16.
inline constexpr int mla_head_tile_small = 16;
inline constexpr int mla_head_tile_large = 64;
inline constexpr int mla_heads_per_tile(std::int64_t heads) noexcept {
  return heads % mla_head_tile_large == 0 ? mla_head_tile_large : mla_head_tile_small;
}
// Most KV splits per row: the merge reads every split's partial result.
inline constexpr int mla_max_splits = 128;
// Most rows of a decode whose merge folds in W_UV on CUDA (each CTA holds its W_UV tile for one
// row; a larger batch reads the weights more often than the GEMM does).
inline constexpr int mla_fold_w_uv_max_batch = 8;
// Output columns of one CTA of that merge: v_dim must be a multiple (128 for DeepSeek).
inline constexpr int mla_fold_w_uv_cols = 32;

// The KV write: per new token t, up to two segments of `width` elements are copied from the
// token's source rows into the row of its slot: MLA writes latent [T, 512] at column 0 and the
// roped key [T, 64] at column 512 of one pool; GQA writes k [T, Hkv * D] and v [T, Hkv * D] into
// two pools. The slot comes from `slots` when it is set, else from req_to_token through
// (req_rows[t], positions[t]). A negative slot is a padding token and is skipped.
struct kv_write_segment {
  bf16 const* src = nullptr;  // [tokens, width], rows src_stride apart
  std::int64_t src_stride = 0;
  bf16* dst = nullptr;  // the first written element of slot 0's row; slot s at dst + s * stride
  std::int64_t dst_stride = 0;  // elements between slots
  std::int64_t width = 0;       // elements per token, a multiple of 8
};

struct kv_write_params {
  kv_write_segment segment[2];
  int segments = 0;                         // 1 or 2
  std::int64_t tokens = 0;                  // T
  std::int64_t pool_slots = 0;              // slots in the destination pool(s)
  std::int32_t const* slots = nullptr;      // [T], or null to use the table
  req_to_token_view table;                  // used when slots is null
  std::int32_t const* req_rows = nullptr;   // [T] request row of each token in the table
  std::int32_t const* positions = nullptr;  // [T] position of each token in its request
};

// Absorbed MLA decode (multi-query attention over the latent): for batch row b, query q, head h,
//   s[j]   = scale * (q_nope[b, q, h, :] . kv[slot(b, j), :512] + q_rope[b, q, h, :] . kv[..,
//   512:]) out    = sum_j softmax(s)[j] kv[slot(b, j), :512]             (the values are the keys'
//   512) lse    = log(sum_j exp(s[j]))                                 (natural log)
// over positions j < seq_lens[b]. q_len is 1 now; the M dimension of a tile is (query, head) and
// the fields below keep the query index, so that a second token per row (speculative decoding)
// needs a causal limit, not a new layout.
struct mla_decode_params {
  bf16 const* q_nope = nullptr;  // [batch, q_len, heads, 512], q_nope already times W_UK
  bf16 const* q_rope = nullptr;  // [batch, q_len, heads, 64]
  std::int64_t q_nope_batch_stride = 0, q_nope_query_stride = 0, q_nope_head_stride = 0;
  std::int64_t q_rope_batch_stride = 0, q_rope_query_stride = 0, q_rope_head_stride = 0;
  kv_pool_view<bf16 const> kv;             // [slots, 576]: latent 512 then roped key 64
  req_to_token_view table;                 // [requests, columns] page (slot) ids
  std::int32_t const* req_rows = nullptr;  // [batch] row of each batch row in the table
  std::int32_t const* seq_lens = nullptr;  // [batch] tokens in the cache, the new one included
  bf16* out = nullptr;                     // [batch, q_len, heads, 512]
  std::int64_t out_batch_stride = 0, out_query_stride = 0, out_head_stride = 0;
  float* lse = nullptr;        // [batch, q_len, heads] natural-log sum of exp, or null
  float softmax_scale = 0.0f;  // 1 / sqrt(192) times YaRN's mscale^2 for DeepSeek-V3
  int batch = 0;
  int q_len = 1;
  int heads = 0;
  int num_splits = 1;  // KV splits per row; > 1 writes the partial results below, then merges
  float* partial_out = nullptr;  // [batch, num_splits, q_len * heads, 512] f32, normalised
  float* partial_lse = nullptr;  // [batch, num_splits, q_len * heads] f32, log2 units; -inf: empty
  // The output projection, when the caller folds it in (mla_decode_args::w_uv): out_v[b, h, :] =
  // bf16(out[b, h, :]) . w_uv[h]^T, fp32 sums. The CUDA merge computes it without writing out.
  bf16 const* w_uv = nullptr;  // [heads, v_dim, 512], rows w_uv_row_stride apart
  std::int64_t w_uv_head_stride = 0, w_uv_row_stride = 0;
  int v_dim = 0;          // 128 for DeepSeek
  bf16* out_v = nullptr;  // [batch, heads, v_dim]
  std::int64_t out_v_batch_stride = 0, out_v_head_stride = 0;
};

// How a decode batch is cut: fixed for a (batch, heads, device), whatever the lengths, so that a
// captured graph replays for any mix of lengths. workspace_bytes of device memory hold the
// partial results when num_splits > 1.
struct mla_decode_plan {
  int num_splits = 1;
  std::int64_t workspace_bytes = 0;
};

}  // namespace lightcore::kernels
