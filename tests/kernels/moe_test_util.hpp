// Helpers shared by the moe tests (CPU and CUDA): random gate logits, the routing written
// independently in double precision step by step as Hugging Face's DeepseekV3TopkRouter and
// DeepseekV2 MoEGate compute it (with the margins that say how close a token is to a tie), and
// the invariants every alignment must satisfy, checked without the CPU reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/moe/moe.hpp"

namespace lightcore::test {

using kernels::moe_group_select;
using kernels::moe_routing_config;
using kernels::moe_scoring;

// [tokens, stride] gate logits, normal with standard deviation 2 (sigmoid scores spread over
// (0, 1)); the columns from experts to stride are NaN, which a kernel reading them would route.
inline std::vector<float> random_logits(std::int64_t tokens, std::int64_t experts,
                                        std::int64_t stride, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> v(std::size_t(tokens * stride), std::numeric_limits<float>::quiet_NaN());
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t e = 0; e < experts; ++e) v[std::size_t(t * stride + e)] = normal(rng);
  return v;
}

// A correction bias like a trained one: small next to the spread of the scores.
inline std::vector<float> random_bias(std::int64_t experts, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  std::vector<float> v(static_cast<std::size_t>(experts));
  for (float& x : v) x = u(rng);
  return v;
}

// One token routed by the definition: the experts in descending choice order (ties: lower
// index), their weights, the margins by which the kept groups and the chosen experts beat the
// first ones left out (infinite where nothing is left out), and the smallest gap between
// consecutive chosen experts (which decides their order, not the set).
struct routed_token {
  std::vector<int> experts;
  std::vector<double> weights;
  double group_margin = std::numeric_limits<double>::infinity();
  double expert_margin = std::numeric_limits<double>::infinity();
  double order_margin = std::numeric_limits<double>::infinity();
  double set_margin() const { return std::min(group_margin, expert_margin); }
};

// Indices of v sorted by descending value, ties by ascending index (torch.topk's order is not
// specified on ties; this is the rule lightcore documents).
inline std::vector<int> order_desc(std::vector<double> const& v) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int a, int b) { return v[std::size_t(a)] > v[std::size_t(b)]; });
  return idx;
}

// HF, op by op, in double: scores = sigmoid(logits) or softmax(logits); scores_for_choice =
// scores + bias; group_scores = topk(2).sum() or max() per group; keep topk_group groups;
// masked_fill(~mask, 0.0); topk(top_k); weights = scores.gather(ids); / (sum + 1e-20) if
// norm_topk_prob; * routed_scaling_factor.
inline routed_token route_definition(float const* logits, float const* bias,
                                     moe_routing_config const& c) {
  auto const n = std::size_t(c.num_experts);
  std::vector<double> score(n), choice(n);
  if (c.scoring == moe_scoring::sigmoid) {
    for (std::size_t e = 0; e < n; ++e) score[e] = 1.0 / (1.0 + std::exp(-double(logits[e])));
  } else {
    double const max = *std::max_element(logits, logits + n);
    double sum = 0.0;
    for (std::size_t e = 0; e < n; ++e) sum += score[e] = std::exp(double(logits[e]) - max);
    for (double& s : score) s /= sum;
  }
  for (std::size_t e = 0; e < n; ++e) choice[e] = score[e] + (bias ? double(bias[e]) : 0.0);

  routed_token r;
  if (c.group_select != moe_group_select::none && c.topk_group < c.n_group) {
    std::size_t const size = n / std::size_t(c.n_group);
    std::vector<double> group_score(std::size_t(c.n_group));
    for (std::size_t g = 0; g < group_score.size(); ++g) {
      std::vector<double> m(choice.begin() + std::ptrdiff_t(g * size),
                            choice.begin() + std::ptrdiff_t((g + 1) * size));
      std::sort(m.begin(), m.end(), std::greater<>());
      group_score[g] = c.group_select == moe_group_select::top2_sum ? m[0] + m[1] : m[0];
    }
    auto const groups = order_desc(group_score);
    auto const kept = std::size_t(c.topk_group);
    r.group_margin =
        group_score[std::size_t(groups[kept - 1])] - group_score[std::size_t(groups[kept])];
    std::vector<bool> keep(group_score.size(), false);
    for (std::size_t i = 0; i < kept; ++i) keep[std::size_t(groups[i])] = true;
    for (std::size_t e = 0; e < n; ++e)
      if (!keep[e / size]) choice[e] = 0.0;
  }
  auto const order = order_desc(choice);
  auto const k = std::size_t(c.top_k);
  if (k < n) r.expert_margin = choice[std::size_t(order[k - 1])] - choice[std::size_t(order[k])];
  for (std::size_t i = 1; i < k; ++i)
    r.order_margin =
        std::min(r.order_margin, choice[std::size_t(order[i - 1])] - choice[std::size_t(order[i])]);
  double sum = 0.0;
  for (std::size_t i = 0; i < k; ++i) sum += score[std::size_t(order[i])];
  for (std::size_t i = 0; i < k; ++i) {
    double w = score[std::size_t(order[i])];
    if (c.norm_topk_prob) w /= sum + 1e-20;
    r.experts.push_back(order[i]);
    r.weights.push_back(w * double(c.routed_scaling_factor));
  }
  return r;
}

// How one token's routing (ids and weights [k]) differs from the definition's, "" if it does not:
// the same set of experts with weights within rtol (relative); the same order too when
// order_margin > tie_margin. The caller skips tokens whose set_margin() <= tie_margin.
inline std::string routing_difference(std::int32_t const* ids, float const* weights,
                                      routed_token const& want, double tie_margin, double rtol) {
  std::ostringstream os;
  auto const k = want.experts.size();
  bool const ordered = want.order_margin > tie_margin;
  for (std::size_t i = 0; i < k; ++i) {
    std::size_t at = k;
    for (std::size_t j = 0; j < k; ++j)
      if (ids[j] == want.experts[i]) at = j;
    double const w = want.weights[i];
    if (at == k || (ordered && at != i) || !(std::fabs(weights[at] - w) <= rtol * std::fabs(w))) {
      os << "choice " << i << ": want expert " << want.experts[i] << " weight " << w << "; got ";
      for (std::size_t j = 0; j < k; ++j) os << (j ? ", " : "") << ids[j] << ":" << weights[j];
      return os.str();
    }
  }
  return {};
}

// Every invariant of an alignment of ids [rows] (rows = tokens * top_k) over `experts` experts
// padded to block_m, checked from the definition alone; "" when all hold, else the first few
// violations.
struct alignment_host {
  std::vector<std::int32_t> counts, offsets, sorted, block_expert, total, inverse;
};

inline std::string alignment_violations(std::vector<std::int32_t> const& ids, std::int64_t experts,
                                        std::int64_t block_m, alignment_host const& a) {
  std::ostringstream os;
  int found = 0;
  auto const fail = [&](auto const&... parts) {
    if (++found <= 8) ((os << parts), ...) << "\n";
  };
  auto const rows = std::int32_t(ids.size());
  std::vector<std::int32_t> count(std::size_t(experts), 0);
  for (std::int32_t id : ids)
    if (id >= 0 && id < experts) ++count[std::size_t(id)];
  std::int64_t offset = 0;
  for (std::int64_t e = 0; e < experts; ++e) {
    if (a.counts[std::size_t(e)] != count[std::size_t(e)])
      fail("count of expert ", e, " is ", a.counts[std::size_t(e)], ", want ",
           count[std::size_t(e)]);
    if (a.offsets[std::size_t(e)] != offset)
      fail("offset of expert ", e, " is ", a.offsets[std::size_t(e)], ", want ", offset);
    offset += (count[std::size_t(e)] + block_m - 1) / block_m * block_m;
  }
  if (a.offsets[std::size_t(experts)] != offset || a.total[0] != offset)
    fail("total is ", a.offsets[std::size_t(experts)], " / ", a.total[0], ", want ", offset);
  if (found > 0) return os.str();  // the rest relies on the offsets

  // Each expert's range: its rows in ascending order, then the sentinel; the tail: sentinel.
  std::vector<std::int32_t> next(std::size_t(experts), 0);  // rows of e placed so far
  std::vector<std::int32_t> want_place(std::size_t(rows), -1);
  for (std::int32_t r = 0; r < rows; ++r) {
    std::int32_t const e = ids[std::size_t(r)];
    if (e >= 0 && e < experts)
      want_place[std::size_t(r)] = a.offsets[std::size_t(e)] + next[std::size_t(e)]++;
  }
  std::vector<std::int32_t> want_sorted(a.sorted.size(), rows);
  for (std::int32_t r = 0; r < rows; ++r)
    if (want_place[std::size_t(r)] >= 0) want_sorted[std::size_t(want_place[std::size_t(r)])] = r;
  for (std::size_t i = 0; i < a.sorted.size(); ++i)
    if (a.sorted[i] != want_sorted[i])
      fail("sorted_token_ids[", i, "] is ", a.sorted[i], ", want ", want_sorted[i]);
  for (std::size_t r = 0; r < std::size_t(rows); ++r)
    if (a.inverse[r] != want_place[r])
      fail("inverse[", r, "] is ", a.inverse[r], ", want ", want_place[r]);
  for (std::size_t b = 0; b < a.block_expert.size(); ++b) {
    std::int64_t want = -1;
    for (std::int64_t e = 0; e < experts; ++e)
      if (std::int64_t(b) * block_m >= a.offsets[std::size_t(e)] &&
          std::int64_t(b) * block_m < a.offsets[std::size_t(e + 1)])
        want = e;
    if (a.block_expert[b] != want)
      fail("expert_of_block[", b, "] is ", a.block_expert[b], ", want ", want);
  }
  if (found > 8) os << "(" << found << " violations in all)\n";
  return os.str();
}

}  // namespace lightcore::test
