// rope: the params that the CPU reference and the CUDA kernel share, and the per-pair rotation
// both of them apply, so that the two backends agree bit for bit by construction.
#pragma once

#include <cmath>
#include <cstdint>

#include "lightcore/core/bf16.hpp"
#include "lightcore/core/macros.hpp"
#include "lightcore/core/rounding.hpp"

namespace lightcore::kernels {

// Rotated dims per head (DeepSeek-V3/R1's qk_rope_head_dim); each is 32 (even, odd) input pairs.
inline constexpr int rope_dim = 64;
inline constexpr int rope_pairs = rope_dim / 2;

// One in-place rotation of q's and k's rope parts. Plain data: passed by value to the kernel.
// Rows: tokens * (q_heads + 1), row h < q_heads of a token being q head h and row q_heads its k.
struct rope_params {
  bf16* q = nullptr;  // [tokens, q_heads, 64], last dim contiguous
  bf16* k = nullptr;  // [tokens, 64], last dim contiguous
  // [tokens], contiguous; 0 <= p < max_positions. int32: R1 stops at 163840 positions, and a
  // decode batch reads 4 bytes per token rather than 8.
  std::int32_t const* positions = nullptr;
  float const* cos_sin = nullptr;  // [max_positions, 64] contiguous: cos [32] then sin [32]
  std::int64_t tokens = 0;
  std::int64_t q_heads = 0;
  std::int64_t q_token_stride = 0;  // elements
  std::int64_t q_head_stride = 0;   // elements
  std::int64_t k_token_stride = 0;  // elements
  std::int64_t max_positions = 0;   // rows of cos_sin
};

// Pair i of a row: inputs x[2i] (even) and x[2i+1] (odd), with c = cos_sin[p][i] and
// s = cos_sin[p][32 + i]. apply_rotary_pos_emb_interleave de-interleaves the row (x' = [x_even...,
// x_odd...]) and computes x' cos + rotate_half(x') sin with cos = sin = cat(freqs, freqs), so
//   out[i]      = x[2i] c - x[2i+1] s    (written to dim i)
//   out[32 + i] = x[2i+1] c + x[2i] s    (written to dim 32 + i)
// and the result stays in that de-interleaved order. Here in fp32, each output one fma over one
// rounded product, then rounded to bf16 once: an explicit fma so that no compiler contracts it
// differently on the host and on the device.
struct rope_pair_result {
  float re;  // out[i]
  float im;  // out[32 + i]
};

LC_HOST_DEVICE inline rope_pair_result rope_rotate_pair(float x_even, float x_odd, float c,
                                                        float s) noexcept {
  float const odd_s = mul_rn(x_odd, s);
  float const even_s = mul_rn(x_even, s);
  return {fma_rn(x_even, c, -odd_s), fma_rn(x_odd, c, even_s)};
}

}  // namespace lightcore::kernels
