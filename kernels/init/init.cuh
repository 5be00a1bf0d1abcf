// init: the CUDA kernel and its launcher. Only the files in instantiations/ include this; the
// dispatch (init_cuda.cu) sees the declaration in init.hpp alone.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/vector_types.cuh"
#include "kernels/init/init.hpp"
#include "kernels/init/init_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {

template <class T>
struct init_traits {
  static constexpr int access_bytes = 16;  // st.global.v4.b32
  static constexpr int elems = access_bytes / int(sizeof(T));
  static constexpr int threads = 256;
  // The hash is a few dozen integer instructions per element: the kernel is issue-bound, and a
  // grid of 8 resident blocks per SM with a grid-stride loop keeps every SM busy at any size.
  static constexpr int blocks_per_sm = 8;
};

// Thread t writes the 16-byte vectors t, t + stride, ...; the last, partial vector element by
// element. Each element is the pure function of its flat index, so the geometry does not matter.
template <class T>
__global__ void __launch_bounds__(init_traits<T>::threads)
    init_kernel(init_params<T> const p, std::int64_t const vectors) {
  using traits = init_traits<T>;
  using array = reg_array<T, traits::elems>;
  using word = vector_word_t<traits::access_bytes>;
  std::int64_t const stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t v = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors;
       v += stride) {
    std::int64_t const first = v * traits::elems;
    if (first + traits::elems <= p.numel) {
      array a;
#pragma unroll
      for (int e = 0; e < traits::elems; ++e)
        a.v[e] = T(init_value(p.key, std::uint64_t(first + e), p.mean, p.stddev));
      *reinterpret_cast<word*>(p.out + first) = __builtin_bit_cast(word, a);
    } else {
      for (std::int64_t i = first; i < p.numel; ++i)
        p.out[i] = T(init_value(p.key, std::uint64_t(i), p.mean, p.stddev));
    }
  }
}

template <class T>
void launch_fill_random(init_params<T> const& p, int num_sms, CUstream_st* stream) {
  using traits = init_traits<T>;
  if (p.numel == 0) return;
  std::int64_t const vectors = (p.numel + traits::elems - 1) / traits::elems;
  std::int64_t const max_blocks = std::int64_t(num_sms) * traits::blocks_per_sm;
  auto const blocks = unsigned(
      std::clamp<std::int64_t>((vectors + traits::threads - 1) / traits::threads, 1, max_blocks));
  init_kernel<T><<<blocks, traits::threads, 0, stream>>>(p, vectors);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
