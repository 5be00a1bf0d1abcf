// sampling: the CPU reference, row by row, straight from the definitions in sampling.hpp (sorting
// where the CUDA kernel searches thresholds; sums in double where it sums floats).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/sampling/sampling.hpp"
#include "kernels/sampling/sampling_math.hpp"

namespace lightcore::kernels::detail {

namespace sm = sampling_math;

void sampling_penalise_cpu(float* row, std::int64_t vocab, std::int32_t const* ids,
                           std::int64_t count, sampling_request const& r) {
  for (std::int64_t j = 0; j < count; ++j)
    LC_CHECK(ids[j] >= 0 && ids[j] < vocab, "sample: history id " << ids[j] << " (occurrence " << j
                                                                  << ") outside [0, " << vocab
                                                                  << ")");
  if (r.repetition_penalty == 1.0f && r.presence_penalty == 0.0f && r.frequency_penalty == 0.0f)
    return;
  std::vector<std::int32_t> distinct(ids, ids + count);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  for (std::int32_t const id : distinct) {
    float& l = row[id];
    l = l > 0.0f ? l / r.repetition_penalty : l * r.repetition_penalty;
    l -= r.presence_penalty;
  }
  for (std::int64_t j = 0; j < count; ++j) row[ids[j]] -= r.frequency_penalty;
}

void sampling_kept_cpu(float const* z, std::int64_t vocab, sampling_request const& r,
                       std::uint8_t* kept) {
  float const z_max = *std::max_element(z, z + vocab);
  std::fill_n(kept, vocab, std::uint8_t(1));
  // Tokens by descending z, lowest index first among equals.
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return z[a] > z[b]; });
  float threshold = -std::numeric_limits<float>::infinity();
  if (r.top_k > 0 && r.top_k < vocab) threshold = z[order[std::size_t(r.top_k - 1)]];
  if (r.top_p < 1.0f) {
    double total = 0.0;
    for (std::int64_t i = 0; i < vocab; ++i)
      if (z[i] >= threshold) total += sm::exp_nonpositive(z[i] - z_max);
    double const target = double(r.top_p) * total;
    double mass = 0.0;
    for (std::size_t k = 0; k < order.size() && z[order[k]] >= threshold;) {
      float const v = z[order[k]];
      for (; k < order.size() && z[order[k]] == v; ++k) mass += sm::exp_nonpositive(v - z_max);
      if (mass >= target) {  // the prefix reached p with the whole group of v: v is the bound
        threshold = v;
        break;
      }
    }
  }
  for (std::int64_t i = 0; i < vocab; ++i) {
    bool keep = z[i] >= threshold;
    if (r.min_p > 0.0f) keep = keep && sm::exp_nonpositive(z[i] - z_max) >= r.min_p;
    kept[i] = keep ? 1 : 0;
  }
}

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// Lowest index of the largest value.
std::int64_t argmax(float const* v, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

void sample_row(sampling_params const& p, std::int64_t b) {
  sampling_request const& r = p.requests[b];
  std::int64_t const vocab = p.vocab;
  float const* raw = p.logits + b * p.logits_stride;
  std::int32_t* top_ids = p.top_ids + b * sampling_max_logprobs;
  float* top_logprobs = p.top_logprobs + b * sampling_max_logprobs;
  std::fill_n(top_ids, sampling_max_logprobs, -1);
  std::fill_n(top_logprobs, sampling_max_logprobs, neg_inf);

  // 0. Raw statistics before anything changes the row.
  float raw_max = 0.0f, log_sum = 0.0f;
  if (r.num_logprobs >= 0) {
    raw_max = *std::max_element(raw, raw + vocab);
    double sum = 0.0;
    for (std::int64_t i = 0; i < vocab; ++i) sum += sm::exp_nonpositive(raw[i] - raw_max);
    log_sum = sm::log_positive(float(sum));
    std::int64_t const n = std::min<std::int64_t>(r.num_logprobs, vocab);
    std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + n, order.end(),
                      [&](std::int64_t x, std::int64_t y) {
                        return raw[x] > raw[y] || (raw[x] == raw[y] && x < y);
                      });
    for (std::int64_t k = 0; k < n; ++k) {
      top_ids[k] = std::int32_t(order[std::size_t(k)]);
      top_logprobs[k] = (raw[order[std::size_t(k)]] - raw_max) - log_sum;
    }
  }

  // 1. Penalties on a copy.
  std::vector<float> row(raw, raw + vocab);
  std::int32_t const begin = p.history_offsets[b], end = p.history_offsets[b + 1];
  sampling_penalise_cpu(row.data(), vocab, p.history_ids + begin, end - begin, r);

  std::int64_t token = 0;
  if (r.temperature == 0.0f) {
    token = argmax(row.data(), vocab);  // 2. greedy
  } else {
    // 3. Temperature and filters, 4. the exponential race over the kept tokens.
    for (float& v : row) v = v / r.temperature;
    float const z_max = *std::max_element(row.begin(), row.end());
    std::vector<std::uint8_t> kept(static_cast<std::size_t>(vocab));
    sampling_kept_cpu(row.data(), vocab, r, kept.data());
    float best = neg_inf;
    sm::philox_out words{};
    for (std::int64_t i = 0; i < vocab; ++i) {
      if (i % 4 == 0) words = sm::sampling_random_words(r.seed, p.positions[b], i / 4);
      if (!kept[std::size_t(i)]) continue;
      float const key = sm::race_key(row[std::size_t(i)] - z_max, sm::uniform_open(words.v[i % 4]));
      if (key > best) {
        best = key;
        token = i;
      }
    }
  }
  p.tokens[b] = std::int32_t(token);
  p.logprobs[b] = r.num_logprobs >= 0 ? (raw[token] - raw_max) - log_sum
                                      : std::numeric_limits<float>::quiet_NaN();
}

}  // namespace

void sample_cpu(sampling_params const& p) {
  LC_CHECK(p.history_offsets[0] == 0 && p.history_offsets[p.batch] == p.history_total,
           "sample: history_offsets must start at 0 and end at the history length "
               << p.history_total << "; got " << p.history_offsets[0] << " .. "
               << p.history_offsets[p.batch]);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    check_sampling_request(p.requests[b], b);
    LC_CHECK(p.history_offsets[b] <= p.history_offsets[b + 1],
             "sample: history_offsets must not decrease; got "
                 << p.history_offsets[b] << " then " << p.history_offsets[b + 1] << " at row "
                 << b);
    LC_CHECK(p.positions[b] >= 0,
             "sample: row " << b << " has position " << p.positions[b] << "; allowed: >= 0");
  }
  for (std::int64_t j = 0; j < p.history_total; ++j)
    LC_CHECK(p.history_ids[j] >= 0 && p.history_ids[j] < p.vocab,
             "sample: history id " << p.history_ids[j] << " at " << j << " outside [0, " << p.vocab
                                   << ")");
  for (std::int64_t b = 0; b < p.batch; ++b) sample_row(p, b);
}

}  // namespace lightcore::kernels::detail
