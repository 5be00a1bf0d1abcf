// sampling: the building blocks of the CUDA kernel (sampling.cuh): the launch traits, the shared
// memory of a block, block- and cluster-wide reductions in a fixed order, the cluster-wide radix
// select over the row's slices and the top-n gather for logprobs.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/sampling/sampling.hpp"
#include "kernels/sampling/sampling_math.hpp"
#include "kernels/sampling/sampling_params.hpp"

namespace lightcore::kernels::detail {

struct sampling_traits {
  static constexpr int cluster = 8;  // blocks per row: the portable cluster size limit
  static constexpr int threads = 512;
  static constexpr int warps = threads / 32;
  static constexpr int blocks_per_sm = 2;  // at vocab 129280: ~89 KB of shared memory per block
  static constexpr std::int64_t max_slice = sampling_cuda_max_vocab / cluster;  // logits / block
  static constexpr int max_bins = 2048;  // the widest radix digit: 11 bits
  static constexpr int list_capacity = 2 * sampling_max_logprobs;  // see gather_top_n
  // Candidate levels: z >= z_max - gap. A block keeps at most block_candidates of them (in its
  // histogram buffers), block 0 gathers at most slice / 2 (in its own slice).
  static constexpr int levels = 5;
  static constexpr int block_candidates = max_bins;
  static_assert(max_slice % 4 == 0 && max_bins % threads == 0);
};

// The gaps below z_max of the candidate levels, narrowest first. In a row of 129280 normal(0, 3)
// logits at T = 0.8 (z spread 3.75, as an lm head's) they hold ~40, ~250, ~1200, ~3000 and
// ~12000 tokens and ~50%, 73%, 89%, 95% and 99% of the mass: top-k 50 takes the second level,
// top-p 0.9 the fourth. Sharper rows hold fewer tokens per level, flatter ones more.
__device__ constexpr float sampling_level_gap(int level) {
  return level == 0 ? 3.0f : level == 1 ? 5.0f : level == 2 ? 7.0f : level == 3 ? 8.5f : 11.0f;
}

// Per-level statistics of a slice (then of the row): the tokens with z >= z_max - gap, their
// weights, and the weight of every token (the weights by ex2.approx: they only size things).
struct level_stats {
  std::uint32_t count[sampling_traits::levels];
  std::uint32_t most[sampling_traits::levels];  // the largest count of one block (row stats)
  float mass[sampling_traits::levels];
  float total;
};

// The radix digits of the 32-bit keys, most significant first: bits [21, 32), [10, 21), [0, 10).
struct radix_digit {
  int shift, bits;
};
__device__ constexpr radix_digit sampling_digit(int round) {
  return round == 0 ? radix_digit{21, 11} : round == 1 ? radix_digit{10, 11} : radix_digit{0, 10};
}

struct top_entry {
  std::uint32_t key;  // order_key of the raw logit
  std::int32_t index;
};

struct sampling_shared {
  std::uint32_t hist[2][sampling_traits::max_bins];  // [epoch parity][bin]: counts or f32 mass
  unsigned long long slot[2];                        // [epoch parity]: a block's reduced partial
  unsigned long long warp_u64[sampling_traits::warps];
  float warp_f32[sampling_traits::warps];
  std::uint32_t warp_u32[sampling_traits::warps];
  top_entry warp_list[sampling_traits::warps][sampling_traits::list_capacity];
  int warp_count[sampling_traits::warps];
  top_entry block_list[sampling_traits::list_capacity];
  int block_count;
  std::uint32_t chosen_before;  // the selected bin's "mass/count above", broadcast
  level_stats warp_stats[sampling_traits::warps];
  level_stats stats[2];   // [epoch parity]: the block's, read by every block of the cluster
  level_stats row_stats;  // the cluster's, combined in rank order
  int candidates;         // this block's compacted candidates (in hist), read by block 0
};

namespace cg = cooperative_groups;

// The row, the block's slice of it and the barrier epoch: shared buffers that other blocks read
// are double-buffered by the epoch's parity. A buffer written before barrier e and read after it
// is written again only before barrier e + 2, which no block passes before every block has
// arrived at e + 1, i.e. finished reading.
struct sampling_ctx {
  cg::cluster_group cluster;
  sampling_shared& s;
  float* vals;            // [len] this block's logits (raw, then penalised, then z)
  std::uint32_t* bitmap;  // [ceil(len / 32)] history ids seen in this slice
  std::int64_t begin;     // first token of the slice
  int len;                // tokens in the slice (0 for the trailing blocks of a tiny vocab)
  unsigned epoch;
};

__device__ inline std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
__device__ inline std::int64_t max64(std::int64_t a, std::int64_t b) { return a > b ? a : b; }

__device__ inline unsigned long long pack_argmax(float v, std::int64_t index) {
  // Larger value first, then lower index: the max of the packed words is the argmax.
  return (static_cast<unsigned long long>(sampling_math::order_key(v)) << 32) |
         (0xFFFF'FFFFull - static_cast<unsigned long long>(index));
}

__device__ inline std::int64_t unpack_index(unsigned long long packed) {
  return std::int64_t(0xFFFF'FFFFull - (packed & 0xFFFF'FFFFull));
}

struct op_max_f32 {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct op_sum_f32 {
  __device__ float operator()(float a, float b) const { return sampling_math::add_rn(a, b); }
};
struct op_max_u64 {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a > b ? a : b;
  }
};

template <class T>
__device__ T* warp_scratch(sampling_shared& s) {
  if constexpr (sizeof(T) == 8) {
    return reinterpret_cast<T*>(s.warp_u64);
  } else if constexpr (std::is_same_v<T, float>) {
    return s.warp_f32;
  } else {
    return reinterpret_cast<T*>(s.warp_u32);
  }
}

// Every thread gets op over the block, combined in a fixed order (the same bits in every block).
template <class T, class Op>
__device__ T block_reduce(sampling_shared& s, T v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = op(v, __shfl_xor_sync(0xFFFF'FFFFu, v, offset));
  T* scratch = warp_scratch<T>(s);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < sampling_traits::warps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// Every thread of every block of the cluster gets op over the cluster, in rank order.
template <class T, class Op>
__device__ T cluster_reduce(sampling_ctx& c, T v, Op op) {
  static_assert(sizeof(T) <= sizeof(unsigned long long));
  v = block_reduce(c.s, v, op);
  unsigned const parity = c.epoch & 1u;
  if (threadIdx.x == 0) *reinterpret_cast<T*>(&c.s.slot[parity]) = v;
  c.cluster.sync();
  ++c.epoch;
  T r = *reinterpret_cast<T*>(c.cluster.map_shared_rank(&c.s.slot[parity], 0));
  for (unsigned rank = 1; rank < sampling_traits::cluster; ++rank)
    r = op(r, *reinterpret_cast<T*>(c.cluster.map_shared_rank(&c.s.slot[parity], rank)));
  return r;
}

// Exclusive prefix over threads (thread order) of x, and the total; fixed order, so every block
// of the cluster computes the same bits from the same inputs.
template <class T>
__device__ T block_exclusive_scan(sampling_shared& s, T x, T& total) {
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  T inclusive = x;
  for (int offset = 1; offset < 32; offset *= 2) {
    T const y = __shfl_up_sync(0xFFFF'FFFFu, inclusive, offset);
    if (lane >= offset) inclusive = inclusive + y;
  }
  T exclusive = __shfl_up_sync(0xFFFF'FFFFu, inclusive, 1);
  if (lane == 0) exclusive = T(0);
  T* scratch = warp_scratch<T>(s);
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  T before = T(0), all = T(0);
  for (int w = 0; w < sampling_traits::warps; ++w) {
    if (w == warp) before = all;
    all = all + scratch[w];
  }
  __syncthreads();
  total = all;
  return before + exclusive;
}

// The key of the largest token t (counting repeats) such that the tokens with key >= key(t) reach
// `goal`: a count (Mass = false: the goal-th largest key) or, with Mass, a fraction of the total
// weight exp(v - v_max) (top_p). Only tokens with key >= floor_key take part. Three rounds, one
// radix digit each: per-block histograms, summed across the cluster, scanned from the top.
template <bool Mass>
__device__ std::uint32_t cluster_select(sampling_ctx& c, float goal, std::uint32_t goal_count,
                                        std::uint32_t floor_key, float v_max) {
  using value_t = std::conditional_t<Mass, float, std::uint32_t>;
  std::uint32_t prefix = 0, mask = 0;
  value_t remaining = Mass ? value_t(0) : value_t(goal_count);
#pragma unroll 1
  for (int round = 0; round < 3; ++round) {
    radix_digit const d = sampling_digit(round);
    int const bins = 1 << d.bits;
    unsigned const parity = c.epoch & 1u;
    std::uint32_t* hist = c.s.hist[parity];
    for (int i = int(threadIdx.x); i < bins; i += sampling_traits::threads) hist[i] = 0;
    __syncthreads();
    for (int i = int(threadIdx.x); i < c.len; i += sampling_traits::threads) {
      float const v = c.vals[i];
      std::uint32_t const key = sampling_math::order_key(v);
      if (key < floor_key || (key & mask) != prefix) continue;
      std::uint32_t const bin = (key >> d.shift) & std::uint32_t(bins - 1);
      if constexpr (Mass) {
        atomicAdd(reinterpret_cast<float*>(&hist[bin]), sampling_math::exp_nonpositive(v - v_max));
      } else {
        atomicAdd(&hist[bin], 1u);
      }
    }
    c.cluster.sync();
    ++c.epoch;
    // Thread t takes the positions [t * per, (t + 1) * per) counted from the top bin down.
    int const per = bins / sampling_traits::threads;
    value_t v[sampling_traits::max_bins / sampling_traits::threads];
    value_t chunk = value_t(0);
    for (int j = 0; j < per; ++j) {
      int const bin = bins - 1 - (int(threadIdx.x) * per + j);
      value_t sum = value_t(0);
      for (unsigned rank = 0; rank < sampling_traits::cluster; ++rank) {
        std::uint32_t const word = *c.cluster.map_shared_rank(&hist[bin], rank);
        if constexpr (Mass) {
          sum = sampling_math::add_rn(sum, __uint_as_float(word));
        } else {
          sum += word;
        }
      }
      v[j] = sum;
      chunk = chunk + sum;
    }
    value_t total;
    value_t cum = block_exclusive_scan(c.s, chunk, total);
    if constexpr (Mass) {
      if (round == 0) remaining = sampling_math::mul_rn(goal, total);
    }
    // The first non-empty position whose cumulative value reaches the goal; failing that (float
    // sums a hair short of it), the last non-empty one: keep everything that takes part.
    int first = INT_MAX, last = -1;
    value_t first_before = value_t(0), last_before = value_t(0);
    for (int j = 0; j < per; ++j) {
      int const pos = int(threadIdx.x) * per + j;
      value_t const after = cum + v[j];
      if (v[j] > value_t(0)) {
        if (first == INT_MAX && after >= remaining) {
          first = pos;
          first_before = cum;
        }
        last = pos;
        last_before = cum;
      }
      cum = after;
    }
    // Positions are < 2^11: one u32 reduction carries both (min of first, max of last).
    std::uint32_t const packed_first = std::uint32_t(first == INT_MAX ? 0xFFFF : first);
    std::uint32_t const best_first = std::uint32_t(
        block_reduce(c.s, int(packed_first), [](int a, int b) { return a < b ? a : b; }));
    int const best_last = block_reduce(c.s, last, [](int a, int b) { return a > b ? a : b; });
    int const chosen = best_first != 0xFFFF ? int(best_first) : (best_last >= 0 ? best_last : 0);
    bool const mine = chosen / per == int(threadIdx.x);
    if (mine) {
      value_t const before = chosen == first ? first_before : last_before;
      if constexpr (Mass) {
        c.s.chosen_before = __float_as_uint(before);
      } else {
        c.s.chosen_before = before;
      }
    }
    __syncthreads();
    value_t before;
    if constexpr (Mass) {
      before = __uint_as_float(c.s.chosen_before);
      remaining = sampling_math::add_rn(remaining, -before);
    } else {
      before = c.s.chosen_before;
      remaining -= before;
    }
    __syncthreads();  // chosen_before is written again in the next round
    std::uint32_t const bin = std::uint32_t(bins - 1 - chosen);
    prefix |= bin << d.shift;
    mask |= std::uint32_t(bins - 1) << d.shift;
  }
  return prefix;
}

// The n largest raw logits of the row (descending, lowest index first among equals), written by
// block 0 as raw logprobs. `threshold` is the n-th largest key: every key above it is taken (fewer
// than n of them) and, of the keys equal to it, the lowest-indexed ones. Each warp walks a
// contiguous range in index order with ballots, so its list is in index order and holds at most
// (n - 1) keys above plus n equal ones; the block and then block 0 concatenate in the same order.
__device__ inline void gather_top_n(sampling_ctx& c, sampling_params const& p, std::int64_t row,
                                    int n, std::uint32_t threshold, float raw_max, float log_sum) {
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  int const per_warp =
      (c.len + sampling_traits::warps * 32 - 1) / (sampling_traits::warps * 32) * 32;
  int const first = warp * per_warp, last = min(c.len, first + per_warp);
  unsigned const lower_lanes = (1u << lane) - 1u;
  int count = 0, equal = 0;
  for (int base = first; base < last; base += 32) {
    int const i = base + lane;
    std::uint32_t const key = i < last ? sampling_math::order_key(c.vals[i]) : 0u;
    bool const above = i < last && key > threshold, same = i < last && key == threshold;
    unsigned const same_mask = __ballot_sync(0xFFFF'FFFFu, same);
    bool const keep = above || (same && equal + __popc(same_mask & lower_lanes) < n);
    unsigned const keep_mask = __ballot_sync(0xFFFF'FFFFu, keep);
    if (keep) {
      int const at = count + __popc(keep_mask & lower_lanes);
      if (at < sampling_traits::list_capacity)
        c.s.warp_list[warp][at] = {key, std::int32_t(c.begin + i)};
    }
    count += __popc(keep_mask);
    equal = min(n, equal + __popc(same_mask));
  }
  if (lane == 0) c.s.warp_count[warp] = min(count, sampling_traits::list_capacity);
  __syncthreads();
  if (threadIdx.x == 0) {
    int out = 0, kept_equal = 0;
    for (int w = 0; w < sampling_traits::warps; ++w) {
      for (int k = 0; k < c.s.warp_count[w]; ++k) {
        top_entry const e = c.s.warp_list[w][k];
        if (e.key == threshold && kept_equal++ >= n) continue;
        if (out < sampling_traits::list_capacity) c.s.block_list[out++] = e;
      }
    }
    c.s.block_count = out;
  }
  c.cluster.sync();  // every block's list is complete; block 0 reads them
  ++c.epoch;
  if (c.cluster.block_rank() == 0 && threadIdx.x == 0) {
    top_entry top[sampling_max_logprobs];
    int above = 0, total_equal = 0;
    top_entry equal_entries[sampling_max_logprobs];
    for (unsigned rank = 0; rank < sampling_traits::cluster; ++rank) {
      sampling_shared const* remote = c.cluster.map_shared_rank(&c.s, rank);
      for (int k = 0; k < remote->block_count; ++k) {
        top_entry const e = remote->block_list[k];
        if (e.key > threshold) {
          if (above < n) top[above++] = e;
        } else if (total_equal < n) {
          equal_entries[total_equal++] = e;
        }
      }
    }
    // Insertion sort of the keys above: descending key, ascending index (at most 19 of them).
    for (int k = 1; k < above; ++k) {
      top_entry const e = top[k];
      int j = k;
      for (; j > 0 &&
             (top[j - 1].key < e.key || (top[j - 1].key == e.key && top[j - 1].index > e.index));
           --j)
        top[j] = top[j - 1];
      top[j] = e;
    }
    for (int k = 0; above < n && k < total_equal; ++k) top[above++] = equal_entries[k];
    std::int32_t* ids = p.top_ids + row * sampling_max_logprobs;
    float* logprobs = p.top_logprobs + row * sampling_max_logprobs;
    for (int k = 0; k < above; ++k) {
      ids[k] = top[k].index;
      logprobs[k] = (sampling_math::key_value(top[k].key) - raw_max) - log_sum;
    }
  }
}

}  // namespace lightcore::kernels::detail
