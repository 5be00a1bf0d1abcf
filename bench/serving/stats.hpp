// Statistics of a serving benchmark: per-request measurements, percentiles, and the aggregate
// numbers (QPS, tokens/s, TTFT / ITL / latency distributions, goodput) a run reports.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::loadgen {

// The p-th percentile (p in [0, 100]) with linear interpolation between closest ranks, the
// definition of numpy.percentile's default: sorted values v[0..n-1], position h = (n-1) p/100,
// result v[floor h] + (h - floor h) (v[floor h + 1] - v[floor h]). NaN for no values.
inline double percentile(std::vector<double> values, double p) {
  LC_CHECK(p >= 0.0 && p <= 100.0, "percentile " << p << " is not allowed; it must be in [0, 100]");
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  double const h = double(values.size() - 1) * p / 100.0;
  std::size_t const lo = std::size_t(std::floor(h));
  std::size_t const hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - double(lo)) * (values[hi] - values[lo]);
}

// Distribution summary of one metric; all fields NaN (count 0) when there were no samples.
struct summary {
  std::size_t count = 0;
  double mean = std::numeric_limits<double>::quiet_NaN();
  double p50 = std::numeric_limits<double>::quiet_NaN();
  double p90 = std::numeric_limits<double>::quiet_NaN();
  double p99 = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
};

inline summary summarize(std::vector<double> values) {
  summary s;
  s.count = values.size();
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / double(values.size());
  s.p50 = percentile(values, 50.0);
  s.p90 = percentile(values, 90.0);
  s.p99 = percentile(values, 99.0);
  s.max = values.back();
  return s;
}

// What one request measured. Times are seconds on the steady clock, relative to the start of
// the measured phase.
struct request_result {
  bool ok = false;                 // HTTP 200, a well-formed stream ending in [DONE]
  int http_status = 0;             // 0 when no response arrived (connection error)
  std::string error;               // why it failed, empty when ok
  double start_s = 0.0;            // request sent
  double ttft_s = 0.0;             // start -> first token chunk (NaN when none came)
  std::vector<double> itl_s;       // gaps between successive token chunks
  double latency_s = 0.0;          // start -> end of the stream
  std::int64_t input_tokens = 0;   // prompt tokens (usage.prompt_tokens, else the ids sent)
  std::int64_t output_tokens = 0;  // usage.completion_tokens, else the token chunks counted
  std::int64_t max_tokens = 0;     // output length asked for
};

// Service-level objectives for goodput: a request counts when it succeeded, its TTFT is within
// ttft_ms and the p99 of its own inter-token gaps is within itl_p99_ms. 0 disables a bound.
struct slo_config {
  double ttft_ms = 2000.0;    // TTFT bound, milliseconds (default 2000)
  double itl_p99_ms = 100.0;  // per-request ITL p99 bound, milliseconds (default 100)
};

inline bool meets_slo(request_result const& r, slo_config const& slo) {
  if (!r.ok) return false;
  if (slo.ttft_ms > 0.0 && !(r.ttft_s * 1e3 <= slo.ttft_ms)) return false;
  if (slo.itl_p99_ms > 0.0 && !r.itl_s.empty() &&
      !(percentile(r.itl_s, 99.0) * 1e3 <= slo.itl_p99_ms))
    return false;
  return true;
}

// The numbers a run reports. Rates divide by the measured phase's wall time; token counts and
// distributions cover the successful requests only (a failed request's partial stream would
// bias them).
struct run_stats {
  double duration_s = 0.0;           // wall time of the measured phase
  std::int64_t requests = 0;         // measured requests sent
  std::int64_t completed = 0;        // of them, successful
  std::int64_t errors = 0;           // of them, failed
  std::int64_t input_tokens = 0;     // over successful requests
  std::int64_t output_tokens = 0;    // over successful requests
  std::int64_t output_mismatch = 0;  // successful requests whose output length != max_tokens
  std::int64_t good_requests = 0;    // successful requests meeting the SLOs
  double qps = 0.0;                  // completed / duration
  double input_tokens_per_s = 0.0;
  double output_tokens_per_s = 0.0;
  double total_tokens_per_s = 0.0;
  double goodput_qps = 0.0;                // good_requests / duration
  summary ttft_ms;                         // per request
  summary itl_ms;                          // all gaps of all requests pooled
  summary latency_ms;                      // end-to-end, per request
  summary output_len;                      // output tokens per request
  std::vector<std::string> error_samples;  // the first few distinct error messages
};

inline constexpr std::size_t max_error_samples = 8;

inline run_stats aggregate(std::vector<request_result> const& results, double duration_s,
                           slo_config const& slo) {
  LC_CHECK(duration_s >= 0.0, "run duration " << duration_s << " s is negative");
  run_stats s;
  s.duration_s = duration_s;
  s.requests = std::int64_t(results.size());
  std::vector<double> ttft, itl, latency, out_len;
  for (request_result const& r : results) {
    if (!r.ok) {
      ++s.errors;
      if (s.error_samples.size() < max_error_samples &&
          std::find(s.error_samples.begin(), s.error_samples.end(), r.error) ==
              s.error_samples.end())
        s.error_samples.push_back(r.error);
      continue;
    }
    ++s.completed;
    s.input_tokens += r.input_tokens;
    s.output_tokens += r.output_tokens;
    s.output_mismatch += r.output_tokens != r.max_tokens ? 1 : 0;
    s.good_requests += meets_slo(r, slo) ? 1 : 0;
    if (std::isfinite(r.ttft_s)) ttft.push_back(r.ttft_s * 1e3);
    for (double const gap : r.itl_s) itl.push_back(gap * 1e3);
    latency.push_back(r.latency_s * 1e3);
    out_len.push_back(double(r.output_tokens));
  }
  if (duration_s > 0.0) {
    s.qps = double(s.completed) / duration_s;
    s.input_tokens_per_s = double(s.input_tokens) / duration_s;
    s.output_tokens_per_s = double(s.output_tokens) / duration_s;
    s.total_tokens_per_s = s.input_tokens_per_s + s.output_tokens_per_s;
    s.goodput_qps = double(s.good_requests) / duration_s;
  }
  s.ttft_ms = summarize(std::move(ttft));
  s.itl_ms = summarize(std::move(itl));
  s.latency_ms = summarize(std::move(latency));
  s.output_len = summarize(std::move(out_len));
  return s;
}

}  // namespace lightcore::loadgen
