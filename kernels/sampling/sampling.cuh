// sampling: the CUDA kernels and their launcher. Only instantiations/sampling_f32.cu includes this;
// the dispatch (sampling_cuda.cu) sees the declaration in sampling.hpp alone.
//
// Plan: three launches of fixed geometry (a function of batch and vocab alone).
//   launch 1 (sampling_chunks.cuh) streams every row once, one small block per 4096-logit chunk:
//            penalties, the penalised argmax and, for rows with filters, the chunk's candidates
//            (l >= a floor chosen from 8 levels below the chunk's max) into the workspace
//   launch 2 (sampling_chunks.cuh), one block per row: greedy merges the chunk argmaxes; rows with
//            top_k / top_p / min_p gather the candidates at or above the highest chunk floor (top_k
//            rows: or above a lower bound on the k-th largest from the chunks' level counts, if
//            higher), run the filters and the race on them, and keep the answer only where the
//            thresholds prove that no unlisted token is kept; other rows are listed for launch 3
//   launch 3 (below), the exact path: a persistent grid of 8-block clusters over the listed rows
//            (rows with logprobs, temperature-only rows, rows whose candidates prove nothing).
// The exact path: one cluster of 8 blocks per row. Block r of
// the cluster owns the logits [r * S, (r + 1) * S) of its row (S = vocab / 8 rounded up to 4) and
// keeps them in shared memory, so that the row is read from HBM exactly once and every later
// pass reads shared memory (~65 KB per block at vocab 129280). Cross-block results go through
// distributed shared memory: each block publishes a partial, barrier.cluster, every block
// combines the 8 partials in rank order, so all 8 take the same decisions bit for bit.
//   pass 1  HBM -> shared (cp.async), the raw max for rows with logprobs  (all rows)
//   pass 2  raw sum of exp, then top-n by radix select + ordered gather  (rows with logprobs)
//   pass 3  penalties in shared memory (bitmap of the block's ids)       (rows with history)
//   pass 4  greedy: argmax; else z = l / T in place and z_max
//   pass 5  (rows with top_k or top_p) the candidate path, sampling_candidates.cuh: a max pass,
//           then one pass counting the tokens with z >= z_max - gap for 5 gaps (and, for top_p
//           alone, their weights and the row's), one cluster exchange picks the narrowest level
//           that provably holds every kept token and fits; the blocks compact it, block 0
//           gathers it and runs top_k, top_p, min_p and the race on that list alone
//   pass 5' (other rows, and rows whose candidates do not fit: flat rows, top_k in the
//           thousands) the exact path: top_k by a 3-digit radix select (11 + 11 + 10 bits) of
//           the order-preserving keys over the whole row, histograms in shared memory summed
//           across the cluster; top_p the same select weighted by exp(z - z_max); the race:
//           Philox + two logs for each kept token (one Philox call per 4 tokens), argmax
// The single-launch history (this kernel alone: 1001 us, then 209 us for top-k 50 + top-p 0.9 at
// batch 256) and the two-launch prediction and measurements are in docs/perf/sampling.md.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "kernels/sampling/sampling.hpp"
#include "kernels/sampling/sampling_candidates.cuh"
#include "kernels/sampling/sampling_chunks.cuh"
#include "kernels/sampling/sampling_cluster.cuh"
#include "kernels/sampling/sampling_math.hpp"
#include "kernels/sampling/sampling_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

__device__ inline std::int64_t sample_exact(sampling_ctx& c, sampling_params const& p,
                                            sampling_request const& r, std::int64_t row) {
  namespace sm = sampling_math;
  using traits = sampling_traits;
  int const tid = int(threadIdx.x), len = c.len;
  std::int64_t const begin = c.begin;
  float const neg_inf = __int_as_float(int(0xFF80'0000u));
  // Pass 4: z = l / T in place, z_max.
  float z_max = neg_inf;
  for (int i = tid; i < len; i += traits::threads) {
    float const z = c.vals[i] / r.temperature;
    c.vals[i] = z;
    z_max = fmaxf(z_max, z);
  }
  z_max = cluster_reduce(c, z_max, op_max_f32{});  // its barrier also orders the z writes
  // Passes 5 and 6: the value thresholds of top_k and top_p, as order keys.
  std::uint32_t floor_key = 0;
  if (r.top_k > 0 && r.top_k < p.vocab)
    floor_key = cluster_select<false>(c, 0.0f, std::uint32_t(r.top_k), 0u, z_max);
  if (r.top_p < 1.0f) floor_key = cluster_select<true>(c, r.top_p, 0u, floor_key, z_max);
  // Pass 7: the race over the kept tokens, four neighbours per Philox call.
  unsigned long long best = 0;
  std::int32_t const position = p.positions[row];
  for (int g = tid; g * 4 < len; g += traits::threads) {
    float z[4];
    bool kept[4];
    bool any = false;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      int const i = g * 4 + e;
      z[e] = i < len ? c.vals[i] : 0.0f;
      kept[e] = i < len && sm::order_key(z[e]) >= floor_key &&
                (r.min_p == 0.0f || sm::exp_nonpositive(z[e] - z_max) >= r.min_p);
      any = any || kept[e];
    }
    if (!any) continue;
    sm::philox_out const words = sm::sampling_random_words(r.seed, position, (begin + g * 4) / 4);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!kept[e]) continue;
      float const key = sm::race_key(z[e] - z_max, sm::uniform_open(words.v[e]));
      best = op_max_u64{}(best, pack_argmax(key, begin + g * 4 + e));
    }
  }
  return unpack_index(cluster_reduce(c, best, op_max_u64{}));
}

// One row on the exact path, by every block of the cluster; the blocks leave it in step (no block
// reads another's shared memory after it), so the cluster can go on to its next row.
__device__ inline void sample_row_exact(sampling_ctx& c, sampling_params const& p,
                                        std::int64_t const row, int const slice,
                                        bool const vector_loads) {
  namespace sm = sampling_math;
  using traits = sampling_traits;
  cg::cluster_group& cluster = c.cluster;
  int const rank = int(cluster.block_rank());
  std::int64_t const begin = c.begin;
  int const len = c.len;
  sampling_request const r = p.requests[row];
  int const tid = int(threadIdx.x);
  float const* logits = p.logits + row * p.logits_stride + begin;
  float const neg_inf = __int_as_float(int(0xFF80'0000u));

  // Pass 1: the slice into shared memory. 16-byte rows: cp.async, the whole slice in flight at
  // once and no registers staged, while the block fetches its history ids (their latency hides
  // behind the slice's); then the raw max only where logprobs need it. Other rows: scalar loads.
  std::int64_t const h_end = min64(max(p.history_offsets[row + 1], 0), p.history_total);
  std::int64_t const h_begin = min64(max(p.history_offsets[row], 0), h_end);
  bool const want_raw = r.num_logprobs >= 0;
  float raw_max = neg_inf;
  constexpr int unroll = 4;
  if (vector_loads) {
    int const quads = len / 4;
    auto const* src = reinterpret_cast<float4 const*>(logits);
    for (int q = tid; q < quads; q += traits::threads) {
      auto const to = static_cast<unsigned>(__cvta_generic_to_shared(c.vals + 4 * q));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(src + q) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  } else {
    for (int i0 = tid; i0 < len; i0 += unroll * traits::threads) {
      float x[unroll];
#pragma unroll
      for (int u = 0; u < unroll; ++u) {
        int const i = i0 + u * traits::threads;
        if (i < len) x[u] = __ldcs(logits + i);
      }
#pragma unroll
      for (int u = 0; u < unroll; ++u) {
        int const i = i0 + u * traits::threads;
        if (i >= len) continue;
        c.vals[i] = x[u];
        raw_max = fmaxf(raw_max, x[u]);
      }
    }
  }
  int const words = (len + 31) / 32;
  for (int i = tid; i < words; i += traits::threads) c.bitmap[i] = 0;
  // The thread's first history id (most rows have fewer ids than threads), -1 when none.
  std::int32_t const first_id = h_begin + tid < h_end ? p.history_ids[h_begin + tid] : -1;
  auto const history_id = [&](std::int64_t j) {
    return j == h_begin + tid ? first_id : p.history_ids[j];
  };
  if (vector_loads) {
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    if (want_raw) {
      auto const* q4 = reinterpret_cast<float4 const*>(c.vals);
      for (int q = tid; q < len / 4; q += traits::threads) {
        float4 const x = q4[q];
        raw_max = fmaxf(raw_max, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
      }
    }
  }
  __syncthreads();

  // Pass 2: raw log-sum-exp and the top-n, before anything changes the slice.
  float log_sum = 0.0f;
  // Clamped: the device cannot reject an out-of-range request, but must not write past the row.
  int const n = int(min64(min(r.num_logprobs, sampling_max_logprobs), p.vocab));
  if (r.num_logprobs >= 0) {
    raw_max = cluster_reduce(c, raw_max, op_max_f32{});
    float sum = 0.0f;
    for (int i = tid; i < len; i += traits::threads)
      sum = sm::add_rn(sum, sm::exp_nonpositive(c.vals[i] - raw_max));
    log_sum = sm::log_positive(cluster_reduce(c, sum, op_sum_f32{}));
    if (n > 0) {
      std::uint32_t const threshold = cluster_select<false>(c, 0.0f, std::uint32_t(n), 0u, 0.0f);
      gather_top_n(c, p, row, n, threshold, raw_max, log_sum);
    }
  }

  // Pass 3: penalties. Ids outside [0, vocab) fall outside every slice and are skipped; offsets
  // are clamped to the history so that bad ones cannot read out of bounds.
  bool const penalised =
      r.repetition_penalty != 1.0f || r.presence_penalty != 0.0f || r.frequency_penalty != 0.0f;
  if (penalised && h_end > h_begin) {
    for (std::int64_t j = h_begin + tid; j < h_end; j += traits::threads) {
      std::int64_t const local = std::int64_t(history_id(j)) - begin;
      if (local < 0 || local >= len) continue;
      std::uint32_t const bit = 1u << (local % 32);
      if (atomicOr(&c.bitmap[local / 32], bit) & bit) continue;  // not the first occurrence
      float v = c.vals[local];
      v = v > 0.0f ? v / r.repetition_penalty : sm::mul_rn(v, r.repetition_penalty);
      c.vals[local] = sm::add_rn(v, -r.presence_penalty);
    }
    __syncthreads();
    if (r.frequency_penalty != 0.0f) {
      for (std::int64_t j = h_begin + tid; j < h_end; j += traits::threads) {
        std::int64_t const local = std::int64_t(history_id(j)) - begin;
        if (local >= 0 && local < len) atomicAdd(&c.vals[local], -r.frequency_penalty);
      }
      __syncthreads();
    }
  }

  std::int64_t token = 0;
  bool released = false;  // the other blocks have left the cluster: no more cluster barriers
  if (r.temperature == 0.0f) {
    // Pass 4, greedy: the argmax of the penalised logits. A thread walks its tokens in index
    // order and keeps the first of its largest, so only its result is packed.
    unsigned long long best = 0;
    if (tid < len) {
      float top = c.vals[tid];
      int at = tid;
      for (int i = tid + traits::threads; i < len; i += traits::threads) {
        float const v = c.vals[i];
        if (v > top) {
          top = v;
          at = i;
        }
      }
      best = pack_argmax(top, begin + at);
    }
    token = unpack_index(cluster_reduce(c, best, op_max_u64{}));
  } else if ((r.top_k > 0 && r.top_k < p.vocab) || r.top_p < 1.0f) {
    bool const top_k_on = r.top_k > 0 && r.top_k < p.vocab;
    int const outcome = sample_candidates(c, p, r, row, top_k_on, slice, token);
    if (outcome == candidates_none) token = sample_exact(c, p, r, row);
    released = outcome == candidates_drawn;
    if (released && rank != 0) return;  // block 0 has gathered this block's list
  } else {
    token = sample_exact(c, p, r, row);
  }

  if (rank == 0) {
    if (tid == 0) {
      p.tokens[row] = std::int32_t(token);
      p.logprobs[row] = r.num_logprobs >= 0
                            ? (p.logits[row * p.logits_stride + token] - raw_max) - log_sum
                            : __int_as_float(0x7FC0'0000);  // NaN: no logprobs asked for
    }
    for (int k = max(n, 0) + tid; k < sampling_max_logprobs; k += traits::threads) {
      p.top_ids[row * sampling_max_logprobs + k] = -1;
      p.top_logprobs[row * sampling_max_logprobs + k] = neg_inf;
    }
  }
  if (!released) cluster.sync();  // no block may go on while another still reads its shared memory
}

// Launch 3, the exact path: one cluster of 8 blocks per resident cluster slot, looping over the
// rows that launch 2 listed (none, usually: the kernel then costs one short wave). AllRows (a
// batch whose every row takes the exact path, sampling_route::exact): one cluster per row, no
// launches 1 and 2.
template <class T, bool AllRows>
__global__ void __cluster_dims__(sampling_traits::cluster, 1, 1)
    __launch_bounds__(sampling_traits::threads, sampling_traits::blocks_per_sm)
        sampling_kernel(sampling_params const p, int const slice, bool const vector_loads) {
  static_assert(std::is_same_v<T, float>, "sampling reads f32 logits");
  using traits = sampling_traits;
  __shared__ sampling_shared shared;
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  cg::cluster_group cluster = cg::this_cluster();
  std::int64_t const begin = std::int64_t(cluster.block_rank()) * slice;
  sampling_ctx c{cluster,
                 shared,
                 reinterpret_cast<float*>(dynamic_shared),
                 reinterpret_cast<std::uint32_t*>(dynamic_shared + std::size_t(slice) * 4),
                 begin,
                 int(max64(0, min64(p.vocab - begin, slice))),
                 0u};
  int const clusters = int(gridDim.x / traits::cluster);
  if constexpr (AllRows) {
    for (std::int64_t row = blockIdx.x / traits::cluster; row < p.batch; row += clusters)
      sample_row_exact(c, p, int(row), slice, vector_loads);
  } else {
    sampling_workspace const ws = carve_workspace(p);
    int const rows = *ws.fallback_count;
    for (int i = int(blockIdx.x / traits::cluster); i < rows; i += clusters)
      sample_row_exact(c, p, ws.fallback_rows[i], slice, vector_loads);
  }
}

// Cluster slots of the exact kernel that the device holds at once with `shared_bytes` of dynamic
// shared memory (its persistent grid), from the kernel's resources alone. Cached per device with
// the size it was computed for (one vocab per process, in practice).
inline int exact_path_clusters(void const* kernel, std::size_t shared_bytes) {
  constexpr int max_devices = 64;
  static std::atomic<std::uint64_t> cached[max_devices] = {};  // bytes << 32 | clusters
  int device = 0;
  LC_CUDA_CHECK(cudaGetDevice(&device));
  if (device < max_devices) {
    std::uint64_t const hit = cached[device].load(std::memory_order_relaxed);
    if (hit != 0 && (hit >> 32) == shared_bytes) return int(hit & 0xFFFF'FFFFu);
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(sampling_traits::cluster * 64, 1, 1);
  config.blockDim = dim3(sampling_traits::threads, 1, 1);
  config.dynamicSmemBytes = shared_bytes;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters < 1) {
    (void)cudaGetLastError();  // not sticky: fall back to a safe count
    int sms = 0;
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    clusters = sms * sampling_traits::blocks_per_sm / sampling_traits::cluster / 2;
    if (clusters < 1) clusters = 1;
  }
  if (device < max_devices)
    cached[device].store((std::uint64_t(shared_bytes) << 32) | std::uint64_t(clusters),
                         std::memory_order_relaxed);
  return clusters;
}

// The dynamic shared memory limits of launches 2 and 3, raised per device to the largest size
// asked for so far (one vocab per process in practice: then set once, to exactly its size).
template <class T>
void raise_shared_limits(std::size_t merge_bytes, std::size_t exact_bytes) {
  constexpr int max_devices = 64;
  static std::atomic<std::size_t> raised[max_devices] = {};
  static std::mutex raising;
  int device = 0;
  LC_CUDA_CHECK(cudaGetDevice(&device));
  LC_CHECK(device < max_devices, "sample on CUDA supports device ordinals < " << max_devices);
  if (raised[device].load(std::memory_order_acquire) >= exact_bytes) return;
  std::lock_guard<std::mutex> const lock(raising);
  if (raised[device].load(std::memory_order_relaxed) >= exact_bytes) return;
  LC_CUDA_CHECK(cudaFuncSetAttribute(
      sampling_merge_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(merge_bytes)));
  LC_CUDA_CHECK(cudaFuncSetAttribute(
      sampling_kernel<T, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(exact_bytes)));
  LC_CUDA_CHECK(cudaFuncSetAttribute(
      sampling_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(exact_bytes)));
  raised[device].store(exact_bytes, std::memory_order_release);
}

template <class T>
void launch_sampling(sampling_params const& p, CUstream_st* stream) {
  using traits = sampling_traits;
  LC_CHECK(p.vocab <= sampling_cuda_max_vocab,
           "sample on CUDA supports vocab <= " << sampling_cuda_max_vocab << "; got " << p.vocab);
  LC_CHECK(p.workspace != nullptr, "sample on CUDA needs its workspace");
  bool const vector_loads = p.vocab % 4 == 0 && p.logits_stride % 4 == 0 &&
                            reinterpret_cast<std::uintptr_t>(p.logits) % 16 == 0;
  // The slice of the exact path is a multiple of 4 so that 16-byte loads stay aligned in every
  // block; its shared memory holds the slice and its history bitmap.
  auto const slice_of = [](std::int64_t vocab) {
    return (vocab + traits::cluster * 4 - 1) / (traits::cluster * 4) * 4;
  };
  auto const exact_bytes = [](std::int64_t slice) {
    return std::size_t(slice) * 4 + std::size_t((slice + 31) / 32) * 4;
  };
  std::size_t const merge_bytes = std::size_t(merge_capacity) * 8;
  std::int64_t const slice = slice_of(p.vocab);
  std::size_t const bytes = exact_bytes(slice);
  raise_shared_limits<T>(merge_bytes, bytes);
  if (p.exact_only) {
    // One cluster per row (batch <= sampling_max_batch keeps the grid in range).
    auto const blocks = unsigned(p.batch * traits::cluster);
    sampling_kernel<T, true>
        <<<blocks, traits::threads, bytes, stream>>>(p, int(slice), vector_loads);
    LC_CUDA_CHECK_LAUNCH();
    return;
  }
  // Launch 1: every (row, chunk).
  auto const chunks = unsigned((p.vocab + sampling_chunk - 1) / sampling_chunk);
  sampling_chunk_kernel<T>
      <<<unsigned(p.batch) * chunks, chunk_traits::threads, 0, stream>>>(p, vector_loads);
  LC_CUDA_CHECK_LAUNCH();
  // Launch 2: every row.
  sampling_merge_kernel<T><<<unsigned(p.batch), traits::threads, merge_bytes, stream>>>(p);
  LC_CUDA_CHECK_LAUNCH();
  // Launch 3: the rows listed for the exact path.
  int const clusters =
      exact_path_clusters(reinterpret_cast<void const*>(sampling_kernel<T, false>), bytes);
  auto const blocks = unsigned(std::min<std::int64_t>(p.batch, clusters) * traits::cluster);
  sampling_kernel<T, false>
      <<<blocks, traits::threads, bytes, stream>>>(p, int(slice), vector_loads);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
