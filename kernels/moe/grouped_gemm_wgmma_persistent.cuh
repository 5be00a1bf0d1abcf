// moe experts: the persistent Hopper grouped GEMM for prefill-sized batches (warpgroup MMA fed by
// the bulk tensor copy engine), written for bf16 and FP8 e4m3; FP8 is the one instantiated (the
// bf16 instantiation ran 1.17-1.25x slower than grouped_gemm_wgmma.cuh's kernel at R1 T 4096 and
// 8192, docs/perf/moe-experts.md, so bf16 keeps that one). Only the files in instantiations/
// include this.
//
// Same contract as grouped_gemm.cuh (moe_grouped_gemm_params, the same epilogues, FP8 gate_up
// quantising the intermediate), another schedule:
//
// Work item: two aligned 64-row blocks of one expert (a "pair": the 1st and 2nd, 3rd and 4th, ...
// block of the expert; an expert's last pair may hold one block) x 256 weight rows. K in stages
// of 128 bytes (64 bf16 or 128 e4m3 values: one 128-byte swizzle row, one FP8 scale block) in a
// ring of 4 shared-memory stages (48 KiB; FP8 + 1 KiB of scales).
//
// Persistent grid: one CTA per SM takes items until none is left. Items are numbered over live
// groups of `pairs` pairs of one expert (blocks 2 pairs x j.. of the expert): item L is pair
// L % pairs of group L / (pairs x n_tiles), output tile (L / pairs) % n_tiles, so that the pairs
// that share a weight tile are neighbours, and a group's tiles follow each other (the A rows of a
// pair are reused from L2 by its tiles). Items of pairs a group lacks are skipped.
// CTAs take the next item number from a per-launch global counter (the dynamic order), so the
// items in flight are always about the latest `grid` ones and the pairs of a group stream their
// tile's weights at the same time; L2 serves the second pair. `pairs` covers an expert of average
// size (1-4). A static stride (CTA c taking items c, c + grid, ...) let the CTAs drift apart over
// tens of items, after which such neighbours no longer met in L2: at R1 T = 4096-8192 every pair
// read its weights from HBM (docs/perf/moe-experts.md). The counters: 64 slots per instantiation
// file, taken in turn by the launches and zeroed by each launch's last CTA, so up to 64 launches
// of one instantiation may overlap (streams); a captured graph keeps its slot, so one graph must
// not be replayed on two streams at once.
// Producer warp 0 finds the items from expert_of_block, 32 blocks per step, and hands each to the
// other warps through a ring of item slots in shared memory (the consumers read an item's slot
// after its first stage's `full` wait; the end is a `full` phase without copies). The ring runs
// on across items: the producer fills the next item's stages while the consumers run this
// one's epilogue.
//
// 384 threads: warpgroup 0 produces, warpgroups 1 and 2 consume (rows 0-63 and 64-127 of the
// pair, all 256 weight rows as two m64n128 wgmma tiles; a lone block leaves warpgroup 2 idle,
// still counting its stages). Producer thread 0 announces the stage's bulk bytes on the stage's
// `full` mbarrier and issues four 64-row tensor copies of the weights (128-byte swizzle; one 2-D
// tensor map over the stacked [E x w_rows, K] weights serves every expert). The A rows:
//  - gate_up: gathered through the token permutation by the 128 producer threads, 16-byte cp.async
//    into the same swizzled layout, 8 threads per 128-byte row (whole sectors); each thread's
//    copies count on `full` by themselves when they land (cp.async.mbarrier.arrive.noinc), so the
//    producer never waits on its own copies: as many stages are in flight as the ring has. Those
//    are generic-proxy writes read by the tensor cores (async proxy): the consumers fence the
//    proxies after their wait.
//  - down: the rows of a pair are contiguous (sorted positions): two more tensor copies.
// FP8 also stages per stage the 128 rows' activation scales and the 4 weight-block scales of the
// tile (128 producer threads, 4-byte cp.async, counted the same way).
//
// MMA: bf16 wgmma m64n128k16, one stage's group in flight (wgmma.wait_group 1) before the
// consumer warps release the previous stage on its `empty` mbarrier. FP8 (DeepGEMM's scheme):
// per stage and weight-row half, wgmma m64n128k32 e4m3 into a partial fp32 tile, waited for, then
// added to the totals times the row's activation scale x the weight block's scale (as
// gemm_fp8_block and the mma.sync kernel do); registers: 2 x 64 totals + 64 partials, so the two
// halves run one after the other and the two consumer warpgroups overlap each other's promotion;
// the stage is released once the second half's MMAs are done, before its promotion (the scales
// are read first).
//
// GEMM 1 (gate_up): weight rows 128c.. of the tile are 64 gate rows n0 + 64c.. and the 64 up rows
// I + n0 + 64c..: wgmma's accumulator layout gives every thread gate(i, j) in register 4q + e and
// up(i, j) in 4(q + 8) + e of the same tile, so SiLU-and-mul stays in registers; 128 intermediate
// columns per item, which is one FP8 quantisation group: FP8 quantises each row's 128 values in
// registers (amax over the thread's 32 values and its 3 neighbours' by shuffles), codes and scale
// as quantize_per_token_group makes them; padding rows are left unwritten. GEMM 2 (down): 256
// hidden columns per item, times the routed weight.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "kernels/activation/activation_params.hpp"
#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/common/tensor_map.hpp"
#include "kernels/common/wgmma.cuh"
#include "kernels/moe/grouped_gemm.cuh"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "kernels/quant/quant_params.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

template <moe_gemm_stage Stage, bool Fp8>
struct moe_wgp_traits {
  static constexpr bool gate_up = Stage == moe_gemm_stage::gate_up;
  static constexpr int block_m = 64;  // moe_align's block (the model's alignment)
  static constexpr int tile_m = 128;  // two blocks per item
  static constexpr int tile_w = 256;  // weight rows per item
  static constexpr int mma_n = 128;   // weight rows per wgmma
  static constexpr int out_n =
      gate_up ? int(moe_gemm_wgmma_gate_up_tile_n) : int(moe_gemm_wgmma_down_tile_n);
  static_assert(out_n == (gate_up ? tile_w / 2 : tile_w));
  static_assert(!Fp8 || !gate_up || out_n == int(quant_group_size));  // one group per item
  static constexpr int elem_bytes = Fp8 ? 1 : 2;
  static constexpr int row_bytes = 128;  // K bytes per stage: one swizzle row
  static constexpr int k_elems = row_bytes / elem_bytes;
  static constexpr int copy_rows = 64;  // rows per tensor copy (box height)
  static constexpr int stages = 4;
  static constexpr bool gather_a = gate_up;  // down: A by tensor copies
  // Producer threads whose cp.async count on `full` (A gather, FP8 scales); 0: thread 0 alone.
  static constexpr int producer_arrivals = gather_a || Fp8 ? 128 : 0;
  static constexpr int a_bytes = tile_m * row_bytes;
  static constexpr int b_bytes = tile_w * row_bytes;
  // FP8: 128 row scales, then the 4 weight-block scales (column half h: lo, hi), padded so that
  // every stage stays 1024-byte aligned.
  static constexpr int scale_bytes = Fp8 ? 1024 : 0;
  static constexpr int stage_bytes = a_bytes + b_bytes + scale_bytes;
  static_assert(stage_bytes % 1024 == 0);  // 128-byte swizzle atoms
  static constexpr int barrier_bytes = 2 * stages * 8;
  // gate_up: each producer thread's source rows of the item, in shared memory rather than in its
  // few registers ([i][thread]).
  static constexpr int src_bytes = gather_a ? tile_m / 16 * 128 * 4 : 0;
  // The ring is aligned to 1024 bytes by hand (the 128-byte swizzle repeats every 8 rows).
  static constexpr int item_slots = 8;  // > stages: see the kernel
  static constexpr int smem_bytes =
      1024 + stages * stage_bytes + barrier_bytes + src_bytes + item_slots * 16;
  static_assert(smem_bytes <= 227 * 1024);
  static constexpr int threads = 3 * 128;
  static constexpr int producer_registers = 56;
  static constexpr int consumer_registers = 224;
  static_assert(128 * producer_registers + 256 * consumer_registers <= 65536);
};

// The accumulators as wgmma.cuh's m64n128 operands take them: 16 n8 tiles of 4 values.
__device__ __forceinline__ float (&moe_wgp_tiles(float (&d)[64]))[16][4] {
  return reinterpret_cast<float(&)[16][4]>(d);
}

// --- the items of the persistent grid ------------------------------------------------------

// One warp's walk over the groups of `span` blocks (span = 2 x the pairs of a group): the blocks
// that start one (expert >= 0 and an index within the expert's consecutive blocks that is a
// multiple of span), 32 blocks of expert_of_block per step. Calls ask for increasing group
// numbers; every lane keeps the same state.
struct moe_wgp_walk {
  int span = 2;
  int base = -32;         // first block of the current step
  int groups_before = 0;  // group starts before `base`
  unsigned mask = 0;      // group starts among blocks base..base + 31
  int prev_expert = -2;   // expert of block base - 1 (-2: before block 0)
  int prev_index = 0;     // index of block base - 1 within its expert's run, modulo span

  // The first block of group `group`, or -1 when there are fewer groups.
  __device__ __forceinline__ int block_of(int group, std::int32_t const* expert_of_block,
                                          int blocks, int lane) {
    while (groups_before + __popc(mask) <= group) {
      groups_before += __popc(mask);
      base += 32;
      if (base >= blocks) return -1;
      int const b = base + lane;
      int const e = b < blocks ? __ldg(expert_of_block + b) : -1;
      int before = __shfl_up_sync(0xFFFF'FFFFu, e, 1);
      if (lane == 0) before = prev_expert;
      // Blocks that begin an expert's run; the distance to the last such block is the index.
      unsigned const first = __ballot_sync(0xFFFF'FFFFu, e != before);
      unsigned const here = first & ((2u << lane) - 1u);  // runs begun at or before this lane
      int const index = (here != 0 ? lane - (31 - __clz(here)) : prev_index + 1 + lane) % span;
      mask = __ballot_sync(0xFFFF'FFFFu, index == 0 && e >= 0);
      prev_expert = __shfl_sync(0xFFFF'FFFFu, e, 31);
      prev_index = __shfl_sync(0xFFFF'FFFFu, index, 31);
    }
    return base + int(__fns(mask, 0, group - groups_before + 1));
  }
};

// One work item: its first block, expert, output tile and A rows (128: a pair, 64: a lone
// block); block -1 marks the end of the CTA's items.
struct moe_wgp_item {
  int block;
  int expert;
  int tile;
  int a_rows;
};

// Item `item`: pair item % pairs of group item / (pairs x n_tiles), output tile
// (item / pairs) % n_tiles (the pairs of a group, which share the tile's weights, are
// neighbours). 1: found; 0: the group has no such pair; -1: past the last group.
__device__ __forceinline__ int moe_wgp_find(moe_wgp_walk& walk, int item, int n_tiles, int pairs,
                                            moe_grouped_gemm_params const& p, int lane,
                                            moe_wgp_item& it) {
  int const blocks = int(p.blocks);
  int const per_group = pairs * n_tiles;
  int const first = walk.block_of(item / per_group, p.expert_of_block, blocks, lane);
  if (first < 0) return -1;
  int const r = item % per_group;
  int const expert = __ldg(p.expert_of_block + first);
  int const block = first + 2 * (r % pairs);
  if (block >= blocks || __ldg(p.expert_of_block + block) != expert) return 0;
  it.block = block;
  it.expert = expert;
  it.tile = r / pairs;
  it.a_rows = block + 1 < blocks && __ldg(p.expert_of_block + block + 1) == expert ? 128 : 64;
  return 1;
}

// Per-launch item counters of the dynamic order (next item, CTAs done), one pair per launch
// slot; the last CTA of a launch zeroes its pair for the slot's next launch. Launches cycle
// through the slots, so up to moe_wgp_ticket_slots launches of one instantiation may overlap.
inline constexpr int moe_wgp_ticket_slots = 64;
static __device__ std::uint32_t moe_wgp_tickets[2 * moe_wgp_ticket_slots];

// --- the kernel ------------------------------------------------------------------------------

// tickets: the launch's item counters (the dynamic order: each item goes to the CTA whose producer
// asks next). pairs: pairs per group (see moe_wgp_find).
template <moe_gemm_stage Stage, bool Fp8>
__global__ void __launch_bounds__(moe_wgp_traits<Stage, Fp8>::threads, 1)
    moe_grouped_gemm_wgmma_persistent_kernel(moe_grouped_gemm_params const p,
                                             __grid_constant__ CUtensorMap const w_map,
                                             __grid_constant__ CUtensorMap const a_map,
                                             std::uint32_t* const tickets, int const pairs) {
  using traits = moe_wgp_traits<Stage, Fp8>;
  constexpr bool gate_up = traits::gate_up;
  constexpr int stages = traits::stages, block_m = traits::block_m;
  extern __shared__ __align__(1024) std::uint8_t smem_raw[];
  pdl_enter();

  std::uint32_t const raw = smem_address(smem_raw);
  std::uint32_t const ring = (raw + 1023u) & ~1023u;
  std::uint32_t const full0 = ring + stages * traits::stage_bytes;
  std::uint32_t const empty0 = full0 + stages * 8;
  std::uint8_t* const ring_ptr = smem_raw + (ring - raw);
  int const tid = int(threadIdx.x), lane = tid % 32;
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) {
      // full: the producers' copy arrivals + thread 0's announcement (with the bulk bytes).
      mbarrier_init(full0 + 8 * s, traits::producer_arrivals + 1);
      mbarrier_init(empty0 + 8 * s, 8);  // lane 0 of each consumer warp
    }
    // Visible to the copy engine (async proxy) before the first bulk copy signals on them.
    mbarrier_init_fence();
  }
  __syncthreads();

  int const n_tiles = int(p.n / traits::out_n);
  int const k_tiles = int(p.k / traits::k_elems);
  // The CTA's items in order, slot j % item_slots for its j-th: producer warp 0 writes them,
  // thread 0 before announcing the item's first stage, whose `full` wait orders the consumers'
  // read. The producer is at most `stages` stages (so items) ahead of any reader.
  auto* const items = reinterpret_cast<moe_wgp_item*>(ring_ptr + stages * traits::stage_bytes +
                                                      traits::barrier_bytes + traits::src_bytes);

  if (tid < 128) {
    warpgroup_registers_down<traits::producer_registers>();
    // Thread 0 alone copies where no producer thread has anything to copy (bf16 down).
    if (traits::producer_arrivals > 0 || tid < 32) {
      // Thread t gathers chunk t % 8 of rows t / 8 + 16i: 8 threads read one 128-byte row segment.
      int const chunk = tid % 8;
      auto const* const a_base = static_cast<std::uint8_t const*>(p.a);
      std::int64_t const w_rows = gate_up ? 2 * p.n : p.n;
      std::int64_t const w_scale_rows = (w_rows + 127) / 128;
      std::uint32_t it = 0;  // stages produced, over all items
      moe_wgp_walk walk;     // warp 0's
      walk.span = 2 * pairs;
      for (std::uint32_t j = 0;; ++j) {
        moe_wgp_item* const slot = items + j % traits::item_slots;
        if (tid < 32) {
          // The next item that exists (a group may lack some of its pairs), or the end.
          moe_wgp_item f;
          int found = 0;
          while (found == 0) {
            std::uint32_t ticket = 0;
            if (lane == 0) ticket = atomicAdd(tickets, 1u);
            int const item = int(__shfl_sync(0xFFFF'FFFFu, ticket, 0));
            found = moe_wgp_find(walk, item, n_tiles, pairs, p, lane, f);
          }
          if (found < 0) f.block = -1;
          if (lane == 0) *slot = f;
        }
        if constexpr (traits::producer_arrivals > 0) named_barrier_sync(1, 128);
        moe_wgp_item const w = *slot;
        if (w.block < 0) {
          // The end: the consumers' next `full` wait completes without copies, and they find the
          // end in the slot.
          std::uint32_t const s = it % stages;
          if (it >= stages) mbarrier_wait(empty0 + 8 * s, ((it / stages) - 1) & 1);
          if (traits::producer_arrivals > 0) mbarrier_arrive(full0 + 8 * s);
          if (tid == 0) mbarrier_arrive(full0 + 8 * s);
          break;
        }
        int const tile = w.tile, expert = w.expert, a_rows = w.a_rows;
        std::int64_t const row0 = std::int64_t(w.block) * block_m;
        // Source row of each gathered A row (a token's row of x), -1 for padding and past a_rows.
        auto* const src = reinterpret_cast<std::int32_t*>(ring_ptr + stages * traits::stage_bytes +
                                                          traits::barrier_bytes);
        if constexpr (traits::gather_a) {
#pragma unroll
          for (int i = 0; i < traits::tile_m / 16; ++i) {
            int const r = tid / 8 + 16 * i;
            std::int32_t const id =
                r < a_rows ? __ldg(p.sorted_ids + row0 + r) : std::int32_t(p.rows);
            src[128 * i + tid] = id < p.rows ? std::int32_t(id / p.top_k) : -1;
          }
        }
        // FP8: the activation-scale row of tile row tid (x's token, or the sorted position), and
        // the weight-block scale row of threads 0..3 (column half tid / 2, lo / hi half tid % 2).
        [[maybe_unused]] float const* xs_src = nullptr;
        [[maybe_unused]] float const* ws_src = nullptr;
        if constexpr (Fp8) {
          std::int32_t const id =
              tid < a_rows ? __ldg(p.sorted_ids + row0 + tid) : std::int32_t(p.rows);
          if (id < p.rows)
            xs_src =
                p.a_scales + (gate_up ? std::int64_t(id / p.top_k) : row0 + tid) * p.a_scales_ld;
          if (tid < 4) {
            std::int64_t const w_row =
                gate_up ? (tid % 2 == 0 ? 0 : p.n) + std::int64_t(tile) * traits::out_n
                        : std::int64_t(tile) * traits::out_n + traits::mma_n * (tid / 2);
            ws_src =
                p.w_scales + (std::int64_t(expert) * w_scale_rows + w_row / 128) * p.w_scales_ld;
          }
        }
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
          std::uint32_t const s = it % stages;
          if (it >= stages) mbarrier_wait(empty0 + 8 * s, ((it / stages) - 1) & 1);
          std::uint32_t const stage = ring + s * traits::stage_bytes;
          if (tid == 0) {
            std::uint32_t const a_tx = traits::gather_a ? 0 : a_rows * traits::row_bytes;
            mbarrier_arrive_expect_tx(full0 + 8 * s, traits::b_bytes + a_tx);
            // First weight row of each 64-row box of the tile (rows of the stacked [E x w_rows, K]
            // map); per stage rather than held over the item: the producers' registers are few.
            int box_row[4];
            moe_wgmma_box_rows<gate_up>(box_row, tile, traits::out_n, p.n, expert, w_rows);
#pragma unroll
            for (int q = 0; q < 4; ++q)
              tma_load_2d(stage + traits::a_bytes + q * traits::copy_rows * traits::row_bytes,
                          &w_map, kt * traits::k_elems, box_row[q], full0 + 8 * s);
            if constexpr (!traits::gather_a) {
              tma_load_2d(stage, &a_map, kt * traits::k_elems, int(row0), full0 + 8 * s);
              if (a_rows > block_m)
                tma_load_2d(stage + traits::copy_rows * traits::row_bytes, &a_map,
                            kt * traits::k_elems, int(row0) + traits::copy_rows, full0 + 8 * s);
            }
          }
          if constexpr (traits::gather_a) {
            std::int64_t const kb = std::int64_t(kt) * traits::row_bytes + chunk * 16;
#pragma unroll
            for (int i = 0; i < traits::tile_m / 16; ++i) {
              int const r = tid / 8 + 16 * i;
              if (r >= a_rows) break;
              // Padding rows (no token) are zero-filled.
              std::int32_t const from = src[128 * i + tid];
              cp_async_16(stage + swizzle128_offset(r, chunk),
                          from >= 0 ? a_base + std::int64_t(from) * p.lda * traits::elem_bytes + kb
                                    : a_base,
                          from >= 0 ? 16 : 0);
            }
          }
          if constexpr (Fp8) {
            std::uint32_t const scales = stage + traits::a_bytes + traits::b_bytes;
            cp_async_4(scales + 4 * tid, xs_src != nullptr ? xs_src + kt : p.a_scales,
                       xs_src != nullptr ? 4 : 0);
            if (tid < 4) cp_async_4(scales + 4 * (traits::tile_m + tid), ws_src + kt, 4);
          }
          if constexpr (traits::producer_arrivals > 0)
            cp_async_mbarrier_arrive_noinc(full0 + 8 * s);
        }
      }
      // The last stages' copies still count on their barriers: land them before the thread exits.
      cp_async_wait<0>();
      // The launch's last CTA zeroes its counters for the slot's next launch (every CTA took its
      // last ticket before counting itself done).
      if (tid == 0) {
        __threadfence();
        if (atomicAdd(tickets + 1, 1u) == gridDim.x - 1) {
          atomicExch(tickets, 0u);
          atomicExch(tickets + 1, 0u);
        }
      }
    }
  } else {
    // Consumers: warpgroup wg takes rows 64 wg.. of the pair and all 256 weight rows.
    warpgroup_registers_up<traits::consumer_registers>();
    int const wg = tid / 128 - 1;
    int const warp = (tid % 128) / 32;
    int const g = lane / 4, t = lane % 4;
    int const a_row0 = block_m * wg;
    auto const release = [&](std::uint32_t s) {
      if (lane == 0) mbarrier_arrive(empty0 + 8 * s);
    };
    std::uint32_t it = 0;  // stages consumed, over all items
    for (std::uint32_t j = 0;; ++j) {
      // The item's first stage (or the end) has landed, and with it the item's slot.
      mbarrier_wait(full0 + 8 * (it % stages), (it / stages) & 1);
      moe_wgp_item const w = items[j % traits::item_slots];
      if (w.block < 0) break;
      int const block = w.block, tile = w.tile;
      // A lone block leaves warpgroup 1 without rows: it still waits and releases every stage.
      bool const busy = w.a_rows > block_m * wg;

      float acc[2][64];  // column half h: 128 weight rows (bf16: the sums; FP8: the totals)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;
      [[maybe_unused]] float part[64];

      if (!busy) {
        // Outside the MMA loop: wgmma in a divergent path would be serialised.
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
          std::uint32_t const s = it % stages;
          mbarrier_wait(full0 + 8 * s, (it / stages) & 1);
          release(s);
        }
        continue;
      }
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        std::uint32_t const s = it % stages;
        mbarrier_wait(full0 + 8 * s, (it / stages) & 1);
        // The gathered rows are generic-proxy writes; the tensor cores read through the async one.
        if constexpr (traits::gather_a) fence_proxy_async_shared();
        std::uint32_t const a_tile = ring + s * traits::stage_bytes + a_row0 * traits::row_bytes;
        std::uint32_t const b_tile = ring + s * traits::stage_bytes + traits::a_bytes;
        if constexpr (!Fp8) {
#pragma unroll
          for (int h = 0; h < 2; ++h) wgmma_pin(acc[h]);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {  // 32 bytes of K per wgmma
#pragma unroll
            for (int h = 0; h < 2; ++h)
              wgmma_m64n128k16_ss(
                  moe_wgp_tiles(acc[h]), wgmma_desc_k_major(a_tile + 32 * kk),
                  wgmma_desc_k_major(b_tile + h * traits::mma_n * traits::row_bytes + 32 * kk));
          }
          wgmma_commit();
          wgmma_wait<1>();  // the previous stage's group is done: its buffers may be refilled
#pragma unroll
          for (int h = 0; h < 2; ++h) wgmma_pin(acc[h]);
          if (kt > 0) release((it - 1) % stages);
        } else {
          auto const* const scales = reinterpret_cast<float const*>(
              ring_ptr + s * traits::stage_bytes + traits::a_bytes + traits::b_bytes);
          float const x0 = scales[a_row0 + 16 * warp + g];
          float const x1 = scales[a_row0 + 16 * warp + g + 8];
          // Columns 0-63 of half h take weight block 2h (lo: gate rows), 64-127 block 2h + 1 (hi);
          // all read before the stage is released.
          float ws[4];
#pragma unroll
          for (int q = 0; q < 4; ++q) ws[q] = scales[traits::tile_m + q];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            wgmma_pin(part);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)  // 32 bytes of K per wgmma
              wgmma_m64n128k32_e4m3_ss(
                  moe_wgp_tiles(part), wgmma_desc_k_major(a_tile + 32 * kk),
                  wgmma_desc_k_major(b_tile + h * traits::mma_n * traits::row_bytes + 32 * kk), kk);
            wgmma_commit();
            wgmma_wait<0>();
            wgmma_pin(part);
            // The stage's last MMAs are done: the producer may refill it during the promotion.
            if (h == 1) release(s);
            float const w_lo = ws[2 * h], w_hi = ws[2 * h + 1];
            float const s00 = x0 * w_lo, s01 = x0 * w_hi, s10 = x1 * w_lo, s11 = x1 * w_hi;
#pragma unroll
            for (int q = 0; q < 16; ++q) {
              float const r0 = q < 8 ? s00 : s01, r1 = q < 8 ? s10 : s11;
              acc[h][4 * q] = fmaf(part[4 * q], r0, acc[h][4 * q]);
              acc[h][4 * q + 1] = fmaf(part[4 * q + 1], r0, acc[h][4 * q + 1]);
              acc[h][4 * q + 2] = fmaf(part[4 * q + 2], r1, acc[h][4 * q + 2]);
              acc[h][4 * q + 3] = fmaf(part[4 * q + 3], r1, acc[h][4 * q + 3]);
            }
          }
        }
      }
      if constexpr (!Fp8) {
        wgmma_wait<0>();
#pragma unroll
        for (int h = 0; h < 2; ++h) wgmma_pin(acc[h]);
        if (k_tiles > 0) release((it - 1) % stages);
      }

      // Epilogue: thread (warp, g, t) of the warpgroup holds rows 16 warp + g (+ 8) and columns
      // 8q + 2t, 8q + 2t + 1 of each 64 x 128 tile h in acc[h][4q + 2 half + 0..1].
      std::int64_t const row0 = std::int64_t(block) * block_m;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        std::int64_t const pos = row0 + a_row0 + 16 * warp + g + 8 * half;
        std::int32_t const id = __ldg(p.sorted_ids + pos);
        bool const valid = id < p.rows;
        if constexpr (gate_up) {
          // a = silu(bf16(gate)) * bf16(up), as grouped_gemm.cuh rounds.
          std::uint32_t v[2][8];
          float amax = 0.0f;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int q = 0; q < 8; ++q) {
              bf16 const a0 = silu_and_mul_value(bf16(acc[h][4 * q + 2 * half]),
                                                 bf16(acc[h][4 * (q + 8) + 2 * half]));
              bf16 const a1 = silu_and_mul_value(bf16(acc[h][4 * q + 2 * half + 1]),
                                                 bf16(acc[h][4 * (q + 8) + 2 * half + 1]));
              v[h][q] = moe_pack_bf16(a0, a1);
              if constexpr (Fp8) amax = quant_amax(quant_amax(amax, float(a0)), float(a1));
            }
          }
          std::int64_t const col0 = std::int64_t(tile) * traits::out_n + 2 * t;
          if constexpr (Fp8) {
            // The row's 128 values sit in the 4 threads of one g: its quantisation group.
            amax = fmaxf(amax, __shfl_xor_sync(0xFFFF'FFFFu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xFFFF'FFFFu, amax, 2));
            if (!valid) continue;  // padding rows are left unwritten (GEMM 2 ignores them)
            float const scale = quant_group_scale(amax);
            float const inverse = quant_inverse_scale(scale);
            auto* const codes = static_cast<std::uint8_t*>(p.out);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
              for (int q = 0; q < 8; ++q) {
                float const x0 = float(bf16::from_bits(std::uint16_t(v[h][q] & 0xFFFFu)));
                float const x1 = float(bf16::from_bits(std::uint16_t(v[h][q] >> 16)));
                // .x in the low byte: column 2t, then 2t + 1.
                __nv_fp8x2_storage_t const pair_codes = __nv_cvt_float2_to_fp8x2(
                    make_float2(x0 * inverse, x1 * inverse), __NV_SATFINITE, __NV_E4M3);
                *reinterpret_cast<std::uint16_t*>(codes + pos * p.ldo + col0 + 64 * h + 8 * q) =
                    pair_codes;
              }
            }
            if (t == 0) p.out_scales[pos * p.out_scales_ld + tile] = scale;
          } else {
            // Padding rows get zeros.
            auto* const out = static_cast<std::uint16_t*>(p.out);
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int q = 0; q < 8; ++q)
                *reinterpret_cast<std::uint32_t*>(out + pos * p.ldo + col0 + 64 * h + 8 * q) =
                    valid ? v[h][q] : 0u;
          }
        } else {
          if (!valid) continue;  // padding produces nothing
          float const weight = __ldg(p.topk_weights + id);
          auto* const out = static_cast<std::uint16_t*>(p.out);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int q = 0; q < 16; ++q) {
              std::int64_t const col =
                  std::int64_t(tile) * traits::out_n + traits::mma_n * h + 8 * q + 2 * t;
              std::uint32_t const v = moe_pack_bf16(bf16(acc[h][4 * q + 2 * half] * weight),
                                                    bf16(acc[h][4 * q + 2 * half + 1] * weight));
              *reinterpret_cast<std::uint32_t*>(out + std::int64_t(id) * p.ldo + col) = v;
            }
          }
        }
      }
    }
  }
}

// --- the launcher ----------------------------------------------------------------------------

// A [rows, K] matrix (K contiguous, `ld` elements between rows) as a tensor map of 64-row x
// 128-byte boxes with the 128-byte swizzle.
template <bool Fp8>
CUtensorMap moe_wgp_tensor_map(void const* base, std::int64_t k, std::int64_t rows,
                               std::int64_t ld) {
  CUtensorMap map;
  constexpr int elem_bytes = Fp8 ? 1 : 2;
  cuuint64_t const dims[2] = {cuuint64_t(k), cuuint64_t(rows)};
  cuuint64_t const strides[1] = {cuuint64_t(ld * elem_bytes)};
  cuuint32_t const box[2] = {cuuint32_t(128 / elem_bytes), 64};
  cuuint32_t const elem_strides[2] = {1, 1};
  CUresult const r = tensor_map_encode_tiled()(
      &map, Fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
      const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LC_CHECK(r == CUDA_SUCCESS, "moe wgmma grouped GEMM: cuTensorMapEncodeTiled failed ("
                                  << int(r) << ") for K " << k << ", " << rows << " rows");
  return map;
}

// The counters of this launch: the next slot of this file's moe_wgp_tickets (each
// instantiation file has its own) on device `dev`.
static std::uint32_t* moe_wgp_launch_tickets(int dev) {
  constexpr int max_devices = 64;
  static std::array<std::atomic<std::uint32_t*>, max_devices> bases{};
  static std::atomic<std::uint32_t> launches{0};
  LC_CHECK(0 <= dev && dev < max_devices, "moe wgmma grouped GEMM: CUDA device ordinal "
                                              << dev << " is out of range; allowed 0.."
                                              << max_devices - 1);
  std::uint32_t* base = bases[std::size_t(dev)].load(std::memory_order_acquire);
  if (base == nullptr) {
    void* address = nullptr;
    LC_CUDA_CHECK(cudaGetSymbolAddress(&address, moe_wgp_tickets));
    base = static_cast<std::uint32_t*>(address);
    bases[std::size_t(dev)].store(base, std::memory_order_release);
  }
  return base + 2 * (launches.fetch_add(1, std::memory_order_relaxed) % moe_wgp_ticket_slots);
}

template <moe_gemm_stage Stage, bool Fp8>
void launch_moe_wgmma_persistent(moe_grouped_gemm_params const& p, CUstream_st* stream) {
  using traits = moe_wgp_traits<Stage, Fp8>;
  char const* const format = Fp8 ? "FP8" : "bf16";
  std::int64_t const w_rows = traits::gate_up ? 2 * p.n : p.n;
  std::int64_t const n_tiles = p.n / traits::out_n;
  LC_CHECK(p.n > 0 && p.n % traits::out_n == 0 && p.k > 0 && p.k % traits::k_elems == 0,
           "moe wgmma grouped GEMM (" << format << "): N " << p.n
                                      << " must be a positive multiple of " << traits::out_n
                                      << " and K " << p.k << " of " << traits::k_elems);
  LC_CHECK(p.experts > 0 && p.experts * w_rows < (std::int64_t(1) << 31) &&
               p.blocks * traits::block_m < (std::int64_t(1) << 31) &&
               4 * p.blocks * n_tiles < (std::int64_t(1) << 31),  // items of groups of <= 4 pairs
           "moe wgmma grouped GEMM: " << p.experts << " experts x " << w_rows << " weight rows, "
                                      << p.blocks << " row blocks x 64 rows and 4 x " << p.blocks
                                      << " x " << n_tiles
                                      << " items must each stay below 2^31 (and experts > 0)");
  LC_CHECK((p.lda * traits::elem_bytes) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(p.a) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(p.w) % 16 == 0,
           "moe wgmma grouped GEMM: A and the weights must be 16-byte aligned, A's row stride "
               << p.lda << " a multiple of " << 16 / traits::elem_bytes);
  if constexpr (Fp8) {
    LC_CHECK(p.a_scales != nullptr && p.w_scales != nullptr,
             "moe wgmma grouped GEMM (FP8): needs the activation and weight block scales");
    LC_CHECK(!traits::gate_up || (p.out_scales != nullptr && p.out_scales_ld >= p.n / 128),
             "moe wgmma grouped GEMM (FP8): gate_up writes the intermediate's codes and needs "
             "out_scales with a row stride of at least N / 128");
  }
  if (p.blocks == 0) return;

  // The stacked weights as one [E x w_rows, K] matrix; down: A as [blocks x 64, K] (its rows are
  // the sorted positions; gate_up gathers A and leaves the map unused).
  CUtensorMap const w_map = moe_wgp_tensor_map<Fp8>(p.w, p.k, p.experts * w_rows, p.k);
  CUtensorMap const a_map =
      traits::gather_a ? w_map
                       : moe_wgp_tensor_map<Fp8>(p.a, p.k, p.blocks * traits::block_m, p.lda);

  // Host-side attributes and queries, not stream operations: allowed while a graph is captured.
  int dev = 0;
  LC_CUDA_CHECK(cudaGetDevice(&dev));
  auto const kernel = moe_grouped_gemm_wgmma_persistent_kernel<Stage, Fp8>;
  LC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     traits::smem_bytes));
  // Pairs per group: enough for an expert of average size (rows / experts, rounded to pairs of
  // 128 rows from half a pair on), at most 4.
  std::int64_t const average_rows = p.rows / p.experts;
  int const pairs = int(std::clamp<std::int64_t>((average_rows + 64 + 127) / 128, 1, 4));
  std::uint32_t* const tickets = moe_wgp_launch_tickets(dev);
  int const sms = backend::multiprocessor_count(dev);  // cached per device
  // One CTA per SM, never more than there can be items (every block a pair start).
  std::int64_t const grid = std::min<std::int64_t>(sms, p.blocks * n_tiles);
  launch_pdl(kernel, dim3(unsigned(grid)), dim3(traits::threads), traits::smem_bytes, stream, p,
             w_map, a_map, tickets, pairs);
  LC_CUDA_CHECK_LAUNCH();
}

template <moe_gemm_stage Stage>
void launch_moe_grouped_gemm_wgmma_fp8(moe_grouped_gemm_params const& p, CUstream_st* stream) {
  launch_moe_wgmma_persistent<Stage, true>(p, stream);
}

}  // namespace lightcore::kernels::detail
