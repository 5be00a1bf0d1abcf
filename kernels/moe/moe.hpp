// moe: the two steps of DeepSeek's fused MoE that come before the expert GEMMs.
//  - Routing: gate logits [tokens, experts] f32 (the gate GEMM's output) -> each token's top-k
//    experts and their weights, as Hugging Face transformers' DeepseekV3TopkRouter (V3/R1:
//    sigmoid scores, e_score_correction_bias used only to choose, group-limited selection) and
//    DeepseekV2's MoEGate (softmax scores, greedy or group-limited) define them. See
//    moe_routing_params for the exact semantics and the tie rule.
//  - Alignment: the routed rows grouped by expert and padded to the grouped GEMM's tile height,
//    with counts, offsets and the inverse permutation for the combine.
// On the GPU each is one kernel launch with sizes fixed by the token count (no host
// synchronisation, no allocation), so both can be captured in a CUDA graph.
#pragma once

#include <cstdint>
#include <string_view>

#include "kernels/moe/moe_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// A model's routing settings, named as in its config.json. Defaults: DeepSeek-V3/R1.
struct moe_routing_config {
  std::int64_t num_experts = 256;  // n_routed_experts
  std::int64_t top_k = 8;          // num_experts_per_tok
  std::int64_t n_group = 8;        // groups of num_experts / n_group consecutive experts
  std::int64_t topk_group = 4;     // groups kept per token
  moe_scoring scoring = moe_scoring::sigmoid;                  // scoring_func
  moe_group_select group_select = moe_group_select::top2_sum;  // topk_method
  bool norm_topk_prob = true;          // renormalise the chosen scores to sum 1
  float routed_scaling_factor = 2.5f;  // multiplies every weight
  // Shared experts folded into the expert stack after the routed ones: every token's last
  // shared_experts slots name experts num_experts.. with weight 1. Default 0 (run them apart).
  std::int64_t shared_experts = 0;

  // DeepSeek-V3 and R1: 256 experts, top-8 of the 4 best of 8 groups, sigmoid, "noaux_tc".
  static constexpr moe_routing_config deepseek_v3() { return {}; }
  // DeepSeek-V2: 160 experts, top-6 of the 3 best of 8 groups (by their max), softmax, unscaled
  // sum, weights x 16.
  static constexpr moe_routing_config deepseek_v2() {
    return {160, 6, 8, 3, moe_scoring::softmax, moe_group_select::max, false, 16.0f, 0};
  }
  // DeepSeek-V2-Lite: 64 experts, greedy top-6, softmax, weights as scored.
  static constexpr moe_routing_config deepseek_v2_lite() {
    return {64, 6, 1, 1, moe_scoring::softmax, moe_group_select::none, false, 1.0f, 0};
  }
};

// config.json's scoring_func ("sigmoid", "softmax") and topk_method ("noaux_tc",
// "group_limited_greedy", "greedy"); anything else is an error naming the allowed values.
moe_scoring parse_moe_scoring(std::string_view scoring_func);
moe_group_select parse_moe_topk_method(std::string_view topk_method);

// The buffer sizes alignment needs for `tokens` tokens, fixed by the token count alone so that a
// captured graph can hold them. At most min(experts, rows) experts get rows, each padded by fewer
// than block_m rows: sorted_rows = rows + min(experts, rows) * (block_m - 1), rounded up to a
// multiple of block_m (rows = tokens * top_k); blocks = sorted_rows / block_m.
struct moe_align_sizes {
  std::int64_t sorted_rows = 0;
  std::int64_t blocks = 0;
};
moe_align_sizes moe_align_capacity(std::int64_t tokens, std::int64_t top_k,
                                   std::int64_t num_experts, std::int64_t block_m);

// Alignment's outputs: contiguous i32 views on the backend's device (shapes as named in
// moe_align_params; the sorted rows and blocks may be longer than moe_align_capacity asks, and
// are written to their end).
struct moe_align_outputs {
  tensor_view expert_counts;     // [experts]
  tensor_view expert_offsets;    // [experts + 1]
  tensor_view sorted_token_ids;  // [>= sorted_rows]: token * top_k + slot; padding tokens * top_k
  tensor_view expert_of_block;   // [>= blocks]: -1 past the last used block
  tensor_view total_padded;      // [1]
  tensor_view inverse;           // [tokens, top_k]: position in sorted_token_ids, -1 if left out
};

namespace detail {

// The checked params (every view's dtype, shape, contiguity, device and alignment) or an error
// naming what was wrong and what is allowed.
moe_routing_params make_moe_routing_params(device where, tensor_view const& logits,
                                           tensor_view const& bias,
                                           moe_routing_config const& config,
                                           tensor_view const& topk_ids,
                                           tensor_view const& topk_weights);
moe_align_params make_moe_align_params(device where, tensor_view const& topk_ids,
                                       std::int64_t num_experts, std::int64_t block_m,
                                       moe_align_outputs const& out);

void moe_route_cpu(moe_routing_params const& p);
void moe_align_cpu(moe_align_params const& p);
#if defined(LIGHTCORE_WITH_CUDA)
void moe_route_cuda(moe_routing_params const& p, int ordinal, CUstream_st* stream);
void moe_align_cuda(moe_align_params const& p, int ordinal, CUstream_st* stream);
void moe_route_align_cuda(moe_routing_params const& rp, moe_align_params const& ap, int ordinal,
                          CUstream_st* stream);

// Defined in routing.cuh and align.cuh, instantiated once per bucket in instantiations/.
template <int ExpertsPerLane>
void launch_moe_routing(moe_routing_params const& p, int num_sms, CUstream_st* stream);
template <int Warps>
void launch_moe_align(moe_align_params const& p, CUstream_st* stream);
// Defined in route_align.cuh, instantiated once per routing bucket.
template <int ExpertsPerLane>
void launch_moe_route_align(moe_routing_params const& rp, moe_align_params const& ap,
                            CUstream_st* stream);
#endif

}  // namespace detail

// Routes every token: logits [tokens, experts] f32 (unit column stride, row stride >= experts),
// bias [experts] f32 contiguous or an empty view (tensor_view{}) for none, topk_ids [tokens,
// top_k + shared_experts] i32 and topk_weights [tokens, top_k + shared_experts] f32 contiguous;
// all on the backend's device. Each token's experts are written in descending choice order, then
// the shared experts (config.shared_experts). Ordered on `stream`.
template <Backend B>
void moe_route(B& backend, tensor_view const& logits, tensor_view const& bias,
               moe_routing_config const& config, tensor_view const& topk_ids,
               tensor_view const& topk_weights,
               [[maybe_unused]] typename B::stream_type const& stream) {
  moe_routing_params const p = detail::make_moe_routing_params(backend.where(), logits, bias,
                                                               config, topk_ids, topk_weights);
  if (p.tokens == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::moe_route_cpu(p);
  } else {
    static_assert(B::kind == device_kind::cuda, "moe_route: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::moe_route_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "moe_route on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

// Groups the routed rows of topk_ids [tokens, top_k] i32 (contiguous) by expert, for experts in
// [0, num_experts) (other ids are left out; num_experts <= moe_max_stacked_experts), padding each
// expert's rows to a multiple of block_m; writes every element of `out`. Deterministic: within an
// expert, rows in ascending token * top_k
// + slot. Ordered on `stream`.
template <Backend B>
void moe_align(B& backend, tensor_view const& topk_ids, std::int64_t num_experts,
               std::int64_t block_m, moe_align_outputs const& out,
               [[maybe_unused]] typename B::stream_type const& stream) {
  moe_align_params const p =
      detail::make_moe_align_params(backend.where(), topk_ids, num_experts, block_m, out);
  if constexpr (B::kind == device_kind::cpu) {
    detail::moe_align_cpu(p);
  } else {
    static_assert(B::kind == device_kind::cuda, "moe_align: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::moe_align_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "moe_align on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

// moe_route, then moe_align of the routed ids over num_experts stacked experts (the routed ones
// and the shared ones folded in after them): the same outputs as the two calls. On the GPU a
// decode batch (at most moe_route_align_max_tokens tokens and moe_route_align_max_rows routed
// rows) takes one launch for both, which saves a kernel boundary per MoE layer; larger batches
// take the two kernels. Ordered on `stream`.
template <Backend B>
void moe_route_and_align(B& backend, tensor_view const& logits, tensor_view const& bias,
                         moe_routing_config const& config, tensor_view const& topk_ids,
                         tensor_view const& topk_weights, std::int64_t num_experts,
                         std::int64_t block_m, moe_align_outputs const& out,
                         typename B::stream_type const& stream) {
  if constexpr (B::kind == device_kind::cuda) {
#if defined(LIGHTCORE_WITH_CUDA)
    std::int64_t const tokens = logits.rank() == 2 ? logits.size(0) : 0;
    std::int64_t const slots = config.top_k + config.shared_experts;
    if (tokens >= 1 && tokens <= moe_route_align_max_tokens &&
        tokens * slots <= moe_route_align_max_rows) {
      moe_routing_params const rp = detail::make_moe_routing_params(backend.where(), logits, bias,
                                                                    config, topk_ids, topk_weights);
      moe_align_params const ap =
          detail::make_moe_align_params(backend.where(), topk_ids, num_experts, block_m, out);
      detail::moe_route_align_cuda(rp, ap, backend.where().index, stream.get());
      return;
    }
#endif
  }
  moe_route(backend, logits, bias, config, topk_ids, topk_weights, stream);
  moe_align(backend, topk_ids, num_experts, block_m, out, stream);
}

}  // namespace lightcore::kernels
