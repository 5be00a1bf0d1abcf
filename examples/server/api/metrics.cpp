#include "examples/server/api/metrics.hpp"

#include <charconv>
#include <cmath>
#include <sstream>

#include "lightcore/core/error.hpp"

namespace lightcore::server {

void counter::inc(double amount) {
  LC_CHECK(amount >= 0.0, "a counter only grows; inc(" << amount << ") is not allowed");
  value_.fetch_add(amount, std::memory_order_relaxed);
}

histogram::histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    LC_CHECK(std::isfinite(bounds_[i]),
             "histogram bucket bounds must be finite (+Inf is implied); got " << bounds_[i]);
    LC_CHECK(i == 0 || bounds_[i] > bounds_[i - 1],
             "histogram bucket bounds must increase strictly; " << bounds_[i] << " follows "
                                                                << bounds_[i - 1]);
  }
  counts_.assign(bounds_.size() + 1, 0);
}

void histogram::observe(double v) {
  // Buckets are few (tens): a linear scan beats a binary search's branches.
  std::size_t b = 0;
  while (b < bounds_.size() && v > bounds_[b]) ++b;
  std::lock_guard const lock(mu_);
  ++counts_[b];
  sum_ += v;
  ++count_;
}

histogram::snapshot histogram::read() const {
  snapshot s;
  s.upper_bounds = bounds_;
  std::lock_guard const lock(mu_);
  std::uint64_t running = 0;
  for (auto const c : counts_) s.cumulative.push_back(running += c);
  s.sum = sum_;
  s.count = count_;
  return s;
}

namespace {

bool valid_name(std::string_view n) {
  if (n.empty()) return false;
  auto const head = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
  };
  if (!head(n[0])) return false;
  for (char const c : n) {
    if (!head(c) && !(c >= '0' && c <= '9')) return false;
  }
  return true;
}

std::string escape(std::string_view s, bool quote) {
  std::string out;
  for (char const c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"} with extra (the histogram's le) last; empty when there are no labels.
std::string label_text(metric_labels const& labels, std::string_view extra_name = {},
                       std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return {};
  std::string out = "{";
  bool first = true;
  auto add = [&](std::string_view k, std::string_view v) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape(v, true);
    out += '"';
  };
  for (auto const& [k, v] : labels) add(k, v);
  if (!extra_name.empty()) add(extra_name, extra_value);
  return out + "}";
}

}  // namespace

std::string format_metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  auto const r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

metrics_registry::series& metrics_registry::add(std::string const& name, std::string const& help,
                                                kind type, metric_labels labels) {
  LC_CHECK(valid_name(name) && name.starts_with("lightcore_"),
           "metric name '" << name
                           << "' is not allowed; names start with lightcore_ and hold only "
                              "letters, digits, '_' and ':'");
  for (auto const& [k, v] : labels) {
    LC_CHECK(valid_name(k) && k.find(':') == std::string::npos && k != "le",
             "label name '" << k << "' of " << name
                            << " is not allowed; letters, digits and '_' only, not 'le'");
  }
  std::lock_guard const lock(mu_);
  family* fam = nullptr;
  for (auto& f : families_) {
    if (f->name == name) fam = f.get();
  }
  if (fam == nullptr) {
    families_.push_back(std::make_unique<family>(family{name, help, type, {}}));
    fam = families_.back().get();
  }
  LC_CHECK(fam->type == type, "metric '" << name << "' is already registered with another type");
  for (auto const& s : fam->members) {
    LC_CHECK(s.labels != labels,
             "metric '" << name << "' already has a series with labels" << label_text(labels));
  }
  fam->members.push_back(series{std::move(labels), nullptr, nullptr, nullptr});
  return fam->members.back();
}

counter& metrics_registry::add_counter(std::string const& name, std::string const& help,
                                       metric_labels labels) {
  auto& s = add(name, help, kind::counter, std::move(labels));
  s.c = std::make_unique<counter>();
  return *s.c;
}

gauge& metrics_registry::add_gauge(std::string const& name, std::string const& help,
                                   metric_labels labels) {
  auto& s = add(name, help, kind::gauge, std::move(labels));
  s.g = std::make_unique<gauge>();
  return *s.g;
}

histogram& metrics_registry::add_histogram(std::string const& name, std::string const& help,
                                           std::vector<double> upper_bounds, metric_labels labels) {
  auto h = std::make_unique<histogram>(std::move(upper_bounds));  // checks the bounds first
  auto& s = add(name, help, kind::histogram, std::move(labels));
  s.h = std::move(h);
  return *s.h;
}

std::string metrics_registry::render() const {
  std::ostringstream os;
  std::lock_guard const lock(mu_);
  for (auto const& f : families_) {
    static constexpr std::string_view type_names[] = {"counter", "gauge", "histogram"};
    os << "# HELP " << f->name << ' ' << escape(f->help, false) << '\n';
    os << "# TYPE " << f->name << ' ' << type_names[int(f->type)] << '\n';
    for (auto const& s : f->members) {
      if (s.c)
        os << f->name << label_text(s.labels) << ' ' << format_metric_value(s.c->value()) << '\n';
      if (s.g)
        os << f->name << label_text(s.labels) << ' ' << format_metric_value(s.g->value()) << '\n';
      if (s.h) {
        auto const snap = s.h->read();
        for (std::size_t b = 0; b <= snap.upper_bounds.size(); ++b) {
          auto const le = b < snap.upper_bounds.size() ? format_metric_value(snap.upper_bounds[b])
                                                       : std::string("+Inf");
          os << f->name << "_bucket" << label_text(s.labels, "le", le) << ' ' << snap.cumulative[b]
             << '\n';
        }
        os << f->name << "_sum" << label_text(s.labels) << ' ' << format_metric_value(snap.sum)
           << '\n';
        os << f->name << "_count" << label_text(s.labels) << ' ' << snap.count << '\n';
      }
    }
  }
  return os.str();
}

namespace {

std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
          0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}
std::vector<double> itl_buckets() {
  return {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
          0.05,  0.075,  0.1,   0.15,   0.2,  0.3,   0.4,  0.5,   1.0,  2.5};
}
std::vector<double> e2e_buckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,  15.0,
          20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0};
}
std::vector<double> token_buckets() {
  return {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};
}

}  // namespace

server_metrics::server_metrics()
    : requests_received(registry.add_counter("lightcore_requests_received_total",
                                             "Requests accepted by the API layer.")),
      requests_rejected(registry.add_counter(
          "lightcore_requests_rejected_total",
          "Requests answered with a 4xx error (bad input, authentication, limits: 429).")),
      requests_unavailable(
          registry.add_counter("lightcore_requests_unavailable_total",
                               "Requests answered 503 because the engine is not running.")),
      prompt_tokens(registry.add_counter("lightcore_prompt_tokens_total",
                                         "Prompt tokens of finished requests.")),
      generation_tokens(registry.add_counter("lightcore_generation_tokens_total",
                                             "Generated tokens of finished requests.")),
      requests_in_flight(registry.add_gauge(
          "lightcore_num_requests_in_flight",
          "Requests the front end holds (a request-table slot each, until their reply ends).")),
      requests_running(registry.add_gauge("lightcore_num_requests_running",
                                          "Requests the engine's scheduler is running.")),
      requests_waiting(registry.add_gauge("lightcore_num_requests_waiting",
                                          "Requests queued in the engine, waiting for admission.")),
      time_to_first_token(registry.add_histogram(
          "lightcore_time_to_first_token_seconds",
          "Time from the request's arrival (before parsing) to its first token.",
          latency_buckets())),
      inter_token_latency(registry.add_histogram("lightcore_inter_token_latency_seconds",
                                                 "Time between consecutive output tokens.",
                                                 itl_buckets())),
      e2e_request_latency(registry.add_histogram(
          "lightcore_e2e_request_latency_seconds",
          "Time from the request's arrival (before parsing) to its end.", e2e_buckets())),
      request_queue_time(registry.add_histogram(
          "lightcore_request_queue_time_seconds",
          "Time from the request's arrival to its admission by the engine's scheduler.",
          latency_buckets())),
      request_prompt_tokens(registry.add_histogram("lightcore_request_prompt_tokens",
                                                   "Prompt tokens per request.", token_buckets())),
      request_generation_tokens(registry.add_histogram(
          "lightcore_request_generation_tokens", "Generated tokens per request.", token_buckets())),
      kv_slots_used(registry.add_gauge("lightcore_kv_slots_used",
                                       "KV pool slots (tokens) held by requests and the cache.")),
      kv_slots_capacity(
          registry.add_gauge("lightcore_kv_slots_capacity", "KV pool slots (tokens).")),
      prefix_cached_tokens(registry.add_gauge("lightcore_prefix_cache_tokens",
                                              "KV slots (tokens) held by the prefix cache.")),
      prefix_cache_hit_rate(
          registry.add_gauge("lightcore_prefix_cache_hit_rate",
                             "Share of looked-up prompt tokens found in the prefix cache.")),
      last_step_rows(registry.add_gauge("lightcore_engine_last_step_rows",
                                        "Rows of the engine's last step that sampled a token.")),
      last_step_forward_tokens(
          registry.add_gauge("lightcore_engine_last_step_forward_tokens",
                             "Tokens through the engine's last forward pass.")),
      engine_steps(registry.add_counter("lightcore_engine_steps_total", "Engine steps run.")),
      engine_forward_tokens(registry.add_counter("lightcore_engine_forward_tokens_total",
                                                 "Tokens through the engine's forward passes.")) {
  for (auto const r :
       {finish_reason::stop, finish_reason::length, finish_reason::abort, finish_reason::error}) {
    finished_[int(r)] = &registry.add_counter("lightcore_request_success_total",
                                              "Finished requests by finish reason.",
                                              {{"finish_reason", std::string(to_string(r))}});
  }
}

void server_metrics::record_finished(finish_reason reason, std::int64_t prompt,
                                     std::int64_t generated, double e2e_seconds) {
  finished_[int(reason)]->inc();
  prompt_tokens.inc(double(prompt));
  generation_tokens.inc(double(generated));
  request_prompt_tokens.observe(double(prompt));
  request_generation_tokens.observe(double(generated));
  e2e_request_latency.observe(e2e_seconds);
}

}  // namespace lightcore::server
