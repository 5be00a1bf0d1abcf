// sampling: the candidate path of the CUDA kernel (sampling.cuh) for rows with top-k or top-p:
// the tokens a filter can keep are a small subset of the row, so one counting pass finds a level
// z >= z_max - gap that provably holds every kept token, the blocks compact that level, and
// block 0 runs the selects and the race on the list alone (block-local histograms, no cluster
// barrier). Rows where no level qualifies take the exact path over the whole row.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/sampling/sampling_cluster.cuh"

namespace lightcore::kernels::detail {

// The smallest float a with fl(a / t) >= zc, so that l >= a exactly when z = l / t >= zc
// (division by t > 0 rounds monotonically). false, and the level is not used, when zc * t is not
// finite or a few ulps do not bracket the bound.
__device__ inline bool z_level_bound(float zc, float t, float& a) {
  float e = __fmul_rn(zc, t);
  if (!(t > 0.0f) || !isfinite(t) || !isfinite(e)) return false;
  for (int step = 0; __fdiv_rn(e, t) < zc; ++step) {
    if (step == 4) return false;
    e = nextafterf(e, INFINITY);
  }
  for (int step = 0; step < 4; ++step) {
    float const below = nextafterf(e, -INFINITY);
    if (__fdiv_rn(below, t) < zc) {
      a = e;
      return true;
    }
    e = below;
  }
  return false;
}

// 2^x by the SFU (~2 ulp): the weights that size the candidate levels and the top-p goal of a
// whole row; the kept tokens' own weights use sampling_math::exp_nonpositive.
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The row's level statistics in every thread: each block sums its threads' in a fixed order,
// publishes them, and every block combines the cluster's in rank order (the same bits in all).
__device__ inline level_stats exchange_level_stats(sampling_ctx& c, level_stats v) {
  using traits = sampling_traits;
  for (int offset = 16; offset > 0; offset /= 2) {
#pragma unroll
    for (int l = 0; l < traits::levels; ++l) {
      v.count[l] += __shfl_xor_sync(0xFFFF'FFFFu, v.count[l], offset);
      v.mass[l] =
          sampling_math::add_rn(v.mass[l], __shfl_xor_sync(0xFFFF'FFFFu, v.mass[l], offset));
    }
    v.total = sampling_math::add_rn(v.total, __shfl_xor_sync(0xFFFF'FFFFu, v.total, offset));
  }
  if (threadIdx.x % 32 == 0) c.s.warp_stats[threadIdx.x / 32] = v;
  __syncthreads();
  // Warp 0 combines, lane f the f-th word of the record: counts and mosts add (or take the
  // largest), masses add in float, each in warp then rank order.
  constexpr int words = int(sizeof(level_stats) / 4);
  static_assert(words <= 32 && sizeof(level_stats) == 4 * (3 * traits::levels + 1));
  int const f = int(threadIdx.x);
  auto const combine = [&](std::uint32_t a, std::uint32_t b) -> std::uint32_t {
    if (f < traits::levels) return a + b;
    if (f < 2 * traits::levels) return a > b ? a : b;
    return __float_as_uint(sampling_math::add_rn(__uint_as_float(a), __uint_as_float(b)));
  };
  unsigned const parity = c.epoch & 1u;
  if (f < 32) {
    std::uint32_t b =
        f < words ? reinterpret_cast<std::uint32_t const*>(&c.s.warp_stats[0])[f] : 0u;
    for (int w = 1; w < traits::warps; ++w) {
      std::uint32_t const x =
          f < words ? reinterpret_cast<std::uint32_t const*>(&c.s.warp_stats[w])[f] : 0u;
      b = combine(b, x);
    }
    // A block's "most" is its count.
    std::uint32_t const count = __shfl_sync(0xFFFF'FFFFu, b, (f + 32 - traits::levels) % 32);
    if (f >= traits::levels && f < 2 * traits::levels) b = count;
    if (f < words) reinterpret_cast<std::uint32_t*>(&c.s.stats[parity])[f] = b;
  }
  c.cluster.sync();
  ++c.epoch;
  if (f < words) {
    std::uint32_t rs = 0;
    for (unsigned rank = 0; rank < traits::cluster; ++rank) {
      auto const* remote = reinterpret_cast<std::uint32_t const*>(
          c.cluster.map_shared_rank(&c.s.stats[parity], rank));
      rs = rank == 0 ? remote[f] : combine(rs, remote[f]);
    }
    reinterpret_cast<std::uint32_t*>(&c.s.row_stats)[f] = rs;
  }
  __syncthreads();
  return c.s.row_stats;
}

// The radix digit of list_select: 12 bits, a histogram over both halves of sampling_shared::hist.
inline constexpr int list_digit_bits = 12;
inline constexpr int list_bins = 1 << list_digit_bits;
static_assert(list_bins == 2 * sampling_traits::max_bins &&
              list_bins % sampling_traits::threads == 0);

// cluster_select on a list z[0, n) in this block's shared memory, with block-local histograms
// and the same choice of bin. The keys of the list lie in [key_lo, key_hi]; the digits are of
// key - key_lo, so that the first round spreads the candidates (which share their sign and
// exponent bits) over its bins instead of piling them, and their atomics, onto a few. With Mass
// the goal is a fraction of given_total when that is >= 0, else of the mass that takes part.
template <bool Mass>
__device__ std::uint32_t list_select(sampling_shared& s, float const* z, int n, float goal,
                                     std::uint32_t goal_count, std::uint32_t floor_key, float v_max,
                                     float given_total, std::uint32_t key_lo,
                                     std::uint32_t key_hi) {
  using value_t = std::conditional_t<Mass, float, std::uint32_t>;
  constexpr int per = list_bins / sampling_traits::threads;
  std::uint32_t prefix = 0, mask = 0;
  value_t remaining = Mass ? value_t(0) : value_t(goal_count);
  std::uint32_t* hist = &s.hist[0][0];
  int const width = key_hi > key_lo ? 32 - __clz(int(key_hi - key_lo)) : 0;  // bits of offsets
#pragma unroll 1
  for (int high = width; high > 0; high -= list_digit_bits) {
    int const bits = min(high, list_digit_bits), shift = high - bits;
    int const bins = 1 << bits;
    for (int i = int(threadIdx.x); i < list_bins; i += sampling_traits::threads) hist[i] = 0;
    __syncthreads();
    for (int i = int(threadIdx.x); i < n; i += sampling_traits::threads) {
      float const v = z[i];
      std::uint32_t const key = sampling_math::order_key(v);
      std::uint32_t const offset = key - key_lo;
      if (key < floor_key || (offset & mask) != prefix) continue;
      std::uint32_t const bin = (offset >> shift) & std::uint32_t(bins - 1);
      if constexpr (Mass) {
        atomicAdd(reinterpret_cast<float*>(&hist[bin]), sampling_math::exp_nonpositive(v - v_max));
      } else {
        atomicAdd(&hist[bin], 1u);
      }
    }
    __syncthreads();
    // Thread t takes the positions [t * per, (t + 1) * per) counted from the top bin of the
    // 4096 down; the digit's bins are the last `bins` positions' complement (zeros above them).
    value_t v[per];
    value_t chunk = value_t(0);
#pragma unroll
    for (int j = 0; j < per; ++j) {
      std::uint32_t const word = hist[list_bins - 1 - (int(threadIdx.x) * per + j)];
      if constexpr (Mass) {
        v[j] = __uint_as_float(word);
      } else {
        v[j] = word;
      }
      chunk = chunk + v[j];
    }
    value_t total;
    value_t cum = block_exclusive_scan(s, chunk, total);
    if constexpr (Mass) {
      if (high == width)
        remaining = sampling_math::mul_rn(goal, given_total >= 0.0f ? given_total : total);
    }
    int first = INT_MAX, last = -1;
    value_t first_before = value_t(0), last_before = value_t(0);
#pragma unroll
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
    std::uint32_t const packed_first = std::uint32_t(first == INT_MAX ? 0xFFFF : first);
    std::uint32_t const best_first = std::uint32_t(
        block_reduce(s, int(packed_first), [](int a, int b) { return a < b ? a : b; }));
    int const best_last = block_reduce(s, last, [](int a, int b) { return a > b ? a : b; });
    int const chosen = best_first != 0xFFFF ? int(best_first)
                       : best_last >= 0     ? best_last
                                            : list_bins - bins;
    if (chosen / per == int(threadIdx.x)) {
      value_t const before = chosen == first ? first_before : last_before;
      if constexpr (Mass) {
        s.chosen_before = __float_as_uint(before);
      } else {
        s.chosen_before = before;
      }
    }
    __syncthreads();
    if constexpr (Mass) {
      remaining = sampling_math::add_rn(remaining, -__uint_as_float(s.chosen_before));
    } else {
      remaining -= s.chosen_before;
    }
    __syncthreads();  // chosen_before and hist are written again in the next round
    std::uint32_t const bin = std::uint32_t(list_bins - 1 - chosen);
    prefix |= bin << shift;
    mask |= std::uint32_t(bins - 1) << shift;
  }
  return key_lo + prefix;
}

// What sample_candidates did: nothing (the row takes the exact path), or drew the token (in
// block 0; the other blocks have nothing left to do and may exit: block 0 no longer reads them).
inline constexpr int candidates_none = 0;
inline constexpr int candidates_drawn = 1;

// The largest list size that block 0 filters by comparing every pair (one candidate per thread,
// no histogram rounds and hence few barriers); longer lists take list_select's radix rounds.
inline constexpr int pairwise_candidates = sampling_traits::threads;
static_assert(2 * pairwise_candidates <= sampling_traits::max_bins);  // z and w in hist[1]

// The value thresholds (as order keys) that the filters put on a candidate list z[0, n) in this
// block's shared memory: top_k's alone (0 when off) and all of top_k's and top_p's (0 when
// neither is on). With top_k on, top_p's goal is a fraction of the mass top_k keeps; without, of
// row_total, the whole row's. Every key of the list lies in [key_lo, key_hi].
struct candidate_floors {
  std::uint32_t top_k;
  std::uint32_t all;
};

__device__ inline candidate_floors filter_candidates(sampling_shared& s, float const* z, int n,
                                                     sampling_request const& r, bool top_k_on,
                                                     float z_max, float row_total,
                                                     std::uint32_t key_lo, std::uint32_t key_hi) {
  namespace sm = sampling_math;
  int const tid = int(threadIdx.x);
  candidate_floors out{0u, 0u};
  if (n <= pairwise_candidates) {
    // One candidate per thread. top_k: the k-th largest z is the largest z_i that at least k
    // candidates reach; top_p: the largest z_i (of those top_k kept) whose kept mass from the
    // top, M_i = sum of w_j over kept z_j >= z_i, reaches the goal; when float sums fall a hair
    // short everywhere, every kept token stays (as in list_select).
    float* const w = reinterpret_cast<float*>(s.hist[0]);
    float const zi = tid < n ? z[tid] : __int_as_float(int(0xFF80'0000u));
    if (tid < n) w[tid] = sm::exp_nonpositive(zi - z_max);
    __syncthreads();
    float floor = __int_as_float(int(0xFF80'0000u));
    if (top_k_on) {
      std::uint32_t reach = 0;
#pragma unroll 4
      for (int j = 0; j < n; ++j) reach += z[j] >= zi ? 1u : 0u;
      float const mine_k = tid < n && reach >= std::uint32_t(r.top_k) ? zi : floor;
      floor = block_reduce(s, mine_k, op_max_f32{});
      out.top_k = sm::order_key(floor);
    }
    if (r.top_p < 1.0f) {
      // The tokens top_k kept, compacted in thread order: the pairs below are over those only.
      bool const in = tid < n && zi >= floor;
      std::uint32_t kept_n;
      std::uint32_t const at = block_exclusive_scan(s, in ? 1u : 0u, kept_n);
      float* const kz = reinterpret_cast<float*>(s.hist[1]);
      float* const kw = kz + pairwise_candidates;
      if (in) {
        kz[at] = zi;
        kw[at] = w[tid];
      }
      __syncthreads();
      float above = 0.0f, kept = 0.0f;
#pragma unroll 4
      for (int j = 0; j < int(kept_n); ++j) {
        float const zj = kz[j], wj = kw[j];
        kept = sm::add_rn(kept, wj);
        if (zj >= zi) above = sm::add_rn(above, wj);
      }
      float const goal = sm::mul_rn(r.top_p, top_k_on ? kept : row_total);
      float const mine_p = in && above >= goal ? zi : __int_as_float(int(0xFF80'0000u));
      float const bound_p = block_reduce(s, mine_p, op_max_f32{});
      if (bound_p > floor) floor = bound_p;
    }
    out.all = sm::order_key(floor);
  } else {
    if (top_k_on)
      out.top_k = list_select<false>(s, z, n, 0.0f, std::uint32_t(r.top_k), 0u, z_max, -1.0f,
                                     key_lo, key_hi);
    out.all = out.top_k;
    if (r.top_p < 1.0f)
      out.all = list_select<true>(s, z, n, r.top_p, 0u, out.top_k, z_max,
                                  top_k_on ? -1.0f : row_total, key_lo, key_hi);
  }
  return out;
}

// The exponential race over the candidates z[0, n) (ids ids[0, n)) that the filters keep: key >=
// floor_key and, with min_p, a weight >= min_p. Every thread gets the winning token.
__device__ inline std::int64_t race_candidates(sampling_shared& s, float const* z,
                                               std::int32_t const* ids, int n,
                                               sampling_request const& r, std::int32_t position,
                                               float z_max, std::uint32_t floor_key) {
  namespace sm = sampling_math;
  unsigned long long best = 0;
  for (int j = int(threadIdx.x); j < n; j += int(blockDim.x)) {
    float const v = z[j];
    if (sm::order_key(v) < floor_key) continue;
    if (r.min_p != 0.0f && !(sm::exp_nonpositive(v - z_max) >= r.min_p)) continue;
    std::int32_t const id = ids[j];
    sm::philox_out const words = sm::sampling_random_words(r.seed, position, id / 4);
    std::uint32_t const bits = (id & 3) == 0   ? words.v[0]
                               : (id & 3) == 1 ? words.v[1]
                               : (id & 3) == 2 ? words.v[2]
                                               : words.v[3];
    float const key = sm::race_key(v - z_max, sm::uniform_open(bits));
    best = op_max_u64{}(best, pack_argmax(key, id));
  }
  return unpack_index(block_reduce(s, best, op_max_u64{}));
}

// Steps 3 and 4 of a row with top-k or top-p over the penalised slices (c.vals = l), by the
// candidate path. Every block of the cluster calls it and gets the same outcome; with
// candidates_drawn the token is in block 0 (`token` is not set in the others).
__device__ inline int sample_candidates(sampling_ctx& c, sampling_params const& p,
                                        sampling_request const& r, std::int64_t row, bool top_k_on,
                                        int slice, std::int64_t& token) {
  namespace sm = sampling_math;
  using traits = sampling_traits;
  constexpr int L = traits::levels;
  int const tid = int(threadIdx.x);
  float const t = r.temperature;
  float l_max = __int_as_float(int(0xFF80'0000u));
  for (int i = tid; i < c.len; i += traits::threads) l_max = fmaxf(l_max, c.vals[i]);
  l_max = cluster_reduce(c, l_max, op_max_f32{});
  // Division by t > 0 is monotone: the largest z is the largest l's.
  float const z_max = l_max / t;
  if (!isfinite(z_max) || !(t > 0.0f)) return candidates_none;
  float bound[L];
  bool usable[L];
#pragma unroll
  for (int l = 0; l < L; ++l) {
    usable[l] = z_level_bound(sm::add_rn(z_max, -sampling_level_gap(l)), t, bound[l]);
    if (!usable[l]) bound[l] = INFINITY;
  }
  // Counting pass. The weights (top-p alone: its goal is a fraction of the whole row's mass) are
  // 2^((l - l_max) * log2(e) / t), within ~1e-6 of the exact weights.
  level_stats mine{};
  if (top_k_on) {
    for (int i = tid; i < c.len; i += traits::threads) {
      float const l = c.vals[i];
#pragma unroll
      for (int q = 0; q < L; ++q) mine.count[q] += l >= bound[q] ? 1u : 0u;
    }
  } else {
    float const coef = 1.44269504088896341f / t;
    for (int i = tid; i < c.len; i += traits::threads) {
      float const l = c.vals[i];
      float const w = fast_exp2((l - l_max) * coef);
      mine.total += w;
#pragma unroll
      for (int q = 0; q < L; ++q) {
        if (l >= bound[q]) {
          mine.count[q] += 1u;
          mine.mass[q] += w;
        }
      }
    }
  }
  level_stats const all = exchange_level_stats(c, mine);
  // The narrowest level that holds the answer and fits. top-k: at least k tokens have z >= the
  // level's zc, so the k-th largest z is >= zc and every token the filters keep is a candidate;
  // top-p alone: the candidates' mass reaches the goal with a margin for summation order.
  int const gather_cap = slice / 2;
  float const goal = sm::mul_rn(r.top_p, all.total);
  float const need = sm::add_rn(goal, sm::mul_rn(all.total, 0x1p-10f));
  int level = -1;
#pragma unroll
  for (int q = L - 1; q >= 0; --q) {
    bool const fits = usable[q] && all.most[q] <= std::uint32_t(traits::block_candidates) &&
                      all.count[q] <= std::uint32_t(gather_cap);
    bool const holds = top_k_on ? all.count[q] >= std::uint32_t(r.top_k) : all.mass[q] >= need;
    if (fits && holds) level = q;
  }
  if (level < 0) return candidates_none;
  float a = bound[0];
  std::uint32_t my_count = mine.count[0];
#pragma unroll
  for (int q = 1; q < L; ++q) {
    if (q == level) {
      a = bound[q];
      my_count = mine.count[q];
    }
  }
  // Compaction in thread order (the order is fixed, so the sums over the list are too), into the
  // histogram buffers: z, then the token id.
  std::uint32_t block_total;
  std::uint32_t at = block_exclusive_scan(c.s, my_count, block_total);
  float* const list_z = reinterpret_cast<float*>(c.s.hist[0]);
  auto* const list_id = reinterpret_cast<std::int32_t*>(c.s.hist[1]);
  for (int i = tid; i < c.len; i += traits::threads) {
    float const l = c.vals[i];
    if (l >= a) {
      list_z[at] = l / t;
      list_id[at] = std::int32_t(c.begin + i);
      ++at;
    }
  }
  if (tid == 0) c.s.candidates = int(block_total);
  c.cluster.sync();  // every list is complete; block 0 reads them, the others are done
  ++c.epoch;
  if (c.cluster.block_rank() != 0) {
    c.cluster.sync();  // block 0 has gathered every list: this block may exit
    return candidates_drawn;
  }

  // Block 0: the row's candidates into its own slice (no longer needed), in rank order.
  float* const z = c.vals;
  auto* const ids = reinterpret_cast<std::int32_t*>(c.vals + gather_cap);
  int n = 0;
  for (unsigned rank = 0; rank < traits::cluster; ++rank) {
    sampling_shared const* remote = c.cluster.map_shared_rank(&c.s, rank);
    int const count = remote->candidates;
    auto const* rz = reinterpret_cast<float const*>(remote->hist[0]);
    auto const* rid = reinterpret_cast<std::int32_t const*>(remote->hist[1]);
    for (int j = tid; j < count; j += traits::threads) {
      z[n + j] = rz[j];
      ids[n + j] = rid[j];
    }
    n += count;
  }
  c.cluster.sync();  // the other blocks leave; also orders the list for every thread of block 0
  // Every candidate has z in [the level's zc, z_max]: keys in [key_lo, key_hi].
  std::uint32_t const key_lo = sm::order_key(a / t <= z_max ? a / t : z_max);
  candidate_floors const floors =
      filter_candidates(c.s, z, n, r, top_k_on, z_max, all.total, key_lo, sm::order_key(z_max));
  token = race_candidates(c.s, z, ids, n, r, p.positions[row], z_max, floors.all);
  return candidates_drawn;
}

// Steps 3 and 4 over the whole row (every block of the cluster): z = l / T in place, the top-k
// and top-p thresholds by cluster-wide radix selects, the race over every kept token.

}  // namespace lightcore::kernels::detail
