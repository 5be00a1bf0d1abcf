// sampling: the streaming launches of the CUDA sampler (sampling.cuh). Launch 1 reads every row
// once in chunks of sampling_chunk logits, many small blocks and no clusters, and writes per chunk
// a summary (the penalised argmax, a candidate floor, the chunk's mass) and the chunk's candidate
// tokens to the workspace; launch 2 merges them, one block per row, runs the filters and the race
// on the candidates, and proves that they hold every kept token. Rows it cannot prove, and rows
// these launches do not serve, are listed in the workspace for the exact cluster kernel (launch 3).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/sampling/sampling.hpp"
#include "kernels/sampling/sampling_candidates.cuh"
#include "kernels/sampling/sampling_cluster.cuh"
#include "kernels/sampling/sampling_math.hpp"
#include "kernels/sampling/sampling_params.hpp"

namespace lightcore::kernels::detail {

// One chunk of one row, as launch 1 leaves it for launch 2.
struct chunk_summary {
  unsigned long long argmax;  // pack_argmax of the chunk's largest penalised logit, lowest id
  float floor;  // the chunk's tokens with l >= floor are listed and no others; -inf: every token
  float mass;   // sum of 2^((l - l_max(chunk)) log2(e) / T) over the chunk (top-p alone), else 0
  int count;    // listed candidates; -1: no level fits the list (the row takes the exact path)
  int unused;
  std::uint16_t levels[8];  // tokens in levels 0..7 (cumulative); 0 where the bins are unusable
};
static_assert(sizeof(chunk_summary) == sampling_chunk_summary_bytes);

struct chunk_candidate {
  float l;  // penalised logit
  std::int32_t id;
};

// The workspace, carved as sampling_workspace_bytes sizes it.
struct sampling_workspace {
  int* fallback_count;          // rows listed for the exact path
  int* fallback_rows;           // [batch]
  chunk_summary* summaries;     // [batch, chunks]
  chunk_candidate* candidates;  // [batch, chunks, sampling_chunk_candidates]
  int chunks;
};

__host__ __device__ inline sampling_workspace carve_workspace(sampling_params const& p) {
  auto const round16 = [](std::int64_t x) { return (x + 15) / 16 * 16; };
  int const chunks = int((p.vocab + sampling_chunk - 1) / sampling_chunk);
  unsigned char* at = p.workspace;
  sampling_workspace w;
  w.fallback_count = reinterpret_cast<int*>(at);
  at += 16;
  w.fallback_rows = reinterpret_cast<int*>(at);
  at += round16(p.batch * 4);
  w.summaries = reinterpret_cast<chunk_summary*>(at);
  at += round16(p.batch * chunks * sampling_chunk_summary_bytes);
  w.candidates = reinterpret_cast<chunk_candidate*>(at);
  w.chunks = chunks;
  return w;
}

// What the streaming launches do with a row: sampling_row_kind (sampling_params.hpp).
inline constexpr int row_exact = sampling_row_exact;
inline constexpr int row_greedy = sampling_row_greedy;
inline constexpr int row_filtered = sampling_row_filtered;

__device__ inline int streamed_row_kind(sampling_request const& r, std::int64_t vocab) {
  return sampling_row_kind(r, vocab);
}

// Launch 2's gather capacity: the candidates of a row at or above the highest chunk floor, held in
// shared memory (z, then the ids). Rows with more take the exact path.
inline constexpr int merge_capacity = 8192;

struct chunk_traits {
  static constexpr int threads = 256;
  static constexpr int warps = threads / 32;
  static constexpr int blocks_per_sm = 8;  // ~17 KB of shared memory, <= 32 registers
  static constexpr int levels = 8;         // candidate levels: one 4-bit counter each per word
  static constexpr int quads_per_thread = int(sampling_chunk) / 4 / threads;
};
static_assert(chunk_traits::quads_per_thread == 4, "two 4-bit counter words of 8 logits each");

// The level index of a logit, as a shift: bin(l) = round(c - l * s) - 2^23 * 1.5 (one fma; the
// floats of [2^23, 2^24) are the integers, so the rounding to an integer is the fma's own), times
// 4, as the unsigned difference of the float's bits. With c chosen so that bin(l_max) == 0, every
// logit of the chunk has bin >= 0 and the bins grow as l falls, one per chunk_level_width z units:
// cumulative level q (bin <= q) spans a gap of [q, q + 1] bin widths below the chunk's max. The
// function is monotone in l (an fma with a negative slope, then the bits of a positive float), so
// level q is exactly {l >= floor} for the floor that launch 1 searches for. -inf and NaN logits
// (and the padding) get bins beyond every level.
inline constexpr float chunk_magic = 12582912.0f;    // 1.5 * 2^23
inline constexpr float chunk_level_width = 1.5137f;  // z units per bin; odd: floors off grids
inline constexpr std::uint32_t chunk_magic_bits = 0x4B40'0000u;

__device__ inline std::uint32_t chunk_bin_shift(float l, float neg_s, float c) {
  return __float_as_uint(__fmaf_rn(l, neg_s, c)) * 4u - chunk_magic_bits * 4u;
}

// 1 << shift with PTX's clamp: shifts of 32 and more give 0 (bins past the last counter).
__device__ inline std::uint32_t one_shifted(std::uint32_t shift) {
  std::uint32_t r;
  asm("shl.b32 %0, %1, %2;" : "=r"(r) : "r"(1u), "r"(shift));
  return r;
}

// The bins of a chunk whose largest logit is l_max, at temperature t: s (bins per logit unit)
// and c (bin(l_max) == 0). false where they are unusable: the row's max or temperature out of the
// range where the bins are integers (a chunk's list then falls back to the exact path). Launch 2
// recomputes them from the same inputs, bit for bit.
__device__ inline bool chunk_anchor(float l_max, float t, float& s, float& c) {
  s = __fdiv_rn(1.0f, __fmul_rn(chunk_level_width, t));
  float const y = __fmul_rn(l_max, s);
  c = __fadd_rn(chunk_magic, y);
  if (__fmaf_rn(l_max, -s, c) < chunk_magic) c = __fadd_rn(c, 1.0f);
  return isfinite(s) && s > 0.0f && fabsf(y) < 0x1p22f && __fmaf_rn(l_max, -s, c) == chunk_magic;
}

// Where level q of a chunk begins, to within a few ulps: (c - 1.5 * 2^23 - q - 1/2) / s, with
// the numerator exact (c is an integer below 2^24) and 1 / s taken as width * t (a multiply, not
// a division: within two roundings of it).
__device__ inline float chunk_level_start(float c, float t, int q) {
  return __fmul_rn(__fadd_rn(c, -chunk_magic) - (float(q) + 0.5f), __fmul_rn(chunk_level_width, t));
}

// Bytes [0, n) of a word set, the others clear (n in [0, 4]).
__device__ inline std::uint32_t low_bytes(int n) { return n >= 4 ? ~0u : (1u << (8 * n)) - 1u; }

// Launch 1: one block per (row, chunk), blockIdx.x = row * chunks + chunk.
template <class T>
__global__ void __launch_bounds__(chunk_traits::threads, chunk_traits::blocks_per_sm)
    sampling_chunk_kernel(sampling_params const p, bool const vector_loads) {
  namespace sm = sampling_math;
  using traits = chunk_traits;
  constexpr int L = traits::levels;
  constexpr unsigned full = 0xFFFF'FFFFu;
  __shared__ __align__(16) float vals[sampling_chunk];
  __shared__ std::uint32_t bitmap[sampling_chunk / 32];
  __shared__ unsigned long long warp_best[traits::warps];
  __shared__ std::uint32_t warp_bins[traits::warps][L];
  __shared__ std::uint32_t warp_listed[traits::warps];
  __shared__ float warp_mass[traits::warps];
  sampling_workspace const ws = carve_workspace(p);
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  std::int64_t const row = blockIdx.x / unsigned(ws.chunks);
  int const chunk = int(blockIdx.x % unsigned(ws.chunks));
  if (blockIdx.x == 0 && tid == 0) *ws.fallback_count = 0;  // launch 2 appends, launch 3 reads
  sampling_request const r = p.requests[row];
  int const kind = streamed_row_kind(r, p.vocab);
  if (kind == row_exact) return;
  std::int64_t const begin = std::int64_t(chunk) * sampling_chunk;
  int const len = int(min64(sampling_chunk, p.vocab - begin));
  float const* src = p.logits + row * p.logits_stride + begin;

  // The chunk into shared memory while the block fetches the row's history.
  if (vector_loads) {
    auto const* src4 = reinterpret_cast<float4 const*>(src);
    for (int q = tid; q < len / 4; q += traits::threads) {
      auto const to = static_cast<unsigned>(__cvta_generic_to_shared(vals + 4 * q));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(src4 + q) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  } else {
    for (int i = tid; i < len; i += traits::threads) vals[i] = __ldcs(src + i);
  }
  // The passes below read whole quads: the tail of a chunk whose length is not a multiple of 4
  // is padded with -inf (never a maximum, never in a level).
  int const quads = (len + 3) / 4;
  float const neg_inf = __int_as_float(int(0xFF80'0000u));
  if (len + tid < 4 * quads) vals[len + tid] = neg_inf;
  for (int i = tid; i < sampling_chunk / 32; i += traits::threads) bitmap[i] = 0;
  std::int64_t const h_end = min64(max(p.history_offsets[row + 1], 0), p.history_total);
  std::int64_t const h_begin = min64(max(p.history_offsets[row], 0), h_end);
  std::int32_t const first_id = h_begin + tid < h_end ? p.history_ids[h_begin + tid] : -1;
  auto const history_id = [&](std::int64_t j) {
    return j == h_begin + tid ? first_id : p.history_ids[j];
  };
  if (vector_loads) asm volatile("cp.async.wait_group 0;" ::: "memory");
  __syncthreads();

  // Penalties, as in the exact path: first occurrences by a bitmap, then every occurrence.
  bool const penalised =
      r.repetition_penalty != 1.0f || r.presence_penalty != 0.0f || r.frequency_penalty != 0.0f;
  if (penalised && h_end > h_begin) {
    for (std::int64_t j = h_begin + tid; j < h_end; j += traits::threads) {
      std::int64_t const local = std::int64_t(history_id(j)) - begin;
      if (local < 0 || local >= len) continue;
      std::uint32_t const bit = 1u << (local % 32);
      if (atomicOr(&bitmap[local / 32], bit) & bit) continue;
      float v = vals[local];
      v = v > 0.0f ? v / r.repetition_penalty : sm::mul_rn(v, r.repetition_penalty);
      vals[local] = sm::add_rn(v, -r.presence_penalty);
    }
    __syncthreads();
    if (r.frequency_penalty != 0.0f) {
      for (std::int64_t j = h_begin + tid; j < h_end; j += traits::threads) {
        std::int64_t const local = std::int64_t(history_id(j)) - begin;
        if (local >= 0 && local < len) atomicAdd(&vals[local], -r.frequency_penalty);
      }
      __syncthreads();
    }
  }

  auto const* const quad = reinterpret_cast<float4 const*>(vals);
  chunk_summary* const summary = ws.summaries + row * ws.chunks + chunk;
  if (kind == row_greedy) {
    // The penalised argmax: each thread walks its quads in index order and keeps the first of its
    // largest, then one packed reduction.
    unsigned long long best = 0;
    if (tid < quads) {
      float top = vals[4 * tid];
      int at = 4 * tid;
#pragma unroll
      for (int k = 0; k < traits::quads_per_thread; ++k) {
        int const q = tid + k * traits::threads;
        if (q >= quads) break;
        float4 const x = quad[q];
        float const e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (e[u] > top) {
            top = e[u];
            at = 4 * q + u;
          }
        }
      }
      best = pack_argmax(top, begin + at);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      unsigned long long const o = __shfl_xor_sync(full, best, offset);
      best = o > best ? o : best;
    }
    if (lane == 0) warp_best[warp] = best;
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < traits::warps; ++w) best = warp_best[w] > best ? warp_best[w] : best;
      *summary = {best, neg_inf, 0.0f, 0, 0, {}};
    }
    return;
  }

  // Rows with filters need the chunk's largest value only (launch 2 takes no index from them):
  // one max per logit, then a warp-wide max of the order keys.
  float top = neg_inf;
#pragma unroll
  for (int k = 0; k < traits::quads_per_thread; ++k) {
    int const q = tid + k * traits::threads;
    if (q >= quads) break;
    float4 const x = quad[q];
    top = fmaxf(top, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
  }
  std::uint32_t top_key = __reduce_max_sync(full, sm::order_key(top));
  if (lane == 0) warp_best[warp] = top_key;
  __syncthreads();
  top_key = std::uint32_t(warp_best[0]);
  for (int w = 1; w < traits::warps; ++w) top_key = max(top_key, std::uint32_t(warp_best[w]));
  float const l_max = sm::key_value(top_key);
  unsigned long long const best = pack_argmax(l_max, begin);

  // The bins. The 8 levels reach 10.6 to 12.1 z units below the chunk's max: a chunk whose max
  // stands far above the rest (a lifted token) still finds a level that holds top-k's k.
  float const t = r.temperature;
  bool const top_k_on = r.top_k > 0 && r.top_k < p.vocab;
  bool const mass_on = r.top_p < 1.0f && !top_k_on;
  float s, c;
  bool const usable = chunk_anchor(l_max, t, s, c);
  float const neg_s = -s;

  // Bin counts: 4-bit counters, eight logits per word (no counter passes 8), then bytes. The
  // chunk's mass (top-p alone) is summed in a fixed order.
  std::uint32_t nib[2] = {0u, 0u};
  float mass = 0.0f;
  float const coef = 1.44269504088896341f / t;
#pragma unroll
  for (int k = 0; k < traits::quads_per_thread; ++k) {
    int const q = tid + k * traits::threads;
    if (q >= quads) break;
    float4 const x = quad[q];
    float const e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      nib[k / 2] += one_shifted(chunk_bin_shift(e[u], neg_s, c));
      if (mass_on) mass += fast_exp2((e[u] - l_max) * coef);
    }
  }
  std::uint32_t const even = (nib[0] & 0x0F0F'0F0Fu) + (nib[1] & 0x0F0F'0F0Fu);  // bins 0 2 4 6
  std::uint32_t const odd = ((nib[0] >> 4) & 0x0F0F'0F0Fu) + ((nib[1] >> 4) & 0x0F0F'0F0Fu);
#pragma unroll
  for (int b = 0; b < L; ++b) {
    std::uint32_t const warp_b =
        __reduce_add_sync(full, ((b % 2 ? odd : even) >> (8 * (b / 2))) & 0xFFu);
    if (lane == 0) warp_bins[warp][b] = warp_b;
  }
  if (mass_on) {
    for (int offset = 16; offset > 0; offset /= 2) mass += __shfl_xor_sync(full, mass, offset);
    if (lane == 0) warp_mass[warp] = mass;
  }
  __syncthreads();
  if (mass_on) {
    mass = warp_mass[0];
    for (int w = 1; w < traits::warps; ++w) mass += warp_mass[w];
  }

  // Every warp derives the level alone: lane j sums bin j % 8 over the warps, the lanes of a
  // group of 8 then hold the cumulative level counts, and ballots pick the level. Every token when
  // the chunk fits; top-k, the narrowest level that holds k (a row's k largest are among its
  // chunks' k largest); otherwise the widest that fits: top-k rows in sampling_chunk_candidates,
  // rows without top-k (top-p or min-p alone) in the share of launch 2's gather capacity that
  // falls to a chunk, so that the candidates at or above the highest floor (at most the lists'
  // sum) fit that capacity. (The widest level under 512 puts ~9000 of the benchmark's rows'
  // tokens above the highest floor, more than launch 2 holds; under 128 the floor can pass the
  // top-p threshold.)
  constexpr auto cap = std::uint32_t(sampling_chunk_candidates);
  std::uint32_t const widest_cap =
      top_k_on ? cap : std::uint32_t(max(64, min(int(cap), merge_capacity / ws.chunks)));
  int const bin = lane % L;
  std::uint32_t level_count =
      warp_bins[lane / L][bin] + warp_bins[lane / L + traits::warps / 2][bin];
  level_count += __shfl_xor_sync(full, level_count, 8);
  level_count += __shfl_xor_sync(full, level_count, 16);
#pragma unroll
  for (int offset = 1; offset < L; offset *= 2) {
    std::uint32_t const below = __shfl_up_sync(full, level_count, offset, L);
    if (bin >= offset) level_count += below;
  }
  bool const all = std::uint32_t(len) <= cap;
  int chosen = all ? L : -1;
  if (!all && usable) {
    unsigned const fits = __ballot_sync(full, level_count <= widest_cap) & 0xFFu;
    unsigned const holds = __ballot_sync(full, top_k_on && level_count >= std::uint32_t(r.top_k) &&
                                                   level_count <= cap) &
                           0xFFu;
    if (holds != 0) {
      chosen = __ffs(int(holds)) - 1;
    } else if (fits != 0) {
      chosen = 31 - __clz(int(fits));
    }
  }
  // The level's floor: the smallest float whose bin is <= chosen, found among the 32 floats
  // around the real boundary (c - 2^23 * 1.5 - chosen - 1/2) / s (a lane each); the level must
  // be exactly the lanes from some lane on, or the chunk gives up its list.
  float floor = neg_inf;
  if (chosen >= 0 && chosen < L) {
    float const a0 = chunk_level_start(c, t, chosen);
    float const a = sm::key_value(sm::order_key(a0) + std::uint32_t(lane) - 12u);
    unsigned const in = __ballot_sync(full, __fmaf_rn(a, neg_s, c) <= chunk_magic + float(chosen));
    if (in != 0 && (in & 1u) == 0 && (in | (in - 1u)) == full) {
      floor = __shfl_sync(full, a, __ffs(int(in)) - 1);
    } else {
      chosen = -1;
    }
  }
  if (chosen < 0) {
    if (tid == 0) *summary = {best, neg_inf, mass, -1, 0, {}};
    return;
  }

  // This thread's listed logits, from its counters (or by the compaction's own test when every
  // token is listed), and its place in thread order: the warps' totals through shared memory.
  std::uint32_t mine = 0;
  if (all) {
#pragma unroll
    for (int k = 0; k < traits::quads_per_thread; ++k) {
      int const q = tid + k * traits::threads;
      if (q >= quads) break;
      float4 const x = quad[q];
      float const e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) mine += e[u] >= floor && 4 * q + u < len ? 1u : 0u;
    }
  } else {
    std::uint32_t const bytes =
        (even & low_bytes(chosen / 2 + 1)) + (odd & low_bytes((chosen + 1) / 2));
    mine = (bytes * 0x0101'0101u) >> 24;  // four bytes of at most 32 each
  }
  std::uint32_t inclusive = mine;
  for (int offset = 1; offset < 32; offset *= 2) {
    std::uint32_t const before = __shfl_up_sync(full, inclusive, offset);
    if (lane >= offset) inclusive += before;
  }
  if (lane == 31) warp_listed[warp] = inclusive;
  __syncthreads();
  std::uint32_t at = inclusive - mine, total = 0;
  for (int w = 0; w < traits::warps; ++w) {
    if (w < warp) at += warp_listed[w];
    total += warp_listed[w];
  }

  // Compaction in thread order, each thread's quads in index order (fixed, so launch 2's sums
  // over the list are too). The level is exactly {l >= floor} (the search above), so a compare
  // lists what was counted; a quad below the floor is skipped whole.
  chunk_candidate* const out =
      ws.candidates + (row * ws.chunks + chunk) * sampling_chunk_candidates;
  if (mine > 0) {
#pragma unroll
    for (int k = 0; k < traits::quads_per_thread; ++k) {
      int const q = tid + k * traits::threads;
      if (q >= quads) break;
      float4 const x = quad[q];
      if (!(fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)) >= floor)) continue;
      float const e[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e[u] >= floor && 4 * q + u < len) out[at++] = {e[u], std::int32_t(begin + 4 * q + u)};
      }
    }
  }
  if (tid == 0) {
    summary->argmax = best;
    summary->floor = floor;
    summary->mass = mass;
    summary->count = int(total);
  }
  // Warp 0's lanes 0..7 hold the cumulative level counts (launch 2 bounds top-k with them).
  if (tid < L) summary->levels[tid] = std::uint16_t(usable ? level_count : 0u);
}

inline constexpr int merge_max_chunks = int(sampling_cuda_max_vocab / sampling_chunk);
static_assert(sampling_chunk_candidates % 32 == 0);

__device__ inline void write_row_outputs(sampling_params const& p, std::int64_t row,
                                         std::int64_t token) {
  int const tid = int(threadIdx.x);
  if (tid == 0) {
    p.tokens[row] = std::int32_t(token);
    p.logprobs[row] = __int_as_float(0x7FC0'0000);  // NaN: these rows asked for no logprobs
  }
  if (tid < sampling_max_logprobs) {
    p.top_ids[row * sampling_max_logprobs + tid] = -1;
    p.top_logprobs[row * sampling_max_logprobs + tid] = __int_as_float(int(0xFF80'0000u));
  }
}

// Launch 2: one block of sampling_traits::threads per row.
template <class T>
__global__ void __launch_bounds__(sampling_traits::threads, 2)
    sampling_merge_kernel(sampling_params const p) {
  namespace sm = sampling_math;
  using traits = sampling_traits;
  __shared__ sampling_shared s;
  __shared__ int chunk_start[merge_max_chunks + 1];
  __shared__ float chunk_anchor_of[merge_max_chunks];  // a chunk's bin anchor c; -1: unusable
  __shared__ std::uint16_t chunk_levels[merge_max_chunks][chunk_traits::levels];
  extern __shared__ __align__(16) unsigned char merge_shared[];
  float* const z = reinterpret_cast<float*>(merge_shared);
  auto* const ids = reinterpret_cast<std::int32_t*>(merge_shared + merge_capacity * 4);
  sampling_workspace const ws = carve_workspace(p);
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  std::int64_t const row = blockIdx.x;
  sampling_request const r = p.requests[row];
  int const kind = streamed_row_kind(r, p.vocab);
  auto const to_exact_path = [&] {
    if (tid == 0) ws.fallback_rows[atomicAdd(ws.fallback_count, 1)] = int(row);
  };
  if (kind == row_exact) return to_exact_path();

  // The chunk summaries: the row's argmax and the highest floor (every token at or above it is
  // listed: a token below its own chunk's floor is below this one too).
  chunk_summary const* const summaries = ws.summaries + row * ws.chunks;
  unsigned long long best = 0;
  float b_l = __int_as_float(int(0xFF80'0000u));
  int overflow = 0;
  for (int c = tid; c < ws.chunks; c += traits::threads) {
    chunk_summary const cs = summaries[c];
    best = cs.argmax > best ? cs.argmax : best;
    b_l = fmaxf(b_l, cs.floor);
    overflow |= cs.count < 0 ? 1 : 0;
  }
  best = block_reduce(s, best, op_max_u64{});
  if (kind == row_greedy) return write_row_outputs(p, row, unpack_index(best));
  b_l = block_reduce(s, b_l, op_max_f32{});
  overflow = block_reduce(s, overflow, [](int a, int b) { return a | b; });
  float const t = r.temperature;
  float const l_max = sm::key_value(std::uint32_t(best >> 32));
  float const z_max = l_max / t;
  if (overflow != 0 || !isfinite(z_max)) return to_exact_path();
  bool const top_k_on = r.top_k > 0 && r.top_k < p.vocab;

  // Top-k: a lower bound v on the k-th largest logit from the chunks' level counts, so that only
  // the candidates at or above max(b_l, v) are gathered (a few hundred, not thousands: one
  // candidate per thread in filter_candidates). A chunk's tokens in bins below bin(v) lie above
  // v (the bins are monotone in l), so the chunks' cumulative counts at bin(v) - 1 sum to at most
  // the row's count at or above v; v ranges over the starts of every chunk's levels (each
  // lowered by a few ulps, below the level's floor). Correctness does not rest on the bound: the
  // gather then proves the row (n >= k, thresholds above the gather floor) as with b_l alone.
  if (top_k_on) {
    float const scale = __fdiv_rn(1.0f, __fmul_rn(chunk_level_width, t));
    for (int c = tid; c < ws.chunks; c += traits::threads) {
      chunk_summary const cs = summaries[c];
      float s_c, anchor;
      bool const usable =
          chunk_anchor(sm::key_value(std::uint32_t(cs.argmax >> 32)), t, s_c, anchor);
      chunk_anchor_of[c] = usable ? anchor : -1.0f;  // anchors are >= 2^23
#pragma unroll
      for (int q = 0; q < chunk_traits::levels; ++q) chunk_levels[c][q] = cs.levels[q];
    }
    __syncthreads();
    float bound = __int_as_float(int(0xFF80'0000u));
    for (int i = tid; i < ws.chunks * chunk_traits::levels; i += traits::threads) {
      float const anchor = chunk_anchor_of[i / chunk_traits::levels];
      if (anchor < 0.0f) continue;
      float const start = chunk_level_start(anchor, t, i % chunk_traits::levels);
      float const v = sm::key_value(sm::order_key(start) - 4u);
      std::uint32_t count = 0;
      for (int c = 0; c < ws.chunks; ++c) {
        float const other = chunk_anchor_of[c];
        if (other < 0.0f) continue;
        int const bin = int(__float_as_uint(__fmaf_rn(v, -scale, other)) - chunk_magic_bits);
        if (bin >= 1) count += chunk_levels[c][min(bin - 1, chunk_traits::levels - 1)];
      }
      if (count >= std::uint32_t(r.top_k)) bound = fmaxf(bound, v);
    }
    b_l = fmaxf(b_l, block_reduce(s, bound, op_max_f32{}));
  }

  // Top-p alone: the row's mass, the chunks' rescaled to the row's largest logit, in chunk order
  // (warp 0: lane-strided, then a fixed butterfly).
  float row_total = 0.0f;
  if (r.top_p < 1.0f && !top_k_on) {
    if (warp == 0) {
      float const coef = 1.44269504088896341f / t;
      float part = 0.0f;
      for (int c = lane; c < ws.chunks; c += 32) {
        chunk_summary const cs = summaries[c];
        float const c_max = sm::key_value(std::uint32_t(cs.argmax >> 32));
        part += cs.mass * fast_exp2((c_max - l_max) * coef);
      }
      for (int offset = 16; offset > 0; offset /= 2)
        part += __shfl_xor_sync(0xFFFF'FFFFu, part, offset);
      if (lane == 0) s.warp_f32[0] = part;
    }
    __syncthreads();
    row_total = s.warp_f32[0];
    __syncthreads();
  }

  // Gather the candidates with l >= b_l in chunk order, a warp per chunk: count, scan, write.
  // Each lane issues all its loads of a chunk at once (its list is at most 16 deep per lane), so
  // that a chunk costs one memory latency, not one per 32 entries.
  constexpr int per_lane = int(sampling_chunk_candidates) / 32;
  chunk_candidate const* const lists = ws.candidates + row * ws.chunks * sampling_chunk_candidates;
  unsigned const lower = (1u << lane) - 1u;
  for (int c = warp; c < ws.chunks; c += traits::warps) {
    int const count = summaries[c].count;
    chunk_candidate const* const list = lists + c * sampling_chunk_candidates;
    float l[per_lane];
#pragma unroll
    for (int u = 0; u < per_lane; ++u) {
      int const j = u * 32 + lane;
      l[u] = j < count ? list[j].l : __int_as_float(int(0xFF80'0000u));
    }
    int kept = 0;
#pragma unroll
    for (int u = 0; u < per_lane; ++u) {
      bool const in = u * 32 + lane < count && l[u] >= b_l;
      kept += __popc(__ballot_sync(0xFFFF'FFFFu, in));
    }
    if (lane == 0) chunk_start[c + 1] = kept;
  }
  __syncthreads();
  if (tid == 0) {
    chunk_start[0] = 0;
    for (int c = 0; c < ws.chunks; ++c) chunk_start[c + 1] += chunk_start[c];
  }
  __syncthreads();
  int const n = chunk_start[ws.chunks];
  if (n > merge_capacity || (top_k_on && n < r.top_k)) return to_exact_path();
  for (int c = warp; c < ws.chunks; c += traits::warps) {
    int const count = summaries[c].count;
    chunk_candidate const* const list = lists + c * sampling_chunk_candidates;
    int at = chunk_start[c];
    constexpr int half = per_lane / 2;  // two rounds of 8 loads in flight: fewer registers
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      chunk_candidate e[half];
#pragma unroll
      for (int u = 0; u < half; ++u) {
        int const j = (h * half + u) * 32 + lane;
        e[u] = j < count ? list[j] : chunk_candidate{0.0f, 0};
      }
#pragma unroll
      for (int u = 0; u < half; ++u) {
        bool const in = (h * half + u) * 32 + lane < count && e[u].l >= b_l;
        unsigned const mask = __ballot_sync(0xFFFF'FFFFu, in);
        if (in) {
          int const k = at + __popc(mask & lower);
          z[k] = e[u].l / t;
          ids[k] = e[u].id;
        }
        at += __popc(mask);
      }
    }
  }
  __syncthreads();
  std::uint32_t key_lo = 0xFFFF'FFFFu;
  for (int j = tid; j < n; j += traits::threads) key_lo = min(key_lo, sm::order_key(z[j]));
  key_lo = block_reduce(s, key_lo, [](std::uint32_t a, std::uint32_t b) { return a < b ? a : b; });

  candidate_floors const floors =
      filter_candidates(s, z, n, r, top_k_on, z_max, row_total, key_lo, sm::order_key(z_max));

  // The proof. Every unlisted token has l < b_l, so z <= b_z: a threshold strictly above b_z
  // keeps only candidates, and top-k's k-th largest candidate is then the row's. Top-p alone
  // also needs its goal reached within the list (list_select keeps everything when it is not).
  float const b_z = b_l / t;
  bool proved;
  if (top_k_on) {
    proved = sm::key_value(floors.top_k) > b_z;
  } else if (r.top_p < 1.0f) {
    float const v = sm::key_value(floors.all);
    float above = 0.0f;
    for (int j = tid; j < n; j += traits::threads)
      if (z[j] >= v) above = sm::add_rn(above, sm::exp_nonpositive(z[j] - z_max));
    above = block_reduce(s, above, op_sum_f32{});
    float const goal = sm::mul_rn(r.top_p, row_total);
    // No margin: a sum that reaches the goal in one order and not in the other is a top_p
    // boundary within float rounding, which the semantics leave to either side.
    proved = v > b_z && above >= goal;
  } else {
    // min_p alone: every unlisted token's weight is below min_p (with a margin for exp's error).
    float const w = sm::exp_nonpositive(b_z - z_max);
    proved = sm::add_rn(w, sm::mul_rn(w, 0x1p-16f)) < r.min_p;
  }
  if (!proved) return to_exact_path();
  std::int64_t const token = race_candidates(s, z, ids, n, r, p.positions[row], z_max, floors.all);
  write_row_outputs(p, row, token);
}

}  // namespace lightcore::kernels::detail
