// The workload: a pure function of (seed, index), exact prompt lengths, ids inside the vocab
// range and never special, output lengths with the asked mean and std, clamped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "bench/serving/workload.hpp"

namespace {

using namespace lightcore::loadgen;

workload_config base_config() {
  workload_config c;
  c.input_len = 64;
  c.output_len_mean = 100.0;
  c.output_len_std = 20.0;
  c.vocab_min = 100;
  c.vocab_max = 50000;
  c.special_ids = {100, 101, 49999};
  c.seed = 7;
  return c;
}

TEST(Workload, SameSeedSameRequestsWhateverTheOrder) {
  workload const a(base_config());
  workload const b(base_config());
  std::vector<request_spec> forward, backward(50);
  for (std::uint64_t i = 0; i < 50; ++i) forward.push_back(a.request(i));
  for (std::uint64_t i = 50; i-- > 0;) backward[i] = b.request(i);
  for (std::size_t i = 0; i < 50; ++i) {
    EXPECT_EQ(forward[i].prompt, backward[i].prompt) << "request " << i;
    EXPECT_EQ(forward[i].max_tokens, backward[i].max_tokens) << "request " << i;
  }
  EXPECT_NE(forward[0].prompt, forward[1].prompt) << "requests must differ from each other";

  workload_config other = base_config();
  other.seed = 8;
  workload const c(other);
  int same = 0;
  for (std::uint64_t i = 0; i < 50; ++i) same += c.request(i).prompt == forward[i].prompt;
  EXPECT_EQ(same, 0) << "another seed must give other prompts";
}

TEST(Workload, PromptLengthIsExactAndIdsStayInRangeAndAvoidSpecials) {
  workload_config c = base_config();
  c.vocab_min = 10;
  c.vocab_max = 20;
  c.special_ids = {10, 13, 19, 5, 13, 1000};  // duplicates and ids outside the range are fine
  workload const w(c);
  std::set<token_id> seen;
  for (std::uint64_t i = 0; i < 100; ++i) {
    request_spec const r = w.request(i);
    ASSERT_EQ(r.prompt.size(), 64u);
    seen.insert(r.prompt.begin(), r.prompt.end());
  }
  // 6400 draws from 7 ids: every allowed id appears, nothing else does.
  EXPECT_EQ(seen, (std::set<token_id>{11, 12, 14, 15, 16, 17, 18}));
}

TEST(Workload, OutputLengthsFollowTheGaussian) {
  workload const w(base_config());
  constexpr int n = 20000;
  double sum = 0.0, sum_sq = 0.0;
  for (std::uint64_t i = 0; i < n; ++i) {
    double const len = double(w.request(i).max_tokens);
    sum += len;
    sum_sq += len * len;
  }
  double const mean = sum / n;
  double const std_dev = std::sqrt(sum_sq / n - mean * mean);
  // Standard error of the mean is 20/sqrt(20000) = 0.14 tokens; of the std about 0.1 tokens.
  // Rounding to whole tokens adds 1/12 to the variance. Bounds of ~5 standard errors.
  EXPECT_NEAR(mean, 100.0, 0.7);
  EXPECT_NEAR(std_dev, 20.0, 0.6);
}

TEST(Workload, FixedLengthAndClamps) {
  workload_config c = base_config();
  c.output_len_std = 0.0;
  c.output_len_mean = 37.0;
  workload const fixed(c);
  for (std::uint64_t i = 0; i < 100; ++i) EXPECT_EQ(fixed.request(i).max_tokens, 37);

  c.output_len_mean = 1.0;
  c.output_len_std = 50.0;
  c.output_len_max = 10;
  workload const wide(c);
  std::int64_t lo = 1 << 30, hi = 0;
  for (std::uint64_t i = 0; i < 2000; ++i) {
    std::int64_t const len = wide.request(i).max_tokens;
    lo = std::min(lo, len);
    hi = std::max(hi, len);
  }
  EXPECT_EQ(lo, 1) << "lengths are clamped to >= 1 (and about half of them hit the clamp)";
  EXPECT_EQ(hi, 10) << "lengths are clamped to output_len_max";
}

TEST(Workload, BadConfigurationsAreRejected) {
  auto expect_bad = [](workload_config const& c, char const* needle) {
    try {
      workload const w(c);
      ADD_FAILURE() << "accepted a workload with a bad " << needle;
    } catch (lightcore::error const& e) {
      EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    }
  };
  workload_config c = base_config();
  c.input_len = 0;
  expect_bad(c, "input length");
  c = base_config();
  c.output_len_mean = 0.5;
  expect_bad(c, "output length mean");
  c = base_config();
  c.output_len_std = -1.0;
  expect_bad(c, "output length std");
  c = base_config();
  c.vocab_min = 5;
  c.vocab_max = 5;
  expect_bad(c, "vocab range");
  c = base_config();
  c.vocab_min = 0;
  c.vocab_max = 2;
  c.special_ids = {0, 1};
  expect_bad(c, "no token id to draw");
}

}  // namespace
