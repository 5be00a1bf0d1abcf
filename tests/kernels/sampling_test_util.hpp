// Helpers shared by the sampling tests (CPU and CUDA): a batch in host memory (logits, requests,
// positions, history) with realistic random contents, running the CPU reference on it, the
// filters written independently from their definitions, and a chi-square bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/sampling/sampling.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore::test {

using kernels::sampling_max_logprobs;
using kernels::sampling_request;

// One sampling step's inputs in host memory.
struct sampling_batch {
  std::int64_t batch = 0, vocab = 0;
  std::vector<float> logits;  // [batch, vocab]
  std::vector<sampling_request> requests;
  std::vector<std::int32_t> positions;
  std::vector<std::int32_t> history_ids;
  std::vector<std::int32_t> history_offsets;  // [batch + 1]
};

struct sampling_result {
  std::vector<std::int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::int32_t> top_ids;
  std::vector<float> top_logprobs;
  std::int32_t exact_rows = -1;  // CUDA: rows the streamed launches left to the exact path
};

// Logits like an lm head's: normal with standard deviation `spread`, a few tokens lifted well
// above the rest (a peaked head), and ties now and then (values rounded to a coarse grid for one
// row in eight) so that the tie rules are exercised.
inline std::vector<float> random_logits(std::int64_t rows, std::int64_t vocab, std::mt19937_64& rng,
                                        float spread = 3.0f) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::uniform_int_distribution<std::int64_t> pick(0, vocab - 1);
  std::uniform_int_distribution<int> coin(0, 7);
  std::vector<float> v(std::size_t(rows * vocab));
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = v.data() + r * vocab;
    bool const coarse = coin(rng) == 0;
    for (std::int64_t i = 0; i < vocab; ++i) {
      row[i] = normal(rng);
      if (coarse) row[i] = std::round(row[i] * 4.0f) / 4.0f;
    }
    for (int k = 0; k < 3; ++k) row[pick(rng)] += 2.0f * spread;
  }
  return v;
}

// A batch whose rows all use `request` (seeds and positions vary), with a random history of up to
// `max_history` ids per row, repeats included.
inline sampling_batch make_batch(std::int64_t batch, std::int64_t vocab, std::mt19937_64& rng,
                                 sampling_request const& request, int max_history = 0) {
  sampling_batch b;
  b.batch = batch;
  b.vocab = vocab;
  b.logits = random_logits(batch, vocab, rng);
  b.requests.assign(std::size_t(batch), request);
  std::uniform_int_distribution<std::int32_t> position(0, 100000);
  std::uniform_int_distribution<std::int32_t> id(0, std::int32_t(vocab - 1));
  std::uniform_int_distribution<int> length(0, max_history);
  b.history_offsets.push_back(0);
  for (std::int64_t r = 0; r < batch; ++r) {
    b.requests[std::size_t(r)].seed = rng();
    b.positions.push_back(position(rng));
    int const n = max_history > 0 ? length(rng) : 0;
    std::vector<std::int32_t> distinct;
    for (int k = 0; k < n; ++k) {
      // Half the occurrences repeat an earlier id: frequency counts above 1.
      bool const repeat = !distinct.empty() && (rng() & 1u);
      std::int32_t const v = repeat ? distinct[rng() % distinct.size()] : id(rng);
      distinct.push_back(v);
      b.history_ids.push_back(v);
    }
    b.history_offsets.push_back(std::int32_t(b.history_ids.size()));
  }
  return b;
}

inline kernels::sampling_inputs host_inputs(sampling_batch& b) {
  device const cpu = device::cpu();
  return {tensor_view(b.logits.data(), dtype::f32, {b.batch, b.vocab}, cpu),
          kernels::request_view(b.requests.data(), b.batch, cpu),
          tensor_view(b.positions.data(), dtype::i32, {b.batch}, cpu),
          tensor_view(b.history_ids.data(), dtype::i32, {std::int64_t(b.history_ids.size())}, cpu),
          tensor_view(b.history_offsets.data(), dtype::i32, {b.batch + 1}, cpu)};
}

// Runs the CPU reference; outputs are poisoned first, so that an unwritten element shows.
inline sampling_result run_sampling_cpu(sampling_batch& b) {
  sampling_result r;
  auto const rows = std::size_t(b.batch);
  r.tokens.assign(rows, -7);
  r.logprobs.assign(rows, 12345.0f);
  r.top_ids.assign(rows * sampling_max_logprobs, -7);
  r.top_logprobs.assign(rows * sampling_max_logprobs, 12345.0f);
  backend::cpu cpu;
  kernels::sampling_outputs const out{
      tensor_view(r.tokens.data(), dtype::i32, {b.batch}),
      tensor_view(r.logprobs.data(), dtype::f32, {b.batch}),
      tensor_view(r.top_ids.data(), dtype::i32, {b.batch, sampling_max_logprobs}),
      tensor_view(r.top_logprobs.data(), dtype::f32, {b.batch, sampling_max_logprobs})};
  kernels::sample(cpu, host_inputs(b), out, tensor_view(nullptr, dtype::u8, {0}),
                  cpu.make_stream());
  return r;
}

// The filters of sampling.hpp step 3 straight from their definitions, in double: probabilities
// p = softmax(z), sorting for the k-th largest and the top_p prefix.
inline std::vector<std::uint8_t> brute_force_kept(std::vector<float> const& z,
                                                  sampling_request const& r) {
  std::size_t const n = z.size();
  double const z_max = *std::max_element(z.begin(), z.end());
  std::vector<double> w(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = std::exp(double(z[i]) - z_max);
  std::vector<std::uint8_t> kept(n, 1);
  std::vector<float> sorted(z);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  if (r.top_k > 0 && std::size_t(r.top_k) < n) {
    float const kth = sorted[std::size_t(r.top_k - 1)];
    for (std::size_t i = 0; i < n; ++i) kept[i] = kept[i] && z[i] >= kth;
  }
  if (r.top_p < 1.0f) {
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) total += kept[i] ? w[i] : 0.0;
    // The smallest prefix of the kept tokens (descending) with mass >= p, equal values together.
    std::vector<float> values;
    for (std::size_t i = 0; i < n; ++i)
      if (kept[i]) values.push_back(z[i]);
    std::sort(values.begin(), values.end(), std::greater<>());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    double mass = 0.0;
    float bound = values.back();
    for (float const v : values) {
      for (std::size_t i = 0; i < n; ++i) mass += kept[i] && z[i] == v ? w[i] : 0.0;
      if (mass >= double(r.top_p) * total) {
        bound = v;
        break;
      }
    }
    for (std::size_t i = 0; i < n; ++i) kept[i] = kept[i] && z[i] >= bound;
  }
  if (r.min_p > 0.0f)
    for (std::size_t i = 0; i < n; ++i) kept[i] = kept[i] && w[i] >= double(r.min_p);
  return kept;
}

// The upper 1 - alpha quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty; within
// ~1% of the exact quantile for df >= 3); z is the standard normal quantile of 1 - alpha.
inline double chi_square_bound(int df, double z) {
  double const a = 2.0 / (9.0 * df);
  double const c = 1.0 - a + z * std::sqrt(a);
  return df * c * c * c;
}

inline std::string describe(sampling_request const& r) {
  std::ostringstream os;
  os << "T " << r.temperature << ", top_k " << r.top_k << ", top_p " << r.top_p << ", min_p "
     << r.min_p << ", penalties " << r.repetition_penalty << "/" << r.presence_penalty << "/"
     << r.frequency_penalty;
  return os.str();
}

// The modes whose draws are checked for goodness of fit.
inline std::vector<sampling_request> chi_square_modes() {
  std::vector<sampling_request> modes(7);
  modes[1].temperature = 0.6f;
  modes[2].top_k = 5;
  modes[3].top_p = 0.8f;
  modes[4].min_p = 0.1f;
  modes[5].temperature = 0.8f;  // combined
  modes[5].top_k = 10;
  modes[5].top_p = 0.9f;
  modes[5].min_p = 0.05f;
  modes[6].temperature = 1.3f;  // penalties on ids 3 (twice) and 7
  modes[6].top_p = 0.95f;
  modes[6].repetition_penalty = 1.5f;
  modes[6].presence_penalty = 0.5f;
  modes[6].frequency_penalty = 0.25f;
  return modes;
}

inline constexpr std::int64_t chi_square_vocab = 24;
inline constexpr std::int64_t chi_square_draws = 40000;

// chi_square_draws copies of one fixed row (fixed seed, not the run's: the test is deterministic),
// positions 0 .. draws - 1 so that every draw has its own Philox counters.
inline sampling_batch draws_batch(sampling_request r) {
  sampling_batch b;
  b.batch = chi_square_draws;
  b.vocab = chi_square_vocab;
  std::mt19937_64 rng(20261124);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> row(std::size_t(b.vocab));
  for (float& v : row) v = normal(rng);
  r.seed = 0x0123'4567'89AB'CDEFull;
  for (std::int64_t k = 0; k < b.batch; ++k) {
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.requests.push_back(r);
    b.positions.push_back(std::int32_t(k));
    b.history_ids.insert(b.history_ids.end(), {3, 7, 3});
    b.history_offsets.push_back(std::int32_t(3 * k));
  }
  b.history_offsets.push_back(std::int32_t(3 * b.batch));
  return b;
}

// The draws (tokens of a draws_batch) against the kept set's renormalised softmax: no draw outside
// the kept set, and Pearson's statistic below the 1e-4 upper quantile (z = 3.719); tokens expected
// fewer than 5 times are pooled into one bin.
inline void expect_draws_fit(sampling_batch const& b, std::vector<std::int32_t> const& tokens) {
  sampling_request const& r = b.requests[0];
  std::vector<float> z(b.logits.begin(), b.logits.begin() + b.vocab);
  kernels::detail::sampling_penalise_cpu(z.data(), b.vocab, b.history_ids.data(), 3, r);
  for (float& v : z) v = v / r.temperature;
  auto const kept = brute_force_kept(z, r);
  double const z_max = *std::max_element(z.begin(), z.end());
  std::vector<double> prob(z.size(), 0.0);
  double total = 0.0;
  for (std::size_t i = 0; i < z.size(); ++i)
    if (kept[i]) total += prob[i] = std::exp(double(z[i]) - z_max);
  std::vector<double> count(z.size(), 0.0);
  for (std::int32_t t : tokens) {
    ASSERT_TRUE(t >= 0 && t < b.vocab && kept[std::size_t(t)]) << "drew token " << t;
    count[std::size_t(t)] += 1.0;
  }
  double stat = 0.0, pooled_expected = 0.0, pooled_count = 0.0;
  int bins = 0;
  for (std::size_t i = 0; i < z.size(); ++i) {
    if (!kept[i]) continue;
    double const expected = double(tokens.size()) * prob[i] / total;
    if (expected < 5.0) {
      pooled_expected += expected;
      pooled_count += count[i];
      continue;
    }
    stat += (count[i] - expected) * (count[i] - expected) / expected;
    ++bins;
  }
  if (pooled_expected > 0.0) {
    stat += (pooled_count - pooled_expected) * (pooled_count - pooled_expected) / pooled_expected;
    ++bins;
  }
  if (bins < 2) return;  // one possible outcome: the kept-set check above is the whole test
  double const bound = chi_square_bound(bins - 1, 3.719);
  EXPECT_LT(stat, bound) << "chi-square " << stat << " with " << bins - 1 << " degrees of freedom";
  std::cout << "  chi-square " << stat << " (df " << bins - 1 << ", bound " << bound << ")\n";
}

}  // namespace lightcore::test
