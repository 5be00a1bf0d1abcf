// kv_write: the CUDA kernel that copies new tokens' KV rows into their pool slots (MLA latent +
// roped key, or GQA k and v), and its launcher. Only instantiations/ include this file.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct kv_write_traits {
  static constexpr int elems = 8;  // bf16 per 16-byte vector
  static constexpr int threads = 256;
  static constexpr int blocks_per_sm = 8;
};

// One thread per 16-byte vector of a token's segments, grid-stride: T tokens of at most a few
// kilobytes each, so the grid is small and fixed by T (a graph replays it for any slots).
template <class Layout>
__global__ void __launch_bounds__(kv_write_traits::threads)
    kv_write_kernel(kv_write_params const p, std::int64_t const vectors_per_token) {
  pdl_enter();
  constexpr int elems = kv_write_traits::elems;
  std::int64_t const first_vectors = p.segment[0].width / elems;
  std::int64_t const total = p.tokens * vectors_per_token;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t const t = i / vectors_per_token;
    std::int64_t v = i - t * vectors_per_token;
    std::int64_t slot;
    if (p.slots != nullptr) {
      slot = p.slots[t];
    } else {
      std::int32_t const row = p.req_rows[t], pos = p.positions[t];
      // A token outside the table is skipped, like a slot outside the pool: a kernel cannot throw.
      if (row < 0 || row >= p.table.rows || pos < 0 || Layout::table_column(pos) >= p.table.columns)
        continue;
      slot = p.table.template slot<Layout>(row, pos);
    }
    if (slot < 0 || slot >= p.pool_slots) continue;
    int const s = v < first_vectors ? 0 : 1;
    if (s == 1) v -= first_vectors;
    kv_write_segment const& g = p.segment[s];
    uint4 const value = __ldg(reinterpret_cast<uint4 const*>(g.src + t * g.src_stride + v * elems));
    *reinterpret_cast<uint4*>(g.dst + slot * g.dst_stride + v * elems) = value;
  }
}

template <class Layout>
void launch_kv_write(kv_write_params const& p, int num_sms, CUstream_st* stream) {
  using traits = kv_write_traits;
  std::int64_t vectors_per_token = 0;
  for (int s = 0; s < p.segments; ++s) vectors_per_token += p.segment[s].width / traits::elems;
  std::int64_t const total = p.tokens * vectors_per_token;
  if (total == 0) return;
  auto const blocks =
      unsigned(std::clamp<std::int64_t>((total + traits::threads - 1) / traits::threads, 1,
                                        std::int64_t(num_sms) * traits::blocks_per_sm));
  launch_pdl(kv_write_kernel<Layout>, dim3(blocks), dim3(traits::threads), 0, stream, p,
             vectors_per_token);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
