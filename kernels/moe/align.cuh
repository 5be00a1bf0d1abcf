// moe: the alignment kernel and its launcher. Only the files in instantiations/ include this; the
// dispatch (moe_cuda.cu) sees the declarations in moe.hpp alone.
//
// One block does everything, so that no second launch or grid-wide barrier is needed and the
// result is deterministic: a stable counting sort of the routed rows by expert.
//  1. Each warp owns a contiguous chunk of rows and counts its rows per expert (shared atomics;
//     counts do not depend on the order).
//  2. Per expert, the warps' counts become exclusive starts (warp order = row order), and a block
//     scan of the padded counts gives the experts' offsets.
//  3. Each warp walks its chunk again in 32-row rounds; rows of one expert in a round find their
//     rank with __match_any_sync, so a row's place is offset[e] + its warp's start + the rows of
//     e before it in the chunk: ascending row order within every expert.
//  4. The padding of each expert, the tail past the total and the block -> expert map are filled.
// Rows are at most 2^31 - 1, and one block reads them twice: about 0.5 MB at 8192 tokens x top-8,
// a few microseconds, next to milliseconds of expert GEMMs. Up to 32 rows (decode) one warp does
// the same with a row per lane (moe_align_warp), without the block's counters and barriers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <int Warps>
struct moe_align_traits {
  static constexpr int warps = Warps;
  static constexpr int threads = Warps * 32;
  // Rounds of 32 ids each warp loads before it uses them: 8 loads in flight per warp hide the
  // latency of L2/HBM that a load-use chain per round would expose 8 times.
  static constexpr int unroll = 8;
  // Per-warp counters for every expert: 32 x 264 x 4 = 33 KiB of static shared memory.
  static constexpr int counter_bytes = Warps * int(moe_max_stacked_experts) * 4;
  static_assert(threads >= moe_max_stacked_experts, "the scan gives each expert one thread");
  static_assert(threads <= 1024 && counter_bytes <= 40 * 1024);
};

// The expert of the block that starts at sorted row `start`, from the experts' padded offsets
// (offsets[experts] is the total): the last expert whose offset is <= start, since empty experts
// share the offset of the next expert with rows; -1 from the total on.
__device__ __forceinline__ int moe_expert_of_block_start(int const* offsets, int experts,
                                                         std::int64_t start) {
  if (start >= offsets[experts]) return -1;
  int lo = 0, hi = experts;
  while (hi - lo > 1) {
    int const mid = (lo + hi) / 2;
    if (offsets[mid] <= start)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// Inclusive prefix sum of v over the block's threads; `warp_sums` holds one int per warp.
template <int Warps>
__device__ __forceinline__ int moe_block_inclusive_scan(int v, int* warp_sums) {
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    int const up = __shfl_up_sync(0xFFFF'FFFFu, v, offset);
    if (lane >= offset) v += up;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int s = lane < Warps ? warp_sums[lane] : 0;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      int const up = __shfl_up_sync(0xFFFF'FFFFu, s, offset);
      if (lane >= offset) s += up;
    }
    if (lane < Warps) warp_sums[lane] = s;
  }
  __syncthreads();
  return warp > 0 ? v + warp_sums[warp - 1] : v;
}

template <int Warps>
__global__ void __launch_bounds__(moe_align_traits<Warps>::threads)
    moe_align_kernel(moe_align_params const p) {
  pdl_enter();
  using traits = moe_align_traits<Warps>;
  constexpr int round = 32;
  constexpr int max_experts = int(moe_max_stacked_experts);
  __shared__ int warp_start[Warps][max_experts];  // counts, then each warp's start per expert
  __shared__ int offsets[max_experts + 1];
  __shared__ int counts[max_experts];
  __shared__ int warp_sums[Warps];

  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const experts = p.experts, block_m = p.block_m;
  auto const rows = int(p.rows);
  for (int i = tid; i < Warps * max_experts; i += traits::threads) (&warp_start[0][0])[i] = 0;
  __syncthreads();

  // Chunks of whole rounds: warp w owns rows [w * chunk, min(rows, (w + 1) * chunk)).
  // (64-bit arithmetic: rows may come close to 2^31.)
  std::int64_t const chunk = ((std::int64_t(rows) + Warps - 1) / Warps + round - 1) / round * round;
  std::int64_t const begin = min(std::int64_t(rows), warp * chunk);
  std::int64_t const end = min(std::int64_t(rows), begin + chunk);
  auto const expert_of = [&](std::int64_t r) {
    int const e = r < end ? __ldg(p.topk_ids + r) : -1;
    return e >= 0 && e < experts ? e : -1;
  };

  // 1. Counts per warp and expert.
  for (std::int64_t base = begin; base < end; base += round * traits::unroll) {
    int e[traits::unroll];
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) e[u] = expert_of(base + u * round + lane);
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u)
      if (e[u] >= 0) atomicAdd(&warp_start[warp][e[u]], 1);
  }
  __syncthreads();

  // 2. Warp starts per expert, the experts' padded offsets.
  int count = 0;
  if (tid < experts) {
    for (int w = 0; w < Warps; ++w) {
      int const c = warp_start[w][tid];
      warp_start[w][tid] = count;
      count += c;
    }
  }
  // count + block_m - 1 < 2^31: the host checked that the padded total fits.
  int const padded = tid < experts ? (count + block_m - 1) / block_m * block_m : 0;
  int const inclusive = moe_block_inclusive_scan<Warps>(padded, warp_sums);
  if (tid < experts) {
    offsets[tid] = inclusive - padded;
    counts[tid] = count;
    p.expert_counts[tid] = count;
    p.expert_offsets[tid] = inclusive - padded;
    if (tid == experts - 1) {
      offsets[experts] = inclusive;
      p.expert_offsets[experts] = inclusive;
      *p.total_padded = inclusive;
    }
  }
  __syncthreads();

  // 3. Placement, in row order within each warp's chunk.
  unsigned const lanes_before = (1u << lane) - 1u;
  for (std::int64_t base = begin; base < end; base += round * traits::unroll) {
    int e[traits::unroll];
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) e[u] = expert_of(base + u * round + lane);
#pragma unroll
    for (int u = 0; u < traits::unroll; ++u) {
      std::int64_t const r = base + u * round + lane;
      unsigned const peers = __match_any_sync(0xFFFF'FFFFu, e[u]);
      if (e[u] >= 0) {
        int const at = offsets[e[u]] + warp_start[warp][e[u]] + __popc(peers & lanes_before);
        p.sorted_ids[at] = int(r);
        p.inverse[r] = at;
      } else if (r < end) {
        p.inverse[r] = -1;
      }
      __syncwarp();
      if (e[u] >= 0 && (peers & lanes_before) == 0) warp_start[warp][e[u]] += __popc(peers);
      __syncwarp();
    }
  }

  // 4. Padding rows inside each expert's range, the tail, and the block map. None of these
  // elements was written above, so no barrier is needed against step 3.
  int const total = offsets[experts];
  for (int x = warp; x < experts; x += Warps)
    for (std::int64_t i = offsets[x] + counts[x] + lane; i < offsets[x + 1]; i += 32)
      p.sorted_ids[i] = rows;
  for (std::int64_t i = total + tid; i < p.sorted_capacity; i += traits::threads)
    p.sorted_ids[i] = rows;
  for (std::int64_t b = tid; b < p.block_capacity; b += traits::threads)
    p.expert_of_block[b] = moe_expert_of_block_start(offsets, experts, b * block_m);
}

// Per-expert scratch of moe_align_warp, in shared memory.
struct moe_align_warp_scratch {
  int counts[moe_max_stacked_experts];
  int offsets[moe_max_stacked_experts + 1];  // padded counts, then their exclusive scan
};

// The alignment of at most 32 rows by one warp, with moe_align_kernel's outputs bit for bit:
// lane r holds row r (ids: the rows' experts). A row's place within its expert
// is the number of rows of that expert on lower lanes (__match_any_sync), so rows stay in
// ascending order; the offsets are a scan of the padded counts, each lane owning a run of
// experts. For decode batches (a few tokens x top_k), where moe_align_kernel's 32 warps, its
// 33 KiB of counters and its barriers are most of the work.
__device__ __forceinline__ void moe_align_warp(moe_align_params const& p, std::int32_t const* ids,
                                               moe_align_warp_scratch& s) {
  constexpr unsigned full = 0xFFFF'FFFFu;
  constexpr int run = (int(moe_max_stacked_experts) + 1 + 31) / 32;  // experts per lane
  int const lane = int(threadIdx.x) % 32, rows = int(p.rows), experts = p.experts;
  int const block_m = p.block_m;
  int e = -1;
  if (lane < rows) {
    int const id = ids[lane];
    e = id >= 0 && id < experts ? id : -1;
  }
  unsigned const peers = __match_any_sync(full, e);
  int const rank = __popc(peers & ((1u << lane) - 1u));
  bool const first_of_expert = e >= 0 && rank == 0;
  for (int x = lane; x <= experts; x += 32) {
    if (x < experts) s.counts[x] = 0;
    s.offsets[x] = 0;
  }
  __syncwarp();
  if (first_of_expert) {
    int const count = __popc(peers);
    s.counts[e] = count;
    s.offsets[e] = (count + block_m - 1) / block_m * block_m;
  }
  __syncwarp();
  int padded[run];
  int sum = 0;
#pragma unroll
  for (int i = 0; i < run; ++i) {
    int const x = lane * run + i;
    padded[i] = x < experts ? s.offsets[x] : 0;
    sum += padded[i];
  }
  int inclusive = sum;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    int const up = __shfl_up_sync(full, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  __syncwarp();
  int at = inclusive - sum;
#pragma unroll
  for (int i = 0; i < run; ++i) {
    int const x = lane * run + i;
    if (x <= experts) s.offsets[x] = at;
    at += padded[i];
  }
  __syncwarp();
  int const total = s.offsets[experts];
  for (int x = lane; x <= experts; x += 32) {
    if (x < experts) p.expert_counts[x] = s.counts[x];
    p.expert_offsets[x] = s.offsets[x];
  }
  if (lane == 0) *p.total_padded = total;
  for (std::int64_t i = lane; i < p.sorted_capacity; i += 32) p.sorted_ids[i] = rows;
  for (std::int64_t b = lane; b < p.block_capacity; b += 32)
    p.expert_of_block[b] = moe_expert_of_block_start(s.offsets, experts, b * block_m);
  // The routed rows over the padding written above: __syncwarp orders the warp's stores.
  __syncwarp();
  if (e >= 0) {
    int const place = s.offsets[e] + rank;
    p.sorted_ids[place] = lane;
    p.inverse[lane] = place;
  } else if (lane < rows) {
    p.inverse[lane] = -1;
  }
}

// A template, so that every file that includes this header may instantiate it.
template <int Lanes>
__global__ void __launch_bounds__(Lanes) moe_align_warp_kernel(moe_align_params const p) {
  static_assert(Lanes == 32, "one warp");
  pdl_enter();
  __shared__ moe_align_warp_scratch scratch;
  moe_align_warp(p, p.topk_ids, scratch);
}

template <int Warps>
void launch_moe_align(moe_align_params const& p, CUstream_st* stream) {
  using traits = moe_align_traits<Warps>;
  LC_CHECK(p.experts >= 1 && p.experts <= moe_max_stacked_experts && p.block_m >= 1,
           "moe_align on CUDA supports 1 to " << moe_max_stacked_experts
                                              << " experts and block_m >= 1; got " << p.experts
                                              << " experts, block_m " << p.block_m);
  // Up to 32 rows (a decode batch of a few tokens): one warp, a row per lane.
  if (p.rows <= 32)
    launch_pdl(moe_align_warp_kernel<32>, dim3(1), dim3(32), 0, stream, p);
  else
    launch_pdl(moe_align_kernel<Warps>, dim3(1), dim3(traits::threads), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
