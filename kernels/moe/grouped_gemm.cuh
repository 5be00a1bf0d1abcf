// moe experts: the grouped GEMM kernel and its launcher. Only the files in instantiations/ include
// this; the dispatch (moe_experts_cuda.cu) sees the declarations in moe_experts.hpp alone.
//
// Grid: x over the aligned row blocks (the capacity for the token count: fixed geometry), y over
// the output column tiles. A CTA reads expert_of_block[x] and exits at once when it is -1 (past
// the last used block), so experts without rows cost one load.
//
// CTA tile: block_m rows x 128 weight rows, K in stages of 128 bytes (64 bf16 or 128 fp8 values:
// one FP8 scale block), a 4-stage cp.async ring. GEMM 1 (gate_up) takes 64 gate rows and the 64
// up rows of the same columns, so that every thread holds gate(i, j) and up(i, j) in its own
// accumulators and applies SiLU-and-mul in the epilogue. Warps: (block_m / 64) x 4, each 64 rows
// x 32 weight rows: 4 x 4 MMA tiles of m16 x n8 (gate_up: 16 gate + the same 16 up rows).
//
// Decode: a row block holds an expert's few routed rows and padding. The warps split the weight
// rows, not the block's rows, and an m16 tile without a routed row is neither loaded nor
// multiplied (its A rows are never read): with 1-16 rows per block a warp issues 16 MMAs per
// stage instead of 64, spread over all four warps. At decode that issue rate, not HBM, bounded
// the FP8 kernel (an e4m3 m16n8k32 MMA covers the same bytes as a bf16 m16n8k16 one).
//
// Decode variant (Decode = true, block_m 64, for batches of at most 16 routed rows, so that an
// expert's rows all sit in the first m16 tile of its block): the stages hold only those 16
// activation rows (2 KiB instead of 8), which leaves room for a deeper weight ring (6 stages, 5
// in flight; FP8 5) at the same two CTAs per SM. At batch 1 a small model has ~1.3 CTAs per SM,
// each streaming with its ring's bytes in flight: the ring depth, not HBM, set the rate.
//
// Both element types are handled in bytes: an m16n8k16 bf16 MMA and an m16n8k32 e4m3 MMA read the
// same 16 x 32-byte A and 8 x 32-byte B fragments (thread (g, t) holds bytes 4t..4t+3 of rows g
// and g + 8 in the low and high 16 bytes), so one ldmatrix path feeds both. Shared tiles are rows
// of 128 bytes whose 16-byte chunks are XOR-swizzled by the row (mod 8): the 8 rows an ldmatrix
// phase reads land on 8 distinct bank groups.
//
// FP8: each K stage's products are summed in fp32 on their own, then added to the totals times
// the row's activation scale and the weight block's scale (both staged with the tile, so that no
// global load sits between the MMAs and the totals), as gemm_fp8_block does.
//
// FP8 gate_up quantises its output in the epilogue, as quantize_per_token_group would (the same
// bf16 values, amax, scale and rounding: the codes are identical): a quantisation group is 128
// intermediate columns, two CTAs' tiles, so the two CTAs (column tiles 2j and 2j + 1) form a
// cluster and read each other's row amax from distributed shared memory. That saves a launch,
// the bf16 intermediate's round trip through HBM and the quantisation of every padding row.
// Padding rows get nothing: GEMM 2 zero-fills the A rows (and scales) of padding.
#pragma once

#include <cooperative_groups.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/activation/activation_params.hpp"
#include "kernels/common/pdl.cuh"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "kernels/quant/quant_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <moe_gemm_stage Stage, bool Fp8, int BlockM, bool Decode = false>
struct moe_gemm_traits {
  static_assert(BlockM == 64 || BlockM == 128, "moe grouped GEMM: block_m 64 or 128");
  static_assert(!Decode || BlockM == 64, "moe grouped GEMM: the decode variant has block_m 64");
  static constexpr int block_m = BlockM;
  static constexpr int warps_m = BlockM / 64;
  static constexpr int warps_n = 4;
  static constexpr int threads = warps_m * warps_n * 32;
  static constexpr int m_tiles = 4;                // m16 tiles per warp (64 rows)
  static constexpr int n_tiles = 4;                // n8 tiles per warp (32 weight rows)
  static constexpr int block_tiles = BlockM / 16;  // m16 tiles per block
  static constexpr int tile_w = 128;               // weight rows per CTA
  static constexpr int out_n =
      Stage == moe_gemm_stage::gate_up ? int(moe_gemm_gate_up_tile_n) : int(moe_gemm_down_tile_n);
  static constexpr int k_bytes = int(moe_gemm_k_tile_bytes);
  static constexpr int elem_bytes = Fp8 ? 1 : 2;
  static constexpr int chunks = k_bytes / 16;  // 16-byte chunks per tile row
  static constexpr int stages = Decode ? (Fp8 ? 5 : 6) : 4;
  static constexpr int a_rows = Decode ? 16 : BlockM;  // activation rows staged per block
  static constexpr int a_bytes = a_rows * k_bytes;
  static constexpr int b_bytes = tile_w * k_bytes;
  // FP8: the rows' activation scales, then the stage's two weight-block scales (gate and up rows;
  // the same block twice for down), padded so that every stage starts 128-byte aligned.
  static constexpr int scale_bytes = Fp8 ? BlockM * 4 + 128 : 0;
  static constexpr int stage_bytes = a_bytes + b_bytes + scale_bytes;
  static constexpr int smem_bytes = stages * stage_bytes;
  // Each thread copies the chunks of one A row (threads = 2 x block_m: warp w copies the rows of
  // m16 tile w; decode: one chunk of the 16 rows each) and a share of B's; threads block_m and
  // block_m + 1 copy the weight scales.
  static_assert(threads == 2 * BlockM && chunks == 8 && warps_m * 64 == BlockM);
  static_assert(stage_bytes % 128 == 0);
  static_assert(!Decode || a_rows * chunks == threads);
  static constexpr int a_chunks_per_thread = Decode ? 1 : chunks / 2;
  static constexpr int b_chunks_per_thread = tile_w * chunks / threads;
  static constexpr int b_row_step = threads / chunks;
  static_assert(64 % b_row_step == 0);  // a thread's B rows: all gate or all up per chunk
};

__device__ __forceinline__ std::uint32_t moe_smem_addr(void const* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 (or 4) bytes global -> shared, asynchronously; src_bytes 0 writes zeros.
__device__ __forceinline__ void moe_cp_async16(void* dst, void const* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(moe_smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void moe_cp_async4(void* dst, void const* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(moe_smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void moe_cp_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int Pending>
__device__ __forceinline__ void moe_cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending));
}

__device__ __forceinline__ void moe_ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += A[16 x 32 bytes] . B[32 bytes x 8]: bf16 m16n8k16 or e4m3 m16n8k32, fp32 accumulation.
template <bool Fp8>
__device__ __forceinline__ void moe_mma(float (&d)[4], std::uint32_t const (&a)[4],
                                        std::uint32_t b0, std::uint32_t b1) {
  if constexpr (Fp8) {
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// The wgmma kernels' weight tile of 256 rows as four 64-row tensor-copy boxes: the first row of
// each in the stacked [E x w_rows, K] weight map. gate_up: gate rows n0.. then the up rows
// I + n0.. of the same columns, for the tile's two 64-column halves; down: 4 consecutive boxes.
template <bool GateUp>
__device__ __forceinline__ void moe_wgmma_box_rows(int (&box_row)[4], int tile, int out_n,
                                                   std::int64_t n, int expert,
                                                   std::int64_t w_rows) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    std::int64_t r;
    if constexpr (GateUp) {
      std::int64_t const n0 = std::int64_t(tile) * out_n + 64 * (q / 2);
      r = q % 2 == 0 ? n0 : n + n0;
    } else {
      r = std::int64_t(tile) * out_n + 64 * q;
    }
    box_row[q] = int(std::int64_t(expert) * w_rows + r);
  }
}

// Byte offset of 16-byte chunk `chunk` of tile row `row` (128-byte rows, swizzled).
__device__ __forceinline__ int moe_tile_offset(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

__device__ __forceinline__ std::uint32_t moe_pack_bf16(bf16 lo, bf16 hi) {
  return std::uint32_t(lo.bits) | (std::uint32_t(hi.bits) << 16);
}

template <moe_gemm_stage Stage, bool Fp8, int BlockM, bool Decode>
__global__ void __launch_bounds__(moe_gemm_traits<Stage, Fp8, BlockM, Decode>::threads)
    moe_grouped_gemm_kernel(moe_grouped_gemm_params const p) {
  pdl_enter();
  using traits = moe_gemm_traits<Stage, Fp8, BlockM, Decode>;
  constexpr bool gate_up = Stage == moe_gemm_stage::gate_up;
  constexpr int stages = traits::stages;
  extern __shared__ __align__(128) std::uint8_t smem[];

  int const block = int(blockIdx.x);
  int const expert = __ldg(p.expert_of_block + block);
  if (expert < 0) return;  // past the last used block: the only cost of an empty slot

  int const tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  int const warp_m = warp / traits::warps_n, warp_n = warp % traits::warps_n;
  int const g = lane / 4, t = lane % 4;
  std::int64_t const row0 = std::int64_t(block) * BlockM;
  std::int64_t const n0 = std::int64_t(blockIdx.y) * traits::out_n;
  std::int64_t const w_rows = gate_up ? 2 * p.n : p.n;
  std::int64_t const k_row_bytes = p.k * traits::elem_bytes;
  int const k_tiles = int(k_row_bytes / traits::k_bytes);

  // This thread's A row: its source row (or none: padding, zero-filled) and its 4 chunks (decode:
  // one chunk of one of the 16 rows).
  int const a_row = Decode ? tid / traits::chunks : tid / 2;
  int const a_chunk0 = Decode ? tid % traits::chunks : (tid % 2) * traits::a_chunks_per_thread;
  std::int32_t const a_id = __ldg(p.sorted_ids + row0 + a_row);
  bool const a_valid = a_id < p.rows;
  // Warp w's threads copy the rows of m16 tile w: a tile without a routed row is left alone.
  // Decode: every thread copies (padding rows zero-filled), and only tile 0 is computed.
  bool const a_live = Decode || __any_sync(0xFFFF'FFFFu, a_valid);
  // The m16 tiles of this warp's rows that hold a routed row (bit mt): warp-uniform.
  __shared__ unsigned tile_bits;
  if (tid == 0) tile_bits = 0;
  __syncthreads();
  if (lane == 0 && a_live) atomicOr(&tile_bits, 1u << warp);
  __syncthreads();
  unsigned const live = Decode ? 1u : (tile_bits >> (warp_m * traits::m_tiles)) & 0xFu;
  std::int64_t const a_src_row = gate_up ? a_id / p.top_k : row0 + a_row;
  auto const* const a_bytes = static_cast<std::uint8_t const*>(p.a);
  std::uint8_t const* const a_src =
      a_valid ? a_bytes + a_src_row * p.lda * traits::elem_bytes : a_bytes;
  // FP8: threads tid < block_m stage the activation scale of row tid (not of their A row).
  std::int32_t const s_id = Fp8 && tid < BlockM ? __ldg(p.sorted_ids + row0 + tid) : p.rows;
  bool const s_valid = s_id < p.rows;
  std::int64_t const s_src_row = gate_up ? s_id / p.top_k : row0 + tid;
  float const* const xs_src = s_valid ? p.a_scales + s_src_row * p.a_scales_ld : p.a_scales;

  // Weight row of tile row r: GEMM 1 puts gate rows n0.. in 0..63 and up rows I + n0.. in 64..127.
  auto const* const w_expert =
      static_cast<std::uint8_t const*>(p.w) + std::int64_t(expert) * w_rows * k_row_bytes;
  auto const w_row_of = [&](int r) -> std::int64_t {
    if constexpr (gate_up) return r < 64 ? n0 + r : p.n + n0 + (r - 64);
    return n0 + r;
  };
  // FP8: threads block_m (gate rows, or the whole tile) and block_m + 1 (up rows) stage the
  // weight block's scale of each K stage.
  [[maybe_unused]] float const* ws_src = nullptr;
  if constexpr (Fp8) {
    if (tid == BlockM || tid == BlockM + 1)
      ws_src = p.w_scales + std::int64_t(expert) * ((w_rows + 127) / 128) * p.w_scales_ld +
               (w_row_of(tid == BlockM ? 0 : 64) / 128) * p.w_scales_ld;
  }

  // This thread's B chunks: chunk b_chunk of tile rows b_row0 + i * b_row_step.
  int const b_row0 = tid / traits::chunks, b_chunk = tid % traits::chunks;
  std::uint8_t const* const b_src = w_expert + w_row_of(b_row0) * k_row_bytes + b_chunk * 16;
  std::int64_t const b_step_bytes = traits::b_row_step * k_row_bytes;
  std::int64_t const b_up_bytes = (p.n - 64) * k_row_bytes;

  auto load_stage = [&](int slot, int kt) {
    std::uint8_t* const as = smem + slot * traits::stage_bytes;
    std::uint8_t* const bs = as + traits::a_bytes;
    std::int64_t const kb = std::int64_t(kt) * traits::k_bytes;
    if (a_live) {
#pragma unroll
      for (int c = 0; c < traits::a_chunks_per_thread; ++c) {
        int const chunk = a_chunk0 + c;
        moe_cp_async16(as + moe_tile_offset(a_row, chunk),
                       a_valid ? a_src + kb + chunk * 16 : a_src, a_valid ? 16 : 0);
      }
    }
#pragma unroll
    for (int i = 0; i < traits::b_chunks_per_thread; ++i) {
      int const r = b_row0 + i * traits::b_row_step;
      // gate_up: tile rows from 64 on are up rows, I - 64 weight rows further.
      std::uint8_t const* const src = b_src + kb + i * b_step_bytes +
                                      (gate_up && i * traits::b_row_step >= 64 ? b_up_bytes : 0);
      moe_cp_async16(bs + moe_tile_offset(r, b_chunk), src, 16);
    }
    if constexpr (Fp8) {
      auto* const xs = reinterpret_cast<float*>(bs + traits::b_bytes);
      if (tid < BlockM)
        moe_cp_async4(xs + tid, s_valid ? xs_src + kt : p.a_scales, s_valid ? 4 : 0);
      else if (tid < BlockM + 2)
        moe_cp_async4(xs + tid, ws_src + kt, 4);  // xs[block_m], xs[block_m + 1]
    }
  };

  float total[traits::m_tiles][traits::n_tiles][4] = {};

  auto compute = [&](int slot) {
    std::uint8_t const* const as = smem + slot * traits::stage_bytes;
    std::uint8_t const* const bs = as + traits::a_bytes;
    float part[traits::m_tiles][traits::n_tiles][4];
    float(&acc)[traits::m_tiles][traits::n_tiles][4] = Fp8 ? part : total;
    if constexpr (Fp8) {
#pragma unroll
      for (int mt = 0; mt < traits::m_tiles; ++mt) {
        if (!(live & (1u << mt))) continue;
#pragma unroll
        for (int nt = 0; nt < traits::n_tiles; ++nt)
#pragma unroll
          for (int c = 0; c < 4; ++c) part[mt][nt][c] = 0.0f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < traits::chunks / 2; ++ks) {
      // B: two 16-row pairs of n8 tiles. gate_up: gate rows 16 w.. and up rows 64 + 16 w..;
      // down: weight rows 32 w.. and 32 w + 16...
      std::uint32_t b[2][4];
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        int const base = gate_up ? 64 * pair + 16 * warp_n : 32 * warp_n + 16 * pair;
        int const r = base + ((lane >> 4) << 3) + (lane & 7);
        moe_ldmatrix_x4(b[pair],
                        moe_smem_addr(bs + moe_tile_offset(r, ks * 2 + ((lane >> 3) & 1))));
      }
#pragma unroll
      for (int mt = 0; mt < traits::m_tiles; ++mt) {
        if (!(live & (1u << mt))) continue;  // warp-uniform
        std::uint32_t a[4];
        int const r = warp_m * 64 + mt * 16 + (lane & 15);
        moe_ldmatrix_x4(a, moe_smem_addr(as + moe_tile_offset(r, ks * 2 + (lane >> 4))));
#pragma unroll
        for (int pair = 0; pair < 2; ++pair) {
          moe_mma<Fp8>(acc[mt][2 * pair], a, b[pair][0], b[pair][1]);
          moe_mma<Fp8>(acc[mt][2 * pair + 1], a, b[pair][2], b[pair][3]);
        }
      }
    }
    if constexpr (Fp8) {
      auto const* const xs = reinterpret_cast<float const*>(bs + traits::b_bytes);
      // The weight block of the gate rows and of the up rows (GEMM 1), or of the tile (GEMM 2).
      float const ws_lo = xs[BlockM];
      float const ws_hi = gate_up ? xs[BlockM + 1] : ws_lo;
#pragma unroll
      for (int mt = 0; mt < traits::m_tiles; ++mt) {
        if (!(live & (1u << mt))) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float const x_scale = xs[warp_m * 64 + mt * 16 + g + 8 * half];
#pragma unroll
          for (int nt = 0; nt < traits::n_tiles; ++nt) {
            float const s = x_scale * (gate_up && nt >= 2 ? ws_hi : ws_lo);
            total[mt][nt][2 * half] = fmaf(part[mt][nt][2 * half], s, total[mt][nt][2 * half]);
            total[mt][nt][2 * half + 1] =
                fmaf(part[mt][nt][2 * half + 1], s, total[mt][nt][2 * half + 1]);
          }
        }
      }
    }
  };

#pragma unroll
  for (int s = 0; s < stages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    moe_cp_commit();  // empty groups too: the wait below counts groups
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    moe_cp_wait<stages - 2>();
    __syncthreads();  // stage kt landed; slot (kt - 1) % stages is read by no one any more
    int const next = kt + stages - 1;
    if (next < k_tiles) load_stage(next % stages, next);
    moe_cp_commit();
    compute(kt % stages);
  }
  moe_cp_wait<0>();

  // Epilogue: thread (g, t) holds rows g and g + 8 of each m16 tile, columns 2t and 2t + 1 of each
  // n8 tile. Tiles without a routed row hold zeros.
  if constexpr (gate_up && Fp8) {
    // a = silu(bf16(gate)) * bf16(up) as below, then its codes and per-128-column scales.
    namespace cg = cooperative_groups;
    cg::cluster_group const cluster = cg::this_cluster();
    __syncthreads();  // every warp is past its last ldmatrix: the ring is free
    // Row amax of each warp's 16 columns: [warps_n][BlockM].
    auto* const red = reinterpret_cast<float*>(smem);
    std::uint32_t packed[traits::m_tiles][2][2];
#pragma unroll
    for (int mt = 0; mt < traits::m_tiles; ++mt) {
      if (!(live & (1u << mt))) continue;  // warp-uniform: the shuffles see every lane
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float amax = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          bf16 const a0 =
              silu_and_mul_value(bf16(total[mt][nt][2 * half]), bf16(total[mt][nt + 2][2 * half]));
          bf16 const a1 = silu_and_mul_value(bf16(total[mt][nt][2 * half + 1]),
                                             bf16(total[mt][nt + 2][2 * half + 1]));
          packed[mt][half][nt] = moe_pack_bf16(a0, a1);
          amax = quant_amax(quant_amax(amax, float(a0)), float(a1));
        }
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFF'FFFFu, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFF'FFFFu, amax, 2));
        if (t == 0) red[warp_n * BlockM + warp_m * 64 + mt * 16 + g + 8 * half] = amax;
      }
    }
    cluster.sync();  // both CTAs' row amax written
    float const* const peer = cluster.map_shared_rank(red, int(cluster.block_rank()) ^ 1);
    auto* const codes = static_cast<std::uint8_t*>(p.out);
    bool const writes_scale = cluster.block_rank() == 0 && warp_n == 0 && t == 0;
#pragma unroll
    for (int mt = 0; mt < traits::m_tiles; ++mt) {
      if (!(live & (1u << mt))) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        int const r = warp_m * 64 + mt * 16 + g + 8 * half;
        std::int64_t const pos = row0 + r;
        if (__ldg(p.sorted_ids + pos) >= p.rows) continue;  // padding
        float amax = 0.0f;
#pragma unroll
        for (int w = 0; w < traits::warps_n; ++w)
          amax = fmaxf(amax, fmaxf(red[w * BlockM + r], peer[w * BlockM + r]));
        float const scale = quant_group_scale(amax);
        float const inverse = quant_inverse_scale(scale);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          std::uint32_t const v = packed[mt][half][nt];
          float const x0 = float(bf16::from_bits(std::uint16_t(v & 0xFFFFu)));
          float const x1 = float(bf16::from_bits(std::uint16_t(v >> 16)));
          // .x in the low byte: column 2t, then 2t + 1.
          __nv_fp8x2_storage_t const pair = __nv_cvt_float2_to_fp8x2(
              make_float2(x0 * inverse, x1 * inverse), __NV_SATFINITE, __NV_E4M3);
          std::int64_t const col = n0 + 16 * warp_n + 8 * nt + 2 * t;
          *reinterpret_cast<std::uint16_t*>(codes + pos * p.ldo + col) = pair;
        }
        if (writes_scale) p.out_scales[pos * p.out_scales_ld + n0 / quant_group_size] = scale;
      }
    }
    cluster.sync();  // the peer has read this CTA's row amax: its shared memory may go
    return;
  }
  auto* const out = static_cast<std::uint16_t*>(p.out);
#pragma unroll
  for (int mt = 0; mt < traits::m_tiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      int const r = warp_m * 64 + mt * 16 + g + 8 * half;
      std::int64_t const pos = row0 + r;
      std::int32_t const id = __ldg(p.sorted_ids + pos);
      bool const valid = id < p.rows;
      if constexpr (gate_up) {
        // a = silu(bf16(gate)) * bf16(up), as the dense MLP rounds; padding rows get zeros.
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          std::int64_t const col = n0 + 16 * warp_n + 8 * nt + 2 * t;
          std::uint32_t v = 0;
          if (valid) {
            bf16 const a0 = silu_and_mul_value(bf16(total[mt][nt][2 * half]),
                                               bf16(total[mt][nt + 2][2 * half]));
            bf16 const a1 = silu_and_mul_value(bf16(total[mt][nt][2 * half + 1]),
                                               bf16(total[mt][nt + 2][2 * half + 1]));
            v = moe_pack_bf16(a0, a1);
          }
          *reinterpret_cast<std::uint32_t*>(out + pos * p.ldo + col) = v;
        }
      } else {
        if (!valid) continue;  // padding produces nothing
        float const weight = __ldg(p.topk_weights + id);
#pragma unroll
        for (int nt = 0; nt < traits::n_tiles; ++nt) {
          std::int64_t const col = n0 + 32 * warp_n + 8 * nt + 2 * t;
          std::uint32_t const v = moe_pack_bf16(bf16(total[mt][nt][2 * half] * weight),
                                                bf16(total[mt][nt][2 * half + 1] * weight));
          *reinterpret_cast<std::uint32_t*>(out + std::int64_t(id) * p.ldo + col) = v;
        }
      }
    }
  }
}

template <moe_gemm_stage Stage, bool Fp8, int BlockM, bool Decode>
void launch_moe_grouped_gemm(moe_grouped_gemm_params const& p, CUstream_st* stream) {
  using traits = moe_gemm_traits<Stage, Fp8, BlockM, Decode>;
  LC_CHECK(!Decode || p.rows <= traits::a_rows,
           "moe grouped GEMM: the decode variant takes at most " << traits::a_rows
                                                                 << " routed rows; got " << p.rows);
  // FP8 gate_up: the two column tiles of a quantisation group form a cluster.
  constexpr bool quantised_out = Fp8 && Stage == moe_gemm_stage::gate_up;
  constexpr int cluster_y = quantised_out ? int(quant_group_size) / traits::out_n : 1;
  LC_CHECK(p.n % (traits::out_n * cluster_y) == 0 &&
               (p.k * traits::elem_bytes) % traits::k_bytes == 0 && p.n / traits::out_n <= 65535 &&
               p.blocks < (std::int64_t(1) << 31),
           "moe grouped GEMM: N " << p.n << " must be a multiple of " << traits::out_n * cluster_y
                                  << " (at most 65535 tiles) and K " << p.k << " of "
                                  << traits::k_bytes / traits::elem_bytes);
  LC_CHECK(!quantised_out || (p.out_scales != nullptr && p.out_scales_ld >= p.n / 128),
           "moe grouped GEMM: FP8 gate_up writes the intermediate's codes and needs out_scales "
           "with a row stride of at least N / 128");
  if (p.blocks == 0) return;
  auto const kernel = moe_grouped_gemm_kernel<Stage, Fp8, BlockM, Decode>;
  // A host-side attribute, not a stream operation: allowed while a graph is being captured.
  LC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     traits::smem_bytes));
  dim3 const grid(unsigned(p.blocks), unsigned(p.n / traits::out_n), 1);
  if constexpr (cluster_y > 1) {
    static_assert(traits::warps_n * BlockM * 4 <= traits::smem_bytes);  // the amax exchange
    launch_pdl_cluster(kernel, grid, dim3(traits::threads), traits::smem_bytes, stream,
                       dim3(1, unsigned(cluster_y), 1), p);
  } else {
    launch_pdl(kernel, grid, dim3(traits::threads), traits::smem_bytes, stream, p);
  }
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
