// rope: the CUDA kernel and its launcher. Only instantiations/rope_bf16_d64.cu includes this; the
// dispatch (rope_cuda.cu) sees the declaration in rope.hpp alone.
//
// One warp rotates a chunk of one token's rows (its q heads, then its k row): the token's position
// and its cos/sin are loaded once into registers and reused for every row of the chunk, and all of
// the chunk's row loads are issued before the first rotation, so that each lane keeps up to
// rope_max_steps 16-byte loads in flight. A token's rows are split into as few chunks of at most
// rope_max_steps * 4 rows as possible (16 heads + k: two chunks of 9 and 8 rows; 128 heads + k:
// nine of at most 15). Launched overlapped with the previous kernel on the stream (programmatic
// dependent launch), which hides part of the gap between two short kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
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
  static constexpr int warp = 32;
  static constexpr int rows_per_step = warp / lanes_per_row;  // rows one warp instruction covers
  static constexpr int threads = 256;
  static constexpr int warps_per_block = threads / warp;
};
static_assert(rope_traits::pairs_per_lane == 4, "a lane reads one float4 each of cos and sin");

// How a token's rows are split over warps; computed on the host (rope_chunking_for).
struct rope_chunking {
  std::uint32_t chunks_per_token = 0;
  std::uint32_t rows_per_chunk = 0;  // the last chunk of a token may hold fewer
};

// Chunks of at most max_steps * rows_per_step rows, as even as possible: fewer chunks mean fewer
// repeated position and cos/sin loads, even ones no mostly idle last warp.
inline rope_chunking rope_chunking_for(std::int64_t q_heads, int max_steps) {
  auto const rows = std::uint32_t(q_heads + 1);
  auto const max_rows = std::uint32_t(max_steps * rope_traits::rows_per_step);
  std::uint32_t const chunks = (rows + max_rows - 1) / max_rows;
  return {chunks, (rows + chunks - 1) / chunks};
}

template <int N>
struct bf16_regs {
  bf16 v[N];
};
using rope_lane_data = bf16_regs<rope_traits::elems_per_lane>;

// The quiet NaN written where a position lies outside the cache.
inline constexpr std::uint16_t rope_nan_bits = 0x7FC0;

// Row `row` of a token: q head `row`, or its k row when row == q_heads.
__device__ __forceinline__ bf16* rope_row_at(rope_params const& p, std::uint32_t token,
                                             std::uint32_t row) {
  if (row == std::uint32_t(p.q_heads)) return p.k + std::int64_t(token) * p.k_token_stride;
  return p.q + std::int64_t(token) * p.q_token_stride + std::int64_t(row) * p.q_head_stride;
}

template <bool Vectorized>
__device__ __forceinline__ rope_lane_data rope_load(bf16 const* row, int const lane) {
  bf16 const* in = row + lane * rope_traits::elems_per_lane;
  if constexpr (Vectorized) {
    return __builtin_bit_cast(rope_lane_data, *reinterpret_cast<uint4 const*>(in));
  } else {
    rope_lane_data x;
#pragma unroll
    for (int e = 0; e < rope_traits::elems_per_lane; ++e) x.v[e] = in[e];
    return x;
  }
}

template <bool Vectorized>
__device__ __forceinline__ void rope_store(bf16* row, int const lane,
                                           bf16_regs<rope_traits::pairs_per_lane> const& re,
                                           bf16_regs<rope_traits::pairs_per_lane> const& im) {
  bf16* const out_re = row + lane * rope_traits::pairs_per_lane;  // dims 4l .. 4l + 3
  bf16* const out_im = out_re + rope_pairs;                       // dims 32 + 4l .. 32 + 4l + 3
  if constexpr (Vectorized) {
    *reinterpret_cast<uint2*>(out_re) = __builtin_bit_cast(uint2, re);
    *reinterpret_cast<uint2*>(out_im) = __builtin_bit_cast(uint2, im);
  } else {
#pragma unroll
    for (int i = 0; i < rope_traits::pairs_per_lane; ++i) {
      out_re[i] = re.v[i];
      out_im[i] = im.v[i];
    }
  }
}

// One warp per (token, chunk); quarter q of the warp (lanes 8q .. 8q + 7) takes rows
// first + q, first + 4 + q, ... of the chunk. In place: lane l's outputs overwrite inputs that
// lanes l / 2 and 4 + l / 2 of its row read, so every row load of the warp happens before the
// __syncwarp and every store after it; warps past the end return as a whole.
// Vectorized: whether every row (q's and k's) is 16-byte aligned.
template <int MaxSteps, bool Vectorized>
__global__ void __launch_bounds__(rope_traits::threads)
    rope_kernel(rope_params const p, rope_chunking const c) {
  using traits = rope_traits;
  std::uint32_t const warp_id = blockIdx.x * traits::warps_per_block + threadIdx.x / traits::warp;
  std::uint32_t const units = std::uint32_t(p.tokens) * c.chunks_per_token;
  bool const live = warp_id < units;
  std::uint32_t const token = warp_id / c.chunks_per_token;
  std::uint32_t const chunk = warp_id - token * c.chunks_per_token;
  int const lane = int(threadIdx.x % traits::lanes_per_row);
  std::uint32_t const quarter = (threadIdx.x % traits::warp) / traits::lanes_per_row;
  std::uint32_t const first = chunk * c.rows_per_chunk + quarter;
  std::uint32_t const rows_per_token = std::uint32_t(p.q_heads) + 1;
  std::uint32_t const end = min(chunk * c.rows_per_chunk + c.rows_per_chunk, rows_per_token);
  // The rows' addresses do not depend on the kernels before this one: under programmatic
  // dependent launch this warp may be resident while the previous kernel drains, so it starts
  // moving its rows (one 128-byte line each) into L2 then. A prefetch changes no value: the loads
  // after pdl_enter still read what the previous kernel wrote (L2 is where the SMs' writes meet).
  if (live && lane == 0) {
#pragma unroll
    for (int s = 0; s < MaxSteps; ++s) {
      std::uint32_t const row = first + std::uint32_t(s * traits::rows_per_step);
      if (row < end) prefetch_l2(rope_row_at(p, token, row));
    }
  }
  pdl_enter();  // every load and store comes after it
  if (!live) return;

  std::int32_t const pos = __ldg(p.positions + token);
  rope_lane_data x[MaxSteps];
#pragma unroll
  for (int s = 0; s < MaxSteps; ++s) {
    std::uint32_t const row = first + std::uint32_t(s * traits::rows_per_step);
    if (row < end) x[s] = rope_load<Vectorized>(rope_row_at(p, token, row), lane);
  }
  // The token's cos/sin, the same for every row this lane touches; issued before the barrier so
  // that it overlaps the row loads.
  bool const in_cache = 0 <= pos && pos < p.max_positions;
  float4 c4{}, s4{};
  if (in_cache) {
    float const* cs = p.cos_sin + std::int64_t(pos) * rope_dim + lane * traits::pairs_per_lane;
    c4 = __ldg(reinterpret_cast<float4 const*>(cs));
    s4 = __ldg(reinterpret_cast<float4 const*>(cs + rope_pairs));
  }
  __syncwarp();
  float const cv[] = {c4.x, c4.y, c4.z, c4.w};
  float const sv[] = {s4.x, s4.y, s4.z, s4.w};

#pragma unroll
  for (int s = 0; s < MaxSteps; ++s) {
    std::uint32_t const row = first + std::uint32_t(s * traits::rows_per_step);
    if (row >= end) break;
    bf16_regs<traits::pairs_per_lane> re, im;
    if (in_cache) {
#pragma unroll
      for (int i = 0; i < traits::pairs_per_lane; ++i) {
        rope_pair_result const r = rope_rotate_pair(x[s].v[2 * i], x[s].v[2 * i + 1], cv[i], sv[i]);
        re.v[i] = bf16(r.re);
        im.v[i] = bf16(r.im);
      }
    } else {
#pragma unroll
      for (int i = 0; i < traits::pairs_per_lane; ++i)
        re.v[i] = im.v[i] = bf16::from_bits(rope_nan_bits);
    }
    rope_store<Vectorized>(rope_row_at(p, token, row), lane, re, im);
  }
}

inline bool rope_rows_aligned(bf16 const* base, std::int64_t stride0, std::int64_t stride1) {
  constexpr std::int64_t vec = rope_traits::elems_per_lane;  // 16 bytes of bf16
  return reinterpret_cast<std::uintptr_t>(base) % 16 == 0 && stride0 % vec == 0 &&
         stride1 % vec == 0;
}

// Launches `kernel` with programmatic stream serialization when `overlapped`: its blocks may be
// scheduled while the previous kernel on the stream finishes, which hides the launch gap
// between two short kernels (see kernels/common/pdl.cuh).
template <class... Args>
void rope_launch(void (*kernel)(Args...), unsigned blocks, CUstream_st* stream, bool overlapped,
                 Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks, 1, 1);
  cfg.blockDim = dim3(rope_traits::threads, 1, 1);
  cfg.stream = stream;
  cudaLaunchAttribute attr = pdl_attribute();
  cfg.attrs = &attr;
  cfg.numAttrs = overlapped && pdl_enabled() ? 1 : 0;
  LC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
  LC_CUDA_CHECK_LAUNCH();
}

// MaxSteps: row loads in flight per lane, i.e. at most 4 * MaxSteps rows per warp.
template <int MaxSteps>
void launch_rope_steps(rope_params const& p, CUstream_st* stream, bool overlapped) {
  using traits = rope_traits;
  if (p.tokens == 0) return;
  rope_chunking const c = rope_chunking_for(p.q_heads, MaxSteps);
  std::int64_t const units = p.tokens * std::int64_t(c.chunks_per_token);
  LC_CHECK(units < (std::int64_t(1) << 32),
           "apply_rope of " << p.tokens << " tokens needs " << units << " warps; at most 2^32 - 1");
  auto const blocks = unsigned((units + traits::warps_per_block - 1) / traits::warps_per_block);
  bool const vectorized = rope_rows_aligned(p.q, p.q_token_stride, p.q_head_stride) &&
                          rope_rows_aligned(p.k, p.k_token_stride, 0);
  rope_launch(vectorized ? rope_kernel<MaxSteps, true> : rope_kernel<MaxSteps, false>, blocks,
              stream, overlapped, p, c);
}

// 4 steps (48 registers, 5 blocks of 256 threads per SM) measured best on the H100, overlapped:
// 16 heads at T 4096 0.70 of the HBM copy, against 0.69 for 5 steps and 0.68 for 6 (64 registers,
// 4 blocks per SM); the more rows per warp, the fewer warps to hide latency with.
inline constexpr int rope_max_steps = 4;

inline void launch_rope_impl(rope_params const& p, CUstream_st* stream) {
  launch_rope_steps<rope_max_steps>(p, stream, true);
}

}  // namespace lightcore::kernels::detail
