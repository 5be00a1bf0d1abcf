// Prometheus metrics of the server (text exposition format 0.0.4, served at /metrics): a small
// thread-safe registry of counters, gauges and fixed-bucket histograms, and the server's own set
// (TTFT, inter-token latency, end-to-end latency, queue time, token counts). Names start with
// "lightcore_". Metrics live as long as their registry; recording never allocates.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "examples/server/api/response.hpp"

namespace lightcore::server {

// Constant labels of one series, e.g. {{"finish_reason", "stop"}}.
using metric_labels = std::vector<std::pair<std::string, std::string>>;

// Monotonic; inc() takes non-negative amounts.
class counter {
 public:
  void inc(double amount = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double amount = 1.0) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void dec(double amount = 1.0) { value_.fetch_sub(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets (upper bounds, inclusive, strictly increasing; +Inf is
// implied). One mutex per histogram keeps sum, count and buckets consistent with each other.
class histogram {
 public:
  explicit histogram(std::vector<double> upper_bounds);

  void observe(double v);

  struct snapshot {
    std::vector<double> upper_bounds;       // without +Inf
    std::vector<std::uint64_t> cumulative;  // one per bound, then +Inf (= count)
    double sum = 0.0;
    std::uint64_t count = 0;
  };
  snapshot read() const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<std::uint64_t> counts_;  // per bucket, not cumulative; last is +Inf
  double sum_ = 0.0;
  std::uint64_t count_ = 0;
};

class metrics_registry {
 public:
  // Registers a series (a name may hold several, with different labels; HELP and TYPE come from
  // the first). Throws lightcore::error for a name without the lightcore_ prefix or with
  // characters Prometheus does not allow, a type clash, or a repeated label set.
  counter& add_counter(std::string const& name, std::string const& help, metric_labels labels = {});
  gauge& add_gauge(std::string const& name, std::string const& help, metric_labels labels = {});
  histogram& add_histogram(std::string const& name, std::string const& help,
                           std::vector<double> upper_bounds, metric_labels labels = {});

  // Every family in registration order: "# HELP", "# TYPE", then its samples.
  std::string render() const;

 private:
  enum class kind : std::uint8_t { counter, gauge, histogram };
  struct series {
    metric_labels labels;
    std::unique_ptr<counter> c;
    std::unique_ptr<gauge> g;
    std::unique_ptr<histogram> h;
  };
  struct family {
    std::string name;
    std::string help;
    kind type;
    std::vector<series> members;
  };
  series& add(std::string const& name, std::string const& help, kind type, metric_labels labels);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<family>> families_;
};

// The text Prometheus shows for a sample value: shortest round-trip form, +Inf, -Inf, NaN.
std::string format_metric_value(double v);

// The server's metrics, registered in one registry.
struct server_metrics {
  server_metrics();

  metrics_registry registry;
  counter& requests_received;     // accepted by the parsers
  counter& requests_rejected;     // answered with a 4xx (bad input, auth, 429 limits)
  counter& requests_unavailable;  // answered 503: the engine is not running
  counter& prompt_tokens;
  counter& generation_tokens;
  gauge& requests_in_flight;       // front-end requests holding a request-table slot
  gauge& requests_running;         // the engine's running requests (from its stats block)
  gauge& requests_waiting;         // the engine's queued requests, waiting for admission
  histogram& time_to_first_token;  // seconds
  histogram& inter_token_latency;  // seconds
  histogram& e2e_request_latency;  // seconds
  histogram& request_queue_time;   // seconds
  histogram& request_prompt_tokens;
  histogram& request_generation_tokens;
  // The engine's view, set from its stats block when /metrics is scraped.
  gauge& kv_slots_used;             // KV pool slots held (requests and prefix cache)
  gauge& kv_slots_capacity;         // KV pool slots
  gauge& prefix_cached_tokens;      // slots held by the prefix cache
  gauge& prefix_cache_hit_rate;     // looked-up tokens found cached, in [0, 1]
  gauge& last_step_rows;            // rows of the last step that sampled a token
  gauge& last_step_forward_tokens;  // tokens through the last step's forward
  counter& engine_steps;            // steps the engine ran
  counter& engine_forward_tokens;   // tokens through every forward

  // One finished request: its finish reason counter, token counters and histograms.
  void record_finished(finish_reason reason, std::int64_t prompt, std::int64_t generated,
                       double e2e_seconds);

 private:
  counter* finished_[4];  // by finish_reason
};

}  // namespace lightcore::server
