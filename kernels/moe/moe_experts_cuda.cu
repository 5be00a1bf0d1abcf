// moe experts: the CUDA dispatch. Builds the two grouped GEMMs' params from the workspace layout,
// chooses the instantiation (GEMM stage x bf16 | FP8 x block_m, and for bf16 prefill-sized batches
// the wgmma kernel; each in its own file under instantiations/) and issues, on one stream and with
// a geometry fixed by the token count:
//   [FP8: quantise hidden] -> GEMM 1 (+ SiLU-and-mul; FP8: + quantising the intermediate)
//   -> GEMM 2 (x routed weight) -> combine.
#include <algorithm>
#include <cstdint>

#include "kernels/moe/moe_experts.hpp"
#include "kernels/quant/quant.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {
namespace {

// The wgmma kernel where it applies (bf16 or FP8, block_m 64, a prefill-sized batch, N a multiple
// of its tile), else the mma.sync kernel of this format and block_m.
template <moe_gemm_stage Stage>
void launch_gemm(moe_grouped_gemm_params const& p, bool fp8, std::int64_t block_m, bool wgmma,
                 bool gemv, CUstream_st* stream) {
  // At most 4 tokens, bf16: the weight-streaming kernels (moe_gemv.cuh); one token's blocks hold
  // one row each.
  if (gemv && !fp8)
    return p.rows == p.top_k ? launch_moe_gemv<Stage, 1>(p, stream)
                             : launch_moe_gemv<Stage, 4>(p, stream);
  std::int64_t const wgmma_tile_n =
      Stage == moe_gemm_stage::gate_up ? moe_gemm_wgmma_gate_up_tile_n : moe_gemm_wgmma_down_tile_n;
  // Two aligned 64-row blocks of one expert per tile: bf16 grouped_gemm_wgmma.cuh, FP8 its
  // persistent variant (grouped_gemm_wgmma_persistent.cuh).
  if (wgmma && block_m == 64 && p.n % wgmma_tile_n == 0)
    return fp8 ? launch_moe_grouped_gemm_wgmma_fp8<Stage>(p, stream)
               : launch_moe_grouped_gemm_wgmma<Stage, 64, 128>(p, stream);
  // At most 16 routed rows: every expert's rows sit in the first m16 tile of its block, which is
  // all the decode variant stages.
  bool const decode = block_m == 64 && p.rows <= 16;
  if (fp8) {
    if (decode) return launch_moe_grouped_gemm<Stage, true, 64, true>(p, stream);
    if (block_m == 64) return launch_moe_grouped_gemm<Stage, true, 64, false>(p, stream);
    if (block_m == 128) return launch_moe_grouped_gemm<Stage, true, 128, false>(p, stream);
  } else {
    if (decode) return launch_moe_grouped_gemm<Stage, false, 64, true>(p, stream);
    if (block_m == 64) return launch_moe_grouped_gemm<Stage, false, 64, false>(p, stream);
    if (block_m == 128) return launch_moe_grouped_gemm<Stage, false, 128, false>(p, stream);
  }
  LC_THROW("moe_experts on CUDA has grouped GEMM tiles for block_m 64 and 128; got " << block_m);
}

}  // namespace

void moe_experts_cuda(moe_experts_params const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  device const where = device::cuda(ordinal);
  bool const fp8 = p.format == moe_weight_format::fp8_block;
  std::int64_t const h = p.hidden_size, inter = p.inter, rows = p.tokens * p.top_k;
  // The grid covers the capacity of this token count, not the (longer) buffers: the geometry is a
  // function of the sizes, and blocks past the used ones exit at once.
  moe_align_sizes const cap = moe_align_capacity(p.tokens, p.top_k, p.experts, p.block_m);
  moe_experts_workspace_layout const l =
      make_moe_experts_workspace_layout(p.tokens, p.top_k, cap.sorted_rows, h, inter, p.format);
  auto* const ws = static_cast<std::uint8_t*>(p.workspace);

  moe_grouped_gemm_params g1;
  g1.sorted_ids = p.sorted_ids;
  g1.expert_of_block = p.expert_of_block;
  g1.rows = rows;
  g1.top_k = p.top_k;
  g1.blocks = cap.blocks;
  g1.block_m = p.block_m;
  g1.shared_experts = p.shared_experts;
  g1.experts = p.experts;
  bool const wgmma = p.tokens >= p.wgmma_min_tokens;
  bool const gemv =
      p.tokens <= std::min(p.gemv_max_tokens, moe_experts_gemv_max_tokens) && p.top_k > 0;
  moe_grouped_gemm_params g2 = g1;

  g1.n = inter;
  g1.k = h;
  g1.w = p.gate_up;
  g1.w_scales = p.gate_up_scales;
  g1.w_scales_ld = p.gate_up_scales_ld;
  g1.ldo = inter;
  if (fp8) {
    // GEMM 1 writes the intermediate's codes and scales itself (its epilogue quantises).
    g1.out = ws + l.intermediate_q;
    g1.out_scales = reinterpret_cast<float*>(ws + l.intermediate_scales);
    g1.out_scales_ld = inter / quant_group_size;
    // x quantised once per token (not per routed row): top_k times less work than per row.
    tensor_view const x(const_cast<void*>(p.hidden), dtype::bf16, {p.tokens, h}, {p.hidden_ld, 1},
                        where);
    tensor_view const q(ws + l.hidden_q, dtype::fp8_e4m3, {p.tokens, h}, where);
    tensor_view const s(ws + l.hidden_scales, dtype::f32, {p.tokens, h / quant_group_size}, where);
    quantize_per_token_group_cuda(x, q, s, scale_layout::row_major, stream);
    g1.a = ws + l.hidden_q;
    g1.lda = h;
    g1.a_scales = reinterpret_cast<float const*>(ws + l.hidden_scales);
    g1.a_scales_ld = h / quant_group_size;
  } else {
    g1.out = ws + l.intermediate;
    g1.a = p.hidden;
    g1.lda = p.hidden_ld;
  }
  launch_gemm<moe_gemm_stage::gate_up>(g1, fp8, p.block_m, wgmma, gemv, stream);

  g2.n = h;
  g2.k = inter;
  g2.w = p.down;
  g2.w_scales = p.down_scales;
  g2.w_scales_ld = p.down_scales_ld;
  g2.topk_weights = p.topk_weights;
  g2.out = ws + l.routed_out;
  g2.ldo = h;
  if (fp8) {
    g2.a = ws + l.intermediate_q;
    g2.lda = inter;
    g2.a_scales = reinterpret_cast<float const*>(ws + l.intermediate_scales);
    g2.a_scales_ld = inter / quant_group_size;
  } else {
    g2.a = ws + l.intermediate;
    g2.lda = inter;
  }
  launch_gemm<moe_gemm_stage::down>(g2, fp8, p.block_m, wgmma, gemv, stream);

  moe_combine_params c;
  c.routed_out = reinterpret_cast<std::uint16_t const*>(ws + l.routed_out);
  c.inverse = p.inverse;
  c.out = static_cast<std::uint16_t*>(p.out);
  c.tokens = p.tokens;
  c.top_k = p.top_k;
  c.hidden = h;
  c.out_ld = p.out_ld;
  launch_moe_combine(c, backend::multiprocessor_count(ordinal), stream);
}

}  // namespace lightcore::kernels::detail
