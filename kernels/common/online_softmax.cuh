// The online-softmax steps that the attention kernels (prefill, GQA decode, MLA decode) share, on
// the fragments of m16n8 / wgmma m64 accumulators: a thread holds two rows of a tile (r = 0:
// elements 0 and 1 of every n8 tile; r = 1: elements 2 and 3), and a row's values are spread over
// the four lanes of one quad. Scores are in log2 units (already times log2(e) / sqrt(d)).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace lightcore::kernels::detail {

// The maximum of v over the quad of lanes that holds one accumulator row.
__device__ __forceinline__ float softmax_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xFFFF'FFFFu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xFFFF'FFFFu, v, 2));
}

// Moves a row's running maximum past a block whose row maximum is `block_max` and returns the
// factor alpha = exp2(old - new) that rescales what was accumulated before. `base` is what the
// block's scores subtract before exp2: the new maximum, or 0 while the row has seen no score
// (maximum -inf), so that exp2 gives 0 there instead of NaN (alpha is 0 then as well).
template <class Exp2>
__device__ __forceinline__ float softmax_advance(float& m_run, float block_max, float& base,
                                                 Exp2 exp2) {
  float const m_new = fmaxf(m_run, block_max);
  base = m_new == -INFINITY ? 0.0f : m_new;
  float const alpha = exp2(m_run - base);
  m_run = m_new;
  return alpha;
}

// o *= alpha, row by row: elements 0, 1 of every n8 tile by alpha[0], 2, 3 by alpha[1].
template <int Tiles>
__device__ __forceinline__ void softmax_rescale_rows(float (&o)[Tiles][4],
                                                     float const (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < Tiles; ++n) {
    o[n][0] *= alpha[0];
    o[n][1] *= alpha[0];
    o[n][2] *= alpha[1];
    o[n][3] *= alpha[1];
  }
}

}  // namespace lightcore::kernels::detail
