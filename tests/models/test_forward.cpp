// The DeepSeek-V3/V2 forward on the CPU backend against transformers' golden logits
// (tests/data/deepseek/*_golden.json, written by tools/deepseek_golden.py from the same random
// checkpoints, regenerated here with random_checkpoint's library code and seed 7).
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "forward_test_util.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore::test {
namespace {

using cpu_model = model_runner<backend::cpu>;

class ForwardGolden : public ::testing::TestWithParam<fixture_spec> {};

TEST_P(ForwardGolden, PrefillLogitsAndGreedyDecodeMatchTransformers) {
  fixture_spec const spec = GetParam();
  temp_dir dir;
  cpu_model m(spec, dir);
  double worst = 0;
  for (golden_case const& g : read_golden(spec.golden)) {
    SCOPED_TRACE("prompt of " + std::to_string(g.prompt.size()) + " tokens");
    auto const logits = m.forward({{g.prompt, 0, 0}}, true);
    ASSERT_EQ(logits.size(), g.logits.size());
    double max_err = 0;  // largest absolute logit error: what a greedy margin must exceed
    for (std::size_t p = 0; p < g.logits.size(); ++p) {
      double const e = rel_l2(logits[p].data(), g.logits[p]);
      worst = std::max(worst, e);
      EXPECT_LE(e, p + 1 == g.logits.size() ? spec.bound : spec.bound_any) << "position " << p;
      max_err = std::max(max_err, max_abs_diff(logits[p].data(), g.logits[p]));
    }
    int const compared = expect_golden_greedy(m, g, logits.back(), max_err);
    std::cout << spec.golden << ": prompt " << g.prompt.size() << ", logit max abs error "
              << max_err << ", greedy steps compared " << compared << "\n";
  }
  std::cout << spec.golden << ": worst relative L2 " << worst << " (bound " << spec.bound << ")\n";
}

// The CPU backend is batch-invariant (kernels/common/cpu_matmul.hpp: every product sums in an
// order that does not depend on the row count; attention, norms and routing work row by row), so
// a prompt split into chunks, or batched with other requests, gives bit-identical logits.
TEST_P(ForwardGolden, ChunkedPrefillAndBatchingGiveTheSameLogits) {
  fixture_spec const spec = GetParam();
  temp_dir dir;
  cpu_model m(spec, dir);
  auto const cases = read_golden(spec.golden);
  golden_case const& a = cases.back();  // the longest prompt
  golden_case const& b = cases[1];
  auto const whole = m.forward({{a.prompt, 0, 0}}, true);
  // Two chunks: the second attends over the first's cached KV.
  std::size_t const cut = a.prompt.size() / 2 + 1;
  std::vector<std::int32_t> const head(a.prompt.begin(), a.prompt.begin() + long(cut));
  std::vector<std::int32_t> const tail(a.prompt.begin() + long(cut), a.prompt.end());
  m.forward({{head, 0, 1}});
  auto const chunked = m.forward({{tail, std::int64_t(cut), 1}}, true);
  ASSERT_EQ(chunked.size(), tail.size());
  for (std::size_t p = 0; p < tail.size(); ++p)
    EXPECT_EQ(chunked[p], whole[cut + p]) << "position " << cut + p;
  // Alone and together: b's prompt in row 2 with a decode step of request 1 (a's prefix) and a
  // fresh prefill; each result equals the one computed alone.
  auto const b_alone = m.forward({{b.prompt, 0, 2}});
  std::int32_t const tok = argmax(whole.back());
  auto const d_alone = m.forward({{{tok}, std::int64_t(a.prompt.size()), 1}});
  auto const mixed =
      m.forward({{{tok}, std::int64_t(a.prompt.size()), 1}, {b.prompt, 0, 3}, {a.prompt, 0, 0}});
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_EQ(mixed[0], d_alone[0]);
  EXPECT_EQ(mixed[1], b_alone[0]);
  EXPECT_EQ(mixed[2], whole.back());
}

std::string golden_name(::testing::TestParamInfo<fixture_spec> const& p) {
  std::string n = p.param.golden;
  return n.substr(0, n.find("_golden"));
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ForwardGolden,
    ::testing::Values(fixture_spec{"tiny_v2_golden.json", "tiny_deepseek_v2.json",
                                   tools::weight_format::bf16, 1e-2, 5e-2},
                      fixture_spec{"tiny_v3_golden.json", "tiny_deepseek_v3.json",
                                   tools::weight_format::bf16, 1e-2, 5e-2},
                      fixture_spec{"tiny_v3_fp8_golden.json", "tiny_deepseek_v3.json",
                                   tools::weight_format::fp8, 0.15, 0.15}),
    golden_name);

}  // namespace
}  // namespace lightcore::test
