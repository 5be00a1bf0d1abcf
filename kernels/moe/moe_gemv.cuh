// moe experts at decode: the weight-streaming kernels for bf16 batches of at most 4 tokens, and
// their launcher. Only the files in instantiations/ include this; the dispatch
// (moe_experts_cuda.cu) sees the declarations in moe_experts.hpp alone.
//
// A token picks an expert at most once, so at T <= 4 tokens an expert holds at most 4 routed rows,
// all at the start of its aligned block. Then the grouped GEMM's tiles multiply mostly padding
// and its 128-byte-wide weight stages (128 rows, 4 KiB apart) stream at ~0.7 of the copy ceiling
// (docs/perf/2026-11-25-h100-decode-fusions.md). Here a warp owns 4 weight rows of one block's
// expert and reads each row as 512 contiguous bytes per trip (lane l takes the 16-byte chunks
// l, l + 32, ..), 16 loads in flight per lane (8 when 4 rows are read per block), the way
// gemv_bf16's n_by_k kernel streams a dense weight; the block's rows come through L1 (a few KiB,
// read by every warp of an SM).
//   gate_up: warp = 2 intermediate columns (gate rows j, j + 1 and up rows I + j, I + j + 1);
//            a = silu(bf16(gate)) * bf16(up) by sorted position, as the grouped GEMM rounds.
//   down:    warp = 4 hidden columns; y = bf16(weight * sum) by routed row.
// Grid: (N / columns per CTA, row blocks of the capacity), fixed by the token count; a CTA whose
// block is past the last used one exits after one load. The folded shared experts' rows are
// prefetched into L2 before the wait on the kernels before (see the kernel). Padding rows are
// neither read nor written (the down kernel reads only the routed rows of the intermediate).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/activation/activation_params.hpp"
#include "kernels/common/pdl.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/gemm/gemv_bf16.cuh"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

template <moe_gemm_stage Stage, int MPad>
struct moe_gemv_traits {
  static_assert(MPad == 1 || MPad == 4, "moe gemv: 1 or 4 rows per block");
  static constexpr bool gate_up = Stage == moe_gemm_stage::gate_up;
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int rows = 4;                    // weight rows per warp
  static constexpr int cols = gate_up ? 2 : 4;      // output columns per warp
  static constexpr int cta_cols = warps * cols;     // output columns per CTA
  static constexpr int unroll = MPad == 1 ? 4 : 2;  // trips whose loads are issued together
  static constexpr int values = rows * MPad;        // sums per warp, reduced over its lanes
  static constexpr int lanes_per_value = 32 / values;
};

template <moe_gemm_stage Stage, int MPad>
__global__ void __launch_bounds__(moe_gemv_traits<Stage, MPad>::threads)
    moe_gemv_kernel(moe_grouped_gemm_params const p) {
  using traits = moe_gemv_traits<Stage, MPad>;
  constexpr int rows = traits::rows, unroll = traits::unroll;
  int const lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  std::int64_t const col0 = std::int64_t(blockIdx.x) * traits::cta_cols + warp * traits::cols;
  std::int64_t const w_rows = traits::gate_up ? 2 * p.n : p.n;
  // This warp's weight rows of expert e.
  auto const rows_of = [&](std::int64_t e, std::uint16_t const*(&w_row)[rows]) {
    auto const* const w = static_cast<std::uint16_t const*>(p.w) + e * w_rows * p.k;
#pragma unroll
    for (int r = 0; r < rows; ++r)
      w_row[r] = w + (traits::gate_up ? (r / 2) * p.n + col0 + r % 2 : col0 + r) * p.k;
  };
  std::uint16_t const* w_row[rows];

  // Blocks run last first (y-major grid, y reversed): the shared experts, which have the highest
  // ids, are the last used blocks, so the first CTAs to launch are theirs. Their weights do not
  // depend on the routing: under programmatic dependent launch these CTAs are resident while the
  // kernels before them (routing, alignment) still run, and start moving their rows into L2 then.
  if (blockIdx.y < p.shared_experts) {
    rows_of(p.experts - 1 - blockIdx.y, w_row);
    constexpr std::int64_t line = 64;  // bf16 values per 128-byte line
#pragma unroll
    for (int r = 0; r < rows; ++r)
      for (std::int64_t i = lane; i < p.k / line; i += 32) prefetch_l2(w_row[r] + i * line);
  }
  pdl_enter();
  std::int64_t const block = std::int64_t(gridDim.y) - 1 - blockIdx.y;
  int const expert = __ldg(p.expert_of_block + block);
  if (expert < 0) return;  // past the last used block
  rows_of(expert, w_row);

  // The block's first MPad rows: routed (id < rows) or padding, which re-reads row 0 (a used block
  // always holds one) and is dropped.
  std::int64_t const row0 = block * p.block_m;
  std::int32_t ids[MPad];
  std::uint16_t const* x_row[MPad];
  auto const* const a = static_cast<std::uint16_t const*>(p.a);
#pragma unroll
  for (int m = 0; m < MPad; ++m) {
    ids[m] = __ldg(p.sorted_ids + row0 + m);
    std::int32_t const id = ids[m] < p.rows ? ids[m] : ids[0];
    std::int64_t const src = traits::gate_up ? id / p.top_k : row0 + (ids[m] < p.rows ? m : 0);
    x_row[m] = a + src * p.lda;
  }

  float acc[rows][MPad] = {};
  gemv_bf16_stream_rows<unroll>(w_row, x_row, p.k / 8, lane, 32, acc);

  // Value r * MPad + m ends in lanes [i * lanes_per_value, ..).
  float const sum = gemv_bf16_warp_sums(acc, lane);
  constexpr int lpv = traits::lanes_per_value;
  int const index = lane / lpv, r = index / MPad, m = index % MPad;
  std::int32_t id = ids[0];  // ids[m], without indexing the array by a runtime value
#pragma unroll
  for (int i = 1; i < MPad; ++i) id = i == m ? ids[i] : id;
  auto* const out = static_cast<std::uint16_t*>(p.out);
  if constexpr (traits::gate_up) {
    // Rows 0, 1 are gate j, j + 1 and rows 2, 3 their up rows: value index + 2 MPad.
    float const up = __shfl_sync(0xFFFF'FFFFu, sum, ((index + 2 * MPad) * lpv) % 32);
    if (lane % lpv != 0 || r >= 2 || id >= p.rows) return;
    out[(row0 + m) * p.ldo + col0 + r] = silu_and_mul_value(bf16(sum), bf16(up)).bits;
  } else {
    if (lane % lpv != 0 || id >= p.rows) return;
    float const weight = __ldg(p.topk_weights + id);
    out[std::int64_t(id) * p.ldo + col0 + r] = bf16(sum * weight).bits;
  }
}

template <moe_gemm_stage Stage, int MPad>
void launch_moe_gemv(moe_grouped_gemm_params const& p, CUstream_st* stream) {
  using traits = moe_gemv_traits<Stage, MPad>;
  LC_CHECK(p.n % traits::cta_cols == 0 && p.k % 8 == 0 && p.blocks <= 65535 &&
               p.shared_experts >= 0 && p.shared_experts <= p.experts,
           "moe gemv: N " << p.n << " must be a multiple of " << traits::cta_cols << ", K " << p.k
                          << " of 8, the blocks (" << p.blocks << ") at most 65535 and the shared "
                          << "experts (" << p.shared_experts << ") at most the " << p.experts);
  LC_CHECK(p.block_m >= MPad,
           "moe gemv: blocks of " << p.block_m << " rows hold fewer than " << MPad);
  if (p.blocks == 0) return;
  dim3 const grid(unsigned(p.n / traits::cta_cols), unsigned(p.blocks), 1);
  launch_pdl(moe_gemv_kernel<Stage, MPad>, grid, dim3(traits::threads), 0, stream, p);
  LC_CUDA_CHECK_LAUNCH();
}

}  // namespace lightcore::kernels::detail
