// mla_decode: the launch of the absorbed MLA decode for tiles of 16 heads (the streaming kernel of
// mla_decode_stream.cuh; tiles of 64 heads run mla_decode_wgmma.cuh's kernel) and the merge of
// the splits' partial results that follows a split decode of either, alone or with the output
// projection W_UV folded in (mla_merge_project_kernel). Only the files in
// instantiations/ include this; the dispatch (mla_cuda.cu) sees the declarations in mla.hpp alone.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/gemm/gemv_bf16.cuh"
#include "kernels/mla/mla.hpp"
#include "kernels/mla/mla_decode_common.cuh"
#include "kernels/mla/mla_decode_stream.cuh"
#include "kernels/mla/mla_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <class Layout>
void launch_mla_decode_stream(mla_decode_params const& p, CUstream_st* stream) {
  using cfg = mla_stream_config;
  auto const kernel = mla_decode_stream_kernel<cfg, Layout>;
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

// The merge of (batch row b, head h) by the whole CTA (blockDim.x / 32 warps, at most max_warps).
// Warp 0 ends it by calling store(acc, inv, lse) on each lane: acc its 16 weighted sums (columns
// lane * 4 + 128 k + i, k and i in [0, 4)), inv the normaliser's inverse and lse the natural-log
// normaliser (for a row of length 0: acc zeros, inv 0 and lse -inf). Returns after a CTA-wide
// barrier that follows every read of the shared scratch, so the CTA may merge again at once.
template <class Store>
__device__ __forceinline__ void mla_merge_head(mla_decode_params const& p, int const b, int const h,
                                               Store const& store) {
  constexpr int cols = mla_merge_traits::columns_per_lane;
  __shared__ float weight[mla_max_splits];  // exp2(lse_i - max), 0 for an empty split
  __shared__ float scratch[mla_merge_traits::max_warps];
  __shared__ __align__(16) float sums[mla_merge_traits::max_warps - 1][mla_latent_dim];
  int const tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  int const warps = int(blockDim.x) / 32;
  int const splits = p.num_splits;
  float const* const lse = p.partial_lse + std::int64_t(b) * splits * p.heads + h;
  auto const part = [&](int i) {
    return p.partial_out + ((std::int64_t(b) * splits + i) * p.heads + h) * mla_latent_dim +
           lane * 4;
  };
  auto const load_part = [&](int i, float4(&v)[4]) {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = *reinterpret_cast<float4 const*>(part(i) + k * 128);
  };
  // The warp's first two splits are loaded with the log-sum-exps, before their weights are known:
  // the two round trips overlap instead of following each other (an empty split's values are
  // loaded and never used).
  float4 vi[4], vj[4];
  if (warp < splits) load_part(warp, vi);
  if (warp + warps < splits) load_part(warp + warps, vj);

  float m = -INFINITY;
  for (int i = tid; i < splits; i += int(blockDim.x)) {
    weight[i] = lse[std::int64_t(i) * p.heads];
    m = fmaxf(m, weight[i]);
  }
  m = mla_merge_block_reduce(m, scratch, [](float x, float y) { return fmaxf(x, y); });
  float acc[cols] = {};
  if (m == -INFINITY) {  // a row of length 0
    if (warp == 0) store(acc, 0.0f, -INFINITY);
    __syncthreads();
    return;
  }
  float total = 0.0f;
  for (int i = tid; i < splits; i += int(blockDim.x)) {
    weight[i] = exp2f(weight[i] - m);  // exp2(-inf) = 0
    total += weight[i];
  }
  total = mla_merge_block_reduce(total, scratch, [](float x, float y) { return x + y; });

  for (int i = warp; i < splits; i += 2 * warps) {
    int const j = i + warps;
    float const wi = weight[i], wj = j < splits ? weight[j] : 0.0f;  // uniform across the warp
    if (i != warp) {
      if (wi != 0.0f) load_part(i, vi);
      if (wj != 0.0f) load_part(j, vj);
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
  if (warp == 0) {
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
    store(acc, 1.0f / total, (m + log2f(total)) * mla_ln2);
  }
  __syncthreads();
}

// The merged row of head h as bf16: lane l's four columns lane * 4 + 128 k + [0, 4).
__device__ __forceinline__ uint2 mla_merge_bf16x4(
    float const (&acc)[mla_merge_traits::columns_per_lane], float const inv, int const k) {
  return make_uint2(pack_bf16x2(acc[4 * k] * inv, acc[4 * k + 1] * inv),
                    pack_bf16x2(acc[4 * k + 2] * inv, acc[4 * k + 3] * inv));
}

template <class Out>
__global__ void __launch_bounds__(32 * mla_merge_traits::max_warps)
    mla_merge_kernel(mla_decode_params const p) {
  pdl_enter();
  static_assert(std::is_same_v<Out, bf16>, "mla_decode writes bf16 outputs");
  int const lane = int(threadIdx.x) % 32;
  int const b = int(blockIdx.x) / p.heads, h = int(blockIdx.x) % p.heads;
  Out* const out = p.out + b * p.out_batch_stride + h * p.out_head_stride;
  mla_merge_head(
      p, b, h,
      [&](float const(&acc)[mla_merge_traits::columns_per_lane], float const inv, float const lse) {
#pragma unroll
        for (int k = 0; k < 4; ++k)
          *reinterpret_cast<uint2*>(out + k * 128 + lane * 4) = mla_merge_bf16x4(acc, inv, k);
        if (p.lse != nullptr && lane == 0) p.lse[std::int64_t(b) * p.heads + h] = lse;
      });
}

// The merge with W_UV folded in: one CTA per (batch row, head, tile of `cols` output columns)
// merges the head's latent row (as mla_merge_kernel, rounded to bf16, kept in shared memory) and
// multiplies it by the tile's W_UV rows: out_v[b, h, c] = bf16(sum_k latent[k] w_uv[h, c, k]), fp32
// sums. The tile's weights (cols rows of 512, 32 KB) are loaded into registers before the wait on
// the decode kernel, so their read overlaps it; each of a head's v_dim / cols CTAs merges the
// same row (the partials are read from L2 that many times), which costs less than a launch.
struct mla_merge_project_traits {
  static constexpr int warps = mla_merge_traits::max_warps;
  static constexpr int threads = 32 * warps;
  static constexpr int cols = mla_fold_w_uv_cols;  // output columns of a CTA
  static constexpr int warp_cols = cols / warps;   // 4: a lane holds 16 of each one's 512 weights
};

template <class Out>
__global__ void __launch_bounds__(mla_merge_project_traits::threads)
    mla_merge_project_kernel(mla_decode_params const p) {
  static_assert(std::is_same_v<Out, bf16>, "mla_decode writes bf16 outputs");
  using traits = mla_merge_project_traits;
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  int const tiles = p.v_dim / traits::cols;
  int const tile = int(blockIdx.x) % tiles, bh = int(blockIdx.x) / tiles;
  int const b = bh / p.heads, h = bh % p.heads;
  int const col0 = tile * traits::cols + warp * traits::warp_cols;
  // Lane l holds columns [8l, 8l + 8) and [256 + 8l, 256 + 8l + 8) of each of its rows.
  uint4 w[traits::warp_cols][2];
#pragma unroll
  for (int c = 0; c < traits::warp_cols; ++c) {
    bf16 const* const row =
        p.w_uv + h * p.w_uv_head_stride + std::int64_t(col0 + c) * p.w_uv_row_stride;
    w[c][0] = gemv_bf16_load_stream(row + 8 * lane);
    w[c][1] = gemv_bf16_load_stream(row + 256 + 8 * lane);
  }
  pdl_enter();
  __shared__ __align__(16) bf16 latent[mla_latent_dim];
  mla_merge_head(
      p, b, h, [&](float const(&acc)[mla_merge_traits::columns_per_lane], float const inv, float) {
#pragma unroll
        for (int k = 0; k < 4; ++k)
          *reinterpret_cast<uint2*>(latent + k * 128 + lane * 4) = mla_merge_bf16x4(acc, inv, k);
      });
  float x[2][8];
  gemv_bf16_unpack(*reinterpret_cast<uint4 const*>(latent + 8 * lane), x[0]);
  gemv_bf16_unpack(*reinterpret_cast<uint4 const*>(latent + 256 + 8 * lane), x[1]);
  float acc[traits::warp_cols][1] = {};
#pragma unroll
  for (int c = 0; c < traits::warp_cols; ++c) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float wf[8];
      gemv_bf16_unpack(w[c][half], wf);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[c][0] = fmaf(x[half][i], wf[i], acc[c][0]);
    }
  }
  // The warp's column c ends summed on lanes [c * lanes, (c + 1) * lanes) (gemv_bf16_warp_sums).
  float const sum = gemv_bf16_warp_sums(acc, lane);
  constexpr int lanes = 32 / traits::warp_cols;
  if (lane % lanes == 0)
    p.out_v[b * p.out_v_batch_stride + h * p.out_v_head_stride + col0 + lane / lanes] = bf16(sum);
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

template <class Out>
void launch_mla_merge_project(mla_decode_params const& p, CUstream_st* stream) {
  using traits = mla_merge_project_traits;
  // mla_decode_cuda checked the plan, the rows and v_dim before the decode launched.
  std::int64_t const ctas = std::int64_t(p.batch) * p.heads * (p.v_dim / traits::cols);
  if (ctas == 0) return;
  launch_pdl(mla_merge_project_kernel<Out>, dim3(unsigned(ctas)), dim3(traits::threads), 0, stream,
             p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
