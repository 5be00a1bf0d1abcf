// moe: the params that the CPU references and the CUDA kernels share, and the per-element formulas
// both apply (the same fp32 operations in the same order, so that the two backends choose the
// same experts and agree on the weights to the rounding of expf).
#pragma once

#include <cmath>
#include <cstdint>

#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// The largest expert count the routing and alignment kernels take (DeepSeek-V3/R1: 256): the
// routing kernel keeps a token's scores in the registers of one warp, 8 per lane, and the
// alignment kernel keeps one counter per expert for each of its warps in shared memory.
inline constexpr std::int64_t moe_max_experts = 256;
// The largest top_k, shared experts folded in included: lane i of the token's warp writes the
// i-th slot.
inline constexpr std::int64_t moe_max_top_k = 32;
// The most shared experts that routing appends to every token (DeepSeek-V2/V2-Lite: 2, V3/R1: 1),
// and the largest expert stack that alignment and the expert GEMMs take: the routed experts plus
// the shared ones folded in after them.
inline constexpr std::int64_t moe_max_shared_experts = 8;
inline constexpr std::int64_t moe_max_stacked_experts = moe_max_experts + moe_max_shared_experts;
// What routing and alignment take in one launch (moe_route_and_align): a decode batch of at most
// 4 tokens, one warp routing each, whose at most 32 routed rows one warp aligns.
inline constexpr std::int64_t moe_route_align_max_tokens = 4;
inline constexpr std::int64_t moe_route_align_max_rows = 32;
// The largest n_group: lane g of the token's warp ranks group g.
inline constexpr std::int64_t moe_max_groups = 32;
// What a renormalised weight's denominator adds to the sum of the chosen scores (as in Hugging
// Face's DeepseekV3TopkRouter / DeepseekV2 MoEGate), so that an all-zero choice divides by no 0.
inline constexpr float moe_renormalize_epsilon = 1e-20f;

// How a token's gate logits become scores (config.json's scoring_func).
enum class moe_scoring : std::uint8_t {
  sigmoid,  // V3/R1: score = 1 / (1 + exp(-logit)), expert by expert
  softmax,  // V2/V2-Lite: score = exp(logit - max) / sum over the token's experts
};

// How groups of experts are scored before the topk_group best are kept (config.json's topk_method).
enum class moe_group_select : std::uint8_t {
  none,      // "greedy": top-k over all experts
  top2_sum,  // "noaux_tc" (V3/R1): a group scores the sum of its two largest choice values
  max,       // "group_limited_greedy" (V2): a group scores its largest choice value
};

// One routing step: logits [tokens, experts] -> top-k expert ids and weights per token.
//   score   = sigmoid(logit) or softmax(logits)[e]
//   choice  = score + bias[e] (bias 0 without one; e_score_correction_bias only chooses)
//   groups  = n_group blocks of experts / n_group consecutive experts, scored by group_select on
//             the choice values; the topk_group best are kept (ties: the lower group index); the
//             choice of every expert of another group becomes 0.0 (Hugging Face's masked_fill)
//   top-k   = the top_k largest choice values (ties: the lower expert index), in descending order
//   weight  = score (unbiased) of each chosen expert; if renormalize, divided by (sum of the k
//             scores, added in the order chosen, + 1e-20); then times routed_scaling_factor
//   shared  = slots [top_k, top_k + shared_experts) of every token name experts [experts, experts +
//             shared_experts) with weight 1: the shared experts, folded into the routed stack
//             after the routed ones, so that one grouped GEMM runs both (DeepSeek adds the shared
//             experts' output unscaled)
// Plain data: passed by value to the kernel.
struct moe_routing_params {
  float const* logits = nullptr;     // [tokens, experts], row stride logits_stride, unit col stride
  float const* bias = nullptr;       // [experts] or null (no correction bias)
  std::int32_t* topk_ids = nullptr;  // [tokens, top_k + shared_experts], contiguous
  float* topk_weights = nullptr;     // [tokens, top_k + shared_experts], contiguous
  std::int64_t tokens = 0;
  std::int64_t logits_stride = 0;  // elements between the rows of logits, >= experts
  int experts = 0;                 // E, 1..moe_max_experts
  int top_k = 0;                   // 1..min(E, moe_max_top_k)
  int shared_experts = 0;          // 0..moe_max_shared_experts; top_k + it <= moe_max_top_k
  int n_group = 1;                 // divides E; 1..moe_max_groups
  int topk_group = 1;              // 1..n_group; == n_group keeps every group
  moe_scoring scoring = moe_scoring::sigmoid;
  moe_group_select group_select = moe_group_select::none;
  bool renormalize = false;            // norm_topk_prob
  float routed_scaling_factor = 1.0f;  // multiplies every weight
};

// One alignment step: topk_ids [tokens, top_k] -> the routed rows (r = token * top_k + slot)
// grouped by expert, each expert's group padded to a multiple of block_m rows, for a grouped GEMM
// that runs one block_m-row tile per block. Ids outside [0, experts) (the experts of other ranks
// under expert parallelism) are left out. Every element of every output is written, padding
// included, so that nothing depends on what the buffers held before.
struct moe_align_params {
  std::int32_t const* topk_ids = nullptr;   // [rows], rows = tokens * top_k, contiguous
  std::int32_t* expert_counts = nullptr;    // [experts]: routed rows per expert
  std::int32_t* expert_offsets = nullptr;   // [experts + 1]: exclusive scan of the padded counts;
                                            // expert e owns sorted rows [off[e], off[e + 1])
  std::int32_t* sorted_ids = nullptr;       // [sorted_capacity]: r of each sorted row, ascending r
                                            // within an expert; padding and tail: rows (sentinel)
  std::int32_t* expert_of_block = nullptr;  // [block_capacity]: expert of each block_m-row block;
                                            // -1 from off[experts] / block_m on
  std::int32_t* total_padded = nullptr;     // [1]: off[experts]
  std::int32_t* inverse = nullptr;          // [rows]: the sorted position of row r; -1 if left out
  std::int64_t rows = 0;                    // tokens * top_k, < 2^31
  std::int64_t sorted_capacity = 0;         // >= moe_align_capacity's padded rows
  std::int64_t block_capacity = 0;          // >= moe_align_capacity's blocks
  int experts = 0;                          // 1..moe_max_stacked_experts
  int block_m = 0;                          // >= 1
};

// An fp32 value and an index as one unsigned key whose order is the routing's: a larger value
// first, then the lower index. The value's bits are mapped to an unsigned order (negative values
// reversed); -0.0 is made +0.0 first so that the two compare equal as floats do. A NaN sorts above
// +inf (as in torch.topk). A valid key is never 0, which marks "no candidate".
LC_HOST_DEVICE inline std::uint64_t moe_order_key(float value, int index) noexcept {
  std::uint32_t u = __builtin_bit_cast(std::uint32_t, value + 0.0f);
  u = (u & 0x8000'0000u) != 0 ? ~u : (u | 0x8000'0000u);
  return (std::uint64_t(u) << 32) | std::uint64_t(0xFFFF'FFFFu - std::uint32_t(index));
}

// The index a key was made from.
LC_HOST_DEVICE inline int moe_key_index(std::uint64_t key) noexcept {
  return int(0xFFFF'FFFFu - std::uint32_t(key & 0xFFFF'FFFFu));
}

// The sigmoid score: expf (within 2 ulp on the device, correctly rounded by glibc on the host) and
// an IEEE division (no fast math) on both backends.
LC_HOST_DEVICE inline float moe_sigmoid(float logit) noexcept {
  return 1.0f / (1.0f + expf(-logit));
}

// The two largest of a multiset of values, merged: (a1 >= a2) and (b1 >= b2) -> (c1 >= c2). Plain
// comparisons, so that the merge order does not change the result for ordinary (non-NaN) values.
struct moe_top2 {
  float first;
  float second;
};
LC_HOST_DEVICE inline moe_top2 moe_top2_merge(moe_top2 a, moe_top2 b) noexcept {
  if (a.first >= b.first) return {a.first, a.second >= b.first ? a.second : b.first};
  return {b.first, b.second >= a.first ? b.second : a.first};
}

// A group's score from the two largest choice values of its experts.
LC_HOST_DEVICE inline float moe_group_score(moe_group_select select, moe_top2 t) noexcept {
  return select == moe_group_select::top2_sum ? t.first + t.second : t.first;
}

// A chosen expert's weight from its unbiased score and the sum of the chosen scores.
LC_HOST_DEVICE inline float moe_weight(float score, float chosen_sum, bool renormalize,
                                       float routed_scaling_factor) noexcept {
  float const w = renormalize ? score / (chosen_sum + moe_renormalize_epsilon) : score;
  return w * routed_scaling_factor;
}

}  // namespace lightcore::kernels
