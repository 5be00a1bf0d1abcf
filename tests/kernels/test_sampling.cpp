// sample on the CPU backend: Philox against its published answers, the shared exp/log against
// the C library, penalties / greedy / each filter / logprobs against direct definitions on small
// vocabularies, chi-square goodness of fit of many draws for every mode, reproducibility, and the
// errors for bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/sampling/sampling.hpp"
#include "kernels/sampling/sampling_math.hpp"
#include "sampling_test_util.hpp"

namespace lightcore {
namespace {

namespace sm = kernels::sampling_math;
using kernels::sampling_max_logprobs;
using kernels::sampling_request;
using test::sampling_batch;

TEST(SamplingMath, PhiloxMatchesPublishedAnswers) {
  // Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
  auto const a = sm::philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(a.v[0], 0x6627e8d5u);
  EXPECT_EQ(a.v[1], 0xe169c58du);
  EXPECT_EQ(a.v[2], 0xbc57ac4cu);
  EXPECT_EQ(a.v[3], 0x9b00dbd8u);
  auto const b = sm::philox4x32_10(~0u, ~0u, ~0u, ~0u, ~0u, ~0u);
  EXPECT_EQ(b.v[0], 0x408f276du);
  EXPECT_EQ(b.v[1], 0x41c83b0eu);
  EXPECT_EQ(b.v[2], 0xa20bc7c6u);
  EXPECT_EQ(b.v[3], 0x6d5451fdu);
  auto const c = sm::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u,
                                   0x299f31d0u);
  EXPECT_EQ(c.v[0], 0xd16cfe09u);
  EXPECT_EQ(c.v[1], 0x94fdccebu);
  EXPECT_EQ(c.v[2], 0x5001e420u);
  EXPECT_EQ(c.v[3], 0x24126ea1u);
}

// exp_nonpositive and log_positive within 4 float ulps (relative 2^-21) of the double-precision
// functions over their whole use range; the uniform stays inside (0, 1).
TEST(SamplingMath, ExpAndLogAreAccurate) {
  auto rng = test::test_rng();
  std::uniform_real_distribution<float> down(-87.0f, 0.0f);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int k = 0; k < 200000; ++k) {
    float const x = k < 1000 ? -float(k) * 0.087f : down(rng);
    double const want = std::exp(double(x));
    ASSERT_NEAR(sm::exp_nonpositive(x), want, want * 0x1p-21) << "exp(" << x << ")";
    float const u = sm::uniform_open(bits(rng));
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    double const lu = std::log(double(u));
    ASSERT_NEAR(sm::log_positive(u), lu, std::fabs(lu) * 0x1p-21 + 0x1p-46) << "log(" << u << ")";
    float const e = -sm::log_positive(u);
    double const le = std::log(double(e));
    ASSERT_NEAR(sm::log_positive(e), le, std::fabs(le) * 0x1p-21 + 0x1p-46) << "log(" << e << ")";
  }
  EXPECT_EQ(sm::exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(sm::exp_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(sm::uniform_open(0u), 0x1p-24f);
  EXPECT_EQ(sm::uniform_open(~0u), 1.0f - 0x1p-24f);
}

TEST(SamplingMath, OrderKeyOrdersLikeFloats) {
  auto rng = test::test_rng();
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (int k = 0; k < 100000; ++k) {
    float const a = normal(rng), b = k % 7 == 0 ? a : normal(rng);
    ASSERT_EQ(a < b, sm::order_key(a) < sm::order_key(b)) << a << " vs " << b;
    ASSERT_EQ(sm::key_value(sm::order_key(a)), a);
  }
  EXPECT_EQ(sm::order_key(-0.0f), sm::order_key(0.0f));
  EXPECT_LT(sm::order_key(-std::numeric_limits<float>::infinity()), sm::order_key(-1e30f));
}

// Penalties against the definition: per distinct id repetition then presence, then frequency
// once per occurrence (a count map).
TEST(SamplingCpu, PenaltiesFollowTheDefinition) {
  auto rng = test::test_rng();
  for (int trial = 0; trial < 50; ++trial) {
    std::int64_t const vocab = 37;
    auto row = test::random_logits(1, vocab, rng);
    std::vector<std::int32_t> ids;
    for (int k = 0; k < 60; ++k) ids.push_back(std::int32_t(rng() % 12) * 3);  // many repeats
    sampling_request r;
    r.repetition_penalty = 1.0f + float(rng() % 100) / 50.0f;
    r.presence_penalty = float(rng() % 100) / 40.0f - 1.0f;
    r.frequency_penalty = float(rng() % 100) / 80.0f;
    std::map<std::int32_t, int> count;
    for (auto id : ids) ++count[id];
    std::vector<float> want = row;
    for (auto [id, n] : count) {
      float l = want[std::size_t(id)];
      l = l > 0.0f ? l / r.repetition_penalty : l * r.repetition_penalty;
      l -= r.presence_penalty;
      for (int k = 0; k < n; ++k) l -= r.frequency_penalty;
      want[std::size_t(id)] = l;
    }
    kernels::detail::sampling_penalise_cpu(row.data(), vocab, ids.data(), std::int64_t(ids.size()),
                                           r);
    for (std::int64_t i = 0; i < vocab; ++i) ASSERT_EQ(row[std::size_t(i)], want[std::size_t(i)]);
  }
}

// Greedy: the argmax of the penalised logits, lowest id on ties; the input logits stay untouched.
TEST(SamplingCpu, GreedyIsTheArgmaxOfThePenalisedLogits) {
  auto rng = test::test_rng();
  sampling_request greedy;
  greedy.temperature = 0.0f;
  greedy.frequency_penalty = 0.7f;
  greedy.repetition_penalty = 1.3f;
  auto b = test::make_batch(40, 501, rng, greedy, 30);
  auto const logits = b.logits;
  auto const got = test::run_sampling_cpu(b);
  EXPECT_EQ(b.logits, logits) << "the logits are read only";
  for (std::int64_t r = 0; r < b.batch; ++r) {
    std::vector<float> row(logits.begin() + r * b.vocab, logits.begin() + (r + 1) * b.vocab);
    std::int32_t const begin = b.history_offsets[std::size_t(r)];
    kernels::detail::sampling_penalise_cpu(row.data(), b.vocab, b.history_ids.data() + begin,
                                           b.history_offsets[std::size_t(r + 1)] - begin, greedy);
    auto const want = std::max_element(row.begin(), row.end()) - row.begin();
    EXPECT_EQ(got.tokens[std::size_t(r)], want) << "row " << r;
  }
}

// Row 0: ties at the top, the lowest id wins. Row 1: the top logit (id 9, 5.0) penalised below
// id 20 (4.5): 5 / 1.3 - 0.7 - 2 * 0.7 = 1.75.
TEST(SamplingCpu, GreedyTiesAndPenaltiesDecide) {
  sampling_request greedy;
  greedy.temperature = 0.0f;
  greedy.frequency_penalty = 0.7f;
  greedy.presence_penalty = 0.7f;
  greedy.repetition_penalty = 1.3f;
  sampling_batch b;
  b.batch = 2;
  b.vocab = 30;
  b.logits.assign(60, 0.0f);
  b.logits[4] = b.logits[7] = b.logits[12] = 3.0f;
  b.logits[30 + 9] = 5.0f;
  b.logits[30 + 20] = 4.5f;
  b.requests = {greedy, greedy};
  b.positions = {0, 0};
  b.history_ids = {9, 9};
  b.history_offsets = {0, 0, 2};
  auto const got = test::run_sampling_cpu(b);
  EXPECT_EQ(got.tokens[0], 4);
  EXPECT_EQ(got.tokens[1], 20);
}

// Each filter and their combination against the brute-force definitions, on rows with and
// without ties.
TEST(SamplingCpu, FiltersMatchTheirDefinitions) {
  auto rng = test::test_rng();
  std::vector<sampling_request> modes;
  for (int k : {0, 1, 5, 40}) {
    for (float p : {1.0f, 0.9f, 0.5f, 0.05f}) {
      for (float m : {0.0f, 0.05f, 0.3f}) {
        sampling_request r;
        r.top_k = k;
        r.top_p = p;
        r.min_p = m;
        modes.push_back(r);
      }
    }
  }
  for (auto const& r : modes) {
    SCOPED_TRACE(::testing::Message()
                 << "top_k " << r.top_k << ", top_p " << r.top_p << ", min_p " << r.min_p);
    for (int trial = 0; trial < 20; ++trial) {
      std::int64_t const vocab = 1 + std::int64_t(rng() % 300);
      float const temperature = 0.3f + float(rng() % 100) / 40.0f;
      auto z = test::random_logits(1, vocab, rng);
      for (float& v : z) v = v / temperature;
      std::vector<std::uint8_t> got(static_cast<std::size_t>(vocab));
      kernels::detail::sampling_kept_cpu(z.data(), vocab, r, got.data());
      auto const want = test::brute_force_kept(z, r);
      ASSERT_EQ(got, want) << "vocab " << vocab;
      ASSERT_EQ(got[std::size_t(std::max_element(z.begin(), z.end()) - z.begin())], 1);
    }
  }
}

// Logprobs: the raw log_softmax (before penalties and temperature), the top n descending with the
// lowest id first on ties, then padding; none at all with -1. Tolerance: the reference sums in
// double and rounds the log to float; 2e-6 absolute plus 1e-6 relative covers float rounding of
// the logit differences.
TEST(SamplingCpu, LogprobsAreTheRawLogSoftmax) {
  auto rng = test::test_rng();
  for (int n : {-1, 0, 1, 7, 20}) {
    SCOPED_TRACE(::testing::Message() << "num_logprobs " << n);
    sampling_request r;
    r.num_logprobs = n;
    r.temperature = 0.7f;
    r.presence_penalty = 2.0f;
    std::int64_t const vocab = n == 20 ? 13 : 1000;  // fewer tokens than asked for: n = vocab
    auto b = test::make_batch(16, vocab, rng, r, 20);
    auto const got = test::run_sampling_cpu(b);
    for (std::int64_t row = 0; row < b.batch; ++row) {
      float const* l = b.logits.data() + row * vocab;
      double const m = *std::max_element(l, l + vocab);
      double s = 0.0;
      for (std::int64_t i = 0; i < vocab; ++i) s += std::exp(double(l[i]) - m);
      auto lp = [&](std::int64_t i) { return double(l[i]) - m - std::log(s); };
      std::int32_t const token = got.tokens[std::size_t(row)];
      ASSERT_GE(token, 0);
      ASSERT_LT(token, vocab);
      if (n < 0) {
        EXPECT_TRUE(std::isnan(got.logprobs[std::size_t(row)]));
      } else {
        EXPECT_NEAR(got.logprobs[std::size_t(row)], lp(token), 2e-6 + 1e-6 * std::fabs(lp(token)));
      }
      std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](std::int64_t a, std::int64_t c) { return l[a] > l[c]; });
      std::int64_t const shown = std::min<std::int64_t>(std::max(n, 0), vocab);
      for (int k = 0; k < sampling_max_logprobs; ++k) {
        std::int32_t const id = got.top_ids[std::size_t(row * sampling_max_logprobs + k)];
        float const v = got.top_logprobs[std::size_t(row * sampling_max_logprobs + k)];
        if (k >= shown) {
          EXPECT_EQ(id, -1);
          EXPECT_EQ(v, -std::numeric_limits<float>::infinity());
          continue;
        }
        EXPECT_EQ(id, order[std::size_t(k)]) << "row " << row << ", rank " << k;
        EXPECT_NEAR(v, lp(id), 2e-6 + 1e-6 * std::fabs(lp(id)));
      }
    }
  }
}

TEST(SamplingCpu, TopLogprobTiesTakeTheLowestIds) {
  sampling_request r;
  r.num_logprobs = 3;
  sampling_batch b;
  b.batch = 1;
  b.vocab = 8;
  b.logits = {0.0f, 2.0f, 1.0f, 2.0f, 2.0f, 2.0f, -1.0f, 1.0f};
  b.requests = {r};
  b.positions = {0};
  b.history_offsets = {0, 0};
  auto const got = test::run_sampling_cpu(b);
  EXPECT_EQ(got.top_ids[0], 1);
  EXPECT_EQ(got.top_ids[1], 3);
  EXPECT_EQ(got.top_ids[2], 4);
  EXPECT_EQ(got.top_ids[3], -1);
}

// Chi-square goodness of fit of many draws for every mode (test::expect_draws_fit).
TEST(SamplingCpu, DrawsFitTheKeptDistribution) {
  for (auto const& r : test::chi_square_modes()) {
    SCOPED_TRACE(::testing::Message() << test::describe(r));
    auto b = test::draws_batch(r);
    test::expect_draws_fit(b, test::run_sampling_cpu(b).tokens);
  }
}

TEST(SamplingCpu, SameInputsSameTokensAndRowsAreIndependent) {
  auto rng = test::test_rng();
  sampling_request r;
  r.top_k = 100;
  r.top_p = 0.95f;
  r.repetition_penalty = 1.1f;
  auto b = test::make_batch(64, 2000, rng, r, 10);
  auto const first = test::run_sampling_cpu(b).tokens;
  EXPECT_EQ(test::run_sampling_cpu(b).tokens, first);
  // Row 5 alone in a batch of one draws what it drew in the batch of 64.
  sampling_batch one;
  one.batch = 1;
  one.vocab = b.vocab;
  one.logits.assign(b.logits.begin() + 5 * b.vocab, b.logits.begin() + 6 * b.vocab);
  one.requests = {b.requests[5]};
  one.positions = {b.positions[5]};
  one.history_ids.assign(b.history_ids.begin() + b.history_offsets[5],
                         b.history_ids.begin() + b.history_offsets[6]);
  one.history_offsets = {0, std::int32_t(one.history_ids.size())};
  EXPECT_EQ(test::run_sampling_cpu(one).tokens[0], first[5]);
  // Another seed, or another position, changes the draws (the rows keep ~100 tokens each).
  for (auto& q : b.requests) q.seed ^= 0x5DEECE66Dull;
  auto const reseeded = test::run_sampling_cpu(b).tokens;
  for (auto& q : b.requests) q.seed ^= 0x5DEECE66Dull;
  for (auto& pos : b.positions) ++pos;
  auto const moved = test::run_sampling_cpu(b).tokens;
  int same_seed = 0, same_position = 0;
  for (std::size_t k = 0; k < first.size(); ++k) {
    same_seed += reseeded[k] == first[k];
    same_position += moved[k] == first[k];
  }
  EXPECT_LT(same_seed, 32);
  EXPECT_LT(same_position, 32);
}

// The CUDA workspace: a header, the exact-path row list and per (row, chunk) a 24-byte summary and
// 512 candidates of 8 bytes; nothing for an empty batch; bad shapes named.
TEST(SamplingWorkspace, SizeFollowsTheShape) {
  using kernels::sampling_workspace_bytes;
  EXPECT_EQ(sampling_workspace_bytes(0, 129280), 0);
  EXPECT_EQ(sampling_workspace_bytes(1, 1), 16 + 16 + 48 + 4096);
  EXPECT_EQ(sampling_workspace_bytes(256, 129280), 16 + 1024 + 256 * 32 * 40 + 256 * 32 * 4096);
  EXPECT_EQ(sampling_workspace_bytes(3, 4097), 16 + 16 + 240 + 3 * 2 * 4096);
  EXPECT_LT(sampling_workspace_bytes(64, 129280), sampling_workspace_bytes(65, 129280));
  test::expect_error([] { sampling_workspace_bytes(-1, 10); }, {"batch >= 0", "got batch -1"});
  test::expect_error([] { sampling_workspace_bytes(2, 0); }, {"vocab >= 1", "vocab 0"});
}

class SamplingErrors : public ::testing::Test {
 protected:
  sampling_batch b_ = [] {
    auto rng = std::mt19937_64(1);
    return test::make_batch(3, 50, rng, sampling_request{}, 4);
  }();
  void expect_request_error(sampling_request r, std::initializer_list<char const*> parts) {
    b_.requests[1] = r;
    test::expect_error([&] { test::run_sampling_cpu(b_); }, parts);
  }
};

TEST_F(SamplingErrors, OutOfRangeRequestsAreNamed) {
  sampling_request r;
  r.temperature = -1.0f;
  expect_request_error(r, {"request 1 has temperature -1", "finite and >= 0"});
  r = {};
  r.temperature = std::numeric_limits<float>::infinity();
  expect_request_error(r, {"temperature inf"});
  r = {};
  r.top_k = -2;
  expect_request_error(r, {"top_k -2", ">= 0"});
  r = {};
  r.top_p = 0.0f;
  expect_request_error(r, {"top_p 0", "(0, 1]"});
  r = {};
  r.top_p = 1.5f;
  expect_request_error(r, {"top_p 1.5"});
  r = {};
  r.min_p = 1.5f;
  expect_request_error(r, {"min_p 1.5", "[0, 1]"});
  r = {};
  r.repetition_penalty = 0.0f;
  expect_request_error(r, {"repetition_penalty 0", "> 0"});
  r = {};
  r.frequency_penalty = std::numeric_limits<float>::quiet_NaN();
  expect_request_error(r, {"frequency_penalty nan", "finite"});
  r = {};
  r.num_logprobs = 21;
  expect_request_error(r, {"num_logprobs 21", "-1 .. 20"});
}

TEST_F(SamplingErrors, BadHistoryAndPositionsAreNamed) {
  b_.history_ids[0] = 50;
  test::expect_error([&] { test::run_sampling_cpu(b_); }, {"history id 50", "outside [0, 50)"});
  b_.history_ids[0] = 0;
  b_.history_offsets.back() += 1;
  test::expect_error([&] { test::run_sampling_cpu(b_); }, {"history_offsets"});
  b_.history_offsets.back() -= 1;
  b_.positions[2] = -1;
  test::expect_error([&] { test::run_sampling_cpu(b_); }, {"row 2 has position -1"});
}

TEST_F(SamplingErrors, BadViewsAreNamed) {
  backend::cpu cpu;
  auto const in = test::host_inputs(b_);
  std::vector<std::int32_t> tokens(3), ids(60);
  std::vector<float> logprobs(3), top(60);
  kernels::sampling_outputs const out{
      tensor_view(tokens.data(), dtype::i32, {3}), tensor_view(logprobs.data(), dtype::f32, {3}),
      tensor_view(ids.data(), dtype::i32, {3, 20}), tensor_view(top.data(), dtype::f32, {3, 20})};
  tensor_view const ws(nullptr, dtype::u8, {0});
  auto run = [&](kernels::sampling_inputs const& i, kernels::sampling_outputs const& o) {
    kernels::sample(cpu, i, o, ws, cpu.make_stream());
  };
  run(in, out);  // the baseline is valid
  auto bad = in;
  bad.logits = tensor_view(b_.logits.data(), dtype::bf16, {3, 50});
  test::expect_error([&] { run(bad, out); }, {"f32 logits", "bf16"});
  bad = in;
  bad.positions = tensor_view(b_.positions.data(), dtype::i32, {2});
  test::expect_error([&] { run(bad, out); }, {"positions as a contiguous [3] i32"});
  bad = in;
  bad.requests = tensor_view(b_.requests.data(), dtype::u8, {3, 32});
  test::expect_error([&] { run(bad, out); }, {"requests as a contiguous [3, 40] u8"});
  bad = in;
  bad.history_offsets = tensor_view(b_.history_offsets.data(), dtype::i32, {3});
  test::expect_error([&] { run(bad, out); }, {"history_offsets as a contiguous [4] i32"});
  auto bad_out = out;
  bad_out.top_ids = tensor_view(ids.data(), dtype::i32, {3, 19});
  test::expect_error([&] { run(in, bad_out); }, {"top_ids as a contiguous [3, 20] i32"});
  bad_out = out;
  bad_out.tokens = tensor_view(tokens.data(), dtype::i32, {3}, device::cuda(0));
  test::expect_error([&] { run(in, bad_out); }, {"needs every view there", "outputs on cuda:0"});
  bad = in;
  bad.logits = tensor_view(b_.logits.data(), dtype::f32, {3, 25}, {25, 2}, device::cpu());
  test::expect_error([&] { run(bad, out); }, {"unit column stride"});
}

}  // namespace
}  // namespace lightcore
