// prefill: the varlen causal prefill kernel (FlashAttention-2 style on bf16 mma.sync tensor
// cores), built for head dims (64, 64); (192, 128) and (128, 128) run on prefill_wgmma.cuh, which
// shares this file's grid bound and tile lookup. Only the files in instantiations/ include this;
// the dispatch (attention_cuda.cu) sees the declarations in attention.hpp alone.
//
// One CTA computes one (query tile of block_m rows of one request, query head). The grid is
// fixed by T, the batch size and the heads: ceil(T / block_m) + batch tiles bound the tiles of
// any split of T tokens into `batch` requests; each CTA finds its request by a warp-wide scan of
// cu_seqlens_q on the device, and the spare CTAs exit. Within a request the tiles run last
// first: the longest rows (most visible keys) start earliest, which shortens the tail.
// Each of the 4 warps owns 16 query rows: their q fragments stay in registers, S = Q K^T for the
// 16 rows x block_n keys is in registers, the online softmax needs only quad shuffles, and P is
// reused from S's accumulators as the A operand of O += P V (no shared-memory round trip). Key
// and value blocks stream through a two-stage cp.async ring, one block in flight while one is
// used.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_params.hpp"
#include "kernels/common/online_softmax.cuh"
#include "kernels/common/ptx.cuh"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <int QkDim, int VDim>
struct prefill_config {
  static constexpr int qk_dim = QkDim;
  static constexpr int v_dim = VDim;
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int block_m = 16 * warps;  // query rows of a CTA: one m16 tile per warp
  static constexpr int block_n = 64;          // keys per pipeline block
  static constexpr int stages = 2;
  // Shared rows padded by 16 bytes: the 8 rows one ldmatrix reads then fall in 8 different bank
  // groups (every pitch below is an odd number of 16-byte units).
  static constexpr int q_pitch = qk_dim + 8;
  static constexpr int k_pitch = qk_dim + 8;
  static constexpr int v_pitch = v_dim + 8;
  static constexpr int q_vectors = qk_dim / 8;  // 16-byte vectors per row
  static constexpr int v_vectors = v_dim / 8;
  static constexpr int k_steps = qk_dim / 16;  // MMA k steps of S = Q K^T
  static constexpr int s_tiles = block_n / 8;  // n8 tiles of S per warp
  static constexpr int o_tiles = v_dim / 8;    // n8 tiles of O per warp
  static constexpr int q_bytes = block_m * q_pitch * 2;
  static constexpr int k_stage_bytes = block_n * k_pitch * 2;
  static constexpr int v_stage_bytes = block_n * v_pitch * 2;
  static constexpr int smem_bytes = q_bytes + stages * (k_stage_bytes + v_stage_bytes);
  // Two CTAs per SM where the shared memory allows (45 KB at (64, 64), 109 KB at (192, 128)),
  // so that one CTA's softmax overlaps the other's MMAs.
  static constexpr int min_blocks = 2 * (smem_bytes + 1024) <= 228 * 1024 ? 2 : 1;

  static_assert(qk_dim % 16 == 0 && v_dim % 16 == 0 && block_n % 16 == 0, "k steps of 16");
  static_assert(s_tiles % 2 == 0 && o_tiles % 2 == 0, "B fragments come two n8 tiles at once");
  static_assert(smem_bytes <= 227 * 1024, "exceeds the shared memory of an sm_90 CTA");
};

inline constexpr float prefill_log2e = 1.4426950408889634f;
inline constexpr float prefill_ln2 = 0.6931471805599453f;

// The request of tile `tile` and the tile's index inside it, by warp 0; (-1, 0) past the last.
template <int BlockM>
__device__ __forceinline__ int2 prefill_find_tile(std::int32_t const* cu_q, int batch, int tile,
                                                  int lane) {
  int base = 0;
  for (int b0 = 0; b0 < batch; b0 += 32) {
    int const b = b0 + lane;
    int n = 0;
    if (b < batch) {
      int const len = cu_q[b + 1] - cu_q[b];
      n = len > 0 ? (len + BlockM - 1) / BlockM : 0;
    }
    int incl = n;  // inclusive scan of the tile counts over the lanes
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      int const y = __shfl_up_sync(0xFFFF'FFFFu, incl, offset);
      if (lane >= offset) incl += y;
    }
    int const first = base + incl - n;
    unsigned const hit = __ballot_sync(0xFFFF'FFFFu, tile >= first && tile < first + n);
    if (hit != 0) {  // uniform across the warp
      int const src = __ffs(int(hit)) - 1;
      return make_int2(b0 + src, tile - __shfl_sync(0xFFFF'FFFFu, first, src));
    }
    base += __shfl_sync(0xFFFF'FFFFu, incl, 31);
  }
  return make_int2(-1, 0);
}

// The S fragments of a thread's rows row0 and row0 + 8 (n8 tiles of block_n keys from key0) in
// log2 units; in a block that reaches past the first row's limit (`masked`), the keys past each
// row's limit (causal, or the sequence's end) become -inf. mx: each row's maximum over them.
template <int Tiles>
__device__ __forceinline__ void prefill_scale_mask(float (&s)[Tiles][4], int key0, bool masked,
                                                   int const (&limit)[2], int t4, float scale_log2,
                                                   float (&mx)[2]) {
  mx[0] = mx[1] = -INFINITY;
#pragma unroll
  for (int n = 0; n < Tiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      int const key = key0 + n * 8 + 2 * t4 + (e & 1);
      float const v = !masked || key <= limit[e >> 1] ? s[n][e] * scale_log2 : -INFINITY;
      s[n][e] = v;
      mx[e >> 1] = fmaxf(mx[e >> 1], v);
    }
  }
}

// The end of a tile: the rows' sums over their quad, O / l stored for rows row0 and row0 + 8
// (those below len_q) at out0 / out1, and when lse0 is given their log-sum-exp (natural log,
// -inf for a row that saw no key), rows lse_row_stride apart.
template <int Tiles>
__device__ __forceinline__ void prefill_store_rows(float const (&o)[Tiles][4],
                                                   float const (&l_part)[2],
                                                   float const (&m_run)[2], bf16* out0, bf16* out1,
                                                   float* lse0, std::int64_t lse_row_stride,
                                                   int row0, int len_q, int t4) {
  float l[2], inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = l_part[r] + __shfl_xor_sync(0xFFFF'FFFFu, l_part[r], 1);
    l[r] += __shfl_xor_sync(0xFFFF'FFFFu, l[r], 2);
    inv[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
  }
#pragma unroll
  for (int n = 0; n < Tiles; ++n) {
    if (row0 < len_q)
      *reinterpret_cast<std::uint32_t*>(out0 + n * 8) =
          pack_bf16x2(o[n][0] * inv[0], o[n][1] * inv[0]);
    if (row0 + 8 < len_q)
      *reinterpret_cast<std::uint32_t*>(out1 + n * 8) =
          pack_bf16x2(o[n][2] * inv[1], o[n][3] * inv[1]);
  }
  if (lse0 != nullptr && t4 == 0) {
    if (row0 < len_q) lse0[0] = l[0] > 0.0f ? (m_run[0] + log2f(l[0])) * prefill_ln2 : -INFINITY;
    if (row0 + 8 < len_q)
      lse0[8 * lse_row_stride] = l[1] > 0.0f ? (m_run[1] + log2f(l[1])) * prefill_ln2 : -INFINITY;
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::threads, Cfg::min_blocks)
    prefill_kernel(prefill_params const p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int block_m = Cfg::block_m, block_n = Cfg::block_n;
  float const neg_inf = -INFINITY;
  __shared__ int2 found;

  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  if (warp == 0) {
    int2 const f = prefill_find_tile<block_m>(p.cu_seqlens_q, p.batch, int(blockIdx.x), lane);
    if (lane == 0) found = f;
  }
  __syncthreads();
  int const b = found.x;
  if (b < 0) return;  // a spare CTA of the fixed grid
  int const h = int(blockIdx.y), hk = h / (p.heads_q / p.heads_k);
  int const q_start = p.cu_seqlens_q[b], len_q = p.cu_seqlens_q[b + 1] - q_start;
  int const k_start = p.cu_seqlens_k[b], len_k = p.cu_seqlens_k[b + 1] - k_start;
  int const prefix = len_k - len_q;
  int const tiles = (len_q + block_m - 1) / block_m;
  int const m0 = (tiles - 1 - found.y) * block_m;  // last tile first
  // Keys any row of the tile sees: [0, kv_end).
  int const kv_end = min(len_k, prefix + m0 + block_m);
  int const n_blocks = kv_end > 0 ? (kv_end + block_n - 1) / block_n : 0;

  int const g = lane / 4, t4 = lane % 4;
  int const row0 = m0 + warp * 16 + g;  // this thread's query rows: row0 and row0 + 8
  bf16* const out0 = p.out + (q_start + std::int64_t(row0)) * p.out_token_stride +
                     std::int64_t(h) * p.out_head_stride + 2 * t4;
  bf16* const out1 = out0 + 8 * p.out_token_stride;
  float* const lse0 =
      p.lse != nullptr ? p.lse + (q_start + std::int64_t(row0)) * p.heads_q + h : nullptr;

  if (n_blocks == 0) {  // only when len_k < len_q: rows that see no key
#pragma unroll
    for (int n = 0; n < Cfg::o_tiles; ++n) {
      if (row0 < len_q) *reinterpret_cast<std::uint32_t*>(out0 + n * 8) = 0u;
      if (row0 + 8 < len_q) *reinterpret_cast<std::uint32_t*>(out1 + n * 8) = 0u;
    }
    if (lse0 != nullptr && t4 == 0) {
      if (row0 < len_q) lse0[0] = neg_inf;
      if (row0 + 8 < len_q) lse0[8 * std::int64_t(p.heads_q)] = neg_inf;
    }
    return;
  }

  auto* const q_s = reinterpret_cast<bf16*>(smem);
  auto* const k_s = reinterpret_cast<bf16*>(smem + Cfg::q_bytes);
  auto* const v_s = reinterpret_cast<bf16*>(smem + Cfg::q_bytes + Cfg::stages * Cfg::k_stage_bytes);

  // q's tile; rows past the request are zeros (computed, never stored).
  {
    bf16 const* const q_base = p.q + std::int64_t(h) * p.q_head_stride;
    for (int i = tid; i < block_m * Cfg::q_vectors; i += Cfg::threads) {
      int const r = i / Cfg::q_vectors, c = i % Cfg::q_vectors;
      bool const valid = m0 + r < len_q;
      bf16 const* src =
          valid ? q_base + (q_start + std::int64_t(m0 + r)) * p.q_token_stride + c * 8 : p.q;
      cp_async_16(smem_address(q_s + r * Cfg::q_pitch + c * 8), src, valid ? 16 : 0);
    }
  }
  // Key block `block` into `stage`: the first qk_dim - rope_dim dims from k (this head), the
  // rest from k_rope (every head's); rows at or past kv_end are zeros.
  int const main_vectors = (Cfg::qk_dim - p.rope_dim) / 8;
  bf16 const* const k_base = p.k + std::int64_t(hk) * p.k_head_stride;
  bf16 const* const v_base = p.v + std::int64_t(hk) * p.v_head_stride;
  auto const load_block = [&](int block, int stage) {
    int const start = block * block_n;
    bf16* const kd = k_s + stage * block_n * Cfg::k_pitch;
    bf16* const vd = v_s + stage * block_n * Cfg::v_pitch;
    for (int i = tid; i < block_n * Cfg::q_vectors; i += Cfg::threads) {
      int const r = i / Cfg::q_vectors, c = i % Cfg::q_vectors;
      bool const valid = start + r < kv_end;
      std::int64_t const token = k_start + std::int64_t(start + r);
      bf16 const* src = p.k;
      if (valid)
        src = c < main_vectors ? k_base + token * p.k_token_stride + c * 8
                               : p.k_rope + token * p.k_rope_token_stride + (c - main_vectors) * 8;
      cp_async_16(smem_address(kd + r * Cfg::k_pitch + c * 8), src, valid ? 16 : 0);
    }
    for (int i = tid; i < block_n * Cfg::v_vectors; i += Cfg::threads) {
      int const r = i / Cfg::v_vectors, c = i % Cfg::v_vectors;
      bool const valid = start + r < kv_end;
      bf16 const* src =
          valid ? v_base + (k_start + std::int64_t(start + r)) * p.v_token_stride + c * 8 : p.v;
      cp_async_16(smem_address(vd + r * Cfg::v_pitch + c * 8), src, valid ? 16 : 0);
    }
    cp_async_commit();
  };

  // ldmatrix addresses (lane-dependent parts), as in mla_decode_stream.cuh: q as the A operand (row
  // lane % 16, column (lane / 16) * 8); K as the col-major B of S (token (lane & 7) + (lane / 16)
  // * 8, column ((lane / 8) & 1) * 8); V as the row-major B of O, transposed (token (lane & 7) +
  // ((lane / 8) & 1) * 8, column (lane / 16) * 8).
  std::uint32_t const q_addr =
      smem_address(q_s + (warp * 16 + lane % 16) * Cfg::q_pitch + (lane / 16) * 8);
  int const k_offset = ((lane & 7) + (lane >> 4) * 8) * Cfg::k_pitch + ((lane >> 3) & 1) * 8;
  int const v_offset = ((lane & 7) + ((lane >> 3) & 1) * 8) * Cfg::v_pitch + (lane >> 4) * 8;

  // Group 0: q and block 0; group 1: block 1 (or empty). Every iteration commits one group, so
  // that when block `it` is used, only the group of block it + 1 may still be in flight.
  load_block(0, 0);
  if (n_blocks > 1)
    load_block(1, 1);
  else
    cp_async_commit();

  std::uint32_t q_frag[Cfg::k_steps][4];
  float o[Cfg::o_tiles][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {neg_inf, neg_inf}, l_part[2] = {0.0f, 0.0f};
  float const scale_log2 = p.softmax_scale * prefill_log2e;
  // The last key each of the thread's two rows sees (inclusive), and the first key that any row
  // of the tile may not see: blocks ending before it need no mask.
  int const limit[2] = {min(prefix + row0, len_k - 1), min(prefix + row0 + 8, len_k - 1)};
  int const unmasked_end = min(prefix + m0 + 1, len_k);

  for (int it = 0; it < n_blocks; ++it) {
    int const stage = it % Cfg::stages;
    cp_async_wait<1>();  // block it (and q) landed for this thread ...
    __syncthreads();     // ... and for every thread
    if (it == 0) {
#pragma unroll
      for (int ks = 0; ks < Cfg::k_steps; ++ks) ldmatrix_x4(q_frag[ks], q_addr + ks * 32);
    }
    std::uint32_t const k_addr =
        smem_address(k_s + stage * block_n * Cfg::k_pitch) + std::uint32_t(k_offset) * 2;
    std::uint32_t const v_addr =
        smem_address(v_s + stage * block_n * Cfg::v_pitch) + std::uint32_t(v_offset) * 2;

    float s[Cfg::s_tiles][4];
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < Cfg::k_steps; ++ks) {
#pragma unroll
      for (int j = 0; j < Cfg::s_tiles / 2; ++j) {
        std::uint32_t kf[4];
        ldmatrix_x4(kf, k_addr + (j * 16 * Cfg::k_pitch + ks * 16) * 2);
        mma_bf16_16816(s[2 * j], q_frag[ks], kf[0], kf[1]);
        mma_bf16_16816(s[2 * j + 1], q_frag[ks], kf[2], kf[3]);
      }
    }

    // Scale into log2 units; mask (causal limit and the sequence's end) only in the blocks that
    // reach past the first row's limit.
    int const key0 = it * block_n;
    float mx[2];
    prefill_scale_mask(s, key0, key0 + block_n > unmasked_end, limit, t4, scale_log2, mx);
    // base is 0, not -inf, while a row has seen no key.
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float const alpha = softmax_advance(m_run[r], softmax_quad_max(mx[r]), base[r],
                                          [](float x) { return exp2f(x); });
      l_part[r] *= alpha;
#pragma unroll
      for (int n = 0; n < Cfg::o_tiles; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
    // P = exp2(s - m), summed per thread (the quad's partial sums are added once, at the end),
    // and packed as the bf16 A fragments of O += P V: the C fragment of n8 tiles 2kk and 2kk + 1
    // is the A fragment of k step kk.
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n) {
      s[n][0] = exp2f(s[n][0] - base[0]);
      s[n][1] = exp2f(s[n][1] - base[0]);
      s[n][2] = exp2f(s[n][2] - base[1]);
      s[n][3] = exp2f(s[n][3] - base[1]);
      l_part[0] += s[n][0] + s[n][1];
      l_part[1] += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int kk = 0; kk < block_n / 16; ++kk) {
      std::uint32_t const a[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                                  pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                  pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      mma_bf16_16816_pv(o, a, v_addr + kk * 16 * Cfg::v_pitch * 2);
    }
    __syncthreads();  // every warp is done with this stage: refill it with block it + 2
    if (it + 2 < n_blocks)
      load_block(it + 2, stage);
    else
      cp_async_commit();
  }

  prefill_store_rows(o, l_part, m_run, out0, out1, lse0, p.heads_q, row0, len_q, t4);
}

// Tiles of the fixed grid: every split of T rows into `batch` requests has at most
// ceil(T / block_m) + batch - 1 tiles.
template <int BlockM>
inline std::int64_t prefill_grid_tiles(std::int64_t total_q, int batch) {
  return (total_q + BlockM - 1) / BlockM + batch;
}

template <int QkDim, int VDim>
void launch_prefill(prefill_params const& p, CUstream_st* stream) {
  using cfg = prefill_config<QkDim, VDim>;
  auto const kernel = prefill_kernel<cfg>;
  LC_CHECK(p.qk_dim == QkDim && p.v_dim == VDim, "prefill on CUDA: launcher ("
                                                     << QkDim << ", " << VDim << ") called for ("
                                                     << p.qk_dim << ", " << p.v_dim << ")");
  std::int64_t const tiles = prefill_grid_tiles<cfg::block_m>(p.total_q, p.batch);
  LC_CHECK(tiles < (std::int64_t(1) << 31) && p.heads_q <= 65535,
           "prefill on CUDA: " << tiles << " query tiles and " << p.heads_q
                               << " heads exceed the grid (2^31 - 1, 65535)");
  // Above 48 KB of dynamic shared memory a kernel must opt in; not a stream operation, so it is
  // allowed while a graph is being captured.
  LC_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem_bytes));
  dim3 const grid(unsigned(tiles), unsigned(p.heads_q));
  kernel<<<grid, cfg::threads, cfg::smem_bytes, stream>>>(p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
