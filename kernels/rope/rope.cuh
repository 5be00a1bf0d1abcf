// rope: the CUDA kernel and its launcher. Only instantiations/rope_bf16_d64.cu includes this; the
// dispatch (rope_cuda.cu) sees the declaration in rope.hpp alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/rope/rope.hpp"
#include "kernels/rope/rope_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct rope_traits {
  // Eight lanes rotate one 64-dim row: lane l loads dims [8l, 8l + 8) (pairs 4l .. 4l + 3) with
  // one 16-byte load, so the eight lanes read the row's 128 contiguous bytes with one instruction,
  // and write its outputs 4l .. 4l + 3 and 32 + 4l .. 32 + 4l + 3 with two 8-byte stores.
  static constexpr int lanes_per_row = 8;
  static constexpr int elems_per_lane = rope_dim / lanes_per_row;
  static constexpr int pairs_per_lane = elems_per_lane / 2;
  static constexpr int threads = 256;
  // Hopper keeps 2048 threads resident per SM: 16 bytes of row loads in flight per thread is
  // 32 KiB per SM, enough to cover HBM latency for a streaming op.
  static constexpr int max_threads_per_sm = 2048;
  static constexpr int blocks_per_sm = max_threads_per_sm / threads;
};
static_assert(rope_traits::pairs_per_lane == 4, "a lane reads one float4 each of cos and sin");

template <int N>
struct bf16_regs {
  bf16 v[N];
};

// The quiet NaN written where a position lies outside the cache.
inline constexpr std::uint16_t rope_nan_bits = 0x7FC0;

// Rotates the eight lanes' row in place. Every lane of the warp reaches the __syncwarp (rows past
// the end load and store nothing): in place, lane l's outputs overwrite inputs that lane l / 2
// and lane 4 + l / 2 read, so all reads of the warp happen before any write.
__device__ inline void rope_row(bf16* row, bool const active, bool const vectorized,
                                std::int32_t const pos, rope_params const& p, int const lane) {
  using traits = rope_traits;
  bf16_regs<traits::elems_per_lane> x;
  if (active) {
    bf16 const* in = row + lane * traits::elems_per_lane;
    if (vectorized) {
      x = __builtin_bit_cast(bf16_regs<traits::elems_per_lane>,
                             *reinterpret_cast<uint4 const*>(in));
    } else {
#pragma unroll
      for (int e = 0; e < traits::elems_per_lane; ++e) x.v[e] = in[e];
    }
  }
  __syncwarp();
  if (!active) return;

  bf16_regs<traits::pairs_per_lane> re, im;
  if (0 <= pos && pos < p.max_positions) {
    float const* cs = p.cos_sin + std::int64_t(pos) * rope_dim + lane * traits::pairs_per_lane;
    float4 const c = __ldg(reinterpret_cast<float4 const*>(cs));
    float4 const s = __ldg(reinterpret_cast<float4 const*>(cs + rope_pairs));
    float const cv[] = {c.x, c.y, c.z, c.w};
    float const sv[] = {s.x, s.y, s.z, s.w};
#pragma unroll
    for (int i = 0; i < traits::pairs_per_lane; ++i) {
      rope_pair_result const r = rope_rotate_pair(x.v[2 * i], x.v[2 * i + 1], cv[i], sv[i]);
      re.v[i] = bf16(r.re);
      im.v[i] = bf16(r.im);
    }
  } else {
#pragma unroll
    for (int i = 0; i < traits::pairs_per_lane; ++i)
      re.v[i] = im.v[i] = bf16::from_bits(rope_nan_bits);
  }

  bf16* const out_re = row + lane * traits::pairs_per_lane;  // dims 4l .. 4l + 3
  bf16* const out_im = out_re + rope_pairs;                  // dims 32 + 4l .. 32 + 4l + 3
  if (vectorized) {
    *reinterpret_cast<uint2*>(out_re) = __builtin_bit_cast(uint2, re);
    *reinterpret_cast<uint2*>(out_im) = __builtin_bit_cast(uint2, im);
  } else {
#pragma unroll
    for (int i = 0; i < traits::pairs_per_lane; ++i) {
      out_re[i] = re.v[i];
      out_im[i] = im.v[i];
    }
  }
}

// One row per eight lanes over rows = tokens * (q_heads + 1); row h < q_heads of a token is its
// q head h, row q_heads its k. q_vec / k_vec: whether that tensor's rows are 16-byte aligned.
__global__ void __launch_bounds__(rope_traits::threads, rope_traits::blocks_per_sm)
    rope_kernel(rope_params const p, bool const q_vec, bool const k_vec) {
  using traits = rope_traits;
  auto const rows_per_token = std::uint32_t(p.q_heads) + 1;
  auto const rows = std::uint32_t(p.tokens) * rows_per_token;
  std::uint32_t const thread = blockIdx.x * blockDim.x + threadIdx.x;
  std::uint32_t const row = thread / traits::lanes_per_row;
  int const lane = int(thread % traits::lanes_per_row);
  bool const active = row < rows;
  std::uint32_t const token = active ? row / rows_per_token : 0;
  std::uint32_t const head = row - token * rows_per_token;
  bool const is_k = head == std::uint32_t(p.q_heads);
  bf16* const base =
      is_k ? p.k + std::int64_t(token) * p.k_token_stride
           : p.q + std::int64_t(token) * p.q_token_stride + std::int64_t(head) * p.q_head_stride;
  std::int32_t const pos = active ? __ldg(p.positions + token) : 0;
  rope_row(base, active, is_k ? k_vec : q_vec, pos, p, lane);
}

inline bool rope_rows_aligned(bf16 const* base, std::int64_t stride0, std::int64_t stride1) {
  constexpr std::int64_t vec = rope_traits::elems_per_lane;  // 16 bytes of bf16
  return reinterpret_cast<std::uintptr_t>(base) % 16 == 0 && stride0 % vec == 0 &&
         stride1 % vec == 0;
}

inline void launch_rope_impl(rope_params const& p, CUstream_st* stream) {
  using traits = rope_traits;
  if (p.tokens == 0) return;
  std::int64_t const threads_total = p.tokens * (p.q_heads + 1) * traits::lanes_per_row;
  auto const blocks = unsigned((threads_total + traits::threads - 1) / traits::threads);
  bool const q_vec = rope_rows_aligned(p.q, p.q_token_stride, p.q_head_stride);
  bool const k_vec = rope_rows_aligned(p.k, p.k_token_stride, 0);
  rope_kernel<<<blocks, traits::threads, 0, stream>>>(p, q_vec, k_vec);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
