// moe experts: the routed experts of a DeepSeek MoE layer after routing and alignment (moe.hpp):
// grouped GEMM gate_up with SiLU-and-mul fused in its epilogue, grouped GEMM down times the routed
// weights, and the combine back to token order (see moe_experts_params.hpp for the exact
// arithmetic). bf16 or FP8 e4m3 block-scaled weights. On the GPU: fixed launch geometry from the
// token count and the capacities (a grid over every possible row block, blocks without an expert
// exit at once), no host synchronisation and no allocation, so the layer can be captured in a
// CUDA graph. Shared experts run here too when folded into the stack as extra experts (routing
// gives them slots of weight 1; models/deepseek_v3/weights.hpp), else as a dense MLP beside it.
#pragma once

#include <cstdint>

#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_experts_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// The stacked expert weights as the checkpoint loader provides them, on the backend's device.
//   gate_up [E, 2I, H]: expert e's gate_proj rows, then its up_proj rows (nn.Linear layout)
//   down    [E, H, I]:  expert e's down_proj
// bf16, or fp8_e4m3 with f32 block scales (weight_scale_inv, one per 128 x 128 block):
//   gate_up_scales [E, ceil(2I/128), gemm_fp8_weight_scale_ld(H)] (only the first H/128 columns
//   are read), down_scales [E, ceil(H/128), gemm_fp8_weight_scale_ld(I)]; empty views for bf16.
// Every view contiguous.
struct moe_expert_weights {
  tensor_view gate_up;
  tensor_view down;
  tensor_view gate_up_scales;
  tensor_view down_scales;
  // How many of the stack's last experts every token hits (shared experts folded into the stack,
  // which routing appends to each token): only a hint, never needed for the result. Default 0.
  std::int64_t shared = 0;
};

// Workspace bytes moe_experts needs for `tokens` tokens: fixed by the sizes alone (capture the
// largest batch's graph first and every smaller one fits).
std::int64_t moe_experts_workspace_bytes(std::int64_t tokens, std::int64_t top_k,
                                         std::int64_t num_experts, std::int64_t block_m,
                                         std::int64_t hidden, std::int64_t inter,
                                         moe_weight_format format);

namespace detail {

// The checked params, or an error naming what was wrong and what is allowed.
moe_experts_params make_moe_experts_params(device where, tensor_view const& hidden,
                                           tensor_view const& topk_ids,
                                           tensor_view const& topk_weights,
                                           moe_align_outputs const& align, std::int64_t block_m,
                                           moe_expert_weights const& weights,
                                           tensor_view const& out, tensor_view const& workspace);

void moe_experts_cpu(moe_experts_params const& p);
#if defined(LIGHTCORE_WITH_CUDA)
void moe_experts_cuda(moe_experts_params const& p, int ordinal, CUstream_st* stream);

// Defined in grouped_gemm.cuh and combine.cuh, instantiated once per variant in instantiations/.
// Decode: the variant for at most 16 routed rows (a deeper weight ring; grouped_gemm.cuh).
template <moe_gemm_stage Stage, bool Fp8, int BlockM, bool Decode>
void launch_moe_grouped_gemm(moe_grouped_gemm_params const& p, CUstream_st* stream);
// Defined in grouped_gemm_wgmma.cuh (sm_90a), bf16 only; TileM rows per CTA (128 instantiated).
template <moe_gemm_stage Stage, int BlockM, int TileM>
void launch_moe_grouped_gemm_wgmma(moe_grouped_gemm_params const& p, CUstream_st* stream);
// Defined in grouped_gemm_wgmma_persistent.cuh (sm_90a): e4m3 weights with 128 x 128 block
// scales, activations quantised per token per 128 columns; gate_up writes the intermediate's
// codes and per-128-column scales (p.out, p.out_scales). block_m 64; N a multiple of
// moe_gemm_wgmma_gate_up_tile_n / moe_gemm_wgmma_down_tile_n.
template <moe_gemm_stage Stage>
void launch_moe_grouped_gemm_wgmma_fp8(moe_grouped_gemm_params const& p, CUstream_st* stream);
// Defined in moe_gemv.cuh: bf16 batches of at most 4 tokens, MPad (1 or 4) rows read per block.
template <moe_gemm_stage Stage, int MPad>
void launch_moe_gemv(moe_grouped_gemm_params const& p, CUstream_st* stream);
void launch_moe_combine(moe_combine_params const& p, int num_sms, CUstream_st* stream);
#endif

}  // namespace detail

// out [T, H] bf16 = the routed experts' sum for every token. hidden [T, H] bf16 (unit column
// stride, row stride a multiple of 8); topk_ids and topk_weights [T, top_k] (moe_route's outputs);
// align: moe_align's outputs for these ids with `block_m` (64 or 128) and the weights' expert
// count; weights as moe_expert_weights says; out [T, H] bf16 (unit column stride, row stride a
// multiple of 8), disjoint from the inputs; workspace: at least moe_experts_workspace_bytes,
// contiguous, 256-byte aligned. H and I multiples of 128. Deterministic (fixed summation orders).
// Ordered on `stream`.
template <Backend B>
void moe_experts(B& backend, tensor_view const& hidden, tensor_view const& topk_ids,
                 tensor_view const& topk_weights, moe_align_outputs const& align,
                 std::int64_t block_m, moe_expert_weights const& weights, tensor_view const& out,
                 tensor_view const& workspace,
                 [[maybe_unused]] typename B::stream_type const& stream) {
  moe_experts_params const p = detail::make_moe_experts_params(
      backend.where(), hidden, topk_ids, topk_weights, align, block_m, weights, out, workspace);
  if (p.tokens == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::moe_experts_cpu(p);
  } else {
    static_assert(B::kind == device_kind::cuda, "moe_experts: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::moe_experts_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "moe_experts on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
