// Workload of the serving benchmark: prompts of random token ids and Gaussian output lengths,
// a pure function of (seed, request index) so that every run with the same seed is identical.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::loadgen {

using token_id = std::int32_t;

// What the clients send. Token ids are drawn uniformly from [vocab_min, vocab_max) minus
// special_ids, so that a prompt never contains BOS/EOS or chat-template markers that would make
// the server stop or re-interpret it.
struct workload_config {
  std::int64_t input_len = 1024;           // prompt length, tokens (exact: sent as ids)
  double output_len_mean = 128.0;          // mean of the output-length Gaussian, tokens
  double output_len_std = 0.0;             // its standard deviation, tokens (0: fixed length)
  std::int64_t output_len_max = 1 << 20;   // upper clamp of output lengths, tokens
  token_id vocab_min = 100;                // lowest token id drawn (inclusive): tokenizers keep
                                           // their special ids (BOS, EOS, pad) low
  token_id vocab_max = 32000;              // highest token id drawn (exclusive)
  std::vector<token_id> special_ids = {};  // ids never drawn (e.g. BOS, EOS)
  std::uint64_t seed = 0;                  // the whole workload follows from it
};

// One request of the workload.
struct request_spec {
  std::vector<token_id> prompt;  // [input_len]
  std::int64_t max_tokens = 1;   // output length asked for (with ignore_eos), >= 1
};

// Checks a configuration; the error names the bad field and what is allowed.
inline void validate(workload_config const& c) {
  LC_CHECK(c.input_len >= 1, "input length " << c.input_len << " is not allowed; it must be >= 1");
  LC_CHECK(std::isfinite(c.output_len_mean) && c.output_len_mean >= 1.0,
           "output length mean " << c.output_len_mean << " is not allowed; it must be >= 1");
  LC_CHECK(std::isfinite(c.output_len_std) && c.output_len_std >= 0.0,
           "output length std " << c.output_len_std << " is not allowed; it must be >= 0");
  LC_CHECK(c.output_len_max >= 1,
           "output length max " << c.output_len_max << " is not allowed; it must be >= 1");
  LC_CHECK(c.vocab_min >= 0 && c.vocab_min < c.vocab_max,
           "vocab range [" << c.vocab_min << ", " << c.vocab_max
                           << ") is not allowed; it needs 0 <= min < max");
  std::int64_t excluded = 0;
  std::vector<token_id> ids = c.special_ids;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (token_id const id : ids) excluded += (id >= c.vocab_min && id < c.vocab_max) ? 1 : 0;
  LC_CHECK(std::int64_t(c.vocab_max) - c.vocab_min - excluded >= 1,
           "vocab range [" << c.vocab_min << ", " << c.vocab_max << ") minus " << excluded
                           << " special ids leaves no token id to draw; widen the range");
}

namespace detail {

// splitmix64: tiny, fast and fully specified, so workloads are identical across standard
// libraries (std::normal_distribution is not).
struct splitmix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n) for n >= 1; the modulo bias is below n / 2^64, far under what a
  // benchmark can notice.
  std::uint64_t below(std::uint64_t n) { return next() % n; }
  // Standard normal (Box-Muller, one value per call).
  double normal() {
    double const u1 = 1.0 - uniform();  // (0, 1]: log is finite
    double const u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }
};

}  // namespace detail

// Generates request `index` of the workload: independent of the other requests and of which
// client sends it, so a concurrent run and a serial one send the same requests.
class workload {
 public:
  explicit workload(workload_config config) : config_(std::move(config)) {
    validate(config_);
    specials_ = config_.special_ids;
    std::sort(specials_.begin(), specials_.end());
    specials_.erase(std::unique(specials_.begin(), specials_.end()), specials_.end());
    std::erase_if(specials_,
                  [&](token_id id) { return id < config_.vocab_min || id >= config_.vocab_max; });
    allowed_ =
        std::uint64_t(std::int64_t(config_.vocab_max) - config_.vocab_min) - specials_.size();
  }

  workload_config const& config() const { return config_; }

  request_spec request(std::uint64_t index) const {
    // Decorrelate neighbouring indices: one splitmix step of (seed, index) seeds the stream.
    detail::splitmix64 seeder{config_.seed ^ (index * 0xD1B5'4A32'D192'ED03ull)};
    detail::splitmix64 rng{seeder.next()};
    request_spec r;
    double const len = std::round(config_.output_len_mean + config_.output_len_std * rng.normal());
    r.max_tokens = std::clamp<std::int64_t>(std::int64_t(std::clamp(len, 1.0, 9.0e18)), 1,
                                            config_.output_len_max);
    r.prompt.resize(std::size_t(config_.input_len));
    for (token_id& id : r.prompt) id = draw(rng);
    return r;
  }

 private:
  // The k-th allowed id: count k upwards from vocab_min, stepping over each special id met.
  token_id draw(detail::splitmix64& rng) const {
    std::int64_t id = config_.vocab_min + std::int64_t(rng.below(allowed_));
    for (token_id const s : specials_) {
      if (s > id) break;
      ++id;
    }
    return token_id(id);
  }

  workload_config config_;
  std::vector<token_id> specials_;  // sorted, unique, inside the vocab range
  std::uint64_t allowed_ = 0;       // ids that can be drawn
};

}  // namespace lightcore::loadgen
