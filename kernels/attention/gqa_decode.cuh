// gqa_decode: the GQA paged decode kernel (split-KV flash-decoding on bf16 tensor cores) and the
// merge of the splits' partial results. Only the files in instantiations/ include this; the
// dispatch (gqa_decode_cuda.cu) sees the declarations in gqa_decode.hpp alone.
//
// Decode attention is HBM-bound: every (row, kv head) reads its K and V rows once, and the FLOPs
// per byte are 2 * group (8 FLOP per KV byte at group 4, 16 at group 8). At group 8 a CUDA-core
// kernel would need ~45% of the SM's fp32 FMA rate just to keep up with HBM, before the bf16
// conversions and the cross-lane reductions of the dot products; mma.sync m16n8k16 does the same
// work in a few percent of the tensor cores' time, so the kernel stays memory-bound for every
// group. The cost of the tensor cores is padding: the group's 1..8 query heads fill an m16 tile,
// the rest of it zeros (wasted MMA work that is free here).
//
// One CTA computes one (batch row, KV split, kv head): the split's K and V rows are gathered by
// slot with cp.async into a ring of `stages` shared-memory blocks of block_n tokens (stages - 1
// in flight). Each of the 4 warps owns 16 tokens of every block and keeps its own online softmax
// and O [16, head_dim] in registers: S = q K^T (q's fragments loaded once into registers), the
// probabilities go from S's accumulators straight into the A fragments of P V, so a block needs
// one barrier. The 4 warps' states are merged through shared memory at the end.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/attention/gqa_decode.hpp"
#include "kernels/attention/gqa_decode_params.hpp"
#include "kernels/common/online_softmax.cuh"
#include "kernels/common/ptx.cuh"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <int HeadDim>
struct gqa_decode_config {
  static constexpr int head_dim = HeadDim;
  static constexpr int rows = 16;  // query rows of a CTA: one m16 tile, group <= 8 of them used
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int warp_tokens = 16;               // one k16 step of P V per warp and block
  static constexpr int block_n = warps * warp_tokens;  // 64 tokens per pipeline block
  static constexpr int stages = 3;  // two 64-token blocks in flight per CTA while one is used
  // Shared rows padded by 16 bytes: the 8 rows that one ldmatrix reads fall in 8 different
  // 16-byte bank groups (a 256-byte pitch would put them all in one).
  static constexpr int pitch = head_dim + 8;
  static constexpr int vectors = head_dim / 8;   // 16-byte vectors per K or V row
  static constexpr int k_steps = head_dim / 16;  // of S = q K^T
  static constexpr int o_tiles = head_dim / 8;   // n8 tiles of O
  static constexpr int q_bytes = rows * pitch * 2;
  static constexpr int tile_bytes = block_n * pitch * 2;  // one block of K (or of V)
  static constexpr int kv_bytes = stages * 2 * tile_bytes;
  static constexpr int merge_bytes = warps * rows * head_dim * 4;  // reuses the K/V ring
  static constexpr int stats_bytes = 2 * warps * rows * 4;         // row maxima and sums per warp
  static constexpr int smem_bytes = q_bytes + kv_bytes + stats_bytes;
  static constexpr int ctas_per_sm = gqa_decode_ctas_per_sm(head_dim);

  static_assert(head_dim % 32 == 0, "V fragments come two n8 tiles at once; the merge's lanes");
  static_assert(threads % vectors == 0, "a loader thread keeps one column of every row");
  static_assert(merge_bytes <= kv_bytes, "the warps' O must fit where the blocks were");
  static_assert(rows >= gqa_decode_max_group, "a group must fit the m16 tile");
  // 228 KB of shared memory per SM, 1 KB of it reserved per CTA.
  static_assert(ctas_per_sm * (smem_bytes + 1024) <= 228 * 1024,
                "gqa_decode_ctas_per_sm promises more CTAs than fit on an SM");
};

inline constexpr float gqa_log2e = 1.4426950408889634f;
inline constexpr float gqa_ln2 = 0.6931471805599453f;

template <class Cfg, class Layout>
__global__ void __launch_bounds__(Cfg::threads, Cfg::ctas_per_sm)
    gqa_decode_kernel(gqa_decode_params const p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int D = Cfg::head_dim, block_n = Cfg::block_n, pitch = Cfg::pitch;
  float const neg_inf = -INFINITY;

  // The kv heads of one (row, split) run side by side: they read the same table entries and
  // neighbouring parts of the same slot rows.
  int const kv_head = int(blockIdx.x) % p.kv_heads;
  int const split = int(blockIdx.x) / p.kv_heads % p.num_splits;
  int const b = int(blockIdx.x) / p.kv_heads / p.num_splits;
  int const group = p.q_heads / p.kv_heads;
  int const head0 = kv_head * group;
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;

  // The split's positions [kv_begin, kv_end): whole blocks, spread evenly over the splits.
  int const len = max(p.seq_lens[b], 0);
  int const blocks = (len + block_n - 1) / block_n;
  int const blocks_per_split = (blocks + p.num_splits - 1) / p.num_splits;
  int const kv_begin = split * blocks_per_split * block_n;
  int const kv_end = min(len, kv_begin + blocks_per_split * block_n);
  int const n_blocks = kv_begin < kv_end ? (kv_end - kv_begin + block_n - 1) / block_n : 0;

  if (n_blocks == 0) {  // an empty split (or a row of length 0)
    if (p.num_splits == 1) {
      for (int i = tid; i < group * Cfg::vectors; i += Cfg::threads) {
        int const r = i / Cfg::vectors, c = i % Cfg::vectors;
        *reinterpret_cast<uint4*>(p.out + b * p.out_batch_stride + (head0 + r) * p.out_head_stride +
                                  c * 8) = make_uint4(0, 0, 0, 0);
      }
      if (p.lse != nullptr && tid < group)
        p.lse[std::int64_t(b) * p.q_heads + head0 + tid] = neg_inf;
    } else if (tid < group) {
      p.partial_lse[(std::int64_t(b) * p.num_splits + split) * p.q_heads + head0 + tid] = neg_inf;
    }
    return;
  }

  auto* const q_s = reinterpret_cast<bf16*>(smem);
  auto* const kv_s = reinterpret_cast<bf16*>(smem + Cfg::q_bytes);
  auto* const red_max = reinterpret_cast<float*>(smem + Cfg::q_bytes + Cfg::kv_bytes);
  float* const red_sum = red_max + Cfg::warps * Cfg::rows;

  std::int32_t const req = p.req_rows[b];
  std::int64_t const head_offset = std::int64_t(kv_head) * D;
  auto const load_block = [&](int block, int stage) {
    int const start = kv_begin + block * block_n;
    bf16* const k_dst = kv_s + stage * 2 * block_n * pitch;
    bf16* const v_dst = k_dst + block_n * pitch;
    int const c = tid % Cfg::vectors;  // the same column of every row this thread loads
    for (int r = tid / Cfg::vectors; r < block_n; r += Cfg::threads / Cfg::vectors) {
      int const pos = start + r;
      bf16 const* k_src = p.k.data;
      bf16 const* v_src = p.v.data;
      int bytes = 0;  // 0: 16 zero bytes (past the split, or a slot outside the pools)
      if (pos < kv_end) {
        std::int64_t const slot = p.table.template slot<Layout>(req, pos);
        if (slot >= 0 && slot < p.k.slots) {
          k_src = p.k.row(slot) + head_offset + c * 8;
          v_src = p.v.row(slot) + head_offset + c * 8;
          bytes = 16;
        }
      }
      cp_async_16(smem_address(k_dst + r * pitch + c * 8), k_src, bytes);
      cp_async_16(smem_address(v_dst + r * pitch + c * 8), v_src, bytes);
    }
    cp_async_commit();
  };

  // Prologue: blocks 0 .. stages - 2 in flight. Every iteration commits one group, empty past the
  // end, so that group i is always block i.
#pragma unroll
  for (int i = 0; i < Cfg::stages - 1; ++i) {
    if (i < n_blocks)
      load_block(i, i);
    else
      cp_async_commit();
  }

  // q's group of heads into rows 0 .. group - 1 of the tile, zeros below, while the blocks load.
  for (int i = tid; i < Cfg::rows * Cfg::vectors; i += Cfg::threads) {
    int const r = i / Cfg::vectors, c = i % Cfg::vectors;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < group)
      value = *reinterpret_cast<uint4 const*>(p.q + b * p.q_batch_stride +
                                              (head0 + r) * p.q_head_stride + c * 8);
    *reinterpret_cast<uint4*>(q_s + r * pitch + c * 8) = value;
  }
  __syncthreads();
  // q as the A operand of every k step (row lane % 16, column (lane / 16) * 8 of each 16 x 16).
  std::uint32_t qf[Cfg::k_steps][4];
  {
    std::uint32_t const q_addr = smem_address(q_s + (lane % 16) * pitch + (lane / 16) * 8);
#pragma unroll
    for (int ks = 0; ks < Cfg::k_steps; ++ks) ldmatrix_x4(qf[ks], q_addr + ks * 32);
  }

  float o[Cfg::o_tiles][4];
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_run[2] = {neg_inf, neg_inf}, l_run[2] = {0.0f, 0.0f};  // l_run: this thread's part
  float const scale_log2 = p.softmax_scale * gqa_log2e;
  int const g = lane / 4, t4 = lane % 4;  // this thread's rows g and g + 8 of S and O

  // ldmatrix addresses within a block. K as the col-major B of S: token
  // (lane & 7) + (lane / 16) * 8 of the warp's 16, dim ((lane / 8) & 1) * 8. V as the row-major B
  // of O (transposed load): token (lane & 7) + ((lane / 8) & 1) * 8, dim (lane / 16) * 8.
  int const k_offset =
      (warp * Cfg::warp_tokens + (lane & 7) + (lane >> 4) * 8) * pitch + ((lane >> 3) & 1) * 8;
  int const v_offset =
      (warp * Cfg::warp_tokens + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + (lane >> 4) * 8;

  for (int it = 0; it < n_blocks; ++it) {
    int const stage = it % Cfg::stages;
    cp_async_wait<Cfg::stages - 2>();  // groups 0 .. it (block it) have landed for this thread
    // ... and for every thread; every warp is also done with block it - 1, so its stage may be
    // refilled, with block it + stages - 1.
    __syncthreads();
    int const ahead = it + Cfg::stages - 1;
    if (ahead < n_blocks)
      load_block(ahead, ahead % Cfg::stages);
    else
      cp_async_commit();
    bf16 const* const k_block = kv_s + stage * 2 * block_n * pitch;
    std::uint32_t const k_addr = smem_address(k_block + k_offset);
    std::uint32_t const v_addr = smem_address(k_block + block_n * pitch + v_offset);

    // S = q K^T for the warp's 16 tokens: two n8 tiles.
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < Cfg::k_steps; ++ks) {
      std::uint32_t kf[4];
      ldmatrix_x4(kf, k_addr + ks * 32);
      mma_bf16_16816(s[0], qf[ks], kf[0], kf[1]);
      mma_bf16_16816(s[1], qf[ks], kf[2], kf[3]);
    }

    // Scale into log2 units, mask positions past the split, row maxima over the warp's tokens.
    int const token0 = kv_begin + it * block_n + warp * Cfg::warp_tokens + 2 * t4;
    float mx[2] = {neg_inf, neg_inf};
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float const v = token0 + n * 8 + (e & 1) < kv_end ? s[n][e] * scale_log2 : neg_inf;
        s[n][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    // m_use is 0, not -inf, while this warp has seen no position (a short split's tail).
    float m_use[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
      alpha[r] = softmax_advance(m_run[r], softmax_quad_max(mx[r]), m_use[r],
                                 [](float x) { return exp2f(x); });
    float pr[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) pr[n][e] = exp2f(s[n][e] - m_use[e >> 1]);
    l_run[0] = l_run[0] * alpha[0] + (pr[0][0] + pr[0][1] + pr[1][0] + pr[1][1]);
    l_run[1] = l_run[1] * alpha[1] + (pr[0][2] + pr[0][3] + pr[1][2] + pr[1][3]);
    softmax_rescale_rows(o, alpha);

    // S's accumulators are P's A fragment for the k16 step over the same 16 tokens: a0 row g
    // tokens 2 t4 + {0, 1}, a1 row g + 8, a2 and a3 the same 8 tokens on.
    std::uint32_t const a[4] = {pack_bf16x2(pr[0][0], pr[0][1]), pack_bf16x2(pr[0][2], pr[0][3]),
                                pack_bf16x2(pr[1][0], pr[1][1]), pack_bf16x2(pr[1][2], pr[1][3])};
    mma_bf16_16816_pv(o, a, v_addr);
  }

  // Merge the 4 warps: their maxima and sums, then O through the (now idle) K/V ring.
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xFFFF'FFFFu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xFFFF'FFFFu, l_run[r], 2);
  }
  if (t4 == 0) {
    red_max[warp * Cfg::rows + g] = m_run[0];
    red_max[warp * Cfg::rows + g + 8] = m_run[1];
    red_sum[warp * Cfg::rows + g] = l_run[0];
    red_sum[warp * Cfg::rows + g + 8] = l_run[1];
  }
  auto* const merge_s = reinterpret_cast<float*>(kv_s);  // [warps, rows, D]
#pragma unroll
  for (int n = 0; n < Cfg::o_tiles; ++n) {
    float* const at = merge_s + (warp * Cfg::rows + g) * D + n * 8 + 2 * t4;
    *reinterpret_cast<float2*>(at) = make_float2(o[n][0], o[n][1]);
    *reinterpret_cast<float2*>(at + 8 * D) = make_float2(o[n][2], o[n][3]);
  }
  __syncthreads();

  // Each thread: 4 columns of one used row at a time.
  for (int i = tid; i < group * (D / 4); i += Cfg::threads) {
    int const r = i / (D / 4), c = (i % (D / 4)) * 4;
    float m = neg_inf;
#pragma unroll
    for (int w = 0; w < Cfg::warps; ++w) m = fmaxf(m, red_max[w * Cfg::rows + r]);
    // m is finite: the split holds at least one position, and every row sees every position.
    float f[Cfg::warps], total = 0.0f;
#pragma unroll
    for (int w = 0; w < Cfg::warps; ++w) {
      f[w] = exp2f(red_max[w * Cfg::rows + r] - m);  // 0 for a warp that saw no position
      total += f[w] * red_sum[w * Cfg::rows + r];
    }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int w = 0; w < Cfg::warps; ++w) {
      float4 const v = *reinterpret_cast<float4 const*>(merge_s + (w * Cfg::rows + r) * D + c);
      acc[0] += f[w] * v.x;
      acc[1] += f[w] * v.y;
      acc[2] += f[w] * v.z;
      acc[3] += f[w] * v.w;
    }
    float const inv = 1.0f / total, lse2 = m + log2f(total);
    if (p.num_splits == 1) {
      *reinterpret_cast<uint2*>(p.out + b * p.out_batch_stride + (head0 + r) * p.out_head_stride +
                                c) = make_uint2(pack_bf16x2(acc[0] * inv, acc[1] * inv),
                                                pack_bf16x2(acc[2] * inv, acc[3] * inv));
      if (p.lse != nullptr && c == 0)
        p.lse[std::int64_t(b) * p.q_heads + head0 + r] = lse2 * gqa_ln2;
    } else {
      std::int64_t const part_row =
          (std::int64_t(b) * p.num_splits + split) * p.q_heads + head0 + r;
      *reinterpret_cast<float4*>(p.partial_out + part_row * D + c) =
          make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
      if (c == 0) p.partial_lse[part_row] = lse2;
    }
  }
}

// The merge: one warp per (batch row, query head) combines the splits' normalised partial
// results, weighted by exp2(lse_i - max) / sum; empty splits (lse -inf) weigh 0 and are not read.
inline constexpr int gqa_merge_threads = 256;

template <int HeadDim>
__global__ void __launch_bounds__(gqa_merge_threads) gqa_merge_kernel(gqa_decode_params const p) {
  constexpr int per_lane = HeadDim / 32;  // consecutive columns of one lane
  int const lane = int(threadIdx.x) % 32;
  std::int64_t const pair = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (pair >= std::int64_t(p.batch) * p.q_heads) return;
  int const b = int(pair / p.q_heads), h = int(pair % p.q_heads);
  float const* const lse = p.partial_lse + std::int64_t(b) * p.num_splits * p.q_heads + h;
  float m = -INFINITY;
  for (int i = lane; i < p.num_splits; i += 32) m = fmaxf(m, lse[std::int64_t(i) * p.q_heads]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    m = fmaxf(m, __shfl_xor_sync(0xFFFF'FFFFu, m, offset));
  bf16* const out = p.out + b * p.out_batch_stride + h * p.out_head_stride + lane * per_lane;
  if (m == -INFINITY) {  // a row of length 0
#pragma unroll
    for (int k = 0; k < per_lane; ++k) out[k] = bf16(0.0f);
    if (p.lse != nullptr && lane == 0) p.lse[std::int64_t(b) * p.q_heads + h] = -INFINITY;
    return;
  }
  float total = 0.0f;
  for (int i = lane; i < p.num_splits; i += 32)
    total += exp2f(lse[std::int64_t(i) * p.q_heads] - m);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    total += __shfl_xor_sync(0xFFFF'FFFFu, total, offset);
  float acc[per_lane] = {};
  for (int i = 0; i < p.num_splits; ++i) {
    float const li = lse[std::int64_t(i) * p.q_heads];
    if (li == -INFINITY) continue;  // uniform across the warp
    float const w = exp2f(li - m) / total;
    float const* const part = p.partial_out +
                              ((std::int64_t(b) * p.num_splits + i) * p.q_heads + h) * HeadDim +
                              lane * per_lane;
#pragma unroll
    for (int k = 0; k < per_lane; ++k) acc[k] += w * part[k];
  }
#pragma unroll
  for (int k = 0; k < per_lane; k += 2)
    *reinterpret_cast<std::uint32_t*>(out + k) = pack_bf16x2(acc[k], acc[k + 1]);
  if (p.lse != nullptr && lane == 0)
    p.lse[std::int64_t(b) * p.q_heads + h] = (m + log2f(total)) * gqa_ln2;
}

template <int HeadDim, class Layout>
void launch_gqa_decode(gqa_decode_params const& p, CUstream_st* stream) {
  using cfg = gqa_decode_config<HeadDim>;
  auto const kernel = gqa_decode_kernel<cfg, Layout>;
  std::int64_t const grid = std::int64_t(p.batch) * p.num_splits * p.kv_heads;
  LC_CHECK(p.head_dim == HeadDim && p.kv_heads > 0 && p.q_heads % p.kv_heads == 0 &&
               p.q_heads / p.kv_heads <= gqa_decode_max_group && grid < (std::int64_t(1) << 31),
           "gqa_decode on CUDA (head_dim " << HeadDim << "): got head_dim " << p.head_dim
                                           << ", q_heads " << p.q_heads << ", kv_heads "
                                           << p.kv_heads << ", batch x splits x kv_heads " << grid
                                           << " (must be below 2^31)");
  if (grid == 0) return;
  // Above 48 KB of dynamic shared memory a kernel must opt in; not a stream operation, so it is
  // allowed while a graph is being captured.
  LC_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem_bytes));
  kernel<<<unsigned(grid), cfg::threads, cfg::smem_bytes, stream>>>(p);
  LC_CUDA_CHECK_LAUNCH();
  if (p.num_splits > 1) {
    std::int64_t const threads = std::int64_t(p.batch) * p.q_heads * 32;
    auto const blocks = unsigned((threads + gqa_merge_threads - 1) / gqa_merge_threads);
    gqa_merge_kernel<HeadDim><<<blocks, gqa_merge_threads, 0, stream>>>(p);
    LC_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace lightcore::kernels::detail
