// moe: the CPU references, token by token and expert by expert, with the shared formulas of
// moe_params.hpp and plain sorts by the routing's order key.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/moe/moe.hpp"

namespace lightcore::kernels::detail {

void moe_route_cpu(moe_routing_params const& p) {
  int const e_count = p.experts, k = p.top_k;
  auto const n = static_cast<std::size_t>(e_count);
  std::vector<float> score(n), choice(n);
  std::vector<std::uint64_t> keys(n);
  std::vector<bool> kept(static_cast<std::size_t>(p.n_group));
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    float const* logits = p.logits + t * p.logits_stride;
    if (p.scoring == moe_scoring::sigmoid) {
      for (int e = 0; e < e_count; ++e) score[std::size_t(e)] = moe_sigmoid(logits[e]);
    } else {
      float const max = *std::max_element(logits, logits + e_count);
      float sum = 0.0f;
      for (int e = 0; e < e_count; ++e) sum += (score[std::size_t(e)] = expf(logits[e] - max));
      for (float& s : score) s /= sum;
    }
    for (int e = 0; e < e_count; ++e)
      choice[std::size_t(e)] = score[std::size_t(e)] + (p.bias != nullptr ? p.bias[e] : 0.0f);

    if (p.group_select != moe_group_select::none) {
      int const group_size = e_count / p.n_group;
      std::vector<std::uint64_t> group_keys(static_cast<std::size_t>(p.n_group));
      for (int g = 0; g < p.n_group; ++g) {
        std::vector<float> members(choice.begin() + g * group_size,
                                   choice.begin() + (g + 1) * group_size);
        std::sort(members.begin(), members.end(), [](float a, float b) { return a > b; });
        moe_top2 const top{members[0], group_size > 1 ? members[1] : members[0]};
        group_keys[std::size_t(g)] = moe_order_key(moe_group_score(p.group_select, top), g);
      }
      std::sort(group_keys.begin(), group_keys.end(), std::greater<>());
      std::fill(kept.begin(), kept.end(), false);
      for (int i = 0; i < p.topk_group; ++i)
        kept[std::size_t(moe_key_index(group_keys[std::size_t(i)]))] = true;
      for (int e = 0; e < e_count; ++e)
        if (!kept[std::size_t(e / group_size)]) choice[std::size_t(e)] = 0.0f;
    }

    for (int e = 0; e < e_count; ++e)
      keys[std::size_t(e)] = moe_order_key(choice[std::size_t(e)], e);
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), std::greater<>());
    float sum = 0.0f;
    for (int i = 0; i < k; ++i) sum += score[std::size_t(moe_key_index(keys[std::size_t(i)]))];
    std::int64_t const slots = k + p.shared_experts;
    for (int i = 0; i < k; ++i) {
      int const e = moe_key_index(keys[std::size_t(i)]);
      p.topk_ids[t * slots + i] = e;
      p.topk_weights[t * slots + i] =
          moe_weight(score[std::size_t(e)], sum, p.renormalize, p.routed_scaling_factor);
    }
    for (int j = 0; j < p.shared_experts; ++j) {
      p.topk_ids[t * slots + k + j] = e_count + j;
      p.topk_weights[t * slots + k + j] = 1.0f;
    }
  }
}

void moe_align_cpu(moe_align_params const& p) {
  int const experts = p.experts;
  auto const rows = std::int32_t(p.rows), block_m = p.block_m;
  // Rows by expert, each list in ascending row order.
  std::vector<std::vector<std::int32_t>> by_expert(static_cast<std::size_t>(experts));
  for (std::int32_t r = 0; r < rows; ++r) {
    std::int32_t const e = p.topk_ids[r];
    p.inverse[r] = -1;
    if (e >= 0 && e < experts) by_expert[std::size_t(e)].push_back(r);
  }
  std::fill(p.sorted_ids, p.sorted_ids + p.sorted_capacity, rows);
  std::int32_t offset = 0;
  for (int e = 0; e < experts; ++e) {
    auto const& list = by_expert[std::size_t(e)];
    auto const count = std::int32_t(list.size());
    p.expert_counts[e] = count;
    p.expert_offsets[e] = offset;
    for (std::int32_t i = 0; i < count; ++i) {
      p.sorted_ids[offset + i] = list[std::size_t(i)];
      p.inverse[list[std::size_t(i)]] = offset + i;
    }
    std::int32_t const padded = (count + block_m - 1) / block_m * block_m;
    for (std::int32_t b = offset / block_m; b < (offset + padded) / block_m; ++b)
      p.expert_of_block[b] = e;
    offset += padded;
  }
  p.expert_offsets[experts] = offset;
  *p.total_padded = offset;
  std::fill(p.expert_of_block + offset / block_m, p.expert_of_block + p.block_capacity, -1);
}

}  // namespace lightcore::kernels::detail
