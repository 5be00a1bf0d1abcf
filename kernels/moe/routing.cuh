// moe: the routing kernel and its launcher. Only the files in instantiations/ include this; the
// dispatch (moe_cuda.cu) sees the declarations in moe.hpp alone.
//
// One warp per token. Lane l holds experts [l * ExpertsPerLane, (l + 1) * ExpertsPerLane): a
// lane reads its logits in one or two vector loads (8 or 16 bytes), and a group of consecutive
// experts sits on consecutive lanes, so that group scores reduce over a few lanes. Selections
// order by value, then by the lower index (moe_order_key), as the CPU reference does, so every
// lane agrees on each winner and the backends agree on ties.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <int ExpertsPerLane>
struct moe_routing_traits {
  static constexpr int experts_per_lane = ExpertsPerLane;
  // Floats per vector load: a lane's experts are contiguous, so up to 4 go in one 16-byte load.
  static constexpr int vector = ExpertsPerLane >= 4 ? 4 : ExpertsPerLane;
  static constexpr int threads = 128;  // 4 tokens per block at a time
  static constexpr int warps = threads / 32;
  // The grid covers every token at once up to this many resident blocks per SM (16 x 128 threads
  // = a full SM); beyond it warps loop over tokens.
  static constexpr int blocks_per_sm = 16;
  static_assert(ExpertsPerLane % vector == 0 && 32 * ExpertsPerLane <= moe_max_experts);
};

constexpr unsigned moe_full_warp = 0xFFFF'FFFFu;

__device__ __forceinline__ moe_top2 moe_shfl_xor_top2(moe_top2 t, int offset) {
  return {__shfl_xor_sync(moe_full_warp, t.first, offset),
          __shfl_xor_sync(moe_full_warp, t.second, offset)};
}

// One warp's router: its lanes' constants, read once, and the routing of one token at a time.
// Lane l holds experts [l * ExpertsPerLane, (l + 1) * ExpertsPerLane).
template <int ExpertsPerLane>
struct moe_warp_router {
  using traits = moe_routing_traits<ExpertsPerLane>;
  static constexpr int epl = ExpertsPerLane;
  static constexpr float neg_inf = -INFINITY;

  int lane;
  int first;  // this lane's first expert
  bool valid[epl];
  float bias[epl];
  int group[epl];
  bool grouped;
  // Groups that are whole runs of lanes (a power-of-two count of lanes each, e.g. R1's 32 experts
  // = 4 lanes of 8) reduce over their lanes alone (lanes_per_group > 0); other shapes go group by
  // group over the warp.
  int lanes_per_group = 0;
  bool vector_loads;

  __device__ __forceinline__ explicit moe_warp_router(moe_routing_params const& p)
      : lane(int(threadIdx.x) % 32), first(lane * epl) {
    grouped = p.group_select != moe_group_select::none;
    int const group_size = p.experts / p.n_group;
#pragma unroll
    for (int j = 0; j < epl; ++j) {
      valid[j] = first + j < p.experts;
      bias[j] = valid[j] && p.bias != nullptr ? p.bias[first + j] : 0.0f;
      group[j] = valid[j] ? (first + j) / group_size : 0;
    }
    if (grouped && group_size % epl == 0) {
      int const l = group_size / epl;
      if ((l & (l - 1)) == 0) lanes_per_group = l;
    }
    vector_loads = 32 * epl == p.experts && p.logits_stride % traits::vector == 0 &&
                   reinterpret_cast<std::uintptr_t>(p.logits) % (4 * traits::vector) == 0;
  }

  // Routes `token`: writes its slots of topk_ids and topk_weights, and returns the expert of slot
  // `lane` (routed, or shared after the routed ones), -1 past the token's slots.
  __device__ __forceinline__ int route(moe_routing_params const& p, std::int64_t token) {
    float const* row = p.logits + token * p.logits_stride;
    float x[epl];
    if (vector_loads) {
#pragma unroll
      for (int v = 0; v < epl; v += traits::vector) {
        if constexpr (traits::vector == 4) {
          float4 const f = __ldg(reinterpret_cast<float4 const*>(row + first + v));
          x[v] = f.x, x[v + 1] = f.y, x[v + 2] = f.z, x[v + 3] = f.w;
        } else if constexpr (traits::vector == 2) {
          float2 const f = __ldg(reinterpret_cast<float2 const*>(row + first + v));
          x[v] = f.x, x[v + 1] = f.y;
        } else {
          x[v] = __ldg(row + first + v);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < epl; ++j) x[j] = valid[j] ? __ldg(row + first + j) : 0.0f;
    }

    float score[epl];
    if (p.scoring == moe_scoring::sigmoid) {
#pragma unroll
      for (int j = 0; j < epl; ++j) score[j] = moe_sigmoid(x[j]);
    } else {
      float max = neg_inf;
#pragma unroll
      for (int j = 0; j < epl; ++j)
        if (valid[j]) max = fmaxf(max, x[j]);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2)
        max = fmaxf(max, __shfl_xor_sync(moe_full_warp, max, offset));
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < epl; ++j) {
        score[j] = valid[j] ? expf(x[j] - max) : 0.0f;
        sum += score[j];
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(moe_full_warp, sum, offset);
#pragma unroll
      for (int j = 0; j < epl; ++j) score[j] /= sum;
    }
    float choice[epl];
#pragma unroll
    for (int j = 0; j < epl; ++j) choice[j] = score[j] + bias[j];

    if (grouped) {
      // Lane g (g < n_group) gets group g's score.
      float group_score = 0.0f;
      if (lanes_per_group > 0) {
        moe_top2 t{neg_inf, neg_inf};
#pragma unroll
        for (int j = 0; j < epl; ++j)
          if (valid[j]) t = moe_top2_merge(t, {choice[j], neg_inf});
        for (int offset = lanes_per_group / 2; offset > 0; offset /= 2)
          t = moe_top2_merge(t, moe_shfl_xor_top2(t, offset));
        group_score = __shfl_sync(moe_full_warp, moe_group_score(p.group_select, t),
                                  min(lane, p.n_group - 1) * lanes_per_group);
      } else {
        for (int g = 0; g < p.n_group; ++g) {
          moe_top2 t{neg_inf, neg_inf};
#pragma unroll
          for (int j = 0; j < epl; ++j)
            if (valid[j] && group[j] == g) t = moe_top2_merge(t, {choice[j], neg_inf});
#pragma unroll
          for (int offset = 16; offset > 0; offset /= 2)
            t = moe_top2_merge(t, moe_shfl_xor_top2(t, offset));
          if (lane == g) group_score = moe_group_score(p.group_select, t);
        }
      }
      // A group is kept when fewer than topk_group groups order before it.
      std::uint64_t const key = moe_order_key(group_score, lane);
      int before = 0;
      for (int g = 0; g < p.n_group; ++g) before += __shfl_sync(moe_full_warp, key, g) > key;
      unsigned const kept = __ballot_sync(moe_full_warp, lane < p.n_group && before < p.topk_group);
#pragma unroll
      for (int j = 0; j < epl; ++j)
        if (((kept >> group[j]) & 1u) == 0) choice[j] = 0.0f;  // as HF's masked_fill(0.0)
    }

    // Top-k: each lane offers its best remaining expert; the warp's largest value wins, and on
    // equal values the lowest lane, which holds the lower expert indices (a lane's own offer
    // already prefers the lower index). The winner's lane offers its next. One redux, one ballot
    // and two shuffles a step, where a butterfly over 64-bit keys took ten shuffles. A lane with
    // nothing left offers key 0, which never wins (k <= experts).
    std::uint64_t key[epl];
#pragma unroll
    for (int j = 0; j < epl; ++j) key[j] = valid[j] ? moe_order_key(choice[j], first + j) : 0;
    std::uint64_t best = 0;
    float best_score = 0.0f;
    auto const offer = [&] {
      best = 0;
#pragma unroll
      for (int j = 0; j < epl; ++j) {
        if (key[j] > best) {
          best = key[j];
          best_score = score[j];
        }
      }
    };
    offer();
    float sum = 0.0f, my_score = 0.0f;
    int my_expert = 0;
    for (int i = 0; i < p.top_k; ++i) {
      auto const value = std::uint32_t(best >> 32);  // the value's order, without the index
      std::uint32_t const top = __reduce_max_sync(moe_full_warp, value);
      unsigned const holders = __ballot_sync(moe_full_warp, best != 0 && value == top);
      int const owner = holders != 0 ? __ffs(int(holders)) - 1 : 0;
      int const expert = __shfl_sync(moe_full_warp, moe_key_index(best), owner);
      float const s = __shfl_sync(moe_full_warp, best_score, owner);
      sum += s;  // in the order chosen, as the CPU reference adds
      if (lane == i) {
        my_expert = expert;
        my_score = s;
      }
      if (lane == owner) {
#pragma unroll
        for (int j = 0; j < epl; ++j)
          if (first + j == expert) key[j] = 0;
        offer();
      }
    }
    std::int64_t const at = token * (p.top_k + p.shared_experts) + lane;
    if (lane < p.top_k) {
      p.topk_ids[at] = my_expert;
      p.topk_weights[at] = moe_weight(my_score, sum, p.renormalize, p.routed_scaling_factor);
      return my_expert;
    }
    if (lane < p.top_k + p.shared_experts) {
      int const shared = p.experts + lane - p.top_k;  // the shared experts, after the routed ones
      p.topk_ids[at] = shared;
      p.topk_weights[at] = 1.0f;
      return shared;
    }
    return -1;
  }
};

template <int ExpertsPerLane>
__global__ void __launch_bounds__(moe_routing_traits<ExpertsPerLane>::threads)
    moe_routing_kernel(moe_routing_params const p) {
  pdl_enter();
  using traits = moe_routing_traits<ExpertsPerLane>;
  moe_warp_router<ExpertsPerLane> router(p);
  std::int64_t const warps_total = std::int64_t(gridDim.x) * traits::warps;
  for (std::int64_t token = std::int64_t(blockIdx.x) * traits::warps + threadIdx.x / 32;
       token < p.tokens; token += warps_total)
    router.route(p, token);
}

template <int ExpertsPerLane>
void launch_moe_routing(moe_routing_params const& p, int num_sms, CUstream_st* stream) {
  using traits = moe_routing_traits<ExpertsPerLane>;
  LC_CHECK(p.experts <= 32 * ExpertsPerLane,
           "moe routing bucket of " << ExpertsPerLane << " experts per lane takes up to "
                                    << 32 * ExpertsPerLane << " experts; got " << p.experts);
  if (p.tokens == 0) return;
  std::int64_t const needed = (p.tokens + traits::warps - 1) / traits::warps;
  auto const blocks =
      unsigned(std::clamp<std::int64_t>(needed, 1, std::int64_t(num_sms) * traits::blocks_per_sm));
  launch_pdl(moe_routing_kernel<ExpertsPerLane>, dim3(blocks), dim3(traits::threads), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
