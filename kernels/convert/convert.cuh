// convert: the CUDA kernel and its launcher. Only the files in instantiations/ include this, each
// instantiating launch_convert for one pair; the dispatch (convert_cuda.cu) sees the declaration
// in convert.hpp alone, so no pair is compiled twice.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/vector_types.cuh"
#include "kernels/convert/convert.hpp"
#include "kernels/convert/convert_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <class Src, class Dst>
struct convert_traits {
  static constexpr int wide_bytes = int(sizeof(Src) > sizeof(Dst) ? sizeof(Src) : sizeof(Dst));
  // One ld/st.global.v4.b32 (the widest access sm_90 has) on the wider side per vector; the
  // narrower side moves 4 or 8 bytes. Consecutive threads take consecutive vectors, so every load
  // and store instruction of a warp covers one contiguous span: a thread that wrote a contiguous
  // 64 bytes in four 16-byte stores (fp8 -> f32) left each store instruction strided and ran at a
  // third of the HBM bandwidth.
  static constexpr int access_bytes = 16;
  static constexpr int elems = access_bytes / wide_bytes;  // per vector
  static constexpr int src_bytes = elems * int(sizeof(Src));
  static constexpr int dst_bytes = elems * int(sizeof(Dst));
  // Vectors each thread loads before it converts and stores: up to 32 bytes of loads in flight
  // per thread (64 KiB per SM at full occupancy) to cover HBM latency, and at most 4 vectors, past
  // which the results spill under the 32 registers that full occupancy allows.
  static constexpr int load_bytes_in_flight = 32;
  static constexpr int max_unroll = 4;
  static constexpr int unroll = std::min(max_unroll, load_bytes_in_flight / src_bytes);
  static constexpr int threads = 256;
  // Hopper keeps 2048 threads resident per SM; the grid is at most this many blocks per SM (full
  // occupancy) and threads stride over the rest.
  static constexpr int max_threads_per_sm = 2048;
  static constexpr int blocks_per_sm = max_threads_per_sm / threads;
};

// Elements [head, head + vectors * elems) move as whole vectors, src + head and dst + head being
// aligned to their access sizes; the head before them and the tail after are cast one element at
// a time by the first threads of the grid.
template <class Src, class Dst>
__global__ void __launch_bounds__(convert_traits<Src, Dst>::threads,
                                  convert_traits<Src, Dst>::blocks_per_sm)
    convert_kernel(convert_params<Src, Dst> const p, std::int64_t const head,
                   std::int64_t const vectors) {
  using traits = convert_traits<Src, Dst>;
  using src_word = vector_word_t<traits::src_bytes>;
  using dst_word = vector_word_t<traits::dst_bytes>;
  std::int64_t const thread = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  std::int64_t const stride = std::int64_t(gridDim.x) * blockDim.x;

  auto const* src = reinterpret_cast<src_word const*>(p.src + head);  // [vectors]
  auto* dst = reinterpret_cast<dst_word*>(p.dst + head);              // [vectors]
  for (std::int64_t base = thread; base < vectors; base += stride * traits::unroll) {
    src_word in[traits::unroll];
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) {
      std::int64_t const v = base + u * stride;
      if (v < vectors) in[u] = __ldg(src + v);
    }
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) {
      std::int64_t const v = base + u * stride;
      if (v >= vectors) break;
      auto const x = __builtin_bit_cast(reg_array<Src, traits::elems>, in[u]);
      reg_array<Dst, traits::elems> y;
#pragma unroll
      for (int e = 0; e < traits::elems; ++e) y.v[e] = convert_value<Dst>(x.v[e]);
      dst[v] = __builtin_bit_cast(dst_word, y);
    }
  }

  std::int64_t const body_end = head + vectors * traits::elems;
  std::int64_t const scalars = head + (p.n - body_end);
  for (std::int64_t i = thread; i < scalars; i += stride) {
    std::int64_t const e = i < head ? i : body_end + (i - head);
    p.dst[e] = convert_value<Dst>(p.src[e]);
  }
}

// The first element index at which src and dst are both aligned to their access sizes, if one
// lies within the first `elems` (alignments repeat with that period); otherwise n, and every
// element goes the scalar way. Views sliced at the same offset (src[1:], dst[1:]) keep the vector
// path.
template <class Src, class Dst>
std::int64_t aligned_head(convert_params<Src, Dst> const& p) {
  using traits = convert_traits<Src, Dst>;
  auto const s = reinterpret_cast<std::uintptr_t>(p.src);
  auto const d = reinterpret_cast<std::uintptr_t>(p.dst);
  for (std::int64_t h = 0; h < traits::elems && h < p.n; ++h) {
    if ((s + h * sizeof(Src)) % traits::src_bytes == 0 &&
        (d + h * sizeof(Dst)) % traits::dst_bytes == 0)
      return h;
  }
  return p.n;
}

template <class Src, class Dst>
void launch_convert(convert_params<Src, Dst> const& p, int num_sms, CUstream_st* stream) {
  using traits = convert_traits<Src, Dst>;
  if (p.n == 0) return;
  std::int64_t const head = aligned_head(p);
  std::int64_t const vectors = (p.n - head) / traits::elems;
  std::int64_t const scalars = p.n - vectors * traits::elems;
  std::int64_t const work = std::max(vectors, scalars);
  std::int64_t const max_blocks = std::int64_t(num_sms) * traits::blocks_per_sm;
  auto const blocks = unsigned(
      std::clamp<std::int64_t>((work + traits::threads - 1) / traits::threads, 1, max_blocks));
  convert_kernel<Src, Dst><<<blocks, traits::threads, 0, stream>>>(p, head, vectors);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
