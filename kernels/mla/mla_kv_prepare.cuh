// mla_kv_prepare: the CUDA kernel and its launcher. Only instantiations/mla_kv_prepare_p1.cu
// includes this file.
//
// One block per token (grid-stride beyond the grid): warp 0 normalises the 512-wide latent (16
// elements a lane, the sum of squares over the warp) and writes it into the token's slot; the
// other warps rope the token's rows (its q heads, then the key, which goes straight to the slot),
// a lane per (even, odd) pair, up to rows_in_flight rows loaded before the first is written.
// Launched overlapped with the previous kernel (programmatic dependent launch). With an absorb
// (mla_kv_prepare_args::w_uk), the grid's first CTAs compute q_nope . W_UK instead (below).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/gemm/gemv_bf16.cuh"
#include "kernels/mla/mla_kv_prepare.hpp"
#include "kernels/norm/norm_params.hpp"
#include "kernels/rope/rope_params.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

struct mla_kv_prepare_traits {
  static constexpr int threads = 256;  // warp 0: the latent; warps 1..7: the rope rows
  static constexpr int rope_warps = threads / 32 - 1;
  static constexpr int rows_in_flight = 4;  // rope rows a warp loads before it rotates them
  static constexpr int blocks_per_sm = 8;
  static constexpr int latent_per_lane = int(mla_latent_dim) / 32;  // 16: two 16-byte vectors
};
static_assert(mla_kv_prepare_traits::latent_per_lane == 16);

struct mla_bf16x8 {
  bf16 v[8];
};

__device__ __forceinline__ void unpack8(uint4 const v, float* out) {
  auto const b = __builtin_bit_cast(mla_bf16x8, v);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = float(b.v[i]);
}

// The absorb CTAs (the grid's first absorb_ctas): CTA (head h, tile of 128 latent columns) holds
// its 128 x 128 tile of W_UK[h] in registers, loaded before the wait on the previous kernel, and
// multiplies every row's q_nope[h] by it. Thread t owns columns 8 (t % 16) .. + 8 of the tile and
// the nope rows k = t / 16 + 16 i (i < 8); the 16 partial sums of a column meet in shared memory.
struct mla_absorb_traits {
  static constexpr int cols = 128;                          // latent columns of a CTA
  static constexpr int tiles = int(mla_latent_dim) / cols;  // CTAs per head
  static constexpr int col_vectors = cols / 8;              // 16-byte vectors across a tile row
  static constexpr int k_groups = mla_kv_prepare_traits::threads / col_vectors;  // 16
  static constexpr int k_per_thread = int(mla_nope_dim) / k_groups;              // 8
};
static_assert(mla_absorb_traits::k_groups * mla_absorb_traits::col_vectors ==
              mla_kv_prepare_traits::threads);

__device__ __forceinline__ void mla_absorb_tile(mla_absorb_params const& a, int const cta) {
  using traits = mla_absorb_traits;
  int const h = cta / traits::tiles, tile = cta % traits::tiles;
  int const t = int(threadIdx.x), cv = t % traits::col_vectors, kg = t / traits::col_vectors;
  int const n0 = tile * traits::cols + 8 * cv;
  uint4 w[traits::k_per_thread];
#pragma unroll
  for (int i = 0; i < traits::k_per_thread; ++i)
    w[i] = gemv_bf16_load_stream(a.w_uk + h * a.w_head_stride +
                                 std::int64_t(kg + traits::k_groups * i) * a.w_row_stride + n0);
  pdl_enter();
  __shared__ float q[mla_nope_dim];
  __shared__ __align__(16) float partial[traits::k_groups][traits::cols];
  for (int row = 0; row < a.rows; ++row) {
    if (t < int(mla_nope_dim) / 8) {
      float v[8];
      gemv_bf16_unpack(__ldg(reinterpret_cast<uint4 const*>(a.q_nope + row * a.q_row_stride +
                                                            h * a.q_head_stride) +
                             t),
                       v);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[8 * t + j] = v[j];
    }
    __syncthreads();
    float acc[8] = {};
#pragma unroll
    for (int i = 0; i < traits::k_per_thread; ++i) {
      float f[8];
      gemv_bf16_unpack(w[i], f);
      float const x = q[kg + traits::k_groups * i];
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = fmaf(x, f[j], acc[j]);
    }
    auto* const dst = reinterpret_cast<float4*>(&partial[kg][8 * cv]);
    dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    __syncthreads();
    if (t < traits::cols) {
      float sum = 0.0f;
#pragma unroll
      for (int g = 0; g < traits::k_groups; ++g) sum += partial[g][t];
      a.out[row * a.out_row_stride + h * a.out_head_stride + tile * traits::cols + t] = bf16(sum);
    }
    __syncthreads();  // q and partial are rewritten by the next row
  }
}

// Absorb: whether the grid starts with absorb CTAs (a kernel of its own, so that the absorb's
// registers do not cut the occupancy of the plain step, which a prefill runs over many tokens).
template <class Layout, bool Absorb>
__global__ void __launch_bounds__(mla_kv_prepare_traits::threads)
    mla_kv_prepare_kernel(mla_kv_prepare_params const p, int const absorb_ctas) {
  if constexpr (Absorb) {
    if (int(blockIdx.x) < absorb_ctas) {
      mla_absorb_tile(p.absorb, int(blockIdx.x));
      return;
    }
  }
  pdl_enter();
  using traits = mla_kv_prepare_traits;
  int const warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  kv_write_params const& w = p.write;
  rope_params const& r = p.rope;
  std::int64_t const first = std::int64_t(blockIdx.x) - absorb_ctas;
  std::int64_t const stride = std::int64_t(gridDim.x) - absorb_ctas;
  for (std::int64_t token = first; token < w.tokens; token += stride) {
    // The slot, as kv_write finds it: a token outside the table or the pool is not written.
    std::int64_t slot = -1;
    if (w.slots != nullptr) {
      slot = __ldg(w.slots + token);
    } else {
      std::int32_t const row = __ldg(w.req_rows + token), pos = __ldg(w.positions + token);
      if (row >= 0 && row < w.table.rows && pos >= 0 && Layout::table_column(pos) < w.table.columns)
        slot = w.table.template slot<Layout>(row, pos);
    }
    bool const write = slot >= 0 && slot < w.pool_slots;
    bf16* const dst = w.segment[0].dst + (write ? slot : 0) * w.segment[0].dst_stride;

    if (warp == 0) {
      // RMSNorm of the latent: lane l holds [8l, 8l + 8) and [256 + 8l, 256 + 8l + 8).
      bf16 const* x = p.latent + token * p.latent_stride;
      float v[traits::latent_per_lane], g[traits::latent_per_lane];
      unpack8(__ldg(reinterpret_cast<uint4 const*>(x + 8 * lane)), v);
      unpack8(__ldg(reinterpret_cast<uint4 const*>(x + 256 + 8 * lane)), v + 8);
      unpack8(__ldg(reinterpret_cast<uint4 const*>(p.norm_weight + 8 * lane)), g);
      unpack8(__ldg(reinterpret_cast<uint4 const*>(p.norm_weight + 256 + 8 * lane)), g + 8);
      float sum_sq = 0.0f;
#pragma unroll
      for (int i = 0; i < traits::latent_per_lane; ++i) sum_sq = fmaf(v[i], v[i], sum_sq);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2)
        sum_sq += __shfl_xor_sync(0xFFFF'FFFFu, sum_sq, offset);
      float const inv = rms_inverse(sum_sq, mla_latent_dim, p.eps);
      mla_bf16x8 a, b;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        a.v[i] = rmsnorm_value(v[i], inv, bf16(g[i]));
        b.v[i] = rmsnorm_value(v[8 + i], inv, bf16(g[8 + i]));
      }
      if (write) {
        *reinterpret_cast<uint4*>(dst + 8 * lane) = __builtin_bit_cast(uint4, a);
        *reinterpret_cast<uint4*>(dst + 256 + 8 * lane) = __builtin_bit_cast(uint4, b);
      }
      continue;
    }

    // Rope rows 0 .. q_heads - 1 (q, in place) and q_heads (the key, into the slot). Lane l
    // rotates the pair (2l, 2l + 1) into dims l and 32 + l (rope_params.hpp).
    std::int32_t const pos = __ldg(r.positions + token);
    bool const in_cache = 0 <= pos && pos < r.max_positions;
    float c = 0.0f, s = 0.0f;
    if (in_cache) {
      c = __ldg(r.cos_sin + std::int64_t(pos) * rope_dim + lane);
      s = __ldg(r.cos_sin + std::int64_t(pos) * rope_dim + rope_pairs + lane);
    }
    auto const rows = int(r.q_heads) + 1;
    for (int first = warp - 1; first < rows; first += traits::rope_warps * traits::rows_in_flight) {
      float even[traits::rows_in_flight], odd[traits::rows_in_flight];
#pragma unroll
      for (int i = 0; i < traits::rows_in_flight; ++i) {
        int const row = first + i * traits::rope_warps;
        if (row >= rows) break;
        bf16 const* src = row == r.q_heads ? r.k + token * r.k_token_stride
                                           : r.q + token * r.q_token_stride + row * r.q_head_stride;
        even[i] = float(src[2 * lane]);
        odd[i] = float(src[2 * lane + 1]);
      }
      __syncwarp();  // every lane has read its pair before any lane writes the row in place
#pragma unroll
      for (int i = 0; i < traits::rows_in_flight; ++i) {
        int const row = first + i * traits::rope_warps;
        if (row >= rows) break;
        bf16 re = bf16::from_bits(0x7FC0), im = re;  // NaN outside the cache, as apply_rope
        if (in_cache) {
          rope_pair_result const o = rope_rotate_pair(even[i], odd[i], c, s);
          re = bf16(o.re);
          im = bf16(o.im);
        }
        bf16* out = row == r.q_heads ? (write ? dst + mla_latent_dim : nullptr)
                                     : r.q + token * r.q_token_stride + row * r.q_head_stride;
        if (out != nullptr) {
          out[lane] = re;
          out[rope_pairs + lane] = im;
        }
      }
    }
  }
}

template <class Layout>
void launch_mla_kv_prepare(mla_kv_prepare_params const& p, int num_sms, CUstream_st* stream) {
  using traits = mla_kv_prepare_traits;
  if (p.write.tokens == 0) return;
  LC_CHECK(p.absorb.rows <= mla_fold_w_uk_max_rows,
           "mla_kv_prepare on CUDA absorbs W_UK for at most " << mla_fold_w_uk_max_rows
                                                              << " rows; got " << p.absorb.rows);
  int const absorb_ctas = p.absorb.rows > 0 ? p.absorb.heads * mla_absorb_traits::tiles : 0;
  auto const blocks = unsigned(
      std::clamp<std::int64_t>(p.write.tokens, 1, std::int64_t(num_sms) * traits::blocks_per_sm));
  auto const kernel =
      absorb_ctas > 0 ? mla_kv_prepare_kernel<Layout, true> : mla_kv_prepare_kernel<Layout, false>;
  launch_pdl(kernel, dim3(blocks + unsigned(absorb_ctas)), dim3(traits::threads), 0, stream, p,
             absorb_ctas);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
