// Percentiles (linear interpolation between closest ranks, numpy's default), summaries, the
// aggregation of request results into QPS / tokens/s / goodput, the JSON report and the checks
// of a run configuration.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "bench/serving/config.hpp"
#include "bench/serving/report.hpp"
#include "bench/serving/stats.hpp"

namespace {

using namespace lightcore::loadgen;

TEST(Percentile, LinearInterpolationOnKnownData) {
  std::vector<double> const v = {10, 2, 9, 4, 5, 6, 7, 8, 3, 1};  // 1..10, shuffled
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 10.0);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 5.5);   // h = 4.5
  EXPECT_DOUBLE_EQ(percentile(v, 90), 9.1);   // h = 8.1
  EXPECT_DOUBLE_EQ(percentile(v, 99), 9.91);  // h = 8.91
  EXPECT_DOUBLE_EQ(percentile(v, 25), 3.25);  // h = 2.25
  // Nearest-rank would give 5 for p50 and 10 for p99: these values tell the definitions apart.
  EXPECT_DOUBLE_EQ(percentile({4.0}, 99), 4.0);
  EXPECT_DOUBLE_EQ(percentile({1.0, 3.0}, 50), 2.0);
  EXPECT_TRUE(std::isnan(percentile({}, 50)));
}

TEST(Percentile, RejectsOutOfRangeP) {
  EXPECT_THROW(percentile({1.0}, -1.0), lightcore::error);
  EXPECT_THROW(percentile({1.0}, 100.5), lightcore::error);
  try {
    percentile({1.0}, 101.0);
  } catch (lightcore::error const& e) {
    EXPECT_NE(e.message().find("[0, 100]"), std::string::npos) << e.message();
  }
}

TEST(Summary, OfKnownDataAndOfNothing) {
  summary const s = summarize({3, 1, 2, 4});
  EXPECT_EQ(s.count, 4u);
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_DOUBLE_EQ(s.p50, 2.5);
  EXPECT_DOUBLE_EQ(s.p90, 3.7);
  EXPECT_DOUBLE_EQ(s.max, 4.0);
  summary const none = summarize({});
  EXPECT_EQ(none.count, 0u);
  EXPECT_TRUE(std::isnan(none.mean));
  EXPECT_TRUE(std::isnan(none.p99));
}

request_result ok_request(double ttft_s, std::vector<double> itl_s, std::int64_t in,
                          std::int64_t out) {
  request_result r;
  r.ok = true;
  r.http_status = 200;
  r.ttft_s = ttft_s;
  r.itl_s = std::move(itl_s);
  r.latency_s = ttft_s + 0.01 * double(r.itl_s.size());
  r.input_tokens = in;
  r.output_tokens = out;
  r.max_tokens = out;
  return r;
}

request_result failed(std::string why) {
  request_result r;
  r.error = std::move(why);
  return r;
}

TEST(Aggregate, CountsRatesDistributionsAndGoodput) {
  slo_config const slo{100.0, 20.0};
  std::vector<request_result> results = {
      ok_request(0.050, {0.010, 0.010}, 16, 3),  // good
      ok_request(0.150, {0.010}, 16, 2),         // TTFT too long
      ok_request(0.050, {0.010, 0.030}, 16, 3),  // its ITL p99 (29.8 ms) too long
      ok_request(0.020, {}, 16, 1),              // one token: no ITL, good
      failed("HTTP 400: bad"),
      failed("HTTP 400: bad"),
      failed("broken stream"),
  };
  results[3].max_tokens = 5;  // the server stopped early
  run_stats const s = aggregate(results, 2.0, slo);
  EXPECT_EQ(s.requests, 7);
  EXPECT_EQ(s.completed, 4);
  EXPECT_EQ(s.errors, 3);
  EXPECT_EQ(s.input_tokens, 64);
  EXPECT_EQ(s.output_tokens, 9);
  EXPECT_EQ(s.output_mismatch, 1);
  EXPECT_EQ(s.good_requests, 2);
  EXPECT_DOUBLE_EQ(s.qps, 2.0);
  EXPECT_DOUBLE_EQ(s.input_tokens_per_s, 32.0);
  EXPECT_DOUBLE_EQ(s.output_tokens_per_s, 4.5);
  EXPECT_DOUBLE_EQ(s.total_tokens_per_s, 36.5);
  EXPECT_DOUBLE_EQ(s.goodput_qps, 1.0);
  EXPECT_EQ(s.ttft_ms.count, 4u);
  EXPECT_NEAR(s.ttft_ms.p50, 50.0, 1e-9);
  EXPECT_NEAR(s.ttft_ms.max, 150.0, 1e-9);
  EXPECT_EQ(s.itl_ms.count, 5u);  // pooled over requests
  EXPECT_NEAR(s.itl_ms.p50, 10.0, 1e-9);
  EXPECT_NEAR(s.itl_ms.max, 30.0, 1e-9);
  EXPECT_EQ(s.error_samples, (std::vector<std::string>{"HTTP 400: bad", "broken stream"}));
}

TEST(Aggregate, DisabledSlosCountEverySuccessAndZeroDurationGivesZeroRates) {
  std::vector<request_result> const results = {ok_request(9.0, {5.0}, 1, 2), failed("x")};
  run_stats const s = aggregate(results, 0.0, slo_config{0.0, 0.0});
  EXPECT_EQ(s.good_requests, 1);
  EXPECT_EQ(s.qps, 0.0);
  EXPECT_THROW(aggregate(results, -1.0, slo_config{}), lightcore::error);
}

TEST(Report, JsonCarriesConfigurationAndResultsWithNullForMissingMetrics) {
  run_config c;
  c.port = 9123;
  c.model = "deepseek";
  c.workload.special_ids = {0, 1};
  c.workload.seed = 42;
  run_stats const s = aggregate({failed("HTTP 503: busy")}, 1.0, c.slo);
  nlohmann::json const j = make_report(c, s);
  EXPECT_EQ(j["config"]["port"], 9123);
  EXPECT_EQ(j["config"]["model"], "deepseek");
  EXPECT_EQ(j["config"]["workload"]["seed"], 42);
  EXPECT_EQ(j["config"]["workload"]["special_ids"], nlohmann::json({0, 1}));
  EXPECT_EQ(j["config"]["slo"]["ttft_ms"], c.slo.ttft_ms);
  EXPECT_EQ(j["results"]["errors"], 1);
  EXPECT_TRUE(j["results"]["ttft_ms"]["p50"].is_null());
  EXPECT_EQ(j["results"]["error_samples"][0], "HTTP 503: busy");
  // The dump must be valid JSON (NaN is not).
  EXPECT_FALSE(nlohmann::json::parse(j.dump(), nullptr, false).is_discarded());

  std::ostringstream table;
  print_table(table, c, s);
  EXPECT_NE(table.str().find("errors"), std::string::npos);
  EXPECT_NE(table.str().find("HTTP 503: busy"), std::string::npos);
}

TEST(RunConfig, BadValuesAreRejectedWithTheFieldNamed) {
  auto expect_bad = [](auto mutate, char const* needle) {
    run_config c;
    mutate(c);
    try {
      validate(c);
      ADD_FAILURE() << "accepted a configuration with a bad " << needle;
    } catch (lightcore::error const& e) {
      EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
    }
  };
  EXPECT_NO_THROW(validate(run_config{}));
  expect_bad([](run_config& c) { c.port = 0; }, "port");
  expect_bad([](run_config& c) { c.num_clients = 0; }, "num_clients");
  expect_bad([](run_config& c) { c.num_requests = -1; }, "num_requests");
  expect_bad(
      [](run_config& c) {
        c.num_requests = 0;
        c.duration_s = 0.0;
      },
      "neither num_requests nor duration");
  expect_bad([](run_config& c) { c.path = "v1/completions"; }, "path");
  expect_bad([](run_config& c) { c.read_timeout_s = 0.0; }, "read timeout");
  expect_bad([](run_config& c) { c.slo.ttft_ms = -1.0; }, "SLO");
  expect_bad([](run_config& c) { c.workload.input_len = 0; }, "input length");
}

}  // namespace
