// mla_decode_stream: the absorbed MLA decode kernel for tiles of 16 heads (H = 16: DeepSeek-R1 at
// TP8, V2-Lite), where a decode step is bound by reading the latent rows, so a producer warp
// keeps them streaming while four consumer warps compute.
//
// One CTA computes one (batch row, KV split, 16 heads), as mla_decode_wgmma.cuh's kernel does for
// 64 heads, with 5 warps. Warp 4, the producer, gathers the split's latent rows into a ring of
// `stages` blocks of 32 tokens; lane r owns row r of every block: it fetches the row's page id from
// req_to_token `slot_lookahead` blocks ahead (a 4-byte cp.async into a small ring in shared memory,
// so that no thread ever stalls on the table), waits until the stage is free (its `empty` mbarrier)
// and copies the 1152-byte row with one bulk copy that completes on the stage's `full` mbarrier.
// Rows past the split or outside the pool are zero-filled by the lane (never read as keys: masked;
// zero as values). Warps 0-3, the consumers, wait on `full`, use the block as keys (576 columns)
// and values (the first 512) with mma.sync m16n8k16 (a warp: S for 8 tokens, O for 128 of the 512
// columns; mla_softmax_pv_block), and arrive on `empty`; they meet (named barrier 1) only for the
// softmax's cross-warp maxima and sums. No CTA-wide barrier per block: the loads run up to
// `stages` blocks ahead of the compute.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/mla/mla_decode_common.cuh"
#include "kernels/mla/mla_params.hpp"

namespace lightcore::kernels::detail {

struct mla_stream_config {
  static constexpr int heads = 16;   // one m16 tile of heads
  static constexpr int warps_m = 1;  // consumers: one warp row ...
  static constexpr int warps_n = 4;  // ... of 4 warps along the tokens (S) and columns (O)
  static constexpr int consumer_threads = 32 * warps_n;
  static constexpr int threads = consumer_threads + 32;  // and the producer warp
  static constexpr int block_n = 32;                     // tokens per block: one per producer lane
  static constexpr int stages = 5;                       // blocks in shared memory (187 KB)
  static constexpr int slot_lookahead = 4;               // blocks whose page ids are in flight
  static constexpr int slot_ring = 2 * slot_lookahead;   // blocks of page ids kept
  static constexpr int width = int(mla_kv_width);
  static constexpr int row_bytes = width * 2;  // 1152: one bulk copy per row
  // Shared rows padded by 16 bytes: the 8 rows that one ldmatrix reads fall in 8 different
  // 16-byte bank groups instead of one (a 1152-byte pitch is a multiple of 128).
  static constexpr int pitch = width + 8;
  static constexpr int p_pitch = block_n + 8;
  static constexpr int vectors = width / 8;              // 16-byte vectors per row
  static constexpr int warp_tokens = block_n / warps_n;  // S columns of one warp: one n8 tile
  static constexpr int s_chains = 4;  // S's 36 k steps as 4 independent MMA chains of 9
  static constexpr int warp_cols = int(mla_latent_dim) / warps_n;  // O columns of one warp
  static constexpr int o_tiles = warp_cols / 8;
  // Shared memory: the mbarriers (full[stages], empty[stages]) in the first 128 bytes, then q, the
  // ring of blocks, P, the cross-warp reductions and the page-id ring.
  static constexpr int barrier_bytes = 128;
  static constexpr int q_offset = barrier_bytes;
  static constexpr int q_bytes = heads * pitch * 2;
  static constexpr int kv_offset = q_offset + q_bytes;
  static constexpr int kv_stage_bytes = block_n * pitch * 2;
  static constexpr int kv_bytes = stages * kv_stage_bytes;
  static constexpr int p_offset = kv_offset + kv_bytes;
  static constexpr int p_bytes = heads * p_pitch * 2;
  static constexpr int reduce_offset = p_offset + p_bytes;
  static constexpr int reduce_bytes = 2 * warps_n * heads * 4;  // row maxima and sums per warp
  static constexpr int slot_offset = reduce_offset + reduce_bytes;
  static constexpr int slot_bytes = slot_ring * block_n * 4;
  static constexpr int smem_bytes = slot_offset + slot_bytes;

  static_assert(block_n == 32, "the producer's lane r copies row r of a block");
  static_assert(warp_tokens == 8, "a consumer warp's S is one m16n8 tile");
  static_assert((width / 16) % s_chains == 0, "S's k steps split evenly over the chains");
  static_assert(o_tiles % 2 == 0, "V fragments are loaded two n8 tiles at once");
  static_assert(row_bytes % 16 == 0 && (pitch * 2) % 16 == 0 && kv_offset % 16 == 0,
                "bulk copies need 16-byte sizes and destinations");
  static_assert(2 * stages * 8 <= barrier_bytes, "the mbarriers fit their region");
  static_assert(smem_bytes <= 227 * 1024, "exceeds the shared memory of an sm_90 CTA");
};

// The producer warp: gathers the split's rows, block by block, into the ring.
template <class Cfg, class Layout>
__device__ __forceinline__ void mla_stream_produce(mla_decode_params const& p,
                                                   mla_split_range const& range, int b,
                                                   unsigned char* smem, int lane) {
  constexpr int block_n = Cfg::block_n, stages = Cfg::stages;
  std::uint32_t const full0 = smem_address(smem), empty0 = full0 + 8 * stages;
  auto* const kv_s = reinterpret_cast<bf16*>(smem + Cfg::kv_offset);
  auto* const pages = reinterpret_cast<std::int32_t*>(smem + Cfg::slot_offset);
  std::int32_t const req = p.req_rows[b];
  std::int32_t const* const table_row = p.table.data + req * p.table.row_stride;

  // One commit group per block (empty past the split), so that group i is always block i's ids.
  auto const fetch_pages = [&](int block) {
    int const pos = range.kv_begin + block * block_n + lane;
    if (block < range.n_blocks && pos < range.kv_end)
      cp_async_4(smem_address(pages + (block % Cfg::slot_ring) * block_n + lane),
                 table_row + Layout::table_column(pos), 4);
    cp_async_commit();
  };
#pragma unroll
  for (int k = 0; k < Cfg::slot_lookahead; ++k) fetch_pages(k);

  for (int it = 0; it < range.n_blocks; ++it) {
    fetch_pages(it + Cfg::slot_lookahead);
    cp_async_wait<Cfg::slot_lookahead>();  // this lane's id of block it has landed
    int const stage = it % stages;
    // The stage's previous block (it - stages) must have been used by every consumer warp.
    if (it >= stages) mbarrier_wait(empty0 + 8 * stage, std::uint32_t(it / stages - 1) & 1);
    int const pos = range.kv_begin + it * block_n + lane;
    std::int64_t slot = -1;
    if (pos < range.kv_end) slot = Layout::slot(pages[(it % Cfg::slot_ring) * block_n + lane], pos);
    bool const valid = slot >= 0 && slot < p.kv.slots;
    bf16* const dst = kv_s + (stage * block_n + lane) * Cfg::pitch;
    if (!valid) {
      for (int c = 0; c < Cfg::vectors; ++c)
        reinterpret_cast<uint4*>(dst)[c] = make_uint4(0, 0, 0, 0);
      fence_proxy_async_shared();  // before a later bulk copy into the same row
    }
    unsigned const rows = __ballot_sync(0xFFFF'FFFFu, valid);
    __syncwarp();  // the zero rows are written before lane 0's arrival publishes the block
    if (lane == 0)
      mbarrier_arrive_expect_tx(full0 + 8 * stage, std::uint32_t(__popc(rows) * Cfg::row_bytes));
    __syncwarp();
    if (valid)
      bulk_copy_global_to_shared(smem_address(dst), p.kv.row(slot), Cfg::row_bytes,
                                 full0 + 8 * stage);
  }
}

template <class Cfg, class Layout>
__global__ void __launch_bounds__(Cfg::threads, 1)
    mla_decode_stream_kernel(mla_decode_params const p) {
  pdl_enter();
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int heads = Cfg::heads, block_n = Cfg::block_n, pitch = Cfg::pitch;
  float const neg_inf = -INFINITY;

  int const tiles = p.heads / heads;
  int const tile = int(blockIdx.x) % tiles;  // tiles of one (row, split) run side by side
  int const split = int(blockIdx.x) / tiles % p.num_splits;
  int const b = int(blockIdx.x) / tiles / p.num_splits;
  int const head0 = tile * heads;
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;

  auto const range = mla_split_of(p, b, split, block_n);
  if (range.n_blocks == 0) {  // an empty split (or a row of length 0)
    mla_write_empty_split<heads, Cfg::threads>(p, b, split, head0, tid);
    return;
  }
  int const kv_begin = range.kv_begin, kv_end = range.kv_end, n_blocks = range.n_blocks;

  std::uint32_t const full0 = smem_address(smem), empty0 = full0 + 8 * Cfg::stages;
  if (tid == 0) {
    for (int s = 0; s < Cfg::stages; ++s) {
      mbarrier_init(full0 + 8 * s, 1);              // the producer's arrival (+ its bytes)
      mbarrier_init(empty0 + 8 * s, Cfg::warps_n);  // one arrival per consumer warp
    }
    mbarrier_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles part here

  if (warp == Cfg::warps_n) {
    mla_stream_produce<Cfg, Layout>(p, range, b, smem, lane);
    return;
  }

  auto* const q_s = reinterpret_cast<bf16*>(smem + Cfg::q_offset);
  auto* const kv_s = reinterpret_cast<bf16*>(smem + Cfg::kv_offset);
  auto* const p_s = reinterpret_cast<bf16*>(smem + Cfg::p_offset);
  auto* const red_max = reinterpret_cast<float*>(smem + Cfg::reduce_offset);
  float* const red_sum = red_max + Cfg::warps_n * heads;
  auto const consumers_sync = [] { named_barrier_sync(1, Cfg::consumer_threads); };

  // q's tile: [heads, 512 | 64], while the producer starts the first blocks.
  for (int i = tid; i < heads * Cfg::vectors; i += Cfg::consumer_threads) {
    int const h = i / Cfg::vectors, c = i % Cfg::vectors;
    bf16 const* src =
        c < int(mla_latent_dim / 8)
            ? p.q_nope + b * p.q_nope_batch_stride + (head0 + h) * p.q_nope_head_stride + c * 8
            : p.q_rope + b * p.q_rope_batch_stride + (head0 + h) * p.q_rope_head_stride +
                  (c - mla_latent_dim / 8) * 8;
    cp_async_16(smem_address(q_s + h * pitch + c * 8), src, 16);
  }
  cp_async_commit();
  cp_async_wait<0>();
  consumers_sync();

  int const wn = warp;  // consumer warps form one row along N
  float o[Cfg::o_tiles][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {neg_inf, neg_inf}, l_run[2] = {0.0f, 0.0f};
  float const scale_log2 = p.softmax_scale * mla_log2e;
  int const g = lane / 4, t4 = lane % 4;
  int const row0 = g;  // this thread's heads of the tile: row0 and row0 + 8

  // ldmatrix addresses (lane-dependent parts): A operands (q, P) row
  // lane % 16, column (lane / 16) * 8; K (x2, lanes 0-15) token lane & 7, column
  // ((lane / 8) & 1) * 8; V (transposed x4) token (lane & 7) + ((lane / 8) & 1) * 8, column
  // (lane / 16) * 8.
  std::uint32_t const q_addr = smem_address(q_s + (lane % 16) * pitch + (lane / 16) * 8);
  std::uint32_t const p_addr = smem_address(p_s + (lane % 16) * Cfg::p_pitch + (lane / 16) * 8);
  int const k_offset = (wn * Cfg::warp_tokens + (lane & 7)) * pitch + ((lane >> 3) & 1) * 8;
  int const v_offset =
      ((lane & 7) + ((lane >> 3) & 1) * 8) * pitch + wn * Cfg::warp_cols + (lane >> 4) * 8;

  for (int it = 0; it < n_blocks; ++it) {
    int const stage = it % Cfg::stages;
    mbarrier_wait(full0 + 8 * stage, std::uint32_t(it / Cfg::stages) & 1);
    bf16 const* const kv_block = kv_s + stage * block_n * pitch;
    std::uint32_t const k_addr = smem_address(kv_block + k_offset);
    std::uint32_t const v_addr = smem_address(kv_block + v_offset);

    // S = q K^T over the 576 columns: k step kk goes to chain kk % s_chains.
    float acc[Cfg::s_chains][4];
#pragma unroll
    for (int c = 0; c < Cfg::s_chains; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < Cfg::width / 16; ++kk) {
      std::uint32_t a[4], k[2];
      ldmatrix_x4(a, q_addr + kk * 32);
      ldmatrix_x2(k, k_addr + kk * 32);
      mma_bf16_16816(acc[kk % Cfg::s_chains], a, k[0], k[1]);
    }
    float s[1][4];  // the warp's one n8 tile of tokens
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[0][e] = acc[0][e];
#pragma unroll
      for (int c = 1; c < Cfg::s_chains; ++c) s[0][e] += acc[c][e];
    }

    int const token0 = kv_begin + it * block_n + wn * Cfg::warp_tokens + 2 * t4;
    mla_softmax_pv_block<Cfg>(s, token0, kv_end, scale_log2, red_max, red_sum, p_s, p_addr, v_addr,
                              row0, wn, t4, m_run, l_run, o, consumers_sync);
    // The warp is done with the stage: the producer may refill it.
    __syncwarp();
    if (lane == 0) mbarrier_arrive(empty0 + 8 * stage);
  }

  mla_store_result<Cfg>(p, o, m_run, l_run, b, split, head0, row0, wn, t4);
}

}  // namespace lightcore::kernels::detail
