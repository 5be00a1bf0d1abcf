// gemm, bf16 at M <= 4: the weight-streaming CUDA kernels and their launcher (see
// gemv_bf16_params.hpp for what they compute and when). Only the files in instantiations/ include
// this; the dispatch (gemv_bf16_cuda.cu) sees the declaration alone.
//
// Every kernel spends its time in one place: a batch of 16-byte ld.global.nc.L1::no_allocate
// weight loads issued back to back (the weight is read once; keeping it out of L1 leaves L1 to
// the tokens, which every warp of an SM reads again), then fp32 FMAs against the tokens, which
// come from global memory through L1 (a few KiB, shared by every CTA). Tokens past M (up to the
// bucket) read token M - 1 again and their sums are dropped: no branch in the inner loop.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/gemm/gemv_bf16_params.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

template <int MPad>
struct gemv_bf16_traits {
  static_assert(MPad == 1 || MPad == 2 || MPad == 4, "gemv_bf16: M buckets 1, 2, 4");
  static constexpr int rows = gemv_bf16_rows_per_cta;
  // n_by_k: chunk iterations whose loads are issued together (rows x unroll 16-byte loads in
  // flight per thread); the accumulators of 4 tokens leave room for fewer.
  static constexpr int unroll = MPad <= 2 ? 4 : 2;
  static constexpr int nk_values = rows * MPad;  // sums per thread, reduced over the warp
  static_assert(nk_values <= 32, "gemv_bf16: one reduced sum per lane at most");
  static constexpr int kn_values = 8 * MPad;  // k_by_n: 8 columns x tokens per thread
};

// 16 bytes of weight, read once: bypass L1.
__device__ __forceinline__ uint4 gemv_bf16_load_stream(void const* ptr) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// 16 bytes of the tokens: read-only for the kernel's lifetime, reused through L1.
__device__ __forceinline__ uint4 gemv_bf16_load_tokens(void const* ptr) {
  return __ldg(static_cast<uint4 const*>(ptr));
}

// The two bf16 halves of a 32-bit word as floats (a bf16 is the top half of an f32).
__device__ __forceinline__ float gemv_bf16_lo(std::uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float gemv_bf16_hi(std::uint32_t w) {
  return __uint_as_float(w & 0xFFFF0000u);
}

__device__ __forceinline__ void gemv_bf16_unpack(uint4 const v, float (&f)[8]) {
  f[0] = gemv_bf16_lo(v.x), f[1] = gemv_bf16_hi(v.x);
  f[2] = gemv_bf16_lo(v.y), f[3] = gemv_bf16_hi(v.y);
  f[4] = gemv_bf16_lo(v.z), f[5] = gemv_bf16_hi(v.z);
  f[6] = gemv_bf16_lo(v.w), f[7] = gemv_bf16_hi(v.w);
}

// Element e (0..7) of 8 packed bf16 as a float.
__device__ __forceinline__ float gemv_bf16_element(uint4 const v, int e) {
  std::uint32_t const w = e < 2 ? v.x : e < 4 ? v.y : e < 6 ? v.z : v.w;
  return e % 2 == 0 ? gemv_bf16_lo(w) : gemv_bf16_hi(w);
}

// Sums v[0..Count) over the lanes that differ in lane bits Offset, Offset / 2, .. StopOffset, in
// a fixed tree. While more than one value is left, each step halves them: a lane keeps the half
// its bit selects and adds the partner's copy of it (Count / 2 shuffles instead of Count). After
// the halving steps a lane holds the values whose index, read from the top bit down, is its lane
// bits Offset, Offset / 2, ..; further steps sum the single value.
template <int Count, int Offset, int StopOffset, int V>
__device__ __forceinline__ void gemv_bf16_lane_reduce(float (&v)[V], int lane) {
  if constexpr (Offset >= StopOffset) {
    if constexpr (Count > 1) {
      constexpr int half = Count / 2;
      bool const upper = (lane & Offset) != 0;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        float const keep = upper ? v[i + half] : v[i];
        float const send = upper ? v[i] : v[i + half];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, Offset);
      }
      gemv_bf16_lane_reduce<half, Offset / 2, StopOffset>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xFFFFFFFFu, v[0], Offset);
      gemv_bf16_lane_reduce<1, Offset / 2, StopOffset>(v, lane);
    }
  }
}

// acc[r][m] += the dot products of weight row w_row[r] and token row x_row[m] over the 8-wide K
// chunks first, first + step, .. < chunks: Unroll trips' Rows x Unroll loads are issued back to
// back, then multiplied. Shared by the n_by_k kernel and moe_gemv.cuh.
// One trip's weights: chunks c0 + u * step (u < Unroll) of each row, zeros past the end.
template <int Unroll, int Rows>
__device__ __forceinline__ void gemv_bf16_load_trip(std::uint16_t const* const (&w_row)[Rows],
                                                    std::int64_t chunks, std::int64_t c0,
                                                    std::int64_t step, uint4 (&w)[Unroll][Rows]) {
#pragma unroll
  for (int u = 0; u < Unroll; ++u) {
    std::int64_t const c = c0 + u * step;
#pragma unroll
    for (int r = 0; r < Rows; ++r)
      w[u][r] = c < chunks ? gemv_bf16_load_stream(w_row[r] + c * 8) : make_uint4(0, 0, 0, 0);
  }
}

// acc[r][m] += one trip's weights times the tokens' matching chunks.
template <int Unroll, int Rows, int MPad>
__device__ __forceinline__ void gemv_bf16_multiply_trip(uint4 const (&w)[Unroll][Rows],
                                                        std::uint16_t const* const (&x_row)[MPad],
                                                        std::int64_t chunks, std::int64_t c0,
                                                        std::int64_t step,
                                                        float (&acc)[Rows][MPad]) {
#pragma unroll
  for (int u = 0; u < Unroll; ++u) {
    std::int64_t const c = c0 + u * step;
    if (c >= chunks) continue;
    float wf[Rows][8];
#pragma unroll
    for (int r = 0; r < Rows; ++r) gemv_bf16_unpack(w[u][r], wf[r]);
#pragma unroll
    for (int m = 0; m < MPad; ++m) {
      float xf[8];
      gemv_bf16_unpack(gemv_bf16_load_tokens(x_row[m] + c * 8), xf);
#pragma unroll
      for (int r = 0; r < Rows; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
    }
  }
}

template <int Unroll, int Rows, int MPad>
__device__ __forceinline__ void gemv_bf16_stream_rows(std::uint16_t const* const (&w_row)[Rows],
                                                      std::uint16_t const* const (&x_row)[MPad],
                                                      std::int64_t chunks, std::int64_t first,
                                                      std::int64_t step, float (&acc)[Rows][MPad]) {
  for (std::int64_t c0 = first; c0 < chunks; c0 += Unroll * step) {
    uint4 w[Unroll][Rows];
    gemv_bf16_load_trip(w_row, chunks, c0, step, w);
    gemv_bf16_multiply_trip(w, x_row, chunks, c0, step, acc);
  }
}

// The Rows x MPad sums of a warp, each summed over its lanes (gemv_bf16_lane_reduce): returns the
// sum that lands on this lane, value r * MPad + m on lanes [i * 32 / (Rows * MPad), ..).
template <int Rows, int MPad>
__device__ __forceinline__ float gemv_bf16_warp_sums(float const (&acc)[Rows][MPad], int lane) {
  float v[Rows * MPad];
#pragma unroll
  for (int r = 0; r < Rows; ++r)
#pragma unroll
    for (int m = 0; m < MPad; ++m) v[r * MPad + m] = acc[r][m];
  gemv_bf16_lane_reduce<Rows * MPad, 16, 1>(v, lane);
  return v[0];
}

// C(m, n) = alpha * sum + beta * C(m, n); beta 0 does not read C (it may hold NaN).
__device__ __forceinline__ void gemv_bf16_store(gemv_bf16_params const& p, std::int64_t offset,
                                                float sum) {
  if (p.c_f32) {
    float* const c = static_cast<float*>(p.c) + offset;
    *c = p.beta == 0.0f ? p.alpha * sum : fmaf(p.alpha, sum, p.beta * *c);
  } else {
    __nv_bfloat16* const c = static_cast<__nv_bfloat16*>(p.c) + offset;
    float const out =
        p.beta == 0.0f ? p.alpha * sum : fmaf(p.alpha, sum, p.beta * __bfloat162float(*c));
    *c = __float2bfloat16_rn(out);
  }
}

// n_by_k: CTA (blockIdx.x, batch blockIdx.y) owns rows [4 x, 4 x + 4) of B[N, K]; thread t of T
// takes the 8-wide K chunks t, t + T, .. of every row.
template <int MPad>
__global__ void __launch_bounds__(32 * gemv_bf16_max_warps)
    gemv_bf16_nk_kernel(gemv_bf16_params const p) {
  using traits = gemv_bf16_traits<MPad>;
  constexpr int rows = traits::rows, unroll = traits::unroll, values = traits::nk_values;
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const threads = int(blockDim.x), warps = threads / 32;
  std::int64_t const n0 = std::int64_t(blockIdx.x) * rows;
  std::int64_t const batch = blockIdx.y;
  std::int64_t const chunks = p.k / 8;

  std::uint16_t const* w_row[rows];
#pragma unroll
  for (int r = 0; r < rows; ++r)  // rows past N read row N - 1; their sums are not stored
    w_row[r] = p.b + batch * p.stride_b + std::min(n0 + r, p.n - 1) * p.ldb;
  // Under programmatic dependent launch this CTA may be resident while the kernel before it
  // finishes. A weight (p.b_constant) does not depend on that kernel, so the CTA loads its first
  // trip into registers then (at K <= unroll x 8 x threads, e.g. 2048 with 64 threads: the whole
  // slice); every other line of its rows, or all of them for any other B, is prefetched into L2,
  // which changes no value. Only the tokens (and B's first trip otherwise) wait for pdl_enter.
  uint4 first_trip[unroll][rows];
  constexpr std::int64_t line = 64;  // bf16 values per 128-byte line
  std::int64_t const lines = (p.k + line - 1) / line;
  std::int64_t prefetched = 0;  // lines of each row already on their way as the first trip
  if (p.b_constant) {           // uniform over the grid
    gemv_bf16_load_trip(w_row, chunks, tid, threads, first_trip);
    prefetched = std::int64_t(unroll) * threads * 8 / line;
  }
#pragma unroll
  for (int r = 0; r < rows; ++r)
    for (std::int64_t i = prefetched + tid; i < lines; i += threads)
      prefetch_l2(w_row[r] + i * line);
  pdl_enter();
  if (!p.b_constant) gemv_bf16_load_trip(w_row, chunks, tid, threads, first_trip);
  std::uint16_t const* x_row[MPad];
#pragma unroll
  for (int m = 0; m < MPad; ++m)
    x_row[m] = p.a + batch * p.stride_a + std::min<std::int64_t>(m, p.m - 1) * p.lda;

  float acc[rows][MPad] = {};
  gemv_bf16_multiply_trip(first_trip, x_row, chunks, tid, threads, acc);
  gemv_bf16_stream_rows<unroll>(w_row, x_row, chunks, tid + std::int64_t(unroll) * threads, threads,
                                acc);

  // Lanes, then warps, in a fixed order: value r * MPad + m ends in lanes [i * 32 / values, ..).
  float const sum_of_lanes = gemv_bf16_warp_sums(acc, lane);
  constexpr int lanes_per_value = 32 / values;
  __shared__ float red[gemv_bf16_max_warps][values];
  if (lane % lanes_per_value == 0) red[warp][lane / lanes_per_value] = sum_of_lanes;
  __syncthreads();
  if (tid < values) {
    int const r = tid / MPad, m = tid % MPad;
    std::int64_t const n = n0 + r;
    if (n < p.n && m < p.m) {
      float sum = red[0][tid];
      for (int w = 1; w < warps; ++w) sum += red[w][tid];
      gemv_bf16_store(p, batch * p.stride_c + m * p.ldc + n, sum);
    }
  }
}

// k_by_n: CTA (split blockIdx.x, column tile blockIdx.y, batch blockIdx.z) owns columns
// [64 y, 64 y + 64) of B[K, N] and the split's range of 8-row blocks; thread (slot s, group g)
// takes columns 64 y + 8 g .. + 8 and the blocks s, s + 16, .. of the range. The splits of one
// tile form a cluster and sum their partial tiles in rank order.
template <int MPad>
__global__ void __launch_bounds__(gemv_bf16_kn_threads)
    gemv_bf16_kn_kernel(gemv_bf16_params const p) {
  pdl_enter();
  using traits = gemv_bf16_traits<MPad>;
  constexpr int values = traits::kn_values, groups = gemv_bf16_kn_cols / 8;
  constexpr int warps = gemv_bf16_kn_threads / 32, kept = values / 4;
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const g = lane % groups, slot = warp * (32 / groups) + lane / groups;
  int const splits = int(gridDim.x), split = int(blockIdx.x);
  std::int64_t const batch = blockIdx.z;
  std::int64_t const col0 = std::int64_t(blockIdx.y) * gemv_bf16_kn_cols;
  std::int64_t const col = col0 + 8 * g;
  std::int64_t const blocks = p.k / 8;
  std::int64_t const kb0 = split * blocks / splits, kb1 = (split + 1) * blocks / splits;

  std::uint16_t const* const w_base = p.b + batch * p.stride_b + col;
  std::uint16_t const* x_row[MPad];
#pragma unroll
  for (int m = 0; m < MPad; ++m)
    x_row[m] = p.a + batch * p.stride_a + std::min<std::int64_t>(m, p.m - 1) * p.lda;

  float acc[MPad][8] = {};
  if (col < p.n) {  // N is a multiple of 8: a group is all in or all out
    for (std::int64_t kb = kb0 + slot; kb < kb1; kb += gemv_bf16_kn_slots) {
      uint4 w[8];
#pragma unroll
      for (int r = 0; r < 8; ++r) w[r] = gemv_bf16_load_stream(w_base + (kb * 8 + r) * p.ldb);
      uint4 x[MPad];
#pragma unroll
      for (int m = 0; m < MPad; ++m) x[m] = gemv_bf16_load_tokens(x_row[m] + kb * 8);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        float wf[8];
        gemv_bf16_unpack(w[r], wf);
#pragma unroll
        for (int m = 0; m < MPad; ++m) {
          float const xs = gemv_bf16_element(x[m], r);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[m][e] = fmaf(xs, wf[e], acc[m][e]);
        }
      }
    }
  }

  // The 4 slots of a warp (lane bits 3 and 4), then the 4 warps, in a fixed order.
  float v[values];
#pragma unroll
  for (int m = 0; m < MPad; ++m)
#pragma unroll
    for (int e = 0; e < 8; ++e) v[m * 8 + e] = acc[m][e];
  gemv_bf16_lane_reduce<values, 16, 8>(v, lane);
  int const base = ((lane >> 4) & 1) * (values / 2) + ((lane >> 3) & 1) * (values / 4);
  __shared__ float red[warps][values][groups];
  __shared__ float part[MPad * gemv_bf16_kn_cols];  // this split's [MPad][64] partial tile
#pragma unroll
  for (int i = 0; i < kept; ++i) red[warp][base + i][g] = v[i];
  __syncthreads();
  for (int o = tid; o < MPad * gemv_bf16_kn_cols; o += gemv_bf16_kn_threads) {
    int const m = o / gemv_bf16_kn_cols, cl = o % gemv_bf16_kn_cols;
    int const idx = m * 8 + cl % 8, grp = cl / 8;
    float sum = red[0][idx][grp];
#pragma unroll
    for (int w = 1; w < warps; ++w) sum += red[w][idx][grp];
    part[o] = sum;
  }

  std::int64_t const c_base = batch * p.stride_c + col0;
  int const outputs = int(p.m) * gemv_bf16_kn_cols;
  if (splits == 1) {  // uniform over the grid
    __syncthreads();
    for (int o = tid; o < outputs; o += gemv_bf16_kn_threads) {
      int const m = o / gemv_bf16_kn_cols, cl = o % gemv_bf16_kn_cols;
      if (col0 + cl < p.n) gemv_bf16_store(p, c_base + m * p.ldc + cl, part[o]);
    }
    return;
  }
  namespace cg = cooperative_groups;
  cg::cluster_group const cluster = cg::this_cluster();
  cluster.sync();  // every split's partial tile written and visible to the cluster
  for (int o = split * gemv_bf16_kn_threads + tid; o < outputs;
       o += splits * gemv_bf16_kn_threads) {
    int const m = o / gemv_bf16_kn_cols, cl = o % gemv_bf16_kn_cols;
    if (col0 + cl >= p.n) continue;
    float sum = 0.0f;
    for (int q = 0; q < splits; ++q) sum += cluster.map_shared_rank(part, q)[o];
    gemv_bf16_store(p, c_base + m * p.ldc + cl, sum);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

inline void gemv_bf16_check_grid(std::int64_t x, std::int64_t y, std::int64_t z,
                                 gemv_bf16_params const& p) {
  LC_CHECK(x < (std::int64_t(1) << 31) && y <= 65535 && z <= 65535,
           "gemv_bf16: N = " << p.n << " or batch " << p.batch << " exceeds the grid");
}

template <int MPad>
void launch_gemv_bf16_nk_fma(gemv_bf16_params const& p, gemv_bf16_geometry const& g,
                             CUstream_st* stream) {
  LC_CHECK(g.warps <= gemv_bf16_max_warps,
           "gemv_bf16: " << g.warps << " warps; allowed 1.." << gemv_bf16_max_warps);
  std::int64_t const ctas = (p.n + gemv_bf16_rows_per_cta - 1) / gemv_bf16_rows_per_cta;
  gemv_bf16_check_grid(ctas, p.batch, 1, p);
  launch_pdl(gemv_bf16_nk_kernel<MPad>, dim3(unsigned(ctas), unsigned(p.batch), 1),
             dim3(unsigned(32 * g.warps), 1, 1), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

template <int MPad>
void launch_gemv_bf16_kn(gemv_bf16_params const& p, gemv_bf16_geometry const& g,
                         CUstream_st* stream) {
  std::int64_t const tiles = (p.n + gemv_bf16_kn_cols - 1) / gemv_bf16_kn_cols;
  gemv_bf16_check_grid(g.splits, tiles, p.batch, p);
  dim3 const grid(unsigned(g.splits), unsigned(tiles), unsigned(p.batch));
  if (g.splits == 1) {  // no cluster: its launch costs scheduling time for nothing
    launch_pdl(gemv_bf16_kn_kernel<MPad>, grid, dim3(gemv_bf16_kn_threads, 1, 1), 0, stream, p);
    LC_CUDA_CHECK_LAUNCH();
    return;
  }
  launch_pdl_cluster(gemv_bf16_kn_kernel<MPad>, grid, dim3(gemv_bf16_kn_threads, 1, 1), 0, stream,
                     dim3(unsigned(g.splits), 1, 1), p);
  LC_CUDA_CHECK_LAUNCH();
}

// The bucket's kernels: n_by_k (1, 2, 4 tokens) and k_by_n (1, 2). Only these are compiled.
template <int MPad>
void launch_gemv_bf16(gemv_bf16_params const& p, gemv_bf16_geometry const& g, CUstream_st* stream) {
  LC_CHECK(p.m >= 1 && p.m <= MPad,
           "gemv_bf16: the kernel for up to " << MPad << " tokens got M = " << p.m);
  LC_CHECK(g.warps >= 1 && g.splits >= 1 && g.splits <= gemv_bf16_max_splits,
           "gemv_bf16: geometry out of range: " << g.warps << " warps (>= 1), " << g.splits
                                                << " splits (1.." << gemv_bf16_max_splits << ")");
  if (!p.k_by_n) {
    launch_gemv_bf16_nk_fma<MPad>(p, g, stream);
    return;
  }
  if constexpr (MPad <= gemm_gemv_bf16_kn_max_m)
    launch_gemv_bf16_kn<MPad>(p, g, stream);
  else
    LC_THROW("gemv_bf16: k_by_n takes M <= " << gemm_gemv_bf16_kn_max_m << "; got M = " << p.m);
}

}  // namespace lightcore::kernels::detail
