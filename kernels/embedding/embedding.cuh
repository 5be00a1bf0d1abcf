// embedding: the CUDA kernel and its launcher. Only the files in instantiations/ include this;
// the dispatch (embedding_cuda.cu) sees the declaration in embedding.hpp alone.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/embedding/embedding.hpp"
#include "kernels/embedding/embedding_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <class T>
struct embedding_traits {
  static constexpr int access_bytes = 16;  // ld/st.global.v4.b32
  static constexpr int elems = access_bytes / int(sizeof(T));
  // Vectors each thread loads before it stores: H = 7168 is 896 vectors, 3.5 per thread of a
  // 256-thread block, so one batch of 4 moves a whole row with every load in flight at once.
  static constexpr int unroll = 4;
  static constexpr int max_threads = 256;
  static constexpr int warp = 32;
  static constexpr int max_threads_per_sm = 2048;
  static constexpr int blocks_per_sm = max_threads_per_sm / max_threads;
};

// One block per token (blocks stride over tokens); its threads copy the row's 16-byte vectors,
// consecutive threads on consecutive vectors, or write zeros for an id outside the shard.
template <class T>
__global__ void __launch_bounds__(embedding_traits<T>::max_threads,
                                  embedding_traits<T>::blocks_per_sm)
    embedding_kernel(embedding_params<T> const p) {
  pdl_enter();
  using traits = embedding_traits<T>;
  std::int64_t const vectors = p.hidden / traits::elems;
  for (std::int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    std::int64_t const row = embedding_row(p, __ldg(p.ids + t));
    auto* const dst = reinterpret_cast<uint4*>(p.out + t * p.out_stride);
    if (row < 0) {
      for (std::int64_t v = threadIdx.x; v < vectors; v += blockDim.x) dst[v] = uint4{0, 0, 0, 0};
      continue;
    }
    auto const* const src = reinterpret_cast<uint4 const*>(p.table + row * p.table_stride);
    for (std::int64_t v0 = threadIdx.x; v0 < vectors;
         v0 += std::int64_t(blockDim.x) * traits::unroll) {
      uint4 in[traits::unroll];
#pragma unroll
      for (int u = 0; u < traits::unroll; ++u) {
        std::int64_t const v = v0 + u * std::int64_t(blockDim.x);
        if (v < vectors) in[u] = __ldg(src + v);
      }
#pragma unroll
      for (int u = 0; u < traits::unroll; ++u) {
        std::int64_t const v = v0 + u * std::int64_t(blockDim.x);
        if (v < vectors) dst[v] = in[u];
      }
    }
  }
}

template <class T>
void launch_embedding(embedding_params<T> const& p, int num_sms, CUstream_st* stream) {
  using traits = embedding_traits<T>;
  if (p.tokens == 0 || p.hidden == 0) return;
  std::int64_t const vectors = p.hidden / traits::elems;
  // Threads enough to move a row in one batch of `unroll` vectors each (H = 7168: 224), rounded
  // to whole warps, at most max_threads.
  std::int64_t const per_batch = (vectors + traits::unroll - 1) / traits::unroll;
  auto const threads = int(std::min<std::int64_t>(
      traits::max_threads, (per_batch + traits::warp - 1) / traits::warp * traits::warp));
  std::int64_t const max_blocks = std::int64_t(num_sms) * traits::max_threads_per_sm / threads;
  auto const blocks = unsigned(std::clamp<std::int64_t>(p.tokens, 1, max_blocks));
  launch_pdl(embedding_kernel<T>, dim3(blocks), dim3(unsigned(threads)), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
