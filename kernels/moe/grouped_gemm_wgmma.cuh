// moe experts: the Hopper grouped GEMM for prefill-sized batches (warpgroup MMA fed by the bulk
// tensor copy engine) and its launcher. Only the files in instantiations/ include this.
//
// Same contract as grouped_gemm.cuh (moe_grouped_gemm_params, the same epilogues, the same fixed
// grid over the capacity's row blocks, blocks without an expert exit at once), another schedule:
//
// CTA tile: TileM rows x 256 weight rows, K in stages of 64 bf16 (128 bytes: one 128-byte swizzle
// row) in a ring of shared memory. moe_align pads experts to 64 rows (R1 at T = 4096 has ~128 rows
// per expert: 128-row padding would waste a third of the MMAs), so:
//  - TileM 128 (the one instantiated): the kernel pairs blocks itself: a CTA whose block is the
//    2nd, 4th, ... of its expert exits at once (its predecessor's CTA covers it), and an expert's
//    last pair may hold one block. Consumer warpgroup w takes rows 64w.. and all 256 weight rows
//    (2 wgmma m64n128k16); 4 stages of 48 KiB that feed twice the MMAs of a 64-row stage.
//  - TileM 64: one block per CTA; the two consumer warpgroups share its 64 rows and split the 256
//    weight rows (wgmma m64n128k16 each); 5 stages of 40 KiB. It passed the same tests but ran
//    1.3x slower at T >= 4096 (more L2 -> SM bytes per MMA; docs/perf/moe-experts.md), so no
//    instantiation uses it.
// 384 threads: warpgroup 0 produces, warpgroups 1 and 2 consume. Producer thread 0 announces the
// stage's weight bytes on the stage's `full` mbarrier and issues four 64-row bulk tensor copies
// (cp.async.bulk.tensor, 128-byte swizzle; an expert's weight rows are contiguous, so one 2-D
// tensor map over [E x w_rows, K] serves every expert); the 128 producer threads gather the
// activation rows through the token permutation (source offsets looked up once into shared memory)
// with 16-byte cp.async into the same swizzled layout, 8 threads per 128-byte row (whole sectors).
//
// GEMM 1 (gate_up): weight rows 128c.. of the tile are 64 gate rows n0 + 64c.. and the 64 up rows
// I + n0 + 64c.. of the same columns: wgmma's accumulator layout gives every thread gate(i, j) in
// register 4q + e and up(i, j) in 4(q + 8) + e of the same MMA's accumulators, so SiLU-and-mul
// stays in registers. 128 intermediate columns per CTA. GEMM 2 (down): 256 hidden columns per CTA,
// times the routed weight.
//
// Ordering: the weight copies complete on `full` (transaction bytes). The activation copies are
// ordinary cp.async writes, which the tensor cores read through the async proxy: each producer
// thread waits for its own copies of a stage one stage later (two stages of copies in flight),
// fences the proxies and only then arrives on `full`. Consumers wait on `full`, and one lane per
// consumer warp arrives on the stage's `empty` mbarrier once the stage's wgmma group has completed
// (wgmma.wait_group), before the producer may overwrite it.
//
// Grid: one dimension, the output tiles of a row block next to each other (tile fastest): the A
// rows of a block are read from device memory once and reused from L2 by its N tiles, and the
// blocks of one expert (consecutive) stream its weights through L2 together.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/activation/activation_params.hpp"
#include "kernels/common/ptx.cuh"
#include "kernels/common/tensor_map.hpp"
#include "kernels/common/wgmma.cuh"
#include "kernels/moe/grouped_gemm.cuh"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

template <moe_gemm_stage Stage, int BlockM, int TileM>
struct moe_wgmma_traits {
  static_assert(BlockM == 64, "moe wgmma grouped GEMM: block_m 64 (the model's alignment)");
  static_assert(TileM == BlockM || TileM == 2 * BlockM, "moe wgmma grouped GEMM: 64 or 128 rows");
  static constexpr bool gate_up = Stage == moe_gemm_stage::gate_up;
  static constexpr bool paired = TileM == 2 * BlockM;  // two aligned blocks per CTA
  static constexpr int tile_w = 256;                   // weight rows per CTA
  static constexpr int mma_n = 128;                    // weight rows per wgmma
  static constexpr int mmas = paired ? 2 : 1;          // wgmmas per consumer warpgroup per 16 of K
  static constexpr int out_n =
      gate_up ? int(moe_gemm_wgmma_gate_up_tile_n) : int(moe_gemm_wgmma_down_tile_n);
  static_assert(out_n == (gate_up ? tile_w / 2 : tile_w));
  static constexpr int k_elems = 64;  // bf16 per stage: one 128-byte swizzle row
  static constexpr int row_bytes = 128;
  static constexpr int copy_rows = 64;  // rows per bulk tensor copy (box height)
  static constexpr int stages = paired ? 4 : 5;
  static constexpr int lag = 1;  // stages between a thread's activation copies and its arrival
  static_assert(lag <= stages - 2, "the producer must not wait on a slot its own arrival frees");
  static constexpr int a_bytes = TileM * row_bytes;
  static constexpr int b_bytes = tile_w * row_bytes;
  static constexpr int stage_bytes = a_bytes + b_bytes;  // a multiple of 1024 (swizzle atoms)
  static_assert(stage_bytes % 1024 == 0);
  static constexpr int barrier_bytes = 2 * stages * 8;
  static constexpr int row_table_bytes = TileM * 8;  // each A row's source byte offset, or -1
  // The ring is aligned to 1024 bytes by hand (the 128-byte swizzle repeats every 8 rows).
  static constexpr int smem_bytes = 1024 + stages * stage_bytes + barrier_bytes + row_table_bytes;
  static_assert(smem_bytes <= 227 * 1024);
  static constexpr int producer_threads = 128;
  static constexpr int threads = 3 * 128;
};

// --- warpgroup MMA ------------------------------------------------------------------------

// d[64 x 128] += A[64 x 16] . B[128 x 16]^T, bf16 in, fp32 accumulators, both K-major in shared.
__device__ __forceinline__ void moe_wgmma_m64n128k16(float (&d)[64], std::uint64_t a_desc,
                                                     std::uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, 1, 1, 1, 0, 0;\n"
      "}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(a_desc), "l"(b_desc));
}

// --- the kernel ------------------------------------------------------------------------------

template <moe_gemm_stage Stage, int BlockM, int TileM>
__global__ void __launch_bounds__(moe_wgmma_traits<Stage, BlockM, TileM>::threads, 1)
    moe_grouped_gemm_wgmma_kernel(moe_grouped_gemm_params const p,
                                  __grid_constant__ CUtensorMap const w_map) {
  using traits = moe_wgmma_traits<Stage, BlockM, TileM>;
  constexpr bool gate_up = traits::gate_up, paired = traits::paired;
  constexpr int stages = traits::stages, lag = traits::lag, mmas = traits::mmas;
  extern __shared__ __align__(1024) std::uint8_t smem_raw[];

  int const n_tiles = int(p.n / traits::out_n);
  int const block = int(blockIdx.x) / n_tiles, tile = int(blockIdx.x) % n_tiles;
  int const expert = __ldg(p.expert_of_block + block);
  if (expert < 0) return;  // past the last used block: the only cost of an empty slot
  bool pair = false;       // TileM 128: this CTA has a second block
  if constexpr (paired) {
    // Pairs start at the 1st, 3rd, ... block of the expert: count its blocks before this one.
    int before = 0;
    while (block - before > 0 && __ldg(p.expert_of_block + block - before - 1) == expert) ++before;
    if (before % 2 != 0) return;  // the second block of the previous CTA's pair
    pair = block + 1 < p.blocks && __ldg(p.expert_of_block + block + 1) == expert;
  }

  std::uint32_t const raw = moe_smem_addr(smem_raw);
  std::uint32_t const ring = (raw + 1023u) & ~1023u;
  std::uint32_t const full0 = ring + stages * traits::stage_bytes;
  std::uint32_t const empty0 = full0 + stages * 8;
  std::uint8_t* const ring_ptr = smem_raw + (ring - raw);
  auto* const row_table = reinterpret_cast<std::int64_t*>(ring_ptr + stages * traits::stage_bytes +
                                                          traits::barrier_bytes);
  int const tid = int(threadIdx.x);
  std::int64_t const row0 = std::int64_t(block) * BlockM;
  // A lone block of a pairing CTA leaves the second consumer warpgroup without rows.
  bool const second_busy = !paired || pair;
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) {
      // full: the producers' arrivals + thread 0's announcement (with the weight bytes).
      mbarrier_init(full0 + 8 * s, traits::producer_threads + 1);
      mbarrier_init(empty0 + 8 * s, second_busy ? 8 : 4);  // a lane of each busy consumer warp
    }
    // Visible to the copy engine (async proxy) before the first bulk copy signals on them.
    mbarrier_init_fence();
  }
  // Where each A row comes from, looked up once (the producers read it every stage): a token's
  // row of x (gate_up) or the row itself (down); -1 for padding and for a lone block's other half.
  if (tid < TileM) {
    std::int32_t const id = tid < BlockM || pair ? __ldg(p.sorted_ids + row0 + tid) : p.rows;
    std::int64_t const src_row = gate_up ? id / p.top_k : row0 + tid;
    row_table[tid] = id < p.rows ? src_row * p.lda * 2 : -1;
  }
  __syncthreads();

  int const k_tiles = int(p.k / traits::k_elems);

  if (tid < traits::producer_threads) {
    // Thread t copies chunk t % 8 of rows t / 8 + 16i: 8 threads read one 128-byte row segment.
    int const chunk = tid % 8;
    int const a_rows = paired && !pair ? BlockM : TileM;
    auto const* const a_base = static_cast<std::uint8_t const*>(p.a);
    // First weight row of each 64-row box of the tile (rows of the stacked [E x w_rows, K] map).
    std::int64_t const w_rows = gate_up ? 2 * p.n : p.n;
    int box_row[4];
    moe_wgmma_box_rows<gate_up>(box_row, tile, traits::out_n, p.n, expert, w_rows);
    for (int kt = 0; kt < k_tiles; ++kt) {
      int const s = kt % stages;
      if (kt >= stages) mbarrier_wait(empty0 + 8 * s, std::uint32_t((kt / stages - 1) & 1));
      std::uint32_t const a_dst = ring + s * traits::stage_bytes;
      if (tid == 0) {
        mbarrier_arrive_expect_tx(full0 + 8 * s, traits::b_bytes);
#pragma unroll
        for (int q = 0; q < 4; ++q)
          tma_load_2d(a_dst + traits::a_bytes + q * traits::copy_rows * traits::row_bytes, &w_map,
                      kt * traits::k_elems, box_row[q], full0 + 8 * s);
      }
      std::uint8_t* const as = ring_ptr + s * traits::stage_bytes;
      std::int64_t const kb = std::int64_t(kt) * traits::row_bytes + chunk * 16;
#pragma unroll
      for (int i = 0; i < TileM / 16; ++i) {
        int const r = tid / 8 + 16 * i;
        if (r >= a_rows) break;
        // Padding rows (no token) are zero-filled.
        std::int64_t const from = row_table[r];
        moe_cp_async16(as + moe_tile_offset(r, chunk), from >= 0 ? a_base + from + kb : a_base,
                       from >= 0 ? 16 : 0);
      }
      moe_cp_commit();
      // Stage kt - lag's copies of this thread have landed: fence, then count them on its barrier.
      if (kt >= lag) {
        moe_cp_wait<lag>();
        fence_proxy_async_shared();
        mbarrier_arrive(full0 + 8 * ((kt - lag) % stages));
      }
    }
    moe_cp_wait<0>();
    fence_proxy_async_shared();
    for (int kt = k_tiles > lag ? k_tiles - lag : 0; kt < k_tiles; ++kt)
      mbarrier_arrive(full0 + 8 * (kt % stages));
    return;
  }

  // Consumers: TileM 64: warpgroup wg takes weight rows 128 wg.. of the 64 rows; TileM 128: rows
  // 64 wg.. and all 256 weight rows.
  int const wg = tid / 128 - 1;
  if (wg == 1 && !second_busy) return;  // no rows here, no arrivals counted
  int const warp = (tid % 128) / 32, lane = tid % 32;
  int const a_row0 = paired ? BlockM * wg : 0;
  // Output column half of MMA h: 128 weight rows each (64 gate + 64 up for gate_up).
  auto const col_half = [&](int h) { return paired ? h : wg; };
  float acc[mmas][64];
#pragma unroll
  for (int h = 0; h < mmas; ++h)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;
  for (int kt = 0; kt < k_tiles; ++kt) {
    int const s = kt % stages;
    mbarrier_wait(full0 + 8 * s, std::uint32_t((kt / stages) & 1));
    std::uint32_t const a_tile = ring + s * traits::stage_bytes + a_row0 * traits::row_bytes;
    std::uint32_t const b_tile = ring + s * traits::stage_bytes + traits::a_bytes;
#pragma unroll
    for (int h = 0; h < mmas; ++h) wgmma_pin(acc[h]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < traits::k_elems / 16; ++kk) {  // 32 bytes of K per wgmma
#pragma unroll
      for (int h = 0; h < mmas; ++h)
        moe_wgmma_m64n128k16(
            acc[h], wgmma_desc_k_major(a_tile + 32 * kk),
            wgmma_desc_k_major(b_tile + col_half(h) * traits::mma_n * traits::row_bytes + 32 * kk));
    }
    wgmma_commit();
    wgmma_wait<1>();  // the previous stage's group is done: its buffers may be refilled
#pragma unroll
    for (int h = 0; h < mmas; ++h) wgmma_pin(acc[h]);
    if (kt > 0 && lane == 0) mbarrier_arrive(empty0 + 8 * ((kt - 1) % stages));
  }
  wgmma_wait<0>();
#pragma unroll
  for (int h = 0; h < mmas; ++h) wgmma_pin(acc[h]);

  // Epilogue: thread (warp, g, t) of the warpgroup holds rows 16 warp + g (+ 8) and columns
  // 8q + 2t, 8q + 2t + 1 of each 64 x 128 MMA tile h in acc[h][4q + 2 half + 0..1].
  int const g = lane / 4, t = lane % 4;
  auto* const out = static_cast<std::uint16_t*>(p.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    std::int64_t const pos = row0 + a_row0 + 16 * warp + g + 8 * half;
    std::int32_t const id = __ldg(p.sorted_ids + pos);
    bool const valid = id < p.rows;
    if constexpr (gate_up) {
      // a = silu(bf16(gate)) * bf16(up), zeros for padding rows (as grouped_gemm.cuh).
#pragma unroll
      for (int h = 0; h < mmas; ++h) {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          std::int64_t const col =
              std::int64_t(tile) * traits::out_n + 64 * col_half(h) + 8 * q + 2 * t;
          std::uint32_t v = 0;
          if (valid) {
            bf16 const a0 = silu_and_mul_value(bf16(acc[h][4 * q + 2 * half]),
                                               bf16(acc[h][4 * (q + 8) + 2 * half]));
            bf16 const a1 = silu_and_mul_value(bf16(acc[h][4 * q + 2 * half + 1]),
                                               bf16(acc[h][4 * (q + 8) + 2 * half + 1]));
            v = moe_pack_bf16(a0, a1);
          }
          *reinterpret_cast<std::uint32_t*>(out + pos * p.ldo + col) = v;
        }
      }
    } else {
      if (!valid) continue;  // padding produces nothing
      float const weight = __ldg(p.topk_weights + id);
#pragma unroll
      for (int h = 0; h < mmas; ++h) {
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          std::int64_t const col =
              std::int64_t(tile) * traits::out_n + traits::mma_n * col_half(h) + 8 * q + 2 * t;
          std::uint32_t const v = moe_pack_bf16(bf16(acc[h][4 * q + 2 * half] * weight),
                                                bf16(acc[h][4 * q + 2 * half + 1] * weight));
          *reinterpret_cast<std::uint32_t*>(out + std::int64_t(id) * p.ldo + col) = v;
        }
      }
    }
  }
}

// --- the launcher ----------------------------------------------------------------------------

template <moe_gemm_stage Stage, int BlockM, int TileM>
void launch_moe_grouped_gemm_wgmma(moe_grouped_gemm_params const& p, CUstream_st* stream) {
  using traits = moe_wgmma_traits<Stage, BlockM, TileM>;
  std::int64_t const w_rows = traits::gate_up ? 2 * p.n : p.n;
  std::int64_t const n_tiles = p.n / traits::out_n;
  LC_CHECK(p.n > 0 && p.n % traits::out_n == 0 && p.k > 0 && p.k % traits::k_elems == 0,
           "moe wgmma grouped GEMM: N " << p.n << " must be a positive multiple of "
                                        << traits::out_n << " and K " << p.k << " of "
                                        << traits::k_elems);
  LC_CHECK(p.experts > 0 && p.experts * w_rows < (std::int64_t(1) << 31) &&
               p.blocks * n_tiles < (std::int64_t(1) << 31),
           "moe wgmma grouped GEMM: " << p.experts << " experts x " << w_rows << " weight rows and "
                                      << p.blocks << " row blocks x " << n_tiles
                                      << " tiles must each stay below 2^31 (and experts > 0)");
  LC_CHECK(p.lda % 8 == 0 && reinterpret_cast<std::uintptr_t>(p.a) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(p.w) % 16 == 0,
           "moe wgmma grouped GEMM: A and the weights must be 16-byte aligned, A's row stride "
               << p.lda << " a multiple of 8");
  if (p.blocks == 0) return;

  // The stacked weights as one [E x w_rows, K] bf16 matrix; boxes of 64 rows x 64 values (128
  // bytes, the swizzle's width).
  CUtensorMap map;
  cuuint64_t const dims[2] = {cuuint64_t(p.k), cuuint64_t(p.experts * w_rows)};
  cuuint64_t const strides[1] = {cuuint64_t(p.k * 2)};
  cuuint32_t const box[2] = {cuuint32_t(traits::k_elems), cuuint32_t(traits::copy_rows)};
  cuuint32_t const elem_strides[2] = {1, 1};
  CUresult const r = tensor_map_encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p.w), dims, strides, box,
      elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LC_CHECK(r == CUDA_SUCCESS, "moe wgmma grouped GEMM: cuTensorMapEncodeTiled failed ("
                                  << int(r) << ") for K " << p.k << ", " << p.experts * w_rows
                                  << " weight rows");

  auto const kernel = moe_grouped_gemm_wgmma_kernel<Stage, BlockM, TileM>;
  // A host-side attribute, not a stream operation: allowed while a graph is being captured.
  LC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     traits::smem_bytes));
  kernel<<<unsigned(p.blocks * n_tiles), traits::threads, traits::smem_bytes, stream>>>(p, map);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
