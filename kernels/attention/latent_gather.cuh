// latent_gather: copies the latent rows of a ragged batch's whole sequences out of the token pool
// into one dense [rows, 576] buffer, the A operand of MLA prefill's decompression GEMMs. Only the
// files in instantiations/ include this.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct latent_gather_traits {
  static constexpr int threads = 256;
  static constexpr int rows_per_block = threads / 32;    // one warp per row
  static constexpr int vectors = int(mla_kv_width) / 8;  // 72 16-byte vectors per row
};

// Warp w of the grid copies rows w, w + warps, ...; the row's request comes from a binary search
// of cu_seqlens_k (the same for every lane: one broadcast load per step).
template <class Layout>
__global__ void __launch_bounds__(latent_gather_traits::threads)
    latent_gather_kernel(latent_gather_params const p) {
  int const lane = int(threadIdx.x) % 32;
  std::int64_t const warps = std::int64_t(gridDim.x) * latent_gather_traits::rows_per_block;
  std::int32_t const total = p.cu_seqlens_k[p.batch];
  for (std::int64_t r =
           std::int64_t(blockIdx.x) * latent_gather_traits::rows_per_block + int(threadIdx.x) / 32;
       r < p.rows; r += warps) {
    uint4 const* src = nullptr;
    if (r < total) {
      int lo = 0, hi = p.batch - 1;  // the last request whose first row is <= r
      while (lo < hi) {
        int const mid = (lo + hi + 1) / 2;
        if (p.cu_seqlens_k[mid] <= r)
          lo = mid;
        else
          hi = mid - 1;
      }
      std::int64_t const slot =
          p.table.template slot<Layout>(p.req_rows[lo], r - p.cu_seqlens_k[lo]);
      if (slot >= 0 && slot < p.kv.slots) src = reinterpret_cast<uint4 const*>(p.kv.row(slot));
    }
    auto* const dst = reinterpret_cast<uint4*>(p.dst + r * p.dst_stride);
    for (int c = lane; c < latent_gather_traits::vectors; c += 32)
      dst[c] = src != nullptr ? src[c] : make_uint4(0, 0, 0, 0);
  }
}

template <class Layout>
void launch_latent_gather(latent_gather_params const& p, CUstream_st* stream) {
  if (p.rows == 0) return;
  // Enough warps for every row up to a grid of 2^20 blocks; more rows loop.
  std::int64_t const blocks = std::min<std::int64_t>(
      (p.rows + latent_gather_traits::rows_per_block - 1) / latent_gather_traits::rows_per_block,
      std::int64_t(1) << 20);
  latent_gather_kernel<Layout><<<unsigned(blocks), latent_gather_traits::threads, 0, stream>>>(p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
