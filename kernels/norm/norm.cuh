// norm: the CUDA kernel and its launcher. Only the files in instantiations/ include this, each
// instantiating launch_rmsnorm for one (vectors per thread, fused) pair; the dispatch
// (norm_cuda.cu) sees the declaration in norm.hpp alone, so no variant is compiled twice.
//
// A row is spread over the threads of one block row (threadIdx.y picks the row): thread t holds
// the 16-byte vectors t, t + T, ..., t + (V - 1) * T of it in registers (T threads per row, V
// vectors per thread), so that every load and store instruction of a warp covers one contiguous
// span. The sum of squares goes through warp shuffles and, for rows wider than a warp, one shared
// float per warp; the second pass reads the row from registers, never from memory again.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/norm/norm.hpp"
#include "kernels/norm/norm_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct rmsnorm_traits {
  static constexpr int vector_bytes = 16;  // one ld/st.global.v4.b32, the widest sm_90 has
  static constexpr int elems = vector_bytes / int(sizeof(bf16));
  static_assert(elems == norm_vector_elems);
  // Threads per block at most; 4 vectors per thread of 512 threads is norm_max_hidden, and the
  // bound leaves 128 registers per thread for a fused row's 2 x 4 vectors plus the weight's 4.
  static constexpr int max_threads = 512;
  static constexpr int warp = 32;
  static constexpr int max_warps = max_threads / warp;
};
static_assert(4 * rmsnorm_traits::elems * rmsnorm_traits::max_threads == norm_max_hidden);

// A register array that __builtin_bit_cast can move between element and vector views.
template <class T, int N>
struct norm_regs {
  T v[N];
};
using bf16x8 = norm_regs<bf16, rmsnorm_traits::elems>;

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int offset = rmsnorm_traits::warp / 2; offset > 0; offset /= 2)
    s += __shfl_xor_sync(0xFFFF'FFFFu, s, offset);
  return s;
}

template <int VectorsPerThread, bool Fused>
__global__ void __launch_bounds__(rmsnorm_traits::max_threads)
    rmsnorm_kernel(rmsnorm_params<bf16> const p) {
  constexpr int elems = rmsnorm_traits::elems;
  __shared__ float warp_sums[rmsnorm_traits::max_warps];
  int const threads = int(blockDim.x);  // per row, a multiple of 32
  int const t = int(threadIdx.x);
  std::int64_t const row = std::int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  bool const active = row < p.rows;  // inactive threads still take part in the barrier
  int const vectors = int(p.hidden / elems);

  // The weight, a model parameter that no kernel writes, is loaded before the wait on the kernel
  // before (pdl.cuh): at a decode batch its round trip would otherwise follow the row's.
  uint4 weight[VectorsPerThread] = {};  // the matching weight vectors
  if (active) {
    auto const* w = reinterpret_cast<uint4 const*>(p.weight);  // [vectors]
#pragma unroll
    for (int k = 0; k < VectorsPerThread; ++k) {
      int const v = t + k * threads;
      if (v < vectors) weight[k] = __ldg(w + v);
    }
  }
  pdl_enter();  // the row and the residual come from the kernels before this one

  uint4 data[VectorsPerThread] = {};  // the row (after the residual add), 8 bf16 per vector
  float sum_sq = 0.0f;
  if (active) {
    auto const* x = reinterpret_cast<uint4 const*>(p.x + row * p.x_stride);  // [vectors]
#pragma unroll
    for (int k = 0; k < VectorsPerThread; ++k) {
      int const v = t + k * threads;
      if (v < vectors) data[k] = x[v];
    }
    if constexpr (Fused) {
      auto* r = reinterpret_cast<uint4*>(p.residual + row * p.residual_stride);  // [vectors]
      uint4 residual[VectorsPerThread];
#pragma unroll
      for (int k = 0; k < VectorsPerThread; ++k) {
        int const v = t + k * threads;
        if (v < vectors) residual[k] = r[v];
      }
#pragma unroll
      for (int k = 0; k < VectorsPerThread; ++k) {
        int const v = t + k * threads;
        if (v >= vectors) break;
        auto const a = __builtin_bit_cast(bf16x8, residual[k]);
        auto const b = __builtin_bit_cast(bf16x8, data[k]);
        bf16x8 sum;
#pragma unroll
        for (int e = 0; e < elems; ++e) sum.v[e] = residual_add_value(a.v[e], b.v[e]);
        data[k] = __builtin_bit_cast(uint4, sum);
        r[v] = data[k];
      }
    }
#pragma unroll
    for (int k = 0; k < VectorsPerThread; ++k) {
      auto const a = __builtin_bit_cast(bf16x8, data[k]);  // zeros past the row's end
#pragma unroll
      for (int e = 0; e < elems; ++e) {
        float const f = float(a.v[e]);
        sum_sq = __fmaf_rn(f, f, sum_sq);
      }
    }
  }

  sum_sq = warp_sum(sum_sq);
  int const warps_per_row = threads / rmsnorm_traits::warp;
  if (warps_per_row > 1) {  // uniform over the block: every row has the same width
    int const first_warp = int(threadIdx.y) * warps_per_row;
    int const lane = t % rmsnorm_traits::warp;
    if (lane == 0) warp_sums[first_warp + t / rmsnorm_traits::warp] = sum_sq;
    __syncthreads();
    sum_sq = 0.0f;
    for (int i = 0; i < warps_per_row; ++i) sum_sq += warp_sums[first_warp + i];
  }
  if (!active) return;

  float const inv_rms = rms_inverse(sum_sq, p.hidden, p.eps);
  auto* out = reinterpret_cast<uint4*>(p.out + row * p.out_stride);  // [vectors]
#pragma unroll
  for (int k = 0; k < VectorsPerThread; ++k) {
    int const v = t + k * threads;
    if (v >= vectors) break;
    auto const a = __builtin_bit_cast(bf16x8, data[k]);
    auto const g = __builtin_bit_cast(bf16x8, weight[k]);
    bf16x8 y;
#pragma unroll
    for (int e = 0; e < elems; ++e) y.v[e] = rmsnorm_value(float(a.v[e]), inv_rms, g.v[e]);
    out[v] = __builtin_bit_cast(uint4, y);
  }
}

template <int VectorsPerThread, bool Fused>
void launch_rmsnorm(rmsnorm_params<bf16> const& p, rmsnorm_launch const& geometry,
                    CUstream_st* stream) {
  if (p.rows == 0) return;
  std::int64_t const blocks = (p.rows + geometry.rows_per_block - 1) / geometry.rows_per_block;
  LC_CHECK(blocks <= 0x7FFF'FFFF, "rmsnorm of " << p.rows << " rows needs " << blocks
                                                << " blocks; at most 2^31 - 1 are allowed");
  LC_CHECK(geometry.threads_per_row * geometry.rows_per_block <= rmsnorm_traits::max_threads,
           "rmsnorm allows " << rmsnorm_traits::max_threads << " threads per block; got "
                             << geometry.threads_per_row << " x " << geometry.rows_per_block);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(blocks), 1, 1);
  cfg.blockDim = dim3(unsigned(geometry.threads_per_row), unsigned(geometry.rows_per_block), 1);
  cfg.stream = stream;
  cudaLaunchAttribute attr = pdl_attribute();
  cfg.attrs = &attr;
  cfg.numAttrs = geometry.overlap_previous && pdl_enabled() ? 1 : 0;
  LC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, rmsnorm_kernel<VectorsPerThread, Fused>, p));
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
