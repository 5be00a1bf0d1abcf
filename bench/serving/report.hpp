// Reports of a serving benchmark run: JSON (configuration and results, for scripts and for
// comparing runs) and a human-readable table.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "bench/serving/config.hpp"
#include "bench/serving/stats.hpp"

namespace lightcore::loadgen {

inline nlohmann::json to_json(workload_config const& w) {
  return {{"input_len", w.input_len},           {"output_len_mean", w.output_len_mean},
          {"output_len_std", w.output_len_std}, {"output_len_max", w.output_len_max},
          {"vocab_min", w.vocab_min},           {"vocab_max", w.vocab_max},
          {"special_ids", w.special_ids},       {"seed", w.seed}};
}

inline nlohmann::json to_json(run_config const& c) {
  return {{"host", c.host},
          {"port", c.port},
          {"path", c.path},
          {"model", c.model},
          {"num_clients", c.num_clients},
          {"num_requests", c.num_requests},
          {"duration_s", c.duration_s},
          {"warmup_requests", c.warmup_requests},
          {"connect_timeout_s", c.connect_timeout_s},
          {"read_timeout_s", c.read_timeout_s},
          {"workload", to_json(c.workload)},
          {"slo", {{"ttft_ms", c.slo.ttft_ms}, {"itl_p99_ms", c.slo.itl_p99_ms}}}};
}

// NaN (a metric without samples) becomes null, which JSON can represent.
inline nlohmann::json to_json(summary const& s) {
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  return {{"count", s.count},  {"mean", num(s.mean)}, {"p50", num(s.p50)},
          {"p90", num(s.p90)}, {"p99", num(s.p99)},   {"max", num(s.max)}};
}

inline nlohmann::json to_json(run_stats const& s) {
  return {{"duration_s", s.duration_s},
          {"requests", s.requests},
          {"completed", s.completed},
          {"errors", s.errors},
          {"input_tokens", s.input_tokens},
          {"output_tokens", s.output_tokens},
          {"output_len_mismatch", s.output_mismatch},
          {"good_requests", s.good_requests},
          {"qps", s.qps},
          {"input_tokens_per_s", s.input_tokens_per_s},
          {"output_tokens_per_s", s.output_tokens_per_s},
          {"total_tokens_per_s", s.total_tokens_per_s},
          {"goodput_qps", s.goodput_qps},
          {"ttft_ms", to_json(s.ttft_ms)},
          {"itl_ms", to_json(s.itl_ms)},
          {"latency_ms", to_json(s.latency_ms)},
          {"output_len", to_json(s.output_len)},
          {"error_samples", s.error_samples},
          {"percentile_definition", "linear interpolation (numpy default)"}};
}

// The whole report: {"config": ..., "results": ...}.
inline nlohmann::json make_report(run_config const& c, run_stats const& s) {
  return {{"config", to_json(c)}, {"results", to_json(s)}};
}

inline void print_table(std::ostream& os, run_config const& c, run_stats const& s) {
  char line[160];
  auto row = [&](char const* name, double value, char const* unit) {
    std::snprintf(line, sizeof line, "  %-24s %14.3f %s\n", name, value, unit);
    os << line;
  };
  auto count = [&](char const* name, std::int64_t value) {
    std::snprintf(line, sizeof line, "  %-24s %14lld\n", name, static_cast<long long>(value));
    os << line;
  };
  auto dist = [&](char const* name, summary const& d) {
    if (d.count == 0) {
      std::snprintf(line, sizeof line, "  %-12s %10s %10s %10s %10s %10s %8d\n", name, "-", "-",
                    "-", "-", "-", 0);
      os << line;
      return;
    }
    std::snprintf(line, sizeof line, "  %-12s %10.2f %10.2f %10.2f %10.2f %10.2f %8zu\n", name,
                  d.p50, d.p90, d.p99, d.mean, d.max, d.count);
    os << line;
  };
  os << "serving benchmark: " << c.host << ':' << c.port << c.path << ", " << c.num_clients
     << " clients, input " << c.workload.input_len << " tokens, output "
     << c.workload.output_len_mean << " +- " << c.workload.output_len_std << " tokens\n";
  row("duration", s.duration_s, "s");
  count("requests", s.requests);
  count("completed", s.completed);
  count("errors", s.errors);
  count("output len != max_tokens", s.output_mismatch);
  row("QPS", s.qps, "req/s");
  row("input tokens/s", s.input_tokens_per_s, "tok/s");
  row("output tokens/s", s.output_tokens_per_s, "tok/s");
  row("total tokens/s", s.total_tokens_per_s, "tok/s");
  row("goodput", s.goodput_qps, "req/s");
  std::snprintf(line, sizeof line,
                "  (goodput SLOs: TTFT <= %.1f ms, ITL p99 <= %.1f ms; %lld of %lld)\n",
                c.slo.ttft_ms, c.slo.itl_p99_ms, static_cast<long long>(s.good_requests),
                static_cast<long long>(s.completed));
  os << line;
  std::snprintf(line, sizeof line, "  %-12s %10s %10s %10s %10s %10s %8s\n", "ms", "p50", "p90",
                "p99", "mean", "max", "samples");
  os << line;
  dist("TTFT", s.ttft_ms);
  dist("ITL", s.itl_ms);
  dist("latency", s.latency_ms);
  for (std::string const& e : s.error_samples) os << "  error: " << e << '\n';
}

}  // namespace lightcore::loadgen
