// mla_decode_wgmma: the absorbed MLA decode kernel for tiles of 64 heads (H = 64, 128: DeepSeek-R1
// at TP1 or with DP attention), where a decode step is bound by tensor-core work as much as by
// reading the latent rows, built on Hopper's warpgroup MMA (kernels/common/wgmma.cuh).
//
// One CTA computes one (batch row, KV split, 64 heads), with three warpgroups:
//   - warpgroup 0, the producer, gathers the split's latent rows by slot (req_to_token, page ids
//     read a block ahead) into a ring of `stages` blocks of 64 tokens with 16-byte cp.async, each
//     row cut into nine 128-byte-swizzled tiles of 64 columns (8 threads per 128 bytes); rows past
//     the split or outside the pool are zero-filled. Its threads wait for their own copies, fence
//     the proxies and arrive on the stage's `full` mbarrier. (Prefetching the rows two blocks
//     ahead into L2 with the bulk-copy engine made it ~8% slower: docs/perf/mla-decode.md.)
//   - warpgroup 1 computes S = q K^T for the block (36 wgmma m64n64k16, q and K read by the
//     tensor cores from shared memory), the online softmax (a head's 64 scores sit in one quad of
//     lanes: no cross-warp reduction), hands P (bf16, swizzled) and the rescale factors to
//     warpgroup 2, and accumulates O[:, 0:256] += P V with P from registers (wgmma m64n256k16).
//   - warpgroup 2 accumulates O[:, 256:512] += P V with P from shared memory, while warpgroup 1
//     goes on with the next block's S: both feed the same tensor cores.
// The block is read from shared memory once per use as keys (all 576 columns, K-major) and as
// values (the first 512, MN-major): the swizzled tiles serve both. Handshakes: full/empty per
// stage (producer <-> both consumers), p_full/p_empty (warpgroup 1 <-> warpgroup 2, one P buffer).
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/common/online_softmax.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_decode_common.cuh"
#include "kernels/mla/mla_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct mla_wgmma_config {
  static constexpr int heads = 64;    // one m64 tile of heads
  static constexpr int block_n = 64;  // tokens per block: S's N, P V's K
  static constexpr int stages = 2;    // blocks in shared memory (q takes a third of it)
  static constexpr int producer_threads = 128;
  static constexpr int consumer_threads = 256;
  static constexpr int threads = producer_threads + consumer_threads;
  // setmaxnreg budgets: 128 x 40 + 256 x 232 <= 64 K registers. A consumer holds 128 O
  // accumulators; warpgroup 1 also 32 of S and 16 of P.
  static constexpr int producer_registers = 40;
  static constexpr int consumer_registers = 232;
  static constexpr int width = int(mla_kv_width);
  static constexpr int tile_cols = 64;                       // bf16 per 128-byte swizzled row
  static constexpr int row_tiles = width / tile_cols;        // 9: 8 of latent, 1 of roped key
  static constexpr int warp_cols = int(mla_latent_dim) / 2;  // O columns of a consumer: 256
  static constexpr int o_tiles = warp_cols / 8;              // its n8 accumulator tiles
  static constexpr int s_tiles = block_n / 8;
  static constexpr int q_tile_bytes = heads * 128;
  static constexpr int kv_tile_bytes = block_n * 128;
  // Shared memory, from a 1024-byte aligned base: q, the ring, P, the rescale factors, the final
  // row maxima and sums, the mbarriers (full[stages], empty[stages], p_full, p_empty).
  static constexpr int q_offset = 0;
  static constexpr int q_bytes = row_tiles * q_tile_bytes;
  static constexpr int kv_offset = q_offset + q_bytes;
  static constexpr int kv_stage_bytes = row_tiles * kv_tile_bytes;
  static constexpr int p_offset = kv_offset + stages * kv_stage_bytes;
  static constexpr int p_bytes = heads * block_n * 2;
  static constexpr int alpha_offset = p_offset + p_bytes;
  static constexpr int stats_offset = alpha_offset + heads * 4;
  static constexpr int barrier_offset = stats_offset + 2 * heads * 4;
  static constexpr int barrier_bytes = (2 * stages + 2) * 8;
  static constexpr int smem_bytes = 1024 + barrier_offset + barrier_bytes;  // + alignment slack
  // The producer's share of a block: 8 threads per 128-byte tile row, rows r, r + 16, ...
  static constexpr int row_step = producer_threads / 8;
  static constexpr int rows_per_thread = block_n / row_step;

  static_assert(block_n == tile_cols, "P is one swizzled tile of 64 tokens");
  static_assert(width % tile_cols == 0 && int(mla_latent_dim) == 8 * tile_cols);
  static_assert(q_tile_bytes % 1024 == 0 && kv_tile_bytes % 1024 == 0 && p_offset % 1024 == 0,
                "swizzled tiles start on 1024-byte boundaries");
  static_assert(block_n % row_step == 0);
  static_assert(producer_threads * producer_registers + consumer_threads * consumer_registers <=
                65536);
  static_assert(smem_bytes <= 227 * 1024, "exceeds the shared memory of an sm_90 CTA");
};

// The producer warpgroup: gathers the split's rows, block by block, into the ring.
template <class Cfg, class Layout>
__device__ __forceinline__ void mla_wgmma_produce(mla_decode_params const& p,
                                                  mla_split_range const& range, int b,
                                                  std::uint32_t kv_base, std::uint32_t full0,
                                                  std::uint32_t empty0, int tid) {
  constexpr int block_n = Cfg::block_n, rows = Cfg::rows_per_thread;
  int const r0 = tid / 8, chunk = tid % 8;
  std::int32_t const* const table_row = p.table.data + p.req_rows[b] * p.table.row_stride;
  // The page ids of this thread's rows of a block (plain loads, used one iteration later).
  auto const fetch_pages = [&](int block, std::int32_t(&page)[rows]) {
#pragma unroll
    for (int i = 0; i < rows; ++i) {
      int const pos = range.kv_begin + block * block_n + r0 + Cfg::row_step * i;
      page[i] = pos < range.kv_end ? table_row[Layout::table_column(pos)] : -1;
    }
  };
  std::int32_t page[rows];
  fetch_pages(0, page);
  for (int it = 0; it < range.n_blocks; ++it) {
    int const stage = it % Cfg::stages;
    // The stage's previous block (it - stages) must have been used by both consumers.
    if (it >= Cfg::stages)
      mbarrier_wait(empty0 + 8 * stage, std::uint32_t(it / Cfg::stages - 1) & 1);
    std::uint32_t const dst0 = kv_base + stage * Cfg::kv_stage_bytes;
#pragma unroll
    for (int i = 0; i < rows; ++i) {
      int const row = r0 + Cfg::row_step * i;
      int const pos = range.kv_begin + it * block_n + row;
      std::int64_t const slot = pos < range.kv_end ? Layout::slot(page[i], pos) : -1;
      bool const valid = slot >= 0 && slot < p.kv.slots;  // else zeros
      bf16 const* const src = valid ? p.kv.row(slot) + chunk * 8 : p.kv.data;
      std::uint32_t const dst = dst0 + swizzle128_offset(row, chunk);
#pragma unroll
      for (int t = 0; t < Cfg::row_tiles; ++t)
        cp_async_16(dst + t * Cfg::kv_tile_bytes, src + (valid ? t * Cfg::tile_cols : 0),
                    valid ? 16 : 0);
    }
    cp_async_commit();
    if (it + 1 < range.n_blocks) fetch_pages(it + 1, page);
    // The block's copies of this thread have landed: fence them for the tensor cores' (async)
    // reads, then count them on the stage's barrier.
    cp_async_wait<0>();
    fence_proxy_async_shared();
    mbarrier_arrive(full0 + 8 * stage);
  }
}

// The consumer warpgroups (wn 0: S, softmax, O[:, 0:256]; wn 1: O[:, 256:512]); ctid counts
// their 256 threads.
template <class Cfg>
__device__ __forceinline__ void mla_wgmma_consume(mla_decode_params const& p,
                                                  mla_split_range const& range, int b, int split,
                                                  int head0, int wn, int ctid, unsigned char* smem,
                                                  std::uint32_t base) {
  constexpr int heads = Cfg::heads, block_n = Cfg::block_n, stages = Cfg::stages;
  constexpr int vectors = Cfg::width / 8;  // 16-byte vectors of a q row
  std::uint32_t const q_base = base + Cfg::q_offset, kv_base = base + Cfg::kv_offset;
  std::uint32_t const p_base = base + Cfg::p_offset;
  std::uint32_t const full0 = base + Cfg::barrier_offset, empty0 = full0 + 8 * stages;
  std::uint32_t const p_full = empty0 + 8 * stages, p_empty = p_full + 8;
  auto* const alpha_s = reinterpret_cast<float*>(smem + Cfg::alpha_offset);
  auto* const stats = reinterpret_cast<float*>(smem + Cfg::stats_offset);  // maxima, then sums

  // q's tile [64 heads, 512 | 64] into nine swizzled tiles, by both consumers.
  for (int i = ctid; i < heads * vectors; i += Cfg::consumer_threads) {
    int const h = i / vectors, v = i % vectors;
    bf16 const* src =
        v < int(mla_latent_dim / 8)
            ? p.q_nope + b * p.q_nope_batch_stride + (head0 + h) * p.q_nope_head_stride + v * 8
            : p.q_rope + b * p.q_rope_batch_stride + (head0 + h) * p.q_rope_head_stride +
                  (v - mla_latent_dim / 8) * 8;
    cp_async_16(q_base + (v / 8) * Cfg::q_tile_bytes + swizzle128_offset(h, v % 8), src, 16);
  }
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_shared();
  named_barrier_sync(1, Cfg::consumer_threads);

  int const lane = ctid % 32, warp = (ctid % 128) / 32, g = lane / 4, t4 = lane % 4;
  int const row0 = 16 * warp + g;  // this thread's heads of the tile: row0 and row0 + 8
  float o[Cfg::o_tiles][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  auto const rescale = [&](float const a0, float const a1) {
#pragma unroll
    for (int n = 0; n < Cfg::o_tiles; ++n) {
      o[n][0] *= a0;
      o[n][1] *= a0;
      o[n][2] *= a1;
      o[n][3] *= a1;
    }
  };

  if (wn == 0) {
    float const scale_log2 = p.softmax_scale * mla_log2e;
    for (int it = 0; it < range.n_blocks; ++it) {
      int const stage = it % stages;
      std::uint32_t const kv_stage = kv_base + stage * Cfg::kv_stage_bytes;
      mbarrier_wait(full0 + 8 * stage, std::uint32_t(it / stages) & 1);

      // S = q K^T: nine 64-column tiles of 4 k16 steps each.
      float s[Cfg::s_tiles][4];
#pragma unroll
      for (int n = 0; n < Cfg::s_tiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      wgmma_pin(s);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < Cfg::width / 16; ++k) {
        int const t = k / 4, kk = k % 4;
        wgmma_m64n64k16_ss(s, wgmma_desc_k_major(q_base + t * Cfg::q_tile_bytes + kk * 32),
                           wgmma_desc_k_major(kv_stage + t * Cfg::kv_tile_bytes + kk * 32));
      }
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_pin(s);

      // Online softmax in log2 units; positions at or past kv_end are masked. A head's scores
      // are in the 4 lanes of a quad.
      int const token0 = range.kv_begin + it * block_n + 2 * t4;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < Cfg::s_tiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float const v =
              token0 + n * 8 + (e & 1) < range.kv_end ? s[n][e] * scale_log2 : -INFINITY;
          s[n][e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      }
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = softmax_quad_max(mx[r]);
        float const m_new = fmaxf(m_run[r], mx[r]);  // finite: a block holds a valid position
        alpha[r] = exp2f(m_run[r] - m_new);          // 0 on the first block
        m_run[r] = m_new;
      }
      // P as bf16 A fragments (k16 step j: n8 tiles 2j and 2j + 1) and this thread's row sums.
      std::uint32_t a[block_n / 16][4];
      float sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int n = 0; n < Cfg::s_tiles; ++n) {
        float const p0 = exp2f(s[n][0] - m_run[0]), p1 = exp2f(s[n][1] - m_run[0]);
        float const p2 = exp2f(s[n][2] - m_run[1]), p3 = exp2f(s[n][3] - m_run[1]);
        sum[0] += p0 + p1;
        sum[1] += p2 + p3;
        a[n / 2][2 * (n % 2)] = pack_bf16x2(p0, p1);
        a[n / 2][2 * (n % 2) + 1] = pack_bf16x2(p2, p3);
      }
      l_run[0] = l_run[0] * alpha[0] + sum[0];  // per thread; the quad's sum is taken at the end
      l_run[1] = l_run[1] * alpha[1] + sum[1];

      // Hand P and the factors to warpgroup 2 once it is done with the previous block's.
      if (it > 0) mbarrier_wait(p_empty, std::uint32_t(it - 1) & 1);
#pragma unroll
      for (int n = 0; n < Cfg::s_tiles; ++n) {
        std::uint32_t const at = Cfg::p_offset + 4 * t4;
        *reinterpret_cast<std::uint32_t*>(smem + at + swizzle128_offset(row0, n)) =
            a[n / 2][2 * (n % 2)];
        *reinterpret_cast<std::uint32_t*>(smem + at + swizzle128_offset(row0 + 8, n)) =
            a[n / 2][2 * (n % 2) + 1];
      }
      if (t4 == 0) {
        alpha_s[row0] = alpha[0];
        alpha_s[row0 + 8] = alpha[1];
      }
      fence_proxy_async_shared();  // P is read by the other warpgroup's tensor cores
      mbarrier_arrive(p_full);

      rescale(alpha[0], alpha[1]);
      wgmma_pin(o);
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < block_n / 16; ++j)
        wgmma_m64n256k16_rs_bt(o, a[j],
                               wgmma_desc_sw128(kv_stage + j * 2048, Cfg::kv_tile_bytes, 1024));
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_pin(o);
      __syncwarp();
      if (lane == 0) mbarrier_arrive(empty0 + 8 * stage);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l_run[r] += __shfl_xor_sync(0xFFFF'FFFFu, l_run[r], 1);
      l_run[r] += __shfl_xor_sync(0xFFFF'FFFFu, l_run[r], 2);
    }
    if (t4 == 0) {
      stats[row0] = m_run[0];
      stats[row0 + 8] = m_run[1];
      stats[heads + row0] = l_run[0];
      stats[heads + row0 + 8] = l_run[1];
    }
    named_barrier_sync(2, Cfg::consumer_threads);
  } else {
    for (int it = 0; it < range.n_blocks; ++it) {
      int const stage = it % stages;
      std::uint32_t const kv_stage = kv_base + stage * Cfg::kv_stage_bytes;
      mbarrier_wait(full0 + 8 * stage, std::uint32_t(it / stages) & 1);
      mbarrier_wait(p_full, std::uint32_t(it) & 1);
      rescale(alpha_s[row0], alpha_s[row0 + 8]);
      wgmma_pin(o);
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < block_n / 16; ++j)
        wgmma_m64n256k16_ss_bt(o, wgmma_desc_k_major(p_base + j * 32),
                               wgmma_desc_sw128(kv_stage + 4 * Cfg::kv_tile_bytes + j * 2048,
                                                Cfg::kv_tile_bytes, 1024));
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_pin(o);
      __syncwarp();
      if (lane == 0) {
        mbarrier_arrive(p_empty);
        mbarrier_arrive(empty0 + 8 * stage);
      }
    }
    named_barrier_sync(2, Cfg::consumer_threads);
    m_run[0] = stats[row0];
    m_run[1] = stats[row0 + 8];
    l_run[0] = stats[heads + row0];
    l_run[1] = stats[heads + row0 + 8];
  }

  mla_store_result<Cfg>(p, o, m_run, l_run, b, split, head0, row0, wn, t4);
}

template <class Cfg, class Layout>
__global__ void __launch_bounds__(Cfg::threads, 1)
    mla_decode_wgmma_kernel(mla_decode_params const p) {
  pdl_enter();
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  constexpr int heads = Cfg::heads, stages = Cfg::stages;

  int const tiles = p.heads / heads;
  int const tile = int(blockIdx.x) % tiles;  // tiles of one (row, split) run side by side: the
  int const split = int(blockIdx.x) / tiles % p.num_splits;  // second finds the block in L2
  int const b = int(blockIdx.x) / tiles / p.num_splits;
  int const head0 = tile * heads;
  int const tid = int(threadIdx.x);

  auto const range = mla_split_of(p, b, split, Cfg::block_n);
  if (range.n_blocks == 0) {  // an empty split (or a row of length 0)
    mla_write_empty_split<heads, Cfg::threads>(p, b, split, head0, tid);
    return;
  }

  // The swizzle repeats every 1024 bytes of the shared address space: align the base by hand.
  std::uint32_t const raw = smem_address(smem_raw);
  std::uint32_t const base = (raw + 1023u) & ~1023u;
  unsigned char* const smem = smem_raw + (base - raw);
  std::uint32_t const full0 = base + Cfg::barrier_offset, empty0 = full0 + 8 * stages;
  std::uint32_t const p_full = empty0 + 8 * stages, p_empty = p_full + 8;
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) {
      mbarrier_init(full0 + 8 * s, Cfg::producer_threads);        // every producer thread's copies
      mbarrier_init(empty0 + 8 * s, Cfg::consumer_threads / 32);  // a lane of each consumer warp
    }
    mbarrier_init(p_full, 128);  // every thread of warpgroup 1 (its part of P written)
    mbarrier_init(p_empty, 4);   // a lane of each warp of warpgroup 2
    mbarrier_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles part here

  if (tid < Cfg::producer_threads) {
    warpgroup_registers_down<Cfg::producer_registers>();
    mla_wgmma_produce<Cfg, Layout>(p, range, b, base + Cfg::kv_offset, full0, empty0, tid);
  } else {
    warpgroup_registers_up<Cfg::consumer_registers>();
    int const ctid = tid - Cfg::producer_threads;
    mla_wgmma_consume<Cfg>(p, range, b, split, head0, ctid / 128, ctid, smem, base);
  }
}

template <class Layout>
void launch_mla_decode_wgmma(mla_decode_params const& p, CUstream_st* stream) {
  using cfg = mla_wgmma_config;
  std::int64_t const grid = std::int64_t(p.batch) * p.num_splits * (p.heads / cfg::heads);
  LC_CHECK(p.heads % cfg::heads == 0 && grid < (std::int64_t(1) << 31),
           "mla_decode on CUDA (wgmma): heads "
               << p.heads << " must be a multiple of " << cfg::heads
               << " and batch x splits x head tiles (" << grid << ") below 2^31");
  auto const kernel = mla_decode_wgmma_kernel<cfg, Layout>;
  // Above 48 KB of dynamic shared memory a kernel must opt in; not a stream operation, so it is
  // allowed while a graph is being captured.
  LC_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem_bytes));
  launch_pdl(kernel, dim3(unsigned(grid)), dim3(cfg::threads), cfg::smem_bytes, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
