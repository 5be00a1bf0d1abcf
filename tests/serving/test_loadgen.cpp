// End-to-end runs of the load generator against in-process fake servers on an ephemeral
// 127.0.0.1 port: a well-behaved streaming /v1/completions (checked request fields, exact
// token counts, plausible TTFT / ITL), and failing ones (HTTP 400, a dropped connection, a
// stream without [DONE], a silent server): errors are counted and nothing hangs.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/serving/loadgen.hpp"

namespace {

using namespace lightcore::loadgen;
using namespace std::chrono_literals;

constexpr auto token_sleep = 2ms;  // the fake's pause before each token chunk

// An httplib server on a free port, running on its own thread for the fixture's lifetime.
class fake_server {
 public:
  explicit fake_server(std::function<void(httplib::Server&)> const& routes) {
    routes(server_);
    server_.set_keep_alive_timeout(1);
    server_.set_tcp_nodelay(true);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() only works once the accept loop runs.
    for (int i = 0; i < 2000 && !server_.is_running(); ++i) std::this_thread::sleep_for(1ms);
  }
  ~fake_server() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

std::string sse(nlohmann::json const& j) { return "data: " + j.dump() + "\n\n"; }

// What the fake saw: requests and any field that was not as the benchmark promises.
struct observed {
  std::atomic<int> requests{0};
  std::mutex mutex;
  std::vector<std::string> problems;
  void problem(std::string p) {
    std::lock_guard const lock(mutex);
    problems.push_back(std::move(p));
  }
};

void check_request(nlohmann::json const& body, std::size_t input_len, std::string const& model,
                   observed& seen) {
  if (!body.contains("prompt") || !body["prompt"].is_array() || body["prompt"].size() != input_len)
    seen.problem("prompt is not an array of " + std::to_string(input_len) + " ids");
  else
    for (auto const& id : body["prompt"])
      if (!id.is_number_integer()) seen.problem("prompt holds a non-integer");
  if (!body.contains("max_tokens") || !body["max_tokens"].is_number_integer() ||
      body["max_tokens"].get<int>() < 1)
    seen.problem("max_tokens missing or < 1");
  if (body.value("ignore_eos", false) != true) seen.problem("ignore_eos is not true");
  if (body.value("stream", false) != true) seen.problem("stream is not true");
  if (!body.contains("stream_options") ||
      body["stream_options"].value("include_usage", false) != true)
    seen.problem("stream_options.include_usage is not true");
  if (body.value("model", std::string()) != model) seen.problem("model field differs");
}

// A streaming completions endpoint that emits max_tokens token chunks, `token_sleep` apart, each
// event written in two pieces (so the client must reassemble it), a keep-alive comment, the
// usage chunk and [DONE]. `drop_after` >= 0 cuts the connection after that many tokens;
// `send_done` false ends the stream cleanly but without [DONE].
std::function<void(httplib::Server&)> streaming_routes(observed& seen, std::size_t input_len,
                                                       std::string model, int drop_after = -1,
                                                       bool send_done = true) {
  return [&seen, input_len, model, drop_after, send_done](httplib::Server& server) {
    server.Post("/v1/completions", [&seen, input_len, model, drop_after, send_done](
                                       httplib::Request const& req, httplib::Response& res) {
      ++seen.requests;
      nlohmann::json const body = nlohmann::json::parse(req.body, nullptr, false);
      if (body.is_discarded()) {
        seen.problem("body is not JSON");
        res.status = 400;
        return;
      }
      check_request(body, input_len, model, seen);
      int const max_tokens = body.value("max_tokens", 1);
      auto const prompt_tokens = body["prompt"].size();
      auto sent = std::make_shared<int>(0);
      res.set_chunked_content_provider("text/event-stream", [=](std::size_t,
                                                                httplib::DataSink& sink) {
        if (drop_after >= 0 && *sent == drop_after) return false;  // drops the connection
        if (*sent < max_tokens) {
          std::this_thread::sleep_for(token_sleep);
          std::string const event =
              sse({{"choices", {{{"text", "t"}, {"index", 0}, {"finish_reason", nullptr}}}}});
          std::size_t const half = event.size() / 2;
          sink.write(event.data(), half);
          sink.write(event.data() + half, event.size() - half);
          if (*sent == 0) sink.write(": keep-alive\n\n", 14);
          ++*sent;
          return true;
        }
        std::string tail = sse({{"choices", {{{"text", ""}, {"finish_reason", "length"}}}}});
        tail +=
            sse({{"choices", nlohmann::json::array()},
                 {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", max_tokens}}}});
        if (send_done) tail += "data: [DONE]\n\n";
        sink.write(tail.data(), tail.size());
        sink.done();
        return true;
      });
    });
  };
}

run_config small_run(int port) {
  run_config c;
  c.port = port;
  c.model = "fake-model";
  c.num_clients = 4;
  c.num_requests = 20;
  c.connect_timeout_s = 2.0;
  c.read_timeout_s = 5.0;
  c.workload.input_len = 16;
  c.workload.output_len_mean = 8.0;
  c.workload.output_len_std = 3.0;
  c.workload.output_len_max = 16;
  c.workload.seed = 3;
  c.slo = {1000.0, 1000.0};
  return c;
}

TEST(Loadgen, ClosedLoopAgainstAStreamingServer) {
  observed seen;
  fake_server server(streaming_routes(seen, 16, "fake-model"));
  run_config c = small_run(server.port());
  c.warmup_requests = 3;
  run_output const out = run(c);

  {
    std::lock_guard const lock(seen.mutex);
    EXPECT_TRUE(seen.problems.empty()) << "first problem: " << seen.problems.front();
  }
  EXPECT_EQ(seen.requests.load(), 23) << "20 measured + 3 warm-up requests";
  run_stats const& s = out.stats;
  EXPECT_EQ(s.requests, 20);
  EXPECT_EQ(s.completed, 20);
  EXPECT_EQ(s.errors, 0) << (s.error_samples.empty() ? "" : s.error_samples.front());
  ASSERT_EQ(out.results.size(), 20u);

  // Token totals: exactly what the workload asked for (the measured indices follow warm-up).
  workload const wl(c.workload);
  std::int64_t expected_out = 0;
  std::size_t expected_gaps = 0;
  for (std::uint64_t i = 3; i < 23; ++i) {
    std::int64_t const n = wl.request(i).max_tokens;
    expected_out += n;
    expected_gaps += std::size_t(n - 1);
  }
  EXPECT_EQ(s.input_tokens, 20 * 16);
  EXPECT_EQ(s.output_tokens, expected_out);
  EXPECT_EQ(s.output_mismatch, 0);
  EXPECT_EQ(s.itl_ms.count, expected_gaps) << "one gap between each pair of token chunks";
  EXPECT_EQ(s.good_requests, 20);

  // Timing: every token chunk comes after a token_sleep pause.
  double const sleep_ms = std::chrono::duration<double, std::milli>(token_sleep).count();
  EXPECT_GE(s.ttft_ms.p50, sleep_ms * 0.9);
  EXPECT_GE(s.itl_ms.p50, sleep_ms * 0.9);
  EXPECT_LT(s.itl_ms.p50, 200.0);
  // Nagle's algorithm against delayed ACKs would add >= 40 ms to a reused connection's TTFT.
  EXPECT_LT(s.ttft_ms.p50, 35.0);
  for (request_result const& r : out.results) {
    EXPECT_TRUE(r.ok);
    EXPECT_GE(r.latency_s, r.ttft_s);
    EXPECT_GE(r.start_s, 0.0);
  }
  EXPECT_GT(s.qps, 0.0);
  EXPECT_NEAR(s.total_tokens_per_s, s.input_tokens_per_s + s.output_tokens_per_s, 1e-9);
  // With 4 clients in parallel, the run takes well under the serial time of all requests.
  double const serial_s = double(expected_out + 60) * sleep_ms / 1e3;
  EXPECT_LT(s.duration_s, serial_s) << "clients did not overlap";
}

TEST(Loadgen, DurationModeStopsInTime) {
  observed seen;
  fake_server server(streaming_routes(seen, 16, "fake-model"));
  run_config c = small_run(server.port());
  c.num_requests = 0;
  c.duration_s = 0.3;
  auto const t0 = std::chrono::steady_clock::now();
  run_output const out = run(c);
  double const wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(out.stats.completed, 4);
  EXPECT_EQ(out.stats.errors, 0);
  EXPECT_GE(out.stats.duration_s, 0.3);
  EXPECT_LT(wall, 2.0) << "no request may start after the duration";
}

TEST(Loadgen, Http400IsCountedAsErrors) {
  std::atomic<int> requests{0};
  fake_server server([&](httplib::Server& s) {
    s.Post("/v1/completions", [&](httplib::Request const&, httplib::Response& res) {
      ++requests;
      res.status = 400;
      res.set_content(R"({"error":{"message":"max_tokens too large"}})", "application/json");
    });
  });
  run_output const out = run(small_run(server.port()));
  EXPECT_EQ(requests.load(), 20);
  EXPECT_EQ(out.stats.errors, 20);
  EXPECT_EQ(out.stats.completed, 0);
  EXPECT_EQ(out.stats.output_tokens, 0);
  ASSERT_EQ(out.stats.error_samples.size(), 1u);
  EXPECT_NE(out.stats.error_samples[0].find("HTTP 400"), std::string::npos);
  EXPECT_NE(out.stats.error_samples[0].find("max_tokens too large"), std::string::npos);
  EXPECT_EQ(out.results[0].http_status, 400);
}

TEST(Loadgen, DroppedConnectionIsABrokenStreamNotAHang) {
  observed seen;
  fake_server server(streaming_routes(seen, 16, "fake-model", /*drop_after=*/2));
  auto const t0 = std::chrono::steady_clock::now();
  run_output const out = run(small_run(server.port()));
  double const wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(out.stats.errors, 20);
  EXPECT_EQ(out.stats.completed, 0);
  ASSERT_FALSE(out.stats.error_samples.empty());
  EXPECT_NE(out.stats.error_samples[0].find("broken stream"), std::string::npos)
      << out.stats.error_samples[0];
  EXPECT_LT(wall, 4.0);
}

TEST(Loadgen, StreamWithoutDoneIsAnError) {
  observed seen;
  fake_server server(streaming_routes(seen, 16, "fake-model", -1, /*send_done=*/false));
  run_config c = small_run(server.port());
  c.num_requests = 4;
  run_output const out = run(c);
  EXPECT_EQ(out.stats.errors, 4);
  ASSERT_FALSE(out.stats.error_samples.empty());
  EXPECT_NE(out.stats.error_samples[0].find("[DONE]"), std::string::npos)
      << out.stats.error_samples[0];
}

TEST(Loadgen, MalformedOrErrorEventsAreErrorsAndOddUsageIsTolerated) {
  std::atomic<int> requests{0};
  fake_server server([&](httplib::Server& s) {
    s.Post("/v1/completions", [&](httplib::Request const&, httplib::Response& res) {
      static char const* const replies[] = {
          "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {oops\n\n",
          "data: {\"error\":{\"message\":\"engine died\"}}\n\n",
          // A null usage count falls back to the token chunks counted.
          "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\n"
          "data: {\"choices\":[],\"usage\":{\"completion_tokens\":null}}\n\ndata: [DONE]\n\n"};
      res.set_content(replies[requests++ % 3], "text/event-stream");
    });
  });
  run_config c = small_run(server.port());
  c.num_clients = 1;
  c.num_requests = 3;
  run_output const out = run(c);
  EXPECT_EQ(out.stats.errors, 2);
  ASSERT_EQ(out.results.size(), 3u);
  EXPECT_NE(out.results[0].error.find("malformed JSON"), std::string::npos) << out.results[0].error;
  EXPECT_NE(out.results[1].error.find("engine died"), std::string::npos) << out.results[1].error;
  EXPECT_TRUE(out.results[2].ok) << out.results[2].error;
  EXPECT_EQ(out.results[2].output_tokens, 2);
  EXPECT_EQ(out.results[2].itl_s.size(), 1u);
}

TEST(Loadgen, SilentServerTimesOut) {
  fake_server server([](httplib::Server& s) {
    s.Post("/v1/completions", [](httplib::Request const&, httplib::Response& res) {
      std::this_thread::sleep_for(600ms);  // longer than the client's read timeout
      res.set_content("data: [DONE]\n\n", "text/event-stream");
    });
  });
  run_config c = small_run(server.port());
  c.num_requests = 4;
  c.read_timeout_s = 0.15;
  auto const t0 = std::chrono::steady_clock::now();
  run_output const out = run(c);
  double const wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(out.stats.errors, 4);
  EXPECT_LT(wall, 0.55) << "the read timeout did not end the requests";
}

TEST(Loadgen, NoServerListeningGivesConnectionErrors) {
  int port = 0;
  {
    fake_server gone([](httplib::Server&) {});
    port = gone.port();
  }  // the port is free again and nothing listens there
  run_config c = small_run(port);
  c.num_requests = 3;
  run_output const out = run(c);
  EXPECT_EQ(out.stats.errors, 3);
  ASSERT_FALSE(out.stats.error_samples.empty());
  EXPECT_NE(out.stats.error_samples[0].find("no response"), std::string::npos)
      << out.stats.error_samples[0];
}

TEST(Loadgen, BadConfigurationThrowsBeforeSending) {
  run_config c = small_run(1);
  c.num_clients = 0;
  EXPECT_THROW(run(c), lightcore::error);
}

TEST(Arrivals, ExponentialGapsFromTheSeed) {
  double const rate = 50.0;
  auto const t = arrival_times(7, rate, 20000);
  ASSERT_EQ(t.size(), 20000u);
  double sum = 0.0, sum2 = 0.0, prev = 0.0;
  for (double const x : t) {
    ASSERT_GE(x, prev);
    double const gap = x - prev;
    sum += gap;
    sum2 += gap * gap;
    prev = x;
  }
  double const mean = sum / double(t.size());
  double const sd = std::sqrt(sum2 / double(t.size()) - mean * mean);
  EXPECT_NEAR(mean, 1.0 / rate, 0.03 / rate);  // the mean gap is 1 / rate
  EXPECT_NEAR(sd / mean, 1.0, 0.04);           // exponential: the coefficient of variation is 1
  EXPECT_EQ(arrival_times(7, rate, 100), std::vector<double>(t.begin(), t.begin() + 100));
  EXPECT_NE(arrival_times(8, rate, 100), std::vector<double>(t.begin(), t.begin() + 100));
  // A horizon instead of a count: every arrival before it, about rate * horizon of them.
  auto const h = arrival_times(7, rate, 0, 100.0);
  EXPECT_LT(h.back(), 100.0);
  EXPECT_NEAR(double(h.size()), rate * 100.0, 4.0 * std::sqrt(rate * 100.0));
  EXPECT_THROW(arrival_times(7, 0.0, 10), lightcore::error);
  EXPECT_THROW(arrival_times(7, 1.0, 0, 0.0), lightcore::error);
}

TEST(Loadgen, OpenLoopAgainstAStreamingServer) {
  observed seen;
  fake_server server(streaming_routes(seen, 16, "fake-model"));
  run_config c = small_run(server.port());
  c.request_rate = 100.0;
  c.num_requests = 30;
  c.max_concurrency = 64;
  run_output const out = run(c);
  {
    std::lock_guard const lock(seen.mutex);
    EXPECT_TRUE(seen.problems.empty()) << "first problem: " << seen.problems.front();
  }
  EXPECT_EQ(seen.requests.load(), 30);
  EXPECT_EQ(out.stats.completed, 30);
  EXPECT_EQ(out.stats.errors, 0) << (out.stats.error_samples.empty()
                                         ? ""
                                         : out.stats.error_samples.front());
  // Requests start at their scheduled arrivals, not when the previous one ended.
  auto const due = arrival_times(c.workload.seed, c.request_rate, 30);
  for (std::size_t i = 0; i < out.results.size(); ++i) {
    EXPECT_GE(out.results[i].start_s, due[i] - 1e-3);
    EXPECT_LT(out.results[i].start_s, due[i] + 0.05) << "request " << i << " started late";
  }
  c.max_concurrency = 0;
  EXPECT_THROW(validate(c), lightcore::error);
  c.max_concurrency = 4;
  c.request_rate = -1.0;
  EXPECT_THROW(validate(c), lightcore::error);
}

}  // namespace
