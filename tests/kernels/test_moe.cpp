// moe_route and moe_align on the CPU backend: routing against the double-precision definition of
// Hugging Face's routers (V3/R1, V2, V2-Lite and odd shapes) on fresh random logits, the tie
// rule, the bias that only chooses, HF's zero-masking of dropped groups, renormalisation; the
// alignment against its invariants (random routing, one expert taking every token, experts with
// none, ids of other ranks, no tokens, oversized buffers) and a hand-worked example; bad
// arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "convert_test_util.hpp"
#include "kernels/moe/moe.hpp"
#include "lightcore/backend/cpu.hpp"
#include "moe_test_util.hpp"

namespace lightcore {
namespace {

using kernels::moe_align_capacity;
using kernels::moe_align_outputs;
using kernels::moe_group_select;
using kernels::moe_routing_config;
using kernels::moe_scoring;

struct routed {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

routed route_cpu(std::vector<float>& logits, std::int64_t tokens, std::int64_t stride,
                 std::vector<float>* bias, moe_routing_config const& c) {
  backend::cpu cpu;
  std::int64_t const slots = c.top_k + c.shared_experts;
  routed r{std::vector<std::int32_t>(std::size_t(tokens * slots), -7),
           std::vector<float>(std::size_t(tokens * slots), std::nanf(""))};
  tensor_view const l(logits.data(), dtype::f32, {tokens, c.num_experts}, {stride, 1},
                      device::cpu());
  tensor_view const b =
      bias ? tensor_view(bias->data(), dtype::f32, {c.num_experts}) : tensor_view{};
  kernels::moe_route(cpu, l, b, c, tensor_view(r.ids.data(), dtype::i32, {tokens, slots}),
                     tensor_view(r.weights.data(), dtype::f32, {tokens, slots}), cpu.make_stream());
  return r;
}

// Odd shapes beside the models': groups that are not whole runs of lanes, top_k not a power of 2.
moe_routing_config odd_grouped() {
  return {48, 5, 4, 2, moe_scoring::sigmoid, moe_group_select::top2_sum, true, 1.5f};
}
moe_routing_config odd_softmax_grouped() {
  return {200, 7, 8, 3, moe_scoring::softmax, moe_group_select::max, true, 1.0f};
}

// Margin below which a token counts as a near tie: f32 rounding of the scores (and of a group's
// sum of two) is ~1e-7 here, so a larger margin decides the same way in f32 and in double.
constexpr double tie_margin = 1e-5;
// Weights: f32 sigmoid/softmax and a division or two, against double: relative 1e-5.
constexpr double weight_rtol = 1e-5;

void expect_matches_definition(moe_routing_config const& c, std::int64_t tokens, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "E " << c.num_experts << ", top-" << c.top_k << ", tokens "
                                    << tokens << (with_bias ? ", bias" : ""));
  auto rng = test::test_rng();
  std::int64_t const stride = c.num_experts + 5;  // a padded row stride
  auto logits = test::random_logits(tokens, c.num_experts, stride, rng);
  auto bias = test::random_bias(c.num_experts, rng);
  auto const got = route_cpu(logits, tokens, stride, with_bias ? &bias : nullptr, c);
  std::int64_t near_ties = 0, bad = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    auto const want =
        test::route_definition(logits.data() + t * stride, with_bias ? bias.data() : nullptr, c);
    if (want.set_margin() <= tie_margin) {
      ++near_ties;
      continue;
    }
    auto const at = std::size_t(t * c.top_k);
    auto const diff = test::routing_difference(got.ids.data() + at, got.weights.data() + at, want,
                                               tie_margin, weight_rtol);
    if (!diff.empty() && ++bad <= 8) ADD_FAILURE() << "token " << t << ": " << diff;
  }
  EXPECT_EQ(bad, 0);
  // Random normal logits make near ties rare; many would mean the margins are computed wrongly.
  EXPECT_LE(near_ties, 2 + tokens / 100) << near_ties << " near-tie tokens of " << tokens;
}

TEST(MoeRouteCpu, MatchesDefinitionDeepSeekV3) {
  for (std::int64_t tokens : {1, 7, 513}) {
    expect_matches_definition(moe_routing_config::deepseek_v3(), tokens, true);
    expect_matches_definition(moe_routing_config::deepseek_v3(), tokens, false);
  }
}

TEST(MoeRouteCpu, MatchesDefinitionDeepSeekV2AndV2Lite) {
  for (std::int64_t tokens : {1, 7, 513}) {
    expect_matches_definition(moe_routing_config::deepseek_v2(), tokens, false);
    expect_matches_definition(moe_routing_config::deepseek_v2_lite(), tokens, false);
  }
}

TEST(MoeRouteCpu, MatchesDefinitionOddShapes) {
  expect_matches_definition(odd_grouped(), 300, true);
  // Softmax without a bias, as V2 has none: a bias shared by every token would dominate the tiny
  // softmax scores and make near ties common (200 uniform biases lie ~5e-6 apart at the closest).
  expect_matches_definition(odd_softmax_grouped(), 300, false);
  moe_routing_config greedy_sigmoid = odd_grouped();
  greedy_sigmoid.group_select = moe_group_select::none;
  expect_matches_definition(greedy_sigmoid, 300, false);
  moe_routing_config all_groups = moe_routing_config::deepseek_v3();
  all_groups.topk_group = all_groups.n_group;  // every group kept: a plain top-k
  expect_matches_definition(all_groups, 100, true);
}

// Shared experts folded in: the routed slots as without them, then experts E.. with weight 1.
TEST(MoeRouteCpu, SharedExpertsFollowTheRoutedSlots) {
  for (auto c : {moe_routing_config::deepseek_v3(), moe_routing_config::deepseek_v2_lite()}) {
    std::int64_t const tokens = 65, k = c.top_k, stride = c.num_experts;
    auto rng = test::test_rng();
    auto logits = test::random_logits(tokens, c.num_experts, stride, rng);
    auto bias = test::random_bias(c.num_experts, rng);
    std::vector<float>* b = c.scoring == moe_scoring::sigmoid ? &bias : nullptr;
    auto const base = route_cpu(logits, tokens, stride, b, c);
    c.shared_experts = 2;
    auto const got = route_cpu(logits, tokens, stride, b, c);
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t i = 0; i < k; ++i) {
        EXPECT_EQ(got.ids[std::size_t(t * (k + 2) + i)], base.ids[std::size_t(t * k + i)]);
        EXPECT_EQ(got.weights[std::size_t(t * (k + 2) + i)], base.weights[std::size_t(t * k + i)]);
      }
      for (std::int64_t j = 0; j < 2; ++j) {
        EXPECT_EQ(got.ids[std::size_t(t * (k + 2) + k + j)], c.num_experts + j);
        EXPECT_EQ(got.weights[std::size_t(t * (k + 2) + k + j)], 1.0f);
      }
    }
  }
}

// Equal choices: the lower expert index first; equal groups: the lower group index.
TEST(MoeRouteCpu, TiesGoToTheLowerIndex) {
  auto const v3 = moe_routing_config::deepseek_v3();
  std::vector<float> logits(2 * 256, 0.0f);  // every score 0.5, every group 1.0
  auto const r = route_cpu(logits, 2, 256, nullptr, v3);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(r.ids[std::size_t(i)], i % 8) << i;
    EXPECT_EQ(r.weights[std::size_t(i)], 0.5f / (4.0f + 1e-20f) * 2.5f) << i;
  }
  // Raise group 5's best expert: group 5 joins groups 0, 1, 2 and wins the first choice.
  logits[5 * 32 + 9] = 1.0f;
  auto const r2 = route_cpu(logits, 1, 256, nullptr, v3);
  EXPECT_EQ(r2.ids[0], 5 * 32 + 9);
  for (int i = 1; i < 8; ++i) EXPECT_EQ(r2.ids[std::size_t(i)], i - 1);

  auto const lite = moe_routing_config::deepseek_v2_lite();
  std::vector<float> flat(64, 3.0f);
  auto const r3 = route_cpu(flat, 1, 64, nullptr, lite);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r3.ids[std::size_t(i)], i);
    EXPECT_EQ(r3.weights[std::size_t(i)], 1.0f / 64.0f);  // softmax of equal logits, unscaled
  }
}

// The bias decides which experts are chosen; the weights come from the unbiased scores.
TEST(MoeRouteCpu, BiasOnlyChooses) {
  auto rng = test::test_rng();
  auto const v3 = moe_routing_config::deepseek_v3();
  std::int64_t const tokens = 64;
  auto logits = test::random_logits(tokens, 256, 256, rng);
  auto bias = test::random_bias(256, rng);
  bias[77] = 10.0f;  // expert 77 (group 2) is chosen first by every token
  auto const r = route_cpu(logits, tokens, 256, &bias, v3);
  for (std::int64_t t = 0; t < tokens; ++t) {
    EXPECT_EQ(r.ids[std::size_t(t * 8)], 77) << "token " << t;
    double sum = 0.0, score77 = 1.0 / (1.0 + std::exp(-double(logits[std::size_t(t * 256 + 77)])));
    for (int i = 0; i < 8; ++i) {
      int const e = r.ids[std::size_t(t * 8 + i)];
      sum += 1.0 / (1.0 + std::exp(-double(logits[std::size_t(t * 256 + e)])));
    }
    EXPECT_NEAR(r.weights[std::size_t(t * 8)], score77 / sum * 2.5, 1e-5) << "token " << t;
  }
}

// HF replaces the choice of every expert outside the kept groups with 0.0, not -inf: when the
// kept experts' choices are all negative, the dropped groups' experts (all at 0.0, ties to the
// lower index) are the ones chosen. Reproduced, not "fixed".
TEST(MoeRouteCpu, DroppedGroupsScoreZeroAsInHuggingFace) {
  auto rng = test::test_rng();
  auto const v3 = moe_routing_config::deepseek_v3();
  auto logits = test::random_logits(1, 256, 256, rng);
  std::vector<float> bias(256, -2.0f);  // every choice in (-2, -1)
  auto const r = route_cpu(logits, 1, 256, &bias, v3);
  auto const want = test::route_definition(logits.data(), bias.data(), v3);
  // The 4 best groups by the sum of their two best choices are kept; the lowest-index group left
  // out gives its first 8 experts, by the tie rule.
  std::vector<double> group_score(8);
  for (std::size_t g = 0; g < 8; ++g) {
    std::vector<double> c(32);
    for (std::size_t j = 0; j < 32; ++j)
      c[j] = 1.0 / (1.0 + std::exp(-double(logits[g * 32 + j]))) - 2.0;
    std::sort(c.begin(), c.end(), std::greater<>());
    group_score[g] = c[0] + c[1];
  }
  auto const groups = test::order_desc(group_score);
  int first_dropped = 8;
  for (std::size_t i = 4; i < 8; ++i) first_dropped = std::min(first_dropped, groups[i]);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(r.ids[std::size_t(i)], want.experts[std::size_t(i)]);
    EXPECT_EQ(r.ids[std::size_t(i)], first_dropped * 32 + i);
    EXPECT_NEAR(r.weights[std::size_t(i)], want.weights[std::size_t(i)], 1e-5);
  }
}

TEST(MoeRouteCpu, RenormalisedWeightsSumToTheScale) {
  auto rng = test::test_rng();
  auto const v3 = moe_routing_config::deepseek_v3();
  auto logits = test::random_logits(100, 256, 256, rng);
  auto bias = test::random_bias(256, rng);
  auto const r = route_cpu(logits, 100, 256, &bias, v3);
  for (std::int64_t t = 0; t < 100; ++t) {
    double sum = 0.0;
    for (int i = 0; i < 8; ++i) sum += r.weights[std::size_t(t * 8 + i)];
    EXPECT_NEAR(sum, 2.5, 1e-5) << "token " << t;
  }
}

TEST(MoeRouteCpu, NoTokensIsANoOp) {
  std::vector<float> logits;
  auto const r = route_cpu(logits, 0, 256, nullptr, moe_routing_config::deepseek_v3());
  EXPECT_TRUE(r.ids.empty());
}

TEST(MoeConfig, ParsesConfigJsonNames) {
  EXPECT_EQ(kernels::parse_moe_scoring("sigmoid"), moe_scoring::sigmoid);
  EXPECT_EQ(kernels::parse_moe_scoring("softmax"), moe_scoring::softmax);
  EXPECT_EQ(kernels::parse_moe_topk_method("noaux_tc"), moe_group_select::top2_sum);
  EXPECT_EQ(kernels::parse_moe_topk_method("group_limited_greedy"), moe_group_select::max);
  EXPECT_EQ(kernels::parse_moe_topk_method("greedy"), moe_group_select::none);
  test::expect_error([] { kernels::parse_moe_scoring("tanh"); }, {"\"tanh\"", "sigmoid, softmax"});
  test::expect_error([] { kernels::parse_moe_topk_method("aux"); },
                     {"\"aux\"", "noaux_tc, group_limited_greedy, greedy"});
}

// Alignment --------------------------------------------------------------------------------------

struct aligned_buffers {
  std::vector<std::int32_t> counts, offsets, sorted, blocks, total, inverse;
  aligned_buffers(std::int64_t rows, std::int64_t experts, std::int64_t sorted_rows,
                  std::int64_t block_count)
      : counts(std::size_t(experts), -9),
        offsets(std::size_t(experts + 1), -9),
        sorted(std::size_t(sorted_rows), -9),
        blocks(std::size_t(block_count), -9),
        total(1, -9),
        inverse(std::size_t(rows), -9) {}
  moe_align_outputs views(std::int64_t tokens, std::int64_t k) {
    auto const v = [](std::vector<std::int32_t>& x, dims d) {
      return tensor_view(x.data(), dtype::i32, d);
    };
    return {v(counts, {std::int64_t(counts.size())}),
            v(offsets, {std::int64_t(offsets.size())}),
            v(sorted, {std::int64_t(sorted.size())}),
            v(blocks, {std::int64_t(blocks.size())}),
            v(total, {1}),
            v(inverse, {tokens, k})};
  }
  test::alignment_host host() const { return {counts, offsets, sorted, blocks, total, inverse}; }
};

// Aligns ids [tokens, k] on the CPU into buffers `extra` elements longer than the capacity, and
// checks the invariants.
aligned_buffers align_cpu(std::vector<std::int32_t>& ids, std::int64_t tokens, std::int64_t k,
                          std::int64_t experts, std::int64_t block_m, std::int64_t extra = 0) {
  auto const cap = moe_align_capacity(tokens, k, experts, block_m);
  aligned_buffers out(tokens * k, experts, cap.sorted_rows + extra, cap.blocks + extra);
  backend::cpu cpu;
  kernels::moe_align(cpu, tensor_view(ids.data(), dtype::i32, {tokens, k}), experts, block_m,
                     out.views(tokens, k), cpu.make_stream());
  EXPECT_EQ(test::alignment_violations(ids, experts, block_m, out.host()), "")
      << "tokens " << tokens << ", top-" << k << ", E " << experts << ", block_m " << block_m;
  return out;
}

// Routed ids of random logits: what the grouped GEMM will see.
std::vector<std::int32_t> routed_ids(std::int64_t tokens, moe_routing_config const& c,
                                     std::mt19937_64& rng) {
  auto logits = test::random_logits(tokens, c.num_experts, c.num_experts, rng);
  auto bias = test::random_bias(c.num_experts, rng);
  return route_cpu(logits, tokens, c.num_experts, &bias, c).ids;
}

TEST(MoeAlignCpu, CapacityFormula) {
  // rows + min(E, rows) * (block_m - 1), rounded up to block_m.
  EXPECT_EQ(moe_align_capacity(1, 8, 256, 128).sorted_rows, 1024);  // 8 + 8 * 127 = 1024
  EXPECT_EQ(moe_align_capacity(1, 8, 256, 128).blocks, 8);
  EXPECT_EQ(moe_align_capacity(8192, 8, 256, 128).sorted_rows, 65536 + 256 * 127 + 0);
  EXPECT_EQ(moe_align_capacity(3, 6, 64, 64).sorted_rows, (18 + 18 * 63 + 63) / 64 * 64);
  EXPECT_EQ(moe_align_capacity(0, 8, 256, 128).sorted_rows, 0);
  EXPECT_EQ(moe_align_capacity(5, 2, 4, 1).sorted_rows, 10);
}

TEST(MoeAlignCpu, HandWorkedExample) {
  // 3 tokens x top-2 over 4 experts, block_m 2: rows 0..5 go to experts 2, 0, 2, 3, 0, 2.
  std::vector<std::int32_t> ids{2, 0, 2, 3, 0, 2};
  auto const out = align_cpu(ids, 3, 2, 4, 2);
  EXPECT_EQ(out.counts, (std::vector<std::int32_t>{2, 0, 3, 1}));
  EXPECT_EQ(out.offsets, (std::vector<std::int32_t>{0, 2, 2, 6, 8}));
  std::vector<std::int32_t> sorted{1, 4, 0, 2, 5, 6, 3, 6};  // sentinel 6 = tokens * top_k
  sorted.resize(out.sorted.size(), 6);
  EXPECT_EQ(out.sorted, sorted);
  std::vector<std::int32_t> blocks{0, 2, 2, 3};
  blocks.resize(out.blocks.size(), -1);
  EXPECT_EQ(out.blocks, blocks);
  EXPECT_EQ(out.total[0], 8);
  EXPECT_EQ(out.inverse, (std::vector<std::int32_t>{2, 0, 3, 6, 1, 4}));
}

TEST(MoeAlignCpu, RandomRoutingAllBlockSizes) {
  auto rng = test::test_rng();
  for (std::int64_t tokens : {1, 3, 64, 1000}) {
    auto ids = routed_ids(tokens, moe_routing_config::deepseek_v3(), rng);
    for (std::int64_t block_m : {1, 16, 64, 128}) align_cpu(ids, tokens, 8, 256, block_m, 3);
    auto lite = routed_ids(tokens, moe_routing_config::deepseek_v2_lite(), rng);
    align_cpu(lite, tokens, 6, 64, 64);
  }
}

TEST(MoeAlignCpu, OneExpertTakesEveryTokenAndMostGetNone) {
  std::int64_t const tokens = 777, k = 8;
  std::vector<std::int32_t> ids(std::size_t(tokens * k));
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t s = 0; s < k; ++s)
      ids[std::size_t(t * k + s)] = std::int32_t(s == 3 ? 200 : (t + s) % 5 * 7);  // 6 experts
  auto const out = align_cpu(ids, tokens, k, 256, 128);
  EXPECT_EQ(out.counts[200], tokens);
  int empty = 0;
  for (std::int32_t c : out.counts) empty += c == 0;
  EXPECT_EQ(empty, 256 - 6);
}

TEST(MoeAlignCpu, IdsOfOtherRanksAreLeftOut) {
  std::vector<std::int32_t> ids{-1, 3, 64, 0, 3, 1000, 2, -5};
  auto const out = align_cpu(ids, 4, 2, 64, 4);
  EXPECT_EQ(out.inverse[0], -1);
  EXPECT_EQ(out.inverse[2], -1);
  EXPECT_EQ(out.total[0], 12);  // experts 0, 2, 3: one block of 4 each
}

TEST(MoeAlignCpu, NoTokensWritesEveryBuffer) {
  std::vector<std::int32_t> ids;
  auto const out = align_cpu(ids, 0, 8, 256, 64, 5);
  for (std::int32_t v : out.sorted) EXPECT_EQ(v, 0);
  for (std::int32_t v : out.blocks) EXPECT_EQ(v, -1);
  EXPECT_EQ(out.total[0], 0);
}

// Errors --------------------------------------------------------------------------------------

class MoeErrors : public ::testing::Test {
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<float> logits_ = std::vector<float>(4 * 512, 0.0f);
  std::vector<std::int32_t> ids_ = std::vector<std::int32_t>(4 * 32);
  std::vector<float> weights_ = std::vector<float>(4 * 32);
  void route(moe_routing_config const& c, dims logits_shape, dims out_shape,
             dtype logits_type = dtype::f32) {
    kernels::moe_route(cpu_, tensor_view(logits_.data(), logits_type, logits_shape), tensor_view{},
                       c, tensor_view(ids_.data(), dtype::i32, out_shape),
                       tensor_view(weights_.data(), dtype::f32, out_shape), stream_);
  }
};

TEST_F(MoeErrors, RoutingConfigIsChecked) {
  auto c = moe_routing_config::deepseek_v3();
  c.num_experts = 512;
  test::expect_error([&] { route(c, {4, 512}, {4, 8}); }, {"1 to 256 experts", "got 512"});
  c = moe_routing_config::deepseek_v3();
  c.n_group = 7;
  test::expect_error(
      [&] {
        route(c, {4, 256}, {4, 8});
      },
      {"dividing the 256 experts", "n_group 7"});
  c = moe_routing_config::deepseek_v3();
  c.topk_group = 9;
  test::expect_error([&] { route(c, {4, 256}, {4, 8}); }, {"topk_group <= n_group = 8"});
  c = moe_routing_config::deepseek_v3();
  c.n_group = 32;
  c.topk_group = 1;
  c.top_k = 9;
  test::expect_error(
      [&] {
        route(c, {4, 256}, {4, 9});
      },
      {"at least top_k", "8 experts per group"});
  c = moe_routing_config::deepseek_v3();
  c.num_experts = 8;
  c.n_group = 8;
  c.top_k = 2;
  test::expect_error([&] { route(c, {4, 8}, {4, 2}); }, {"at least 2 experts per group"});
  c = moe_routing_config::deepseek_v3();
  c.top_k = 33;
  test::expect_error([&] { route(c, {4, 256}, {4, 33}); }, {"1 <= top_k <= min(experts, 32)"});
  c = moe_routing_config::deepseek_v3();
  c.shared_experts = 9;
  test::expect_error(
      [&] {
        route(c, {4, 256}, {4, 17});
      },
      {"0 to 8 shared experts",
       "got "
       "shared_experts 9"});
  c.top_k = 30;
  c.shared_experts = 3;
  test::expect_error([&] { route(c, {4, 256}, {4, 32}); }, {"top_k + shared_experts <= 32"});
  c = moe_routing_config::deepseek_v3();
  c.shared_experts = 1;
  test::expect_error([&] { route(c, {4, 256}, {4, 8}); }, {"topk_ids i32 [4, 9]", "[4, 8]"});
}

TEST_F(MoeErrors, RoutingViewsAreChecked) {
  auto const c = moe_routing_config::deepseek_v3();
  test::expect_error(
      [&] {
        route(c, {4, 256}, {4, 8}, dtype::bf16);
      },
      {"logits [tokens, 256] f32", "got bf16"});
  test::expect_error([&] { route(c, {4, 128}, {4, 8}); }, {"logits [tokens, 256] f32"});
  test::expect_error([&] { route(c, {4, 256}, {4, 6}); }, {"topk_ids i32 [4, 8]", "[4, 6]"});
  tensor_view const strided(logits_.data(), dtype::f32, {4, 256}, {1, 4}, device::cpu());
  test::expect_error(
      [&] {
        kernels::moe_route(cpu_, strided, tensor_view{}, c,
                           tensor_view(ids_.data(), dtype::i32, {4, 8}),
                           tensor_view(weights_.data(), dtype::f32, {4, 8}), stream_);
      },
      {"unit column stride"});
  test::expect_error(
      [&] {
        kernels::moe_route(cpu_, tensor_view(logits_.data(), dtype::f32, {4, 256}),
                           tensor_view(weights_.data(), dtype::f32, {255}), c,
                           tensor_view(ids_.data(), dtype::i32, {4, 8}),
                           tensor_view(weights_.data(), dtype::f32, {4, 8}), stream_);
      },
      {"bias f32 [256]", "got f32 [255]"});
  test::expect_error(
      [&] {
        kernels::moe_route(cpu_, tensor_view(logits_.data(), dtype::f32, {4, 256}), tensor_view{},
                           c, tensor_view(ids_.data(), dtype::i32, {4, 8}, device::cuda(0)),
                           tensor_view(weights_.data(), dtype::f32, {4, 8}), stream_);
      },
      {"needs every view there", "topk_ids is on cuda:0"});
}

TEST_F(MoeErrors, OverlappingBuffersAreRejected) {
  auto const c = moe_routing_config::deepseek_v3();
  test::expect_error(
      [&] {
        kernels::moe_route(cpu_, tensor_view(logits_.data(), dtype::f32, {4, 256}), tensor_view{},
                           c, tensor_view(ids_.data(), dtype::i32, {4, 8}),
                           tensor_view(ids_.data() + 16, dtype::f32, {4, 8}), stream_);
      },
      {"moe_route needs disjoint buffers", "topk_ids at", "topk_weights at"});
  std::vector<std::int32_t> ids(16, 0);
  auto const cap = moe_align_capacity(2, 8, 256, 64);
  aligned_buffers out(16, 256, cap.sorted_rows, cap.blocks);
  auto views = out.views(2, 8);
  views.inverse = tensor_view(out.sorted.data() + 3, dtype::i32, {2, 8});
  test::expect_error(
      [&] {
        kernels::moe_align(cpu_, tensor_view(ids.data(), dtype::i32, {2, 8}), 256, 64, views,
                           stream_);
      },
      {"moe_align needs disjoint buffers", "sorted_token_ids at", "inverse at"});
}

TEST_F(MoeErrors, AlignmentBuffersAreChecked) {
  std::vector<std::int32_t> ids(16, 0);
  auto const cap = moe_align_capacity(2, 8, 256, 64);
  aligned_buffers small(16, 256, cap.sorted_rows - 1, cap.blocks);
  test::expect_error(
      [&] {
        kernels::moe_align(cpu_, tensor_view(ids.data(), dtype::i32, {2, 8}), 256, 64,
                           small.views(2, 8), stream_);
      },
      {"sorted_token_ids [n] with", "<= n"});
  aligned_buffers ok(16, 256, cap.sorted_rows, cap.blocks);
  test::expect_error(
      [&] {
        kernels::moe_align(cpu_, tensor_view(ids.data(), dtype::i32, {2, 8}), 256, 0,
                           ok.views(2, 8), stream_);
      },
      {"block_m >= 1", "block_m 0"});
  test::expect_error(
      [&] {
        kernels::moe_align(cpu_, tensor_view(ids.data(), dtype::i32, {2, 8}), 128, 64,
                           ok.views(2, 8), stream_);
      },
      {"expert_counts i32 [128]", "got i32 [256]"});
}

}  // namespace
}  // namespace lightcore
