// activation: the CUDA kernel and its launcher. Only the files in instantiations/ include this;
// the dispatch (activation_cuda.cu) sees the declaration in activation.hpp alone.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/activation/activation.hpp"
#include "kernels/activation/activation_params.hpp"
#include "kernels/common/pdl.cuh"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <class T>
struct silu_and_mul_traits {
  static constexpr int access_bytes = 16;  // ld/st.global.v4.b32, the widest access
  static constexpr int elems = access_bytes / int(sizeof(T));
  static constexpr int max_threads = 256;
  static constexpr int warp = 32;
  static constexpr int max_grid_y = 65535;  // CUDA's limit; rows beyond it are strided over
};

template <class T, int N>
struct silu_reg_array {
  T v[N];
};

// Grid: x covers the vectors of one row (blockDim.x * gridDim.x >= cols / elems), y strides over
// rows, so a thread never divides to find its row. Each thread loads one 16-byte vector of gate
// and one of up, and stores one of out: every warp instruction covers one contiguous 512 bytes.
template <class T>
__global__ void __launch_bounds__(silu_and_mul_traits<T>::max_threads)
    silu_and_mul_kernel(silu_and_mul_params<T> const p) {
  pdl_enter();
  using traits = silu_and_mul_traits<T>;
  using array = silu_reg_array<T, traits::elems>;
  std::int64_t const vector = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  std::int64_t const col = vector * traits::elems;
  if (col >= p.cols) return;
  for (std::int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    T const* const in = p.in + row * p.in_stride + col;
    uint4 const g4 = __ldg(reinterpret_cast<uint4 const*>(in));
    uint4 const u4 = __ldg(reinterpret_cast<uint4 const*>(in + p.cols));
    auto const g = __builtin_bit_cast(array, g4);
    auto const u = __builtin_bit_cast(array, u4);
    array o;
#pragma unroll
    for (int e = 0; e < traits::elems; ++e) o.v[e] = silu_and_mul_value(g.v[e], u.v[e]);
    *reinterpret_cast<uint4*>(p.out + row * p.out_stride + col) = __builtin_bit_cast(uint4, o);
  }
}

template <class T>
void launch_silu_and_mul(silu_and_mul_params<T> const& p, CUstream_st* stream) {
  using traits = silu_and_mul_traits<T>;
  if (p.rows == 0 || p.cols == 0) return;
  std::int64_t const vectors = p.cols / traits::elems;  // per row
  // Small I (1408 -> 176 vectors) gets a block just large enough, not 256 mostly idle threads.
  auto const threads = int(std::min<std::int64_t>(
      traits::max_threads, (vectors + traits::warp - 1) / traits::warp * traits::warp));
  dim3 const grid(unsigned((vectors + threads - 1) / threads),
                  unsigned(std::min<std::int64_t>(p.rows, traits::max_grid_y)));
  launch_pdl(silu_and_mul_kernel<T>, grid, dim3(unsigned(threads)), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
