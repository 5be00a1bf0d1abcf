// mla_decode_common: the parts that the absorbed-decode kernels share (mla_decode_stream.cuh's
// mma.sync kernel for 16-head tiles, mla_decode_wgmma.cuh's warpgroup-MMA kernel for 64-head
// tiles): how a row's positions are cut into KV splits, what an empty split writes, and the
// epilogue; and the mma.sync softmax and P V step of one block (the 16-head kernel's).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/common/online_softmax.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/mla/mla_params.hpp"

namespace lightcore::kernels::detail {

inline constexpr float mla_log2e = 1.4426950408889634f;
inline constexpr float mla_ln2 = 0.6931471805599453f;

// The positions [kv_begin, kv_end) of one split of row b: whole blocks of block_n tokens, spread
// evenly over the splits; n_blocks 0 for an empty split or a row of length 0.
struct mla_split_range {
  int kv_begin = 0;
  int kv_end = 0;
  int n_blocks = 0;
};

__device__ __forceinline__ mla_split_range mla_split_of(mla_decode_params const& p, int b,
                                                        int split, int block_n) {
  int const len = max(p.seq_lens[b], 0);
  int const blocks = (len + block_n - 1) / block_n;
  int const blocks_per_split = (blocks + p.num_splits - 1) / p.num_splits;
  mla_split_range r;
  r.kv_begin = split * blocks_per_split * block_n;
  r.kv_end = min(len, r.kv_begin + blocks_per_split * block_n);
  r.n_blocks = r.kv_begin < r.kv_end ? (r.kv_end - r.kv_begin + block_n - 1) / block_n : 0;
  return r;
}

// An empty split: zeros and lse -inf for the whole row when it is not split, else the split's
// partial lse -inf (the merge then gives it weight 0 and never reads its partial output).
template <int Heads, int Threads>
__device__ __forceinline__ void mla_write_empty_split(mla_decode_params const& p, int b, int split,
                                                      int head0, int tid) {
  if (p.num_splits == 1) {
    for (int i = tid; i < Heads * int(mla_latent_dim / 8); i += Threads) {
      int const h = i / int(mla_latent_dim / 8), c = i % int(mla_latent_dim / 8);
      *reinterpret_cast<uint4*>(p.out + b * p.out_batch_stride + (head0 + h) * p.out_head_stride +
                                c * 8) = make_uint4(0, 0, 0, 0);
    }
    if (p.lse != nullptr && tid < Heads) p.lse[std::int64_t(b) * p.heads + head0 + tid] = -INFINITY;
  } else if (tid < Heads) {
    p.partial_lse[(std::int64_t(b) * p.num_splits + split) * p.heads + head0 + tid] = -INFINITY;
  }
}

// One block of the online softmax and P V, after the warp's S tiles (its s_tiles n8 tiles of
// token columns, rows row0 and row0 + 8 of the head tile) are computed: scale into log2 units and
// mask positions at or past kv_end, combine the row maxima of the warps_n warps of a head row
// through red_max, write P as bf16 into p_s (read back through p_addr), combine the row sums
// through red_sum, rescale the running o, l by exp2(m_old - m_new), and O += P V (V at v_addr).
// `sync` is the barrier of the warps that share red_max/red_sum/p_s (the consumer warps); the
// next block's first `sync` orders this block's P V before P's next writes.
template <class Cfg, int STiles, class Sync>
__device__ __forceinline__ void mla_softmax_pv_block(
    float (&s)[STiles][4], int const token0, int const kv_end, float const scale_log2,
    float* const red_max, float* const red_sum, bf16* const p_s, std::uint32_t const p_addr,
    std::uint32_t const v_addr, int const row0, int const wn, int const t4, float (&m_run)[2],
    float (&l_run)[2], float (&o)[Cfg::o_tiles][4], Sync const& sync) {
  constexpr int heads = Cfg::heads;
  float const neg_inf = -INFINITY;
  float mx[2] = {neg_inf, neg_inf};
#pragma unroll
  for (int n = 0; n < STiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float const v = token0 + n * 8 + (e & 1) < kv_end ? s[n][e] * scale_log2 : neg_inf;
      s[n][e] = v;
      mx[e >> 1] = fmaxf(mx[e >> 1], v);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) mx[r] = softmax_quad_max(mx[r]);
  if (t4 == 0) {
    red_max[wn * heads + row0] = mx[0];
    red_max[wn * heads + row0 + 8] = mx[1];
  }
  sync();

  // The new running maxima (every warp of a head row computes the same), P and its row sums.
  float m_new[2], alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m = m_run[r];
#pragma unroll
    for (int w = 0; w < Cfg::warps_n; ++w) m = fmaxf(m, red_max[w * heads + row0 + 8 * r]);
    m_new[r] = m;                    // finite: every block holds at least one position of the split
    alpha[r] = exp2f(m_run[r] - m);  // 0 on the first block (m_run = -inf)
    m_run[r] = m;
  }
#pragma unroll
  for (int n = 0; n < STiles; ++n) {
    float const p0 = exp2f(s[n][0] - m_new[0]), p1 = exp2f(s[n][1] - m_new[0]);
    float const p2 = exp2f(s[n][2] - m_new[1]), p3 = exp2f(s[n][3] - m_new[1]);
    sum[0] += p0 + p1;
    sum[1] += p2 + p3;
    int const col = wn * Cfg::warp_tokens + n * 8 + 2 * t4;
    *reinterpret_cast<std::uint32_t*>(p_s + row0 * Cfg::p_pitch + col) = pack_bf16x2(p0, p1);
    *reinterpret_cast<std::uint32_t*>(p_s + (row0 + 8) * Cfg::p_pitch + col) = pack_bf16x2(p2, p3);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    sum[r] += __shfl_xor_sync(0xFFFF'FFFFu, sum[r], 1);
    sum[r] += __shfl_xor_sync(0xFFFF'FFFFu, sum[r], 2);
  }
  if (t4 == 0) {
    red_sum[wn * heads + row0] = sum[0];
    red_sum[wn * heads + row0 + 8] = sum[1];
  }
  // Also orders this block's reads of red_max before the next block's writes, and every warp's
  // P before P V.
  sync();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < Cfg::warps_n; ++w) total += red_sum[w * heads + row0 + 8 * r];
    l_run[r] = l_run[r] * alpha[r] + total;
  }
  softmax_rescale_rows(o, alpha);

  // O += P V, V the block's first 512 columns.
#pragma unroll
  for (int kk = 0; kk < Cfg::block_n / 16; ++kk) {
    std::uint32_t a[4];
    ldmatrix_x4(a, p_addr + kk * 32);
    mma_bf16_16816_pv(o, a, v_addr + kk * 16 * Cfg::pitch * 2);
  }
}

// The epilogue of one warp: its o tiles (rows row0 and row0 + 8 of the head tile, columns
// col0 + n * 8 of the warp's slice) normalised by the running sums; bf16 into out when the row is
// not split, else f32 into the split's partial result with its lse in log2 units.
template <class Cfg>
__device__ __forceinline__ void mla_store_result(mla_decode_params const& p,
                                                 float const (&o)[Cfg::o_tiles][4],
                                                 float const (&m_run)[2], float const (&l_run)[2],
                                                 int b, int split, int head0, int row0, int wn,
                                                 int t4) {
  float const inv[2] = {1.0f / l_run[0], 1.0f / l_run[1]};
  float const lse2[2] = {m_run[0] + log2f(l_run[0]), m_run[1] + log2f(l_run[1])};
  int const col0 = wn * Cfg::warp_cols + 2 * t4;
  if (p.num_splits == 1) {
    bf16* const out0 = p.out + b * p.out_batch_stride + (head0 + row0) * p.out_head_stride;
    bf16* const out1 = out0 + 8 * p.out_head_stride;
#pragma unroll
    for (int n = 0; n < Cfg::o_tiles; ++n) {
      *reinterpret_cast<std::uint32_t*>(out0 + col0 + n * 8) =
          pack_bf16x2(o[n][0] * inv[0], o[n][1] * inv[0]);
      *reinterpret_cast<std::uint32_t*>(out1 + col0 + n * 8) =
          pack_bf16x2(o[n][2] * inv[1], o[n][3] * inv[1]);
    }
    if (p.lse != nullptr && wn == 0 && t4 == 0) {
      float* const lse = p.lse + std::int64_t(b) * p.heads + head0 + row0;
      lse[0] = lse2[0] * mla_ln2;
      lse[8] = lse2[1] * mla_ln2;
    }
  } else {
    std::int64_t const part_row = (std::int64_t(b) * p.num_splits + split) * p.heads + head0 + row0;
    float* const part0 = p.partial_out + part_row * mla_latent_dim;
    float* const part1 = part0 + 8 * mla_latent_dim;
#pragma unroll
    for (int n = 0; n < Cfg::o_tiles; ++n) {
      *reinterpret_cast<float2*>(part0 + col0 + n * 8) =
          make_float2(o[n][0] * inv[0], o[n][1] * inv[0]);
      *reinterpret_cast<float2*>(part1 + col0 + n * 8) =
          make_float2(o[n][2] * inv[1], o[n][3] * inv[1]);
    }
    if (wn == 0 && t4 == 0) {
      p.partial_lse[part_row] = lse2[0];
      p.partial_lse[part_row + 8] = lse2[1];
    }
  }
}

}  // namespace lightcore::kernels::detail
