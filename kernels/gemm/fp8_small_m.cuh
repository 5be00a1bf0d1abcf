// gemm, FP8 block-scaled at small M: the CUDA kernel and its launcher (see fp8_small_m_params.hpp
// for what it computes and why). Only the files in instantiations/ include this; the dispatch
// (fp8_small_m_cuda.cu) sees the declaration alone.
//
// Work: a CTA of 4 warps owns 64 weight rows (16 per warp: the MMA's A operand) and a range of
// 128-wide K blocks; gridDim.x CTAs split K and form one cluster, gridDim.y covers N. Per K block a
// warp multiplies its 16 rows by every staged token (TokenTiles n8 tiles) with 4 MMAs per tile,
// then adds the block's fp32 sums times w_scale * x_scale to its running totals. The weight goes
// global -> registers (16-byte non-caching loads, weight_stages blocks ahead), the tokens and their
// scales global -> shared memory through a cp.async ring.
//
// The K order inside a block is free (a dot product does not care), so each thread loads 16
// contiguous bytes of a weight row and hands them to the MMA as the 8 k-values that its fragment
// positions name; it reads the tokens' bytes at the same positions, so A and B stay paired:
// thread (group g, lane-in-group t) holds weight bytes [16t, 16t + 16) and [64 + 16t, 80 + 16t) of
// rows g and g + 8, and MMA j (0..3) of the block takes the words 2(j%2), 2(j%2)+1 of the first
// (j < 2) or second chunk: a0/a2 from row g, a1/a3 from row g + 8, b0/b1 the tokens' same words.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "kernels/common/pdl.cuh"
#include "kernels/gemm/fp8_small_m_params.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

template <int TokenTiles>
struct fp8_small_m_traits {
  static_assert(TokenTiles >= 1 && TokenTiles * 8 <= gemm_fp8_small_m_max_m,
                "fp8_small_m: 1..16 token tiles of 8");
  static constexpr int token_tiles = TokenTiles;
  static constexpr int m_pad = 8 * TokenTiles;  // tokens staged; those past M are zeros
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int row_tile = int(gemm_fp8_small_m_row_tile);
  static constexpr int rows = warps * row_tile;  // weight rows of a CTA
  static constexpr int block_k = int(gemm_fp8_block_size);
  static constexpr int vector_bytes = 16;
  // K blocks of weight a warp has in flight beyond the one it multiplies (16 registers each):
  // with few tokens the registers are free and the kernel is pure streaming, so more bytes in
  // flight (4 CTAs x 4 warps x 4 blocks x 2 KiB = 128 KiB per SM) hide HBM latency; with many
  // tokens the accumulators need the registers.
  static constexpr int weight_stages = TokenTiles <= 4 ? 4 : 2;
  static constexpr int x_stages = 4;                     // cp.async ring of token blocks
  static constexpr int x_codes_bytes = m_pad * block_k;  // [m_pad][128] fp8, swizzled
  static constexpr int x_stage_bytes = x_codes_bytes + m_pad * int(sizeof(float));  // + scales
  // The partial tile [m_pad][rows] f32 that the cluster sums; 4 floats of padding per token row
  // put the tokens 2t and 2t + 2 that a warp stores together 8 banks apart.
  static constexpr int red_ld = rows + 4;
  static constexpr int red_bytes = m_pad * red_ld * int(sizeof(float));
  static constexpr int smem_bytes = std::max(x_stages * x_stage_bytes, red_bytes);
  static constexpr int max_cluster = 16;  // K splits: H100 runs clusters of 16 (non-portable)
};

// 16 bytes of weight, read once: bypass L1 (nothing reuses it there).
__device__ __forceinline__ uint4 fp8_small_m_load_stream(void const* ptr) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros (tokens past M).
__device__ __forceinline__ void fp8_small_m_cp_async(void* smem_dst, void const* src,
                                                     int src_bytes) {
  auto const dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}

__device__ __forceinline__ void fp8_small_m_cp_commit() {
  asm volatile("cp.async.commit_group;" ::);
}

template <int Pending>
__device__ __forceinline__ void fp8_small_m_cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending));
}

// d += A[16 x 32] . B[32 x 8], e4m3 operands, fp32 accumulation.
__device__ __forceinline__ void fp8_small_m_mma(float (&d)[4], std::uint32_t a0, std::uint32_t a1,
                                                std::uint32_t a2, std::uint32_t a3,
                                                std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Byte offset of 16-byte chunk `chunk` (0..7) of token n's 128 staged bytes. A quarter-warp's
// 16-byte reads take tokens n and n + 1 at chunks t (or 4 + t): flipping chunk bit 2 on odd tokens
// puts the two tokens on disjoint banks.
__device__ __forceinline__ int fp8_small_m_x_offset(int n, int chunk) {
  return n * 128 + ((chunk ^ ((n & 1) << 2)) * 16);
}

template <int TokenTiles>
__global__ void __launch_bounds__(fp8_small_m_traits<TokenTiles>::threads)
    fp8_small_m_kernel(fp8_small_m_params const p) {
  pdl_enter();
  using traits = fp8_small_m_traits<TokenTiles>;
  constexpr int stages = traits::weight_stages, x_stages = traits::x_stages;
  extern __shared__ __align__(16) std::uint8_t smem[];

  int const warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  int const g = lane / 4, t = lane % 4;  // the MMA fragments' groupID and threadID_in_group
  int const splits = int(gridDim.x), split = int(blockIdx.x);
  std::int64_t const k_blocks = p.k / traits::block_k;
  // This CTA's K blocks [kb0, kb0 + blocks): the same count within one for every split.
  std::int64_t const kb0 = split * k_blocks / splits;
  int const blocks = int((split + 1) * k_blocks / splits - kb0);
  std::int64_t const row_tile = std::int64_t(blockIdx.y) * traits::warps + warp;
  bool const active = row_tile * traits::row_tile < p.n;  // warps past N only stage and sync

  std::uint8_t const* const w_lo = p.w + (row_tile * traits::row_tile + g) * p.ldw +
                                   kb0 * traits::block_k + t * traits::vector_bytes;
  std::uint8_t const* const w_hi = w_lo + 8 * p.ldw;
  float const* const w_scale =
      p.w_scales + (row_tile * traits::row_tile / gemm_fp8_block_size) * p.w_scales_ld + kb0;

  uint4 w_regs[stages][4];  // rows g, g + 8 at bytes 16t.. and 64 + 16t.. of a block
  float w_scale_regs[stages];
  auto load_weight = [&](int stage, int i) {
    std::int64_t const offset = std::int64_t(i) * traits::block_k;
    w_regs[stage][0] = fp8_small_m_load_stream(w_lo + offset);
    w_regs[stage][1] = fp8_small_m_load_stream(w_hi + offset);
    w_regs[stage][2] = fp8_small_m_load_stream(w_lo + offset + 64);
    w_regs[stage][3] = fp8_small_m_load_stream(w_hi + offset + 64);
    w_scale_regs[stage] = __ldg(w_scale + i);
  };
  // Tokens and their scales of block kb0 + i into ring slot i % x_stages.
  auto stage_x = [&](int i) {
    std::uint8_t* const slot = smem + (i % x_stages) * traits::x_stage_bytes;
    std::int64_t const col = (kb0 + i) * traits::block_k;
    for (int c = int(threadIdx.x); c < traits::m_pad * 8; c += traits::threads) {
      int const n = c / 8, chunk = c % 8;
      bool const real = n < p.m;
      void const* src = real ? p.x + n * p.ldx + col + chunk * traits::vector_bytes : p.x;
      fp8_small_m_cp_async(slot + fp8_small_m_x_offset(n, chunk), src, real ? 16 : 0);
    }
    auto* const scales = reinterpret_cast<float*>(slot + traits::x_codes_bytes);
    for (int c = int(threadIdx.x); c < traits::m_pad / 4; c += traits::threads) {
      int const n = 4 * c;  // M is a multiple of 4: four tokens are all real or all padding
      bool const real = n < p.m;
      void const* src = real ? p.x_scales + (kb0 + i) * p.m + n : p.x_scales;
      fp8_small_m_cp_async(scales + n, src, real ? 16 : 0);
    }
  };

  float total[TokenTiles][4] = {};  // (row g | g + 8) x (token 2t | 2t + 1) of each tile
  auto multiply = [&](int stage, int i) {
    std::uint8_t const* const slot = smem + (i % x_stages) * traits::x_stage_bytes;
    auto const* const scales = reinterpret_cast<float const*>(slot + traits::x_codes_bytes);
    uint4 const lo0 = w_regs[stage][0], hi0 = w_regs[stage][1];
    uint4 const lo1 = w_regs[stage][2], hi1 = w_regs[stage][3];
#pragma unroll
    for (int nt = 0; nt < TokenTiles; ++nt) {
      int const n = nt * 8 + g;
      uint4 const xa = *reinterpret_cast<uint4 const*>(slot + fp8_small_m_x_offset(n, t));
      uint4 const xb = *reinterpret_cast<uint4 const*>(slot + fp8_small_m_x_offset(n, 4 + t));
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      fp8_small_m_mma(acc, lo0.x, hi0.x, lo0.y, hi0.y, xa.x, xa.y);
      fp8_small_m_mma(acc, lo0.z, hi0.z, lo0.w, hi0.w, xa.z, xa.w);
      fp8_small_m_mma(acc, lo1.x, hi1.x, lo1.y, hi1.y, xb.x, xb.y);
      fp8_small_m_mma(acc, lo1.z, hi1.z, lo1.w, hi1.w, xb.z, xb.w);
      // DeepSeek's block scaling: the 128-wide block's fp32 sum times both scales.
      float2 const xs = *reinterpret_cast<float2 const*>(scales + nt * 8 + 2 * t);
      float const s0 = w_scale_regs[stage] * xs.x, s1 = w_scale_regs[stage] * xs.y;
      total[nt][0] = fmaf(acc[0], s0, total[nt][0]);
      total[nt][1] = fmaf(acc[1], s1, total[nt][1]);
      total[nt][2] = fmaf(acc[2], s0, total[nt][2]);
      total[nt][3] = fmaf(acc[3], s1, total[nt][3]);
    }
  };

#pragma unroll
  for (int i = 0; i < x_stages - 1; ++i) {
    if (i < blocks) stage_x(i);
    fp8_small_m_cp_commit();  // empty groups too: the wait below counts groups
  }
  if (active) {
#pragma unroll
    for (int s = 0; s < stages; ++s)
      if (s < blocks) load_weight(s, s);
  }
  // Register stages must be compile-time indices: the loop walks `stages` blocks per trip.
  for (int first = 0; first < blocks; first += stages) {
#pragma unroll
    for (int s = 0; s < stages; ++s) {
      int const i = first + s;
      if (i < blocks) {  // uniform over the CTA
        fp8_small_m_cp_wait<x_stages - 2>();
        __syncthreads();  // block i staged; slot (i - 1) % x_stages free again
        if (i + x_stages - 1 < blocks) stage_x(i + x_stages - 1);
        fp8_small_m_cp_commit();
        if (active) {
          multiply(s, i);
          if (i + stages < blocks) load_weight(s, i + stages);
        }
      }
    }
  }
  fp8_small_m_cp_wait<0>();
  __syncthreads();  // the ring is read no more: the partial tile takes its place

  auto* const red = reinterpret_cast<float*>(smem);
  if (active) {
    int const r = warp * traits::row_tile + g;
#pragma unroll
    for (int nt = 0; nt < TokenTiles; ++nt) {
      int const n = nt * 8 + 2 * t;
      red[n * traits::red_ld + r] = total[nt][0];
      red[(n + 1) * traits::red_ld + r] = total[nt][1];
      red[n * traits::red_ld + r + 8] = total[nt][2];
      red[(n + 1) * traits::red_ld + r + 8] = total[nt][3];
    }
  }
  namespace cg = cooperative_groups;
  cg::cluster_group const cluster = cg::this_cluster();
  cluster.sync();  // every split's partial tile written and visible to the cluster

  // The CTAs of the cluster share the output: 8 rows of one token per item, summed over the splits
  // in rank order (the same order on every run), rounded to bf16 once, stored as 16 bytes.
  constexpr int chunks = traits::rows / 8;
  std::int64_t const row_base = std::int64_t(blockIdx.y) * traits::rows;
  int const items = int(p.m) * chunks;
  for (int item = split * traits::threads + int(threadIdx.x); item < items;
       item += splits * traits::threads) {
    int const n = item / chunks, r = (item % chunks) * 8;
    if (row_base + r >= p.n) continue;  // N is a multiple of 16: 8 rows are all in or all out
    float sum[8] = {};
    for (int q = 0; q < splits; ++q) {
      float const* const src = cluster.map_shared_rank(red, q) + n * traits::red_ld + r;
      float4 const a = *reinterpret_cast<float4 const*>(src);
      float4 const b = *reinterpret_cast<float4 const*>(src + 4);
      sum[0] += a.x, sum[1] += a.y, sum[2] += a.z, sum[3] += a.w;
      sum[4] += b.x, sum[5] += b.y, sum[6] += b.z, sum[7] += b.w;
    }
    std::uint32_t packed[4];
#pragma unroll
    for (int e = 0; e < 4; ++e)
      packed[e] = std::uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(sum[2 * e]))) |
                  std::uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(sum[2 * e + 1]))) << 16;
    *reinterpret_cast<uint4*>(p.c + n * p.ldc + row_base + r) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

// What a device allows this instantiation, found once per device: resident CTAs per SM and the
// largest cluster (16 where the device runs it, else the portable 8).
struct fp8_small_m_device_limits {
  int ctas_per_sm = 0;
  int max_cluster = 0;
};

template <int TokenTiles>
fp8_small_m_device_limits fp8_small_m_limits(int ordinal) {
  using traits = fp8_small_m_traits<TokenTiles>;
  constexpr int max_devices = 64;
  static std::array<std::atomic<int>, max_devices> ctas{}, clusters{};
  LC_CHECK(0 <= ordinal && ordinal < max_devices, "gemm_fp8_small_m: CUDA device ordinal "
                                                      << ordinal << " is out of range; allowed 0.."
                                                      << max_devices - 1);
  auto const slot = std::size_t(ordinal);
  fp8_small_m_device_limits limits{ctas[slot].load(std::memory_order_acquire),
                                   clusters[slot].load(std::memory_order_acquire)};
  if (limits.ctas_per_sm > 0 && limits.max_cluster > 0) return limits;
  // Two threads may both get here; they compute and store the same values.
  auto const kernel = fp8_small_m_kernel<TokenTiles>;
  LC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     traits::smem_bytes));
  LC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&limits.ctas_per_sm, kernel,
                                                              traits::threads, traits::smem_bytes));
  LC_CHECK(limits.ctas_per_sm > 0, "gemm_fp8_small_m: the kernel for "
                                       << traits::m_pad << " tokens cannot run on device "
                                       << ordinal << " (" << traits::smem_bytes
                                       << " bytes of shared memory per CTA)");
  limits.max_cluster = 8;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(traits::max_cluster, 1, 1);
  cfg.blockDim = dim3(traits::threads, 1, 1);
  cfg.dynamicSmemBytes = traits::smem_bytes;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = traits::max_cluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int active_clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&active_clusters, kernel, &cfg) == cudaSuccess &&
      active_clusters > 0)
    limits.max_cluster = traits::max_cluster;
  (void)cudaGetLastError();  // a refused query is an answer, not an error to report later
  ctas[slot].store(limits.ctas_per_sm, std::memory_order_release);
  clusters[slot].store(limits.max_cluster, std::memory_order_release);
  return limits;
}

// How many CTAs split K: enough that one wave fills every SM's resident slots when N alone
// cannot, at most a cluster and at most one K block each. A function of the shape and the device
// only, so a captured graph replays the geometry it was captured with.
inline int fp8_small_m_splits(std::int64_t row_groups, std::int64_t k_blocks, int num_sms,
                              fp8_small_m_device_limits const& limits) {
  std::int64_t const slots = std::int64_t(num_sms) * limits.ctas_per_sm;
  std::int64_t splits = row_groups < slots ? slots / row_groups : 1;
  splits = std::min({splits, k_blocks, std::int64_t(limits.max_cluster)});
  return int(std::max<std::int64_t>(splits, 1));
}

template <int TokenTiles>
void launch_gemm_fp8_small_m(fp8_small_m_params const& p, int ordinal, int num_sms,
                             CUstream_st* stream) {
  using traits = fp8_small_m_traits<TokenTiles>;
  LC_CHECK(p.m > 0 && p.m <= traits::m_pad && p.m % gemm_fp8_m_multiple == 0,
           "gemm_fp8_small_m: the kernel for up to " << traits::m_pad << " tokens got M = " << p.m);
  fp8_small_m_device_limits const limits = fp8_small_m_limits<TokenTiles>(ordinal);
  std::int64_t const row_groups = (p.n + traits::rows - 1) / traits::rows;
  std::int64_t const k_blocks = p.k / traits::block_k;
  LC_CHECK(row_groups <= 65535 && k_blocks < (std::int64_t(1) << 31),
           "gemm_fp8_small_m takes N <= " << 65535 * traits::rows << " and K/128 < 2^31; got N = "
                                          << p.n << ", K = " << p.k);
  int const splits = fp8_small_m_splits(row_groups, k_blocks, num_sms, limits);
  launch_pdl_cluster(fp8_small_m_kernel<TokenTiles>,
                     dim3(unsigned(splits), unsigned(row_groups), 1), dim3(traits::threads, 1, 1),
                     traits::smem_bytes, stream, dim3(unsigned(splits), 1, 1), p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
