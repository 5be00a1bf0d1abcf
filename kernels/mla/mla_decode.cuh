// mla_decode: the absorbed MLA decode kernels (split-KV flash-decoding on bf16 tensor cores), their
// launch and the merge of the splits' partial results. Only the files in instantiations/ include
// this; the dispatch (mla_cuda.cu) sees the declarations in mla.hpp alone. Tiles of 16 heads run
// the streaming kernel of mla_decode_stream.cuh; tiles of 64 heads the kernel below.
//
// One CTA computes one (batch row, KV split, tile of heads). The latent rows of its split stream
// through shared memory in blocks of block_n tokens (cp.async, gathered by slot, a ring of
// `stages` buffers with stages - 1 blocks in flight); each block is used twice: as keys (all 576
// columns) and as values (the first 512).
// Warps form a warps_m x warps_n grid: a warp computes S = Q K^T for its 16 heads x
// (block_n / warps_n) tokens over the full 576, the online softmax is combined across the
// warps_n warps of a head row through shared memory, P goes to shared memory as bf16, and the
// warp accumulates O for its 16 heads x (512 / warps_n) columns in registers.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_decode_common.cuh"
#include "kernels/mla/mla_decode_stream.cuh"
#include "kernels/mla/mla_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <int Heads, int WarpsM, int WarpsN, int BlockN, int Stages>
struct mla_decode_config {
  static constexpr int heads = Heads;  // heads of one tile (the MMA's M)
  static constexpr int warps_m = WarpsM;
  static constexpr int warps_n = WarpsN;
  static constexpr int block_n = BlockN;  // tokens per pipeline block
  static constexpr int stages = Stages;   // blocks in shared memory: stages - 1 in flight
  static constexpr int threads = 32 * warps_m * warps_n;
  static constexpr int width = int(mla_kv_width);
  // Shared rows padded by 16 bytes: the 8 rows that one ldmatrix reads fall in 8 different
  // 16-byte bank groups instead of one (a 1152-byte pitch is a multiple of 128).
  static constexpr int pitch = width + 8;
  static constexpr int p_pitch = block_n + 8;
  static constexpr int vectors = width / 8;  // 16-byte vectors per row
  static constexpr int threads_per_row = 8;  // loaders per row: 8 x 16 B = 128 B contiguous
  static constexpr int warp_tokens = block_n / warps_n;  // S columns of one warp
  static constexpr int s_tiles = warp_tokens / 8;
  static constexpr int warp_cols = int(mla_latent_dim) / warps_n;  // O columns of one warp
  static constexpr int o_tiles = warp_cols / 8;
  static constexpr int q_bytes = heads * pitch * 2;
  static constexpr int kv_stage_bytes = block_n * pitch * 2;
  static constexpr int kv_bytes = stages * kv_stage_bytes;
  static constexpr int p_bytes = heads * p_pitch * 2;
  static constexpr int reduce_bytes = 2 * warps_n * heads * 4;  // row maxima and sums per warp
  static constexpr int smem_bytes = q_bytes + kv_bytes + p_bytes + reduce_bytes;

  static_assert(heads == 16 * warps_m, "a warp row covers one m16 tile of heads");
  static_assert(o_tiles % 2 == 0, "V fragments are loaded two n8 tiles at once");
  static_assert(stages >= 2, "the pipeline needs a block in flight while one is used");
  static_assert(block_n % 16 == 0 && width % 16 == 0, "k steps of 16");
  static_assert(vectors % threads_per_row == 0 && threads % threads_per_row == 0);
  static_assert(smem_bytes <= 227 * 1024, "exceeds the shared memory of an sm_90 CTA");
};

// H a multiple of 64: 4 x 16 heads, 2 warps along N; 128 fp32 accumulators per thread; q takes
// 75 KB, so three stages of 32-token blocks. (16-head tiles: mla_stream_config.)
using mla_decode_config_64 = mla_decode_config<64, 4, 2, 32, 3>;

template <class Cfg, class Layout>
__global__ void __launch_bounds__(Cfg::threads, 1) mla_decode_kernel(mla_decode_params const p) {
  pdl_enter();
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int heads = Cfg::heads, block_n = Cfg::block_n, pitch = Cfg::pitch;
  float const neg_inf = -INFINITY;

  int const tiles = p.heads / heads;
  int const tile = int(blockIdx.x) % tiles;  // tiles of one (row, split) run side by side: the
  int const split = int(blockIdx.x) / tiles % p.num_splits;  // second finds the block in L2
  int const b = int(blockIdx.x) / tiles / p.num_splits;
  int const head0 = tile * heads;
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const wm = warp % Cfg::warps_m, wn = warp / Cfg::warps_m;

  auto const range = mla_split_of(p, b, split, block_n);
  int const kv_begin = range.kv_begin, kv_end = range.kv_end, n_blocks = range.n_blocks;
  if (n_blocks == 0) {  // an empty split (or a row of length 0)
    mla_write_empty_split<heads, Cfg::threads>(p, b, split, head0, tid);
    return;
  }

  auto* const q_s = reinterpret_cast<bf16*>(smem);
  auto* const kv_s = reinterpret_cast<bf16*>(smem + Cfg::q_bytes);
  auto* const p_s = reinterpret_cast<bf16*>(smem + Cfg::q_bytes + Cfg::kv_bytes);
  auto* const red_max =
      reinterpret_cast<float*>(smem + Cfg::q_bytes + Cfg::kv_bytes + Cfg::p_bytes);
  float* const red_sum = red_max + Cfg::warps_n * heads;

  // q's tile: [heads, 512 | 64], joining the first block's group of copies.
  for (int i = tid; i < heads * Cfg::vectors; i += Cfg::threads) {
    int const h = i / Cfg::vectors, c = i % Cfg::vectors;
    bf16 const* src =
        c < int(mla_latent_dim / 8)
            ? p.q_nope + b * p.q_nope_batch_stride + (head0 + h) * p.q_nope_head_stride + c * 8
            : p.q_rope + b * p.q_rope_batch_stride + (head0 + h) * p.q_rope_head_stride +
                  (c - mla_latent_dim / 8) * 8;
    cp_async_16(smem_address(q_s + h * pitch + c * 8), src, 16);
  }

  std::int32_t const req = p.req_rows[b];
  auto const load_block = [&](int block, int stage) {
    int const start = kv_begin + block * block_n;
    bf16* const dst = kv_s + stage * block_n * pitch;
    for (int r = tid / Cfg::threads_per_row; r < block_n;
         r += Cfg::threads / Cfg::threads_per_row) {
      int const pos = start + r;
      bf16 const* src = p.kv.data;
      int bytes = 0;
      if (pos < kv_end) {
        std::int64_t const slot = p.table.template slot<Layout>(req, pos);
        if (slot >= 0 && slot < p.kv.slots) {
          src = p.kv.row(slot);
          bytes = 16;
        }
      }
      for (int c = tid % Cfg::threads_per_row; c < Cfg::vectors; c += Cfg::threads_per_row)
        cp_async_16(smem_address(dst + r * pitch + c * 8), src + (bytes != 0 ? c * 8 : 0), bytes);
    }
    cp_async_commit();
  };

  float o[Cfg::o_tiles][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {neg_inf, neg_inf}, l_run[2] = {0.0f, 0.0f};
  float const scale_log2 = p.softmax_scale * mla_log2e;
  int const g = lane / 4, t4 = lane % 4;
  int const row0 = wm * 16 + g;  // this thread's rows of the tile: row0 and row0 + 8

  // ldmatrix addresses (lane-dependent parts). A operands (q, P): row lane % 16, column
  // (lane / 16) * 8. K as the col-major B of S: token (lane & 7) + (lane / 16) * 8, column
  // ((lane / 8) & 1) * 8. V as the row-major B of O (transposed load): token
  // (lane & 7) + ((lane / 8) & 1) * 8, column (lane / 16) * 8.
  std::uint32_t const q_addr = smem_address(q_s + (wm * 16 + lane % 16) * pitch + (lane / 16) * 8);
  std::uint32_t const p_addr =
      smem_address(p_s + (wm * 16 + lane % 16) * Cfg::p_pitch + (lane / 16) * 8);
  int const k_offset =
      (wn * Cfg::warp_tokens + (lane & 7) + (lane >> 4) * 8) * pitch + ((lane >> 3) & 1) * 8;
  int const v_offset =
      ((lane & 7) + ((lane >> 3) & 1) * 8) * pitch + wn * Cfg::warp_cols + (lane >> 4) * 8;

  // Prologue: blocks 0 .. stages - 2 in flight (q joins block 0's group). Every iteration
  // commits one group, empty past the end, so that group i is always block i.
#pragma unroll
  for (int i = 0; i < Cfg::stages - 1; ++i) {
    if (i < n_blocks)
      load_block(i, i);
    else
      cp_async_commit();
  }
  for (int it = 0; it < n_blocks; ++it) {
    int const stage = it % Cfg::stages;
    cp_async_wait<Cfg::stages - 2>();  // groups 0 .. it (block it) have landed for this thread
    // ... and for every thread; every warp is also done with block it - 1, P and the reductions,
    // so block it - 1's stage may be refilled, with block it + stages - 1.
    __syncthreads();
    int const ahead = it + Cfg::stages - 1;
    if (ahead < n_blocks)
      load_block(ahead, ahead % Cfg::stages);
    else
      cp_async_commit();
    bf16 const* const kv_block = kv_s + stage * block_n * pitch;
    std::uint32_t const k_addr = smem_address(kv_block + k_offset);
    std::uint32_t const v_addr = smem_address(kv_block + v_offset);

    // S = q K^T over the 576 columns, even and odd k steps into two accumulator sets: two
    // independent chains of 18 dependent MMAs instead of one of 36.
    float s[Cfg::s_tiles][4], s_odd[Cfg::s_tiles][4];
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = s_odd[n][e] = 0.0f;
    auto const k_step = [&](float(&acc)[Cfg::s_tiles][4], int const k_col) {
      std::uint32_t a[4];
      ldmatrix_x4(a, q_addr + k_col * 2);
#pragma unroll
      for (int j = 0; j < Cfg::s_tiles / 2; ++j) {
        std::uint32_t k[4];
        ldmatrix_x4(k, k_addr + (j * 16 * pitch + k_col) * 2);
        mma_bf16_16816(acc[2 * j], a, k[0], k[1]);
        mma_bf16_16816(acc[2 * j + 1], a, k[2], k[3]);
      }
      if constexpr (Cfg::s_tiles % 2 == 1) {  // the last n8 tile alone: two matrices
        std::uint32_t k[2];
        ldmatrix_x2(k, k_addr + ((Cfg::s_tiles - 1) * 8 * pitch + k_col) * 2);
        mma_bf16_16816(acc[Cfg::s_tiles - 1], a, k[0], k[1]);
      }
    };
#pragma unroll 2
    for (int kk = 0; kk < Cfg::width / 16; kk += 2) {
      k_step(s, kk * 16);
      k_step(s_odd, (kk + 1) * 16);
    }
#pragma unroll
    for (int n = 0; n < Cfg::s_tiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] += s_odd[n][e];

    int const token0 = kv_begin + it * block_n + wn * Cfg::warp_tokens + 2 * t4;
    mla_softmax_pv_block<Cfg>(s, token0, kv_end, scale_log2, red_max, red_sum, p_s, p_addr, v_addr,
                              row0, wn, t4, m_run, l_run, o, [] { __syncthreads(); });
  }

  mla_store_result<Cfg>(p, o, m_run, l_run, b, split, head0, row0, wn, t4);
}

template <int HeadsPerTile, class Layout>
void launch_mla_decode(mla_decode_params const& p, CUstream_st* stream) {
  static_assert(HeadsPerTile == mla_stream_config::heads || HeadsPerTile == 64,
                "mla_decode: head tiles of 16 or 64");
  using cfg = std::conditional_t<HeadsPerTile == 64, mla_decode_config_64, mla_stream_config>;
  auto const kernel = [] {
    if constexpr (HeadsPerTile == 64)
      return mla_decode_kernel<cfg, Layout>;
    else
      return mla_decode_stream_kernel<cfg, Layout>;
  }();
  std::int64_t const grid = std::int64_t(p.batch) * p.num_splits * (p.heads / cfg::heads);
  LC_CHECK(p.heads % cfg::heads == 0 && grid < (std::int64_t(1) << 31),
           "mla_decode on CUDA: heads " << p.heads << " must be a multiple of " << cfg::heads
                                        << " and batch x splits x head tiles (" << grid
                                        << ") below 2^31");
  // Above 48 KB of dynamic shared memory a kernel must opt in; not a stream operation, so it is
  // allowed while a graph is being captured.
  LC_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem_bytes));
  launch_pdl(kernel, dim3(unsigned(grid)), dim3(cfg::threads), cfg::smem_bytes, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

// The merge: one CTA per (batch row, head) combines the splits' normalised partial results,
// weighted by exp2(lse_i - max) / sum; empty splits (lse -inf) weigh 0 and are never read. A
// short row at a small batch has up to mla_max_splits splits, so the CTA's warps take the splits
// in turn (warp w: w, w + warps, ...) with two splits' loads in flight per warp, and warp 0 adds
// the warps' sums in warp order (deterministic). A lane owns 16 of the 512 columns.
struct mla_merge_traits {
  static constexpr int max_warps = 8;
  static constexpr int columns_per_lane = int(mla_latent_dim) / 32;  // 16: four float4
  // Warps per CTA for a plan: about four splits per warp, at most max_warps.
  static constexpr int warps_for(int num_splits) noexcept {
    int w = 1;
    while (w < max_warps && 4 * w < num_splits) w *= 2;
    return w;
  }
};

// The block-wide reduction of one value per thread (op: max or sum); every thread gets the result.
template <class Op>
__device__ __forceinline__ float mla_merge_block_reduce(float v, float* scratch, Op op) {
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  int const warps = int(blockDim.x) / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v = op(v, __shfl_xor_sync(0xFFFF'FFFFu, v, offset));
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < warps; ++w) v = op(v, scratch[w]);
  return v;
}

__device__ __forceinline__ void mla_merge_add(float (&acc)[mla_merge_traits::columns_per_lane],
                                              float const w, float4 const (&v)[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    acc[4 * k] += w * v[k].x;
    acc[4 * k + 1] += w * v[k].y;
    acc[4 * k + 2] += w * v[k].z;
    acc[4 * k + 3] += w * v[k].w;
  }
}

template <class Out>
__global__ void __launch_bounds__(32 * mla_merge_traits::max_warps)
    mla_merge_kernel(mla_decode_params const p) {
  pdl_enter();
  static_assert(std::is_same_v<Out, bf16>, "mla_decode writes bf16 outputs");
  constexpr int cols = mla_merge_traits::columns_per_lane;
  __shared__ float weight[mla_max_splits];  // exp2(lse_i - max), 0 for an empty split
  __shared__ float scratch[mla_merge_traits::max_warps];
  __shared__ __align__(16) float sums[mla_merge_traits::max_warps - 1][mla_latent_dim];
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const warps = int(blockDim.x) / 32;
  int const b = int(blockIdx.x) / p.heads, h = int(blockIdx.x) % p.heads;
  int const splits = p.num_splits;
  float const* const lse = p.partial_lse + std::int64_t(b) * splits * p.heads + h;

  float m = -INFINITY;
  for (int i = tid; i < splits; i += int(blockDim.x)) {
    weight[i] = lse[std::int64_t(i) * p.heads];
    m = fmaxf(m, weight[i]);
  }
  m = mla_merge_block_reduce(m, scratch, [](float x, float y) { return fmaxf(x, y); });
  Out* const out = p.out + b * p.out_batch_stride + h * p.out_head_stride;
  if (m == -INFINITY) {  // a row of length 0
    if (warp == 0) {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        *reinterpret_cast<uint2*>(out + k * 128 + lane * 4) = make_uint2(0, 0);
      if (p.lse != nullptr && lane == 0) p.lse[std::int64_t(b) * p.heads + h] = -INFINITY;
    }
    return;
  }
  float total = 0.0f;
  for (int i = tid; i < splits; i += int(blockDim.x)) {
    weight[i] = exp2f(weight[i] - m);  // exp2(-inf) = 0
    total += weight[i];
  }
  total = mla_merge_block_reduce(total, scratch, [](float x, float y) { return x + y; });

  float acc[cols] = {};
  auto const part = [&](int i) {
    return p.partial_out + ((std::int64_t(b) * splits + i) * p.heads + h) * mla_latent_dim +
           lane * 4;
  };
  for (int i = warp; i < splits; i += 2 * warps) {
    int const j = i + warps;
    float const wi = weight[i], wj = j < splits ? weight[j] : 0.0f;  // uniform across the warp
    float4 vi[4], vj[4];
    if (wi != 0.0f) {
#pragma unroll
      for (int k = 0; k < 4; ++k) vi[k] = *reinterpret_cast<float4 const*>(part(i) + k * 128);
    }
    if (wj != 0.0f) {
#pragma unroll
      for (int k = 0; k < 4; ++k) vj[k] = *reinterpret_cast<float4 const*>(part(j) + k * 128);
    }
    if (wi != 0.0f) mla_merge_add(acc, wi, vi);
    if (wj != 0.0f) mla_merge_add(acc, wj, vj);
  }
  if (warp > 0) {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      *reinterpret_cast<float4*>(&sums[warp - 1][k * 128 + lane * 4]) =
          make_float4(acc[4 * k], acc[4 * k + 1], acc[4 * k + 2], acc[4 * k + 3]);
  }
  __syncthreads();
  if (warp != 0) return;
  for (int w = 1; w < warps; ++w) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float4 const v = *reinterpret_cast<float4 const*>(&sums[w - 1][k * 128 + lane * 4]);
      acc[4 * k] += v.x;
      acc[4 * k + 1] += v.y;
      acc[4 * k + 2] += v.z;
      acc[4 * k + 3] += v.w;
    }
  }
  float const inv = 1.0f / total;
#pragma unroll
  for (int k = 0; k < 4; ++k)
    *reinterpret_cast<uint2*>(out + k * 128 + lane * 4) =
        make_uint2(pack_bf16x2(acc[4 * k] * inv, acc[4 * k + 1] * inv),
                   pack_bf16x2(acc[4 * k + 2] * inv, acc[4 * k + 3] * inv));
  if (p.lse != nullptr && lane == 0)
    p.lse[std::int64_t(b) * p.heads + h] = (m + log2f(total)) * mla_ln2;
}

template <class Out>
void launch_mla_merge(mla_decode_params const& p, CUstream_st* stream) {
  std::int64_t const pairs = std::int64_t(p.batch) * p.heads;
  if (pairs == 0) return;
  LC_CHECK(p.num_splits <= mla_max_splits && pairs <= INT_MAX,
           "mla merge: at most " << mla_max_splits << " splits and INT_MAX (row, head) pairs; got "
                                 << p.num_splits << " splits, " << pairs << " pairs");
  int const threads = 32 * mla_merge_traits::warps_for(p.num_splits);
  launch_pdl(mla_merge_kernel<Out>, dim3(unsigned(pairs)), dim3(unsigned(threads)), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
