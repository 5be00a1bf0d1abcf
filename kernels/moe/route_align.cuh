// moe: routing and alignment of a decode batch in one launch. Only the files in instantiations/
// include this; the dispatch (moe_cuda.cu) sees the declarations in moe.hpp alone.
//
// At decode each step is a fraction of a launch (one warp routes a token; one warp aligns a few
// dozen rows), and the alignment waits for the routing: as two kernels a step pays the boundary
// between them in every MoE layer. Here one block does both: warp t routes token t (routing.cuh's
// warp router: the same writes of topk_ids and topk_weights) and keeps the token's slots in shared
// memory; after a barrier warp 0 aligns the rows from there (align.cuh's moe_align_warp: the same
// outputs as moe_align, bit for bit).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/moe/align.cuh"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_params.hpp"
#include "kernels/moe/routing.cuh"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct moe_route_align_traits {
  static constexpr int warps = int(moe_route_align_max_tokens);  // one token each
  static constexpr int threads = 32 * warps;
  static_assert(moe_route_align_max_rows <= 32, "one warp aligns the rows, a lane each");
};

template <int ExpertsPerLane>
__global__ void __launch_bounds__(moe_route_align_traits::threads)
    moe_route_align_kernel(moe_routing_params const rp, moe_align_params const ap) {
  pdl_enter();
  __shared__ std::int32_t ids[moe_route_align_max_rows];  // [tokens, top_k + shared_experts]
  __shared__ moe_align_warp_scratch scratch;
  int const warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  int const slots = rp.top_k + rp.shared_experts;
  if (warp < rp.tokens) {
    moe_warp_router<ExpertsPerLane> router(rp);
    int const expert = router.route(rp, warp);
    if (lane < slots) ids[warp * slots + lane] = expert;
  }
  __syncthreads();
  if (warp == 0) moe_align_warp(ap, ids, scratch);
}

template <int ExpertsPerLane>
void launch_moe_route_align(moe_routing_params const& rp, moe_align_params const& ap,
                            CUstream_st* stream) {
  LC_CHECK(rp.experts <= 32 * ExpertsPerLane && rp.tokens >= 1 &&
               rp.tokens <= moe_route_align_max_tokens && ap.rows <= moe_route_align_max_rows &&
               ap.rows == rp.tokens * (rp.top_k + rp.shared_experts),
           "moe route + align: this kernel takes up to "
               << 32 * ExpertsPerLane << " experts, 1 to " << moe_route_align_max_tokens
               << " tokens and " << moe_route_align_max_rows << " routed rows; got " << rp.experts
               << " experts, " << rp.tokens << " tokens, " << ap.rows << " rows");
  launch_pdl(moe_route_align_kernel<ExpertsPerLane>, dim3(1), dim3(moe_route_align_traits::threads),
             0, stream, rp, ap);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
