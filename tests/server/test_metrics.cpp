// Prometheus exposition: the text is parsed back line by line (HELP and TYPE before samples,
// label syntax, values), histogram buckets are cumulative and end at +Inf = count, concurrent
// recording loses nothing, and bad names or buckets are refused.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "examples/server/api/metrics.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore {
namespace {

using server::metrics_registry;

// sample line ("name{labels} value") -> value; checks every line's syntax.
std::map<std::string, double> parse_exposition(std::string const& text) {
  std::map<std::string, double> samples;
  std::regex const help(R"(# HELP (lightcore_[a-zA-Z0-9_:]*) .*)");
  std::regex const type(R"(# TYPE (lightcore_[a-zA-Z0-9_:]*) (counter|gauge|histogram))");
  std::regex const sample(
      R"((lightcore_[a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})?) (\S+))");
  std::istringstream in(text);
  std::string line, last_typed;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) continue;
    if (std::regex_match(line, m, type)) {
      last_typed = m[1];
      continue;
    }
    if (!std::regex_match(line, m, sample)) {
      ADD_FAILURE() << "not an exposition line: '" << line << "'";
      continue;
    }
    EXPECT_EQ(std::string(m[1]).rfind(last_typed, 0), 0u) << "sample before its TYPE: " << line;
    auto const v = m[m.size() - 1].str();
    samples[m[1]] = v == "+Inf" ? std::numeric_limits<double>::infinity() : std::stod(v);
  }
  EXPECT_TRUE(text.empty() || text.back() == '\n');
  return samples;
}

TEST(Metrics, CountersAndGaugesRender) {
  metrics_registry reg;
  auto& c = reg.add_counter("lightcore_things_total", "Things seen.");
  auto& g = reg.add_gauge("lightcore_level", "A level.\nSecond line \\ slash.");
  auto& a = reg.add_counter("lightcore_by_kind_total", "By kind.", {{"kind", "a"}});
  auto& b = reg.add_counter("lightcore_by_kind_total", "ignored", {{"kind", "b\"q"}});
  c.inc();
  c.inc(2.5);
  g.set(7);
  g.dec(2);
  a.inc(3);
  b.inc();
  auto const text = reg.render();
  EXPECT_NE(text.find("# HELP lightcore_level A level.\\nSecond line \\\\ slash.\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("# TYPE lightcore_things_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE lightcore_level gauge\n"), std::string::npos);
  // One HELP/TYPE per family even with two series.
  EXPECT_EQ(text.find("# TYPE lightcore_by_kind_total"),
            text.rfind("# TYPE lightcore_by_kind_total"));
  auto const s = parse_exposition(text);
  EXPECT_DOUBLE_EQ(s.at("lightcore_things_total"), 3.5);
  EXPECT_DOUBLE_EQ(s.at("lightcore_level"), 5);
  EXPECT_DOUBLE_EQ(s.at("lightcore_by_kind_total{kind=\"a\"}"), 3);
  EXPECT_NE(text.find("lightcore_by_kind_total{kind=\"b\\\"q\"} 1\n"), std::string::npos) << text;
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  metrics_registry reg;
  auto& h = reg.add_histogram("lightcore_latency_seconds", "Latency.", {0.1, 0.5, 1.0});
  for (double v : {0.05, 0.1, 0.2, 0.7, 3.0, 4.0}) h.observe(v);
  auto const s = parse_exposition(reg.render());
  // le is inclusive: 0.1 falls in the first bucket.
  EXPECT_EQ(s.at("lightcore_latency_seconds_bucket{le=\"0.1\"}"), 2);
  EXPECT_EQ(s.at("lightcore_latency_seconds_bucket{le=\"0.5\"}"), 3);
  EXPECT_EQ(s.at("lightcore_latency_seconds_bucket{le=\"1\"}"), 4);
  EXPECT_EQ(s.at("lightcore_latency_seconds_bucket{le=\"+Inf\"}"), 6);
  EXPECT_EQ(s.at("lightcore_latency_seconds_count"), 6);
  EXPECT_NEAR(s.at("lightcore_latency_seconds_sum"), 8.05, 1e-12);
  auto const snap = h.read();
  for (std::size_t i = 1; i < snap.cumulative.size(); ++i) {
    EXPECT_LE(snap.cumulative[i - 1], snap.cumulative[i]);
  }
  EXPECT_EQ(snap.cumulative.back(), snap.count);
}

TEST(Metrics, ConcurrentRecordingLosesNothing) {
  metrics_registry reg;
  auto& c = reg.add_counter("lightcore_n_total", "n");
  auto& h = reg.add_histogram("lightcore_h", "h", {1, 2});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.inc();
        h.observe(double(i % 3));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000);
  auto const snap = h.read();
  EXPECT_EQ(snap.count, 40000u);
  EXPECT_EQ(snap.cumulative.back(), 40000u);
}

TEST(Metrics, BadRegistrationsAreRefused) {
  metrics_registry reg;
  EXPECT_THROW(reg.add_counter("requests_total", "no prefix"), error);
  EXPECT_THROW(reg.add_counter("lightcore_bad-name", "dash"), error);
  EXPECT_THROW(reg.add_counter("lightcore_x", "bad label", {{"le", "1"}}), error);
  reg.add_counter("lightcore_x", "x");
  EXPECT_THROW(reg.add_gauge("lightcore_x", "type clash"), error);
  EXPECT_THROW(reg.add_counter("lightcore_x", "same labels"), error);
  EXPECT_THROW(reg.add_histogram("lightcore_h", "h", {1.0, 1.0}), error);
  EXPECT_THROW(
      reg.add_histogram("lightcore_h", "h", {1.0, std::numeric_limits<double>::infinity()}), error);
  auto& c = reg.add_counter("lightcore_y", "y");
  EXPECT_THROW(c.inc(-1), error);
  // A refused histogram leaves no family behind.
  EXPECT_EQ(reg.render().find("lightcore_h"), std::string::npos);
}

TEST(Metrics, ServerSet) {
  server::server_metrics m;
  m.requests_received.inc();
  m.requests_running.set(1);
  m.requests_in_flight.set(2);
  m.requests_rejected.inc();
  m.requests_unavailable.inc(2);
  m.time_to_first_token.observe(0.03);
  m.record_finished(server::finish_reason::length, 100, 20, 1.2);
  m.record_finished(server::finish_reason::stop, 10, 5, 0.4);
  auto const s = parse_exposition(m.registry.render());
  EXPECT_EQ(s.at("lightcore_requests_received_total"), 1);
  EXPECT_EQ(s.at("lightcore_request_success_total{finish_reason=\"length\"}"), 1);
  EXPECT_EQ(s.at("lightcore_request_success_total{finish_reason=\"stop\"}"), 1);
  EXPECT_EQ(s.at("lightcore_request_success_total{finish_reason=\"abort\"}"), 0);
  EXPECT_EQ(s.at("lightcore_prompt_tokens_total"), 110);
  EXPECT_EQ(s.at("lightcore_generation_tokens_total"), 25);
  EXPECT_EQ(s.at("lightcore_num_requests_running"), 1);
  EXPECT_EQ(s.at("lightcore_num_requests_in_flight"), 2);
  EXPECT_EQ(s.at("lightcore_requests_rejected_total"), 1);
  EXPECT_EQ(s.at("lightcore_requests_unavailable_total"), 2);
  EXPECT_EQ(s.at("lightcore_kv_slots_used"), 0);
  EXPECT_EQ(s.at("lightcore_time_to_first_token_seconds_bucket{le=\"0.04\"}"), 1);
  EXPECT_EQ(s.at("lightcore_time_to_first_token_seconds_bucket{le=\"0.02\"}"), 0);
  EXPECT_EQ(s.at("lightcore_request_prompt_tokens_bucket{le=\"10\"}"), 1);
  EXPECT_EQ(s.at("lightcore_request_prompt_tokens_bucket{le=\"100\"}"), 2);
  EXPECT_EQ(s.at("lightcore_e2e_request_latency_seconds_count"), 2);
  EXPECT_EQ(s.count("lightcore_inter_token_latency_seconds_bucket{le=\"+Inf\"}"), 1u);
  EXPECT_EQ(server::format_metric_value(0.25), "0.25");
  EXPECT_EQ(server::format_metric_value(3.0), "3");
  EXPECT_EQ(server::format_metric_value(-std::numeric_limits<double>::infinity()), "-Inf");
}

}  // namespace
}  // namespace lightcore
