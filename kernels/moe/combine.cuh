// moe experts: the combine kernel and its launcher (only instantiations/ includes this).
// out[t] = bf16(sum over slot = 0..top_k-1 of y[t * top_k + slot]) in fp32, slot order, skipping
// slots whose expert had no row here (inverse -1: another rank's expert). Each thread owns 8
// columns of a token (16-byte loads and stores); a grid-stride loop with a grid fixed by the SM
// count covers any token count, so the geometry does not depend on the routing.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct moe_combine_traits {
  static constexpr int threads = 256;
  static constexpr int vector = 8;       // bf16 per 16-byte access
  static constexpr int ctas_per_sm = 8;  // enough loads in flight to stream y
  static constexpr int slots_in_flight = 8;
};

__global__ void __launch_bounds__(moe_combine_traits::threads)
    moe_combine_kernel(moe_combine_params const p) {
  pdl_enter();
  constexpr int vec = moe_combine_traits::vector;
  std::int64_t const per_token = p.hidden / vec;
  std::int64_t const total = p.tokens * per_token;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t const token = i / per_token, col = (i % per_token) * vec;
    float sum[vec] = {};
    // Slots in groups whose loads are issued together: at decode a thread's time is these round
    // trips (two per group: the inverse, then the row), not bytes.
    constexpr int group = moe_combine_traits::slots_in_flight;
    for (std::int64_t s0 = 0; s0 < p.top_k; s0 += group) {
      bool live[group];
#pragma unroll
      for (int j = 0; j < group; ++j)
        live[j] = s0 + j < p.top_k && __ldg(p.inverse + token * p.top_k + s0 + j) >= 0;
      uint4 v[group];
#pragma unroll
      for (int j = 0; j < group; ++j) {
        std::int64_t const r = token * p.top_k + s0 + j;
        v[j] = live[j] ? __ldg(reinterpret_cast<uint4 const*>(p.routed_out + r * p.hidden + col))
                       : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < group; ++j) {
        if (!live[j]) continue;  // slot order, as the reference sums
        std::uint32_t const words[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          sum[2 * w] += float(bf16::from_bits(std::uint16_t(words[w] & 0xFFFFu)));
          sum[2 * w + 1] += float(bf16::from_bits(std::uint16_t(words[w] >> 16)));
        }
      }
    }
    std::uint32_t packed[4];
#pragma unroll
    for (int w = 0; w < 4; ++w)
      packed[w] =
          std::uint32_t(bf16(sum[2 * w]).bits) | (std::uint32_t(bf16(sum[2 * w + 1]).bits) << 16);
    *reinterpret_cast<uint4*>(p.out + token * p.out_ld + col) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

inline void launch_moe_combine_impl(moe_combine_params const& p, int num_sms, CUstream_st* stream) {
  using traits = moe_combine_traits;
  std::int64_t const items = p.tokens * (p.hidden / traits::vector);
  if (items == 0) return;
  std::int64_t const wanted = (items + traits::threads - 1) / traits::threads;
  auto const grid =
      unsigned(std::min<std::int64_t>(wanted, std::int64_t(num_sms) * traits::ctas_per_sm));
  launch_pdl(moe_combine_kernel, dim3(grid), dim3(traits::threads), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
