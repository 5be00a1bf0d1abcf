// moe: the argument checks of both steps and the config.json names, shared by the backends.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "kernels/moe/moe.hpp"

namespace lightcore::kernels {

moe_scoring parse_moe_scoring(std::string_view scoring_func) {
  if (scoring_func == "sigmoid") return moe_scoring::sigmoid;
  if (scoring_func == "softmax") return moe_scoring::softmax;
  LC_THROW("unknown MoE scoring_func \"" << scoring_func << "\"; allowed: sigmoid, softmax");
}

moe_group_select parse_moe_topk_method(std::string_view topk_method) {
  if (topk_method == "noaux_tc") return moe_group_select::top2_sum;
  if (topk_method == "group_limited_greedy") return moe_group_select::max;
  if (topk_method == "greedy") return moe_group_select::none;
  LC_THROW("unknown MoE topk_method \"" << topk_method
                                        << "\"; allowed: noaux_tc, group_limited_greedy, greedy");
}

moe_align_sizes moe_align_capacity(std::int64_t tokens, std::int64_t top_k,
                                   std::int64_t num_experts, std::int64_t block_m) {
  LC_CHECK(tokens >= 0 && top_k >= 1 && top_k <= moe_max_top_k && num_experts >= 1 &&
               num_experts <= moe_max_stacked_experts && block_m >= 1 && block_m <= INT32_MAX,
           "moe_align_capacity needs tokens >= 0, 1 <= top_k <= "
               << moe_max_top_k << ", 1 <= experts <= " << moe_max_stacked_experts
               << " and block_m >= 1; got tokens " << tokens << ", top_k " << top_k << ", experts "
               << num_experts << ", block_m " << block_m);
  LC_CHECK(tokens <= INT32_MAX / top_k,
           "moe alignment supports tokens * top_k < 2^31; got " << tokens << " * " << top_k);
  std::int64_t const rows = tokens * top_k;
  std::int64_t const padded = rows + std::min(num_experts, rows) * (block_m - 1);
  std::int64_t const sorted_rows = (padded + block_m - 1) / block_m * block_m;
  LC_CHECK(sorted_rows <= INT32_MAX, "moe alignment indexes sorted rows with i32: "
                                         << sorted_rows << " padded rows (tokens " << tokens
                                         << ", top_k " << top_k << ", block_m " << block_m
                                         << ") exceed 2^31 - 1");
  return {sorted_rows, sorted_rows / block_m};
}

namespace detail {
namespace {

bool aligned(void const* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

struct named_view {
  char const* name;
  tensor_view const* view;
};

// The bytes [first, last) that a view with non-negative strides spans; empty for no elements.
std::pair<std::uintptr_t, std::uintptr_t> byte_span(tensor_view const& v) {
  auto const first = reinterpret_cast<std::uintptr_t>(v.data());
  if (v.numel() == 0 || v.data() == nullptr) return {first, first};
  std::int64_t last = 0;
  for (int d = 0; d < v.rank(); ++d) last += (v.size(d) - 1) * v.stride(d);
  return {first, first + std::uintptr_t(last + 1) * v.element_size()};
}

// Outputs written while inputs are read (and outputs written by other threads) must not share
// memory: the kernels read and write without ordering between them.
void check_disjoint(char const* op, std::initializer_list<named_view> views) {
  for (auto a = views.begin(); a != views.end(); ++a) {
    auto const [a0, a1] = byte_span(*a->view);
    for (auto b = a + 1; b != views.end(); ++b) {
      auto const [b0, b1] = byte_span(*b->view);
      LC_CHECK(a0 == a1 || b0 == b1 || a1 <= b0 || b1 <= a0,
               op << " needs disjoint buffers; " << a->name << " at " << a->view->data() << " and "
                  << b->name << " at " << b->view->data() << " overlap");
    }
  }
}

// A contiguous i32 or f32 view of `shape` on `where`, named `name` in the errors of `op`.
void check_vector_view(char const* op, char const* name, tensor_view const& v, dtype type,
                       dims const& shape, device where) {
  LC_CHECK(v.type() == type && v.shape() == shape, op << " needs " << name << " " << type << " "
                                                      << shape << "; got " << v.type() << " "
                                                      << v.shape());
  LC_CHECK(v.is_contiguous(),
           op << " needs " << name << " contiguous; got strides " << v.strides());
  LC_CHECK(v.where() == where,
           op << " on " << where << " needs every view there; " << name << " is on " << v.where());
  LC_CHECK(v.numel() == 0 || (v.data() != nullptr && aligned(v.data(), size_of(type))),
           op << " needs " << name << " non-null and " << size_of(type) << "-byte aligned; got "
              << v.data());
}

void check_routing_config(moe_routing_config const& c) {
  std::int64_t const e = c.num_experts;
  LC_CHECK(e >= 1 && e <= moe_max_experts,
           "moe_route supports 1 to " << moe_max_experts << " experts; got " << e);
  LC_CHECK(c.top_k >= 1 && c.top_k <= std::min(e, moe_max_top_k),
           "moe_route needs 1 <= top_k <= min(experts, "
               << moe_max_top_k << ") = " << std::min(e, moe_max_top_k) << "; got top_k "
               << c.top_k);
  LC_CHECK(c.shared_experts >= 0 && c.shared_experts <= moe_max_shared_experts &&
               c.top_k + c.shared_experts <= moe_max_top_k,
           "moe_route folds 0 to " << moe_max_shared_experts << " shared experts into each token's "
                                   << "slots, with top_k + shared_experts <= " << moe_max_top_k
                                   << "; got shared_experts " << c.shared_experts << ", top_k "
                                   << c.top_k);
  LC_CHECK(c.scoring == moe_scoring::sigmoid || c.scoring == moe_scoring::softmax,
           "moe_route: unknown scoring " << int(c.scoring) << "; allowed: sigmoid, softmax");
  LC_CHECK(c.group_select == moe_group_select::none ||
               c.group_select == moe_group_select::top2_sum ||
               c.group_select == moe_group_select::max,
           "moe_route: unknown group selection " << int(c.group_select)
                                                 << "; allowed: none, top2_sum, max");
  if (c.group_select == moe_group_select::none) return;
  LC_CHECK(c.n_group >= 1 && c.n_group <= moe_max_groups && e % c.n_group == 0,
           "moe_route needs n_group in [1, " << moe_max_groups << "] dividing the " << e
                                             << " experts; got n_group " << c.n_group);
  std::int64_t const group_size = e / c.n_group;
  LC_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group,
           "moe_route needs 1 <= topk_group <= n_group = " << c.n_group << "; got topk_group "
                                                           << c.topk_group);
  LC_CHECK(c.topk_group * group_size >= c.top_k,
           "moe_route needs the kept groups to hold at least top_k experts; got topk_group "
               << c.topk_group << " x " << group_size << " experts per group < top_k " << c.top_k);
  LC_CHECK(c.group_select != moe_group_select::top2_sum || group_size >= 2,
           "moe_route scores a group by its two best experts (noaux_tc), which needs at least 2 "
           "experts per group; got "
               << e << " experts in " << c.n_group << " groups");
}

}  // namespace

moe_routing_params make_moe_routing_params(device where, tensor_view const& logits,
                                           tensor_view const& bias,
                                           moe_routing_config const& config,
                                           tensor_view const& topk_ids,
                                           tensor_view const& topk_weights) {
  check_routing_config(config);
  std::int64_t const e = config.num_experts, k = config.top_k + config.shared_experts;
  LC_CHECK(logits.type() == dtype::f32 && logits.rank() == 2 && logits.size(1) == e,
           "moe_route needs logits [tokens, " << e << "] f32 (the gate GEMM's output); got "
                                              << logits.type() << " " << logits.shape());
  std::int64_t const tokens = logits.size(0);
  LC_CHECK(tokens <= INT32_MAX / k,
           "moe_route supports tokens * (top_k + shared_experts) < 2^31; "
           "got tokens "
               << tokens << ", slots " << k);
  LC_CHECK(logits.where() == where,
           "moe_route on " << where << " needs every view there; logits are on " << logits.where());
  std::int64_t const row_stride = tokens <= 1 ? e : logits.stride(0);
  LC_CHECK(
      logits.stride(1) == 1 && row_stride >= e,
      "moe_route needs logits with unit column stride and a row stride >= experts; got " << logits);
  LC_CHECK(tokens == 0 || (logits.data() != nullptr && aligned(logits.data(), 4)),
           "moe_route needs logits non-null and 4-byte aligned; got " << logits.data());
  bool const has_bias = bias.data() != nullptr;
  if (has_bias) check_vector_view("moe_route", "bias", bias, dtype::f32, {e}, where);
  check_vector_view("moe_route", "topk_ids", topk_ids, dtype::i32, {tokens, k}, where);
  check_vector_view("moe_route", "topk_weights", topk_weights, dtype::f32, {tokens, k}, where);
  check_disjoint("moe_route", {{"logits", &logits},
                               {"bias", &bias},
                               {"topk_ids", &topk_ids},
                               {"topk_weights", &topk_weights}});

  moe_routing_params p;
  p.logits = logits.data_as<float>();
  p.bias = has_bias ? bias.data_as<float>() : nullptr;
  p.topk_ids = topk_ids.data_as<std::int32_t>();
  p.topk_weights = topk_weights.data_as<float>();
  p.tokens = tokens;
  p.logits_stride = row_stride;
  p.experts = int(e);
  p.top_k = int(config.top_k);
  p.shared_experts = int(config.shared_experts);
  // Every group kept is the same as no group stage: skip it (HF masks nothing then either).
  bool const grouped =
      config.group_select != moe_group_select::none && config.topk_group < config.n_group;
  p.n_group = grouped ? int(config.n_group) : 1;
  p.topk_group = grouped ? int(config.topk_group) : 1;
  p.group_select = grouped ? config.group_select : moe_group_select::none;
  p.scoring = config.scoring;
  p.renormalize = config.norm_topk_prob;
  p.routed_scaling_factor = config.routed_scaling_factor;
  return p;
}

moe_align_params make_moe_align_params(device where, tensor_view const& topk_ids,
                                       std::int64_t num_experts, std::int64_t block_m,
                                       moe_align_outputs const& out) {
  LC_CHECK(topk_ids.type() == dtype::i32 && topk_ids.rank() == 2,
           "moe_align needs topk_ids [tokens, top_k] i32; got " << topk_ids.type() << " "
                                                                << topk_ids.shape());
  std::int64_t const tokens = topk_ids.size(0), k = topk_ids.size(1);
  moe_align_sizes const cap = moe_align_capacity(tokens, k, num_experts, block_m);
  std::int64_t const rows = tokens * k;
  check_vector_view("moe_align", "topk_ids", topk_ids, dtype::i32, {tokens, k}, where);
  check_vector_view("moe_align", "expert_counts", out.expert_counts, dtype::i32, {num_experts},
                    where);
  check_vector_view("moe_align", "expert_offsets", out.expert_offsets, dtype::i32,
                    {num_experts + 1}, where);
  check_vector_view("moe_align", "total_padded", out.total_padded, dtype::i32, {1}, where);
  check_vector_view("moe_align", "inverse", out.inverse, dtype::i32, {tokens, k}, where);
  LC_CHECK(out.sorted_token_ids.rank() == 1 && out.sorted_token_ids.size(0) >= cap.sorted_rows &&
               out.sorted_token_ids.size(0) <= INT32_MAX,
           "moe_align needs sorted_token_ids [n] with "
               << cap.sorted_rows << " <= n < 2^31 (tokens " << tokens << ", top_k " << k
               << ", experts " << num_experts << ", block_m " << block_m << "); got "
               << out.sorted_token_ids.shape());
  check_vector_view("moe_align", "sorted_token_ids", out.sorted_token_ids, dtype::i32,
                    out.sorted_token_ids.shape(), where);
  LC_CHECK(out.expert_of_block.rank() == 1 && out.expert_of_block.size(0) >= cap.blocks &&
               out.expert_of_block.size(0) <= INT32_MAX,
           "moe_align needs expert_of_block [n] with "
               << cap.blocks << " <= n < 2^31 (tokens " << tokens << ", top_k " << k << ", experts "
               << num_experts << ", block_m " << block_m << "); got "
               << out.expert_of_block.shape());
  check_vector_view("moe_align", "expert_of_block", out.expert_of_block, dtype::i32,
                    out.expert_of_block.shape(), where);
  check_disjoint("moe_align", {{"topk_ids", &topk_ids},
                               {"expert_counts", &out.expert_counts},
                               {"expert_offsets", &out.expert_offsets},
                               {"sorted_token_ids", &out.sorted_token_ids},
                               {"expert_of_block", &out.expert_of_block},
                               {"total_padded", &out.total_padded},
                               {"inverse", &out.inverse}});

  moe_align_params p;
  p.topk_ids = topk_ids.data_as<std::int32_t>();
  p.expert_counts = out.expert_counts.data_as<std::int32_t>();
  p.expert_offsets = out.expert_offsets.data_as<std::int32_t>();
  p.sorted_ids = out.sorted_token_ids.data_as<std::int32_t>();
  p.expert_of_block = out.expert_of_block.data_as<std::int32_t>();
  p.total_padded = out.total_padded.data_as<std::int32_t>();
  p.inverse = out.inverse.data_as<std::int32_t>();
  p.rows = rows;
  p.sorted_capacity = out.sorted_token_ids.size(0);
  p.block_capacity = out.expert_of_block.size(0);
  p.experts = int(num_experts);
  p.block_m = int(block_m);
  return p;
}

}  // namespace detail
}  // namespace lightcore::kernels
