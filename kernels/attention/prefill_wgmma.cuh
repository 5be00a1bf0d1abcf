// prefill_wgmma: the varlen causal prefill on Hopper's warpgroup MMA (FlashAttention-3 style) for
// (qk, v) head dims (192, 128) (MLA decompressed, optionally with the broadcast rope key) and
// (128, 128) (GQA). Same contract, grid and tile order as prefill.cuh; only the files in
// instantiations/ include this.
//
// One CTA computes 128 query rows of one (request, query head), with three warpgroups:
//   - warpgroup 0, the producer: its first warp loads the q tile once and the key and value
//     blocks of 128 tokens into a ring of `stages` stages with bulk tensor copies (TMA, 128-byte
//     swizzle; q, k and v are dense [tokens, heads, dim] tensors, the rope key a [tokens, 64] one),
//     one 64-column box at a time. Separate `full` / `empty` mbarriers for the keys and the values
//     of a stage let the keys of block j + 1 land while block j's values are still in use. The
//     last block of a tile, which reaches past the keys the tile may see, takes its values through
//     16-byte cp.async with zero fill instead: rows past the sequence must be zeros, not whatever
//     the next request or the tensor's padding holds (a NaN there times a zero weight is a NaN).
//     Its other warps exit at once.
//   - warpgroups 1 and 2, the consumers, own 64 query rows each: S = Q K^T by wgmma m64n128k16
//     with q and K read from shared memory, the online softmax in registers (a row's scores sit in
//     one quad of lanes), O += P V by wgmma with P from registers and V MN-major in shared memory.
//     Within a warpgroup, S of block j + 1 is issued together with P V of block j, and the
//     softmax of block j + 1 runs while that P V is still on the tensor cores; across the two
//     warpgroups the warp schedulers interleave one's softmax with the other's MMAs.
// Causal masking is applied only to the blocks that reach past the first row of a warpgroup's
// rows (the diagonal ones). Grid, request lookup and last-tile-first order: prefill.cuh.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention/attention.hpp"
#include "kernels/attention/attention_params.hpp"
#include "kernels/attention/prefill.cuh"
#include "kernels/common/online_softmax.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/common/tensor_map.hpp"
#include "kernels/common/wgmma.cuh"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

template <int QkDim, int VDim>
struct prefill_wgmma_config {
  static constexpr int qk_dim = QkDim;
  static constexpr int v_dim = VDim;
  static constexpr int block_m = 128;  // query rows of a CTA: 64 per consumer warpgroup
  static constexpr int block_n = 128;  // keys per block: S's N, P V's K
  static constexpr int stages = 2;
  static constexpr int producer_threads = 128;
  static constexpr int consumer_threads = 256;
  static constexpr int threads = producer_threads + consumer_threads;
  // setmaxnreg budgets: 128 x 56 + 256 x 224 <= 64 K. A consumer holds 64 O and 64 S
  // accumulators and 32 registers of P; the producer's loop spills at 40.
  static constexpr int producer_registers = 56;
  static constexpr int consumer_registers = 224;
  static constexpr int tile_cols = 64;  // bf16 per 128-byte swizzled row
  static constexpr int qk_tiles = qk_dim / tile_cols;
  static constexpr int v_tiles = v_dim / tile_cols;
  static constexpr int s_tiles = block_n / 8;   // n8 accumulator tiles of S
  static constexpr int o_tiles = v_dim / 8;     // of O
  static constexpr int p_steps = block_n / 16;  // k16 steps of P V
  static constexpr int q_tile_bytes = block_m * 128;
  static constexpr int kv_tile_bytes = block_n * 128;
  // Shared memory from a 1024-byte aligned base: q, the key stages, the value stages, the
  // mbarriers (q_full, k_full[stages], v_full[stages], k_empty[stages], v_empty[stages]).
  static constexpr int q_bytes = qk_tiles * q_tile_bytes;
  static constexpr int k_offset = q_bytes;
  static constexpr int k_stage_bytes = qk_tiles * kv_tile_bytes;
  static constexpr int v_offset = k_offset + stages * k_stage_bytes;
  static constexpr int v_stage_bytes = v_tiles * kv_tile_bytes;
  static constexpr int barrier_offset = v_offset + stages * v_stage_bytes;
  static constexpr int barrier_bytes = (1 + 4 * stages) * 8;
  static constexpr int smem_bytes = 1024 + barrier_offset + barrier_bytes;  // + alignment slack

  static_assert(qk_dim % tile_cols == 0 && v_dim % tile_cols == 0, "64-column swizzled tiles");
  static_assert(v_dim == 128, "O is one wgmma m64n128 accumulator");
  static_assert(producer_threads * producer_registers + consumer_threads * consumer_registers <=
                65536);
  static_assert(smem_bytes <= 227 * 1024, "exceeds the shared memory of an sm_90 CTA");
};

// exp2 on the special function unit (flushes denormal results to zero; -inf gives 0).
__device__ __forceinline__ float prefill_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The shared addresses of the mbarriers.
template <class Cfg>
struct prefill_wgmma_barriers {
  std::uint32_t q_full, k_full, v_full, k_empty, v_empty;  // the last four: stage 0 (8 bytes each)

  __device__ explicit prefill_wgmma_barriers(std::uint32_t base) {
    q_full = base + Cfg::barrier_offset;
    k_full = q_full + 8;
    v_full = k_full + 8 * Cfg::stages;
    k_empty = v_full + 8 * Cfg::stages;
    v_empty = k_empty + 8 * Cfg::stages;
  }
};

// The tile a CTA computes (request b, rows m0 .. m0 + block_m - 1 of its new tokens).
struct prefill_wgmma_tile {
  int b, h, hk, q_start, len_q, k_start, len_k, prefix, m0, kv_end, n_blocks;
};

// The producer warp: q once, then the key and value blocks through the ring.
template <class Cfg>
__device__ __forceinline__ void prefill_wgmma_produce(
    prefill_params const& p, prefill_wgmma_tile const& t, CUtensorMap const* q_map,
    CUtensorMap const* k_map, CUtensorMap const* r_map, CUtensorMap const* v_map,
    std::uint32_t base, prefill_wgmma_barriers<Cfg> const& bar, int lane) {
  constexpr int block_n = Cfg::block_n, stages = Cfg::stages;
  int const main_tiles = (Cfg::qk_dim - p.rope_dim) / Cfg::tile_cols;  // boxes from k
  if (lane == 0) {
    mbarrier_arrive_expect_tx(bar.q_full, Cfg::q_bytes);
#pragma unroll
    for (int c = 0; c < Cfg::qk_tiles; ++c)
      tma_load_3d(base + c * Cfg::q_tile_bytes, q_map, c * Cfg::tile_cols, t.h, t.q_start + t.m0,
                  bar.q_full);
  }
  constexpr int v_vectors = Cfg::v_dim / 8;  // 16-byte vectors of a value row
  bf16 const* const v_head = p.v + std::int64_t(t.hk) * p.v_head_stride;
  for (int j = 0; j < t.n_blocks; ++j) {
    int const stage = j % stages;
    std::uint32_t const parity = std::uint32_t(j / stages - 1) & 1;  // of the stage's last use
    int const start = j * block_n, token0 = t.k_start + start;
    if (j >= stages) mbarrier_wait(bar.k_empty + 8 * stage, parity);
    if (lane == 0) {
      std::uint32_t const dst = base + Cfg::k_offset + stage * Cfg::k_stage_bytes;
      std::uint32_t const full = bar.k_full + 8 * stage;
      mbarrier_arrive_expect_tx(full, Cfg::k_stage_bytes);
      for (int c = 0; c < main_tiles; ++c)
        tma_load_3d(dst + c * Cfg::kv_tile_bytes, k_map, c * Cfg::tile_cols, t.hk, token0, full);
      if (main_tiles < Cfg::qk_tiles)
        tma_load_2d(dst + main_tiles * Cfg::kv_tile_bytes, r_map, 0, token0, full);
    }
    if (j >= stages) mbarrier_wait(bar.v_empty + 8 * stage, parity);
    std::uint32_t const v_dst = base + Cfg::v_offset + stage * Cfg::v_stage_bytes;
    std::uint32_t const v_full = bar.v_full + 8 * stage;
    if (start + block_n <= t.kv_end) {
      if (lane == 0) {
        mbarrier_arrive_expect_tx(v_full, Cfg::v_stage_bytes);
#pragma unroll
        for (int c = 0; c < Cfg::v_tiles; ++c)
          tma_load_3d(v_dst + c * Cfg::kv_tile_bytes, v_map, c * Cfg::tile_cols, t.hk, token0,
                      v_full);
      } else {
        mbarrier_arrive(v_full);
      }
    } else {
      // The tile's last block: rows at or past kv_end are zero-filled.
      for (int i = lane; i < block_n * v_vectors; i += 32) {
        int const r = i / v_vectors, c = i % v_vectors;
        bool const valid = start + r < t.kv_end;
        bf16 const* const src =
            valid ? v_head + std::int64_t(token0 + r) * p.v_token_stride + c * 8 : p.v;
        cp_async_16(v_dst + (c / 8) * Cfg::kv_tile_bytes + swizzle128_offset(r, c % 8), src,
                    valid ? 16 : 0);
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async_shared();  // read by the tensor cores (async proxy)
      mbarrier_arrive(v_full);
    }
  }
}

// A consumer warpgroup (wg 0 or 1: rows 64 wg .. 64 wg + 63 of the tile); ctid counts the 128
// threads of the warpgroup.
template <class Cfg>
__device__ __forceinline__ void prefill_wgmma_consume(prefill_params const& p,
                                                      prefill_wgmma_tile const& t,
                                                      std::uint32_t base,
                                                      prefill_wgmma_barriers<Cfg> const& bar,
                                                      int wg, int ctid) {
  constexpr int block_n = Cfg::block_n, stages = Cfg::stages;
  float const neg_inf = -INFINITY;
  int const lane = ctid % 32, warp = ctid / 32, g = lane / 4, t4 = lane % 4;
  int const row0 = t.m0 + 64 * wg + 16 * warp + g;    // this thread's rows: row0 and row0 + 8
  std::uint32_t const q_rows = base + 64 * wg * 128;  // the warpgroup's 64 rows of each q tile

  float s[Cfg::s_tiles][4];
  float o[Cfg::o_tiles][4];
  std::uint32_t a[Cfg::p_steps][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {neg_inf, neg_inf}, l_part[2] = {0.0f, 0.0f};
  float const scale_log2 = p.softmax_scale * prefill_log2e;
  // The last key each row sees (inclusive), and the first key that a row of this warpgroup may
  // not see: blocks ending before it need no mask.
  int const limit[2] = {min(t.prefix + row0, t.len_k - 1), min(t.prefix + row0 + 8, t.len_k - 1)};
  int const unmasked_end = min(t.prefix + t.m0 + 64 * wg + 1, t.len_k);

  // Every register an MMA batch touches is written before the wgmma_fence that precedes it (and
  // pinned there, so that the compiler does not sink the writes past the fence).
  auto const zero_s = [&] {
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    wgmma_pin(s);
  };
  auto const issue_s = [&](int stage) {
    std::uint32_t const k_stage = base + Cfg::k_offset + stage * Cfg::k_stage_bytes;
#pragma unroll
    for (int c = 0; c < Cfg::qk_tiles; ++c)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_m64n128k16_ss(s, wgmma_desc_k_major(q_rows + c * Cfg::q_tile_bytes + 32 * kk),
                            wgmma_desc_k_major(k_stage + c * Cfg::kv_tile_bytes + 32 * kk));
  };
  auto const issue_pv = [&](int stage) {
    std::uint32_t const v_stage = base + Cfg::v_offset + stage * Cfg::v_stage_bytes;
#pragma unroll
    for (int j = 0; j < Cfg::p_steps; ++j)
      wgmma_m64n128k16_rs_bt(o, a[j],
                             wgmma_desc_sw128(v_stage + j * 2048, Cfg::kv_tile_bytes, 1024));
  };
  // Masks and scales S of block j into log2 units, takes the new row maxima and turns S into
  // exp2(S - m) in place; returns the rescale factors of the rows' earlier sums in alpha.
  auto const softmax = [&](int j, float(&alpha)[2], float(&sum)[2]) {
    int const key0 = j * block_n;
    float mx[2];
    prefill_scale_mask(s, key0, key0 + block_n > unmasked_end, limit, t4, scale_log2, mx);
    float base_m[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      alpha[r] = softmax_advance(m_run[r], softmax_quad_max(mx[r]), base_m[r], prefill_exp2);
      sum[r] = 0.0f;
    }
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n) {
      s[n][0] = prefill_exp2(s[n][0] - base_m[0]);
      s[n][1] = prefill_exp2(s[n][1] - base_m[0]);
      s[n][2] = prefill_exp2(s[n][2] - base_m[1]);
      s[n][3] = prefill_exp2(s[n][3] - base_m[1]);
      sum[0] += s[n][0] + s[n][1];
      sum[1] += s[n][2] + s[n][3];
    }
  };
  // P as the bf16 A fragments of P V: the C fragment of n8 tiles 2j and 2j + 1 is the A fragment
  // of k step j.
  auto const pack_p = [&] {
#pragma unroll
    for (int j = 0; j < Cfg::p_steps; ++j) {
      a[j][0] = pack_bf16x2(s[2 * j][0], s[2 * j][1]);
      a[j][1] = pack_bf16x2(s[2 * j][2], s[2 * j][3]);
      a[j][2] = pack_bf16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
      a[j][3] = pack_bf16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
    }
  };

  mbarrier_wait(bar.q_full, 0);
  float alpha[2], sum[2];
  // Block 0: S alone.
  mbarrier_wait(bar.k_full, 0);
  zero_s();
  wgmma_fence();
  issue_s(0);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_pin(s);
  if (lane == 0) mbarrier_arrive(bar.k_empty);
  softmax(0, alpha, sum);
  l_part[0] = sum[0];
  l_part[1] = sum[1];
  pack_p();

  for (int j = 1; j < t.n_blocks; ++j) {
    int const stage = j % stages, prev = (j - 1) % stages;
    // Both waits first: no branch between the fence and the MMAs (V of block j - 1 was loaded
    // before K of block j, so the second wait seldom waits).
    mbarrier_wait(bar.k_full + 8 * stage, std::uint32_t(j / stages) & 1);
    mbarrier_wait(bar.v_full + 8 * prev, std::uint32_t((j - 1) / stages) & 1);
    zero_s();
    wgmma_pin(o);
    wgmma_pin(a);
    wgmma_fence();
    issue_s(stage);
    wgmma_commit();
    issue_pv(prev);
    wgmma_commit();
    // S of block j is done (groups retire in order); P V of block j - 1 may still run, under the
    // softmax below.
    wgmma_wait<1>();
    wgmma_pin(s);
    if (lane == 0) mbarrier_arrive(bar.k_empty + 8 * stage);
    softmax(j, alpha, sum);
    wgmma_wait<0>();
    wgmma_pin(o);
    wgmma_pin(a);
    if (lane == 0) mbarrier_arrive(bar.v_empty + 8 * prev);
    softmax_rescale_rows(o, alpha);
    l_part[0] = l_part[0] * alpha[0] + sum[0];
    l_part[1] = l_part[1] * alpha[1] + sum[1];
    pack_p();
  }
  {
    int const last = (t.n_blocks - 1) % stages;
    mbarrier_wait(bar.v_full + 8 * last, std::uint32_t((t.n_blocks - 1) / stages) & 1);
    wgmma_pin(o);
    wgmma_pin(a);
    wgmma_fence();
    issue_pv(last);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin(o);
    wgmma_pin(a);
  }

  bf16* const out0 = p.out + (t.q_start + std::int64_t(row0)) * p.out_token_stride +
                     std::int64_t(t.h) * p.out_head_stride + 2 * t4;
  float* const lse0 =
      p.lse != nullptr ? p.lse + (t.q_start + std::int64_t(row0)) * p.heads_q + t.h : nullptr;
  prefill_store_rows(o, l_part, m_run, out0, out0 + 8 * p.out_token_stride, lse0, p.heads_q, row0,
                     t.len_q, t4);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::threads, 1)
    prefill_wgmma_kernel(prefill_params const p, __grid_constant__ CUtensorMap const q_map,
                         __grid_constant__ CUtensorMap const k_map,
                         __grid_constant__ CUtensorMap const r_map,
                         __grid_constant__ CUtensorMap const v_map) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  constexpr int block_m = Cfg::block_m, block_n = Cfg::block_n;
  __shared__ int2 found;

  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  if (warp == 0) {
    int2 const f = prefill_find_tile<block_m>(p.cu_seqlens_q, p.batch, int(blockIdx.x), lane);
    if (lane == 0) found = f;
  }
  __syncthreads();
  prefill_wgmma_tile t;
  t.b = found.x;
  if (t.b < 0) return;  // a spare CTA of the fixed grid
  t.h = int(blockIdx.y);
  t.hk = t.h / (p.heads_q / p.heads_k);
  t.q_start = p.cu_seqlens_q[t.b];
  t.len_q = p.cu_seqlens_q[t.b + 1] - t.q_start;
  t.k_start = p.cu_seqlens_k[t.b];
  t.len_k = p.cu_seqlens_k[t.b + 1] - t.k_start;
  t.prefix = t.len_k - t.len_q;
  int const tiles = (t.len_q + block_m - 1) / block_m;
  t.m0 = (tiles - 1 - found.y) * block_m;              // last tile first
  t.kv_end = min(t.len_k, t.prefix + t.m0 + block_m);  // keys any row of the tile sees
  t.n_blocks = t.kv_end > 0 ? (t.kv_end + block_n - 1) / block_n : 0;

  if (t.n_blocks == 0) {  // only when len_k < len_q: rows that see no key get zeros, lse -inf
    constexpr int vectors = Cfg::v_dim / 8;
    for (int i = tid; i < block_m * vectors; i += Cfg::threads) {
      int const r = i / vectors, c = i % vectors;
      if (t.m0 + r >= t.len_q) continue;
      *reinterpret_cast<uint4*>(p.out + (t.q_start + std::int64_t(t.m0 + r)) * p.out_token_stride +
                                std::int64_t(t.h) * p.out_head_stride + c * 8) =
          make_uint4(0u, 0u, 0u, 0u);
    }
    if (p.lse != nullptr)
      for (int r = tid; r < block_m && t.m0 + r < t.len_q; r += Cfg::threads)
        p.lse[(t.q_start + std::int64_t(t.m0 + r)) * p.heads_q + t.h] = -INFINITY;
    return;
  }

  // The swizzle repeats every 1024 bytes of the shared address space: align the base by hand.
  std::uint32_t const raw = smem_address(smem_raw);
  std::uint32_t const base = (raw + 1023u) & ~1023u;
  prefill_wgmma_barriers<Cfg> const bar(base);
  if (tid == 0) {
    mbarrier_init(bar.q_full, 1);  // the producer's announcement (with the bytes)
    for (int s = 0; s < Cfg::stages; ++s) {
      mbarrier_init(bar.k_full + 8 * s, 1);
      mbarrier_init(bar.v_full + 8 * s, 32);  // every lane of the producer warp
      mbarrier_init(bar.k_empty + 8 * s, Cfg::consumer_threads / 32);  // a lane per consumer warp
      mbarrier_init(bar.v_empty + 8 * s, Cfg::consumer_threads / 32);
    }
    mbarrier_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles part here

  if (tid < Cfg::producer_threads) {
    warpgroup_registers_down<Cfg::producer_registers>();
    if (warp == 0)
      prefill_wgmma_produce<Cfg>(p, t, &q_map, &k_map, &r_map, &v_map, base, bar, lane);
  } else {
    warpgroup_registers_up<Cfg::consumer_registers>();
    int const ctid = tid - Cfg::producer_threads;
    prefill_wgmma_consume<Cfg>(p, t, base, bar, ctid / 128, ctid % 128);
  }
}

// A tensor map over a bf16 [outer, middle, cols] tensor (3-D; element strides middle_stride and
// outer_stride) or, with middle 0, over a [outer, cols] one (2-D), in boxes of 64 columns x
// `box_rows` outer rows with the 128-byte swizzle. A stride whose dimension has one entry is never
// stepped: it is replaced by one the copy engine accepts (a multiple of 16 bytes).
inline CUtensorMap prefill_tensor_map(void const* data, std::int64_t cols, std::int64_t middle,
                                      std::int64_t middle_stride, std::int64_t outer,
                                      std::int64_t outer_stride, int box_rows, char const* what) {
  std::int64_t const row_bytes = (cols * 2 + 15) / 16 * 16;
  std::int64_t const mid_bytes = middle <= 1 ? row_bytes : middle_stride * 2;
  std::int64_t const out_bytes =
      outer == 1 ? std::max<std::int64_t>(middle, 1) * mid_bytes : outer_stride * 2;
  CUtensorMap map;
  cuuint32_t const elem_strides[3] = {1, 1, 1};
  int const rank = middle == 0 ? 2 : 3;
  cuuint64_t const dims[3] = {cuuint64_t(cols), cuuint64_t(rank == 2 ? outer : middle),
                              cuuint64_t(outer)};
  cuuint64_t const strides[2] = {cuuint64_t(rank == 2 ? out_bytes : mid_bytes),
                                 cuuint64_t(out_bytes)};
  cuuint32_t const box[3] = {64, rank == 2 ? cuuint32_t(box_rows) : 1u, cuuint32_t(box_rows)};
  CUresult const r = tensor_map_encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, cuuint32_t(rank), const_cast<void*>(data), dims,
      strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LC_CHECK(r == CUDA_SUCCESS, "prefill on CUDA (wgmma): cuTensorMapEncodeTiled failed ("
                                  << int(r) << ") for " << what << " (" << outer << " x " << middle
                                  << " x " << cols << ", strides " << out_bytes << ", " << mid_bytes
                                  << " bytes) at " << data);
  return map;
}

template <int QkDim, int VDim>
void launch_prefill_wgmma(prefill_params const& p, CUstream_st* stream) {
  using cfg = prefill_wgmma_config<QkDim, VDim>;
  LC_CHECK(p.qk_dim == QkDim && p.v_dim == VDim, "prefill on CUDA (wgmma): launcher ("
                                                     << QkDim << ", " << VDim << ") called for ("
                                                     << p.qk_dim << ", " << p.v_dim << ")");
  LC_CHECK(p.rope_dim == 0 || p.rope_dim == cfg::tile_cols,
           "prefill on CUDA (wgmma): rope_dim must be 0 or " << cfg::tile_cols << "; got "
                                                             << p.rope_dim);
  std::int64_t const tiles = prefill_grid_tiles<cfg::block_m>(p.total_q, p.batch);
  LC_CHECK(tiles < (std::int64_t(1) << 31) && p.heads_q <= 65535,
           "prefill on CUDA (wgmma): " << tiles << " query tiles and " << p.heads_q
                                       << " heads exceed the grid (2^31 - 1, 65535)");
  CUtensorMap const q_map = prefill_tensor_map(p.q, QkDim, p.heads_q, p.q_head_stride, p.total_q,
                                               p.q_token_stride, cfg::block_m, "q");
  // Without key rows no CTA reads k or v (every tile takes the zero path): q stands in for them.
  CUtensorMap k_map = q_map, r_map = q_map, v_map = q_map;
  if (p.total_k > 0) {
    k_map = prefill_tensor_map(p.k, QkDim - p.rope_dim, p.heads_k, p.k_head_stride, p.total_k,
                               p.k_token_stride, cfg::block_n, "k");
    v_map = prefill_tensor_map(p.v, VDim, p.heads_k, p.v_head_stride, p.total_k, p.v_token_stride,
                               cfg::block_n, "v");
    if (p.rope_dim > 0)
      r_map = prefill_tensor_map(p.k_rope, p.rope_dim, 0, 0, p.total_k, p.k_rope_token_stride,
                                 cfg::block_n, "k_rope");
  }
  auto const kernel = prefill_wgmma_kernel<cfg>;
  // Above 48 KB of dynamic shared memory a kernel must opt in; not a stream operation, so it is
  // allowed while a graph is being captured.
  LC_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem_bytes));
  dim3 const grid(unsigned(tiles), unsigned(p.heads_q));
  kernel<<<grid, cfg::threads, cfg::smem_bytes, stream>>>(p, q_map, k_map, r_map, v_map);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
