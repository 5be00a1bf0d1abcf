// The load generator. Closed loop: num_clients threads, each with its own keep-alive HTTP client,
// send streaming /v1/completions requests back to back. Open loop (request_rate > 0): requests
// arrive as a Poisson process, each on its own thread and connection, at most max_concurrency
// in flight (a request due while the cap is reached waits for a free one). Every token chunk is
// timed.
#pragma once

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "bench/serving/arrivals.hpp"
#include "bench/serving/config.hpp"
#include "bench/serving/sse_parser.hpp"
#include "bench/serving/stats.hpp"
#include "bench/serving/workload.hpp"

namespace lightcore::loadgen {

// Everything a run produced: the aggregate and the measured requests, in order of sending.
struct run_output {
  run_stats stats;
  std::vector<request_result> results;
  std::int64_t late_requests = 0;  // open loop: sent more than 1 ms after they were due
};

namespace detail {

using clock = std::chrono::steady_clock;

inline double seconds_between(clock::time_point a, clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The request body: token ids as the prompt so that the input length is exact, ignore_eos so
// that the server generates exactly max_tokens, usage in the stream for exact output counts.
inline std::string request_body(run_config const& c, request_spec const& spec) {
  nlohmann::json body = {{"prompt", spec.prompt},
                         {"max_tokens", spec.max_tokens},
                         {"ignore_eos", true},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (!c.model.empty()) body["model"] = c.model;
  return body.dump();
}

inline std::string excerpt(std::string_view s, std::size_t n = 200) {
  std::string out(s.substr(0, n));
  if (s.size() > n) out += "...";
  return out;
}

// A chunk stands for a generated token unless it is a pure finish marker (empty text with a
// finish_reason), which some servers send after the last token. Chunks whose text is empty
// because the detokeniser holds back an incomplete UTF-8 sequence still count.
inline bool is_token_chunk(nlohmann::json const& j) {
  auto const choices = j.find("choices");
  if (choices == j.end() || !choices->is_array() || choices->empty()) return false;
  nlohmann::json const& c = choices->front();
  auto const text = c.find("text");
  bool const empty_text =
      text == c.end() || !text->is_string() || text->get_ref<std::string const&>().empty();
  auto const finish = c.find("finish_reason");
  bool const finished = finish != c.end() && !finish->is_null();
  return !(empty_text && finished);
}

// Sends one request and follows its stream to the end; never throws for server-side failures,
// it records them in the result.
inline request_result send_one(httplib::Client& cli, run_config const& c, request_spec const& spec,
                               clock::time_point origin) {
  request_result r;
  r.max_tokens = spec.max_tokens;
  r.input_tokens = std::int64_t(spec.prompt.size());
  r.ttft_s = std::numeric_limits<double>::quiet_NaN();

  sse_parser parser;
  std::string failure;     // set when the stream is malformed; stops reading
  std::string error_body;  // body of a non-200 reply (its first bytes)
  bool done = false;
  std::int64_t chunks = 0;
  std::int64_t usage_out = -1;
  std::int64_t usage_in = -1;
  clock::time_point last_token{};

  auto on_event = [&](sse_event&& ev) {
    if (done || !failure.empty()) return;
    if (ev.data == "[DONE]") {
      done = true;
      return;
    }
    nlohmann::json const j = nlohmann::json::parse(ev.data, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      failure = "malformed JSON in a stream event: " + excerpt(ev.data);
      return;
    }
    if (j.contains("error")) {
      failure = "error event in the stream: " + excerpt(j["error"].dump());
      return;
    }
    if (is_token_chunk(j)) {
      auto const now = clock::now();
      if (chunks == 0) {
        r.ttft_s = seconds_between(origin, now) - r.start_s;
      } else {
        r.itl_s.push_back(seconds_between(last_token, now));
      }
      last_token = now;
      ++chunks;
    }
    auto const usage = j.find("usage");
    if (usage != j.end() && usage->is_object()) {
      // Only integer counts are taken: value() would throw on a null or a string, and nothing
      // may throw through httplib's callbacks.
      auto count = [&](char const* key, std::int64_t fallback) {
        auto const it = usage->find(key);
        return it != usage->end() && it->is_number_integer() ? it->get<std::int64_t>() : fallback;
      };
      usage_out = count("completion_tokens", usage_out);
      usage_in = count("prompt_tokens", usage_in);
    }
  };

  httplib::Request req;
  req.method = "POST";
  req.path = c.path;
  req.body = request_body(c, spec);
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  req.set_header("Accept-Encoding", "identity");  // a compressed stream would hide token timing
  req.response_handler = [&](httplib::Response const& res) {
    r.http_status = res.status;
    return true;
  };
  req.content_receiver = [&](char const* data, std::size_t n, std::uint64_t, std::uint64_t) {
    if (r.http_status != 200) {
      error_body.append(
          data, std::min(n, std::size_t(512) - std::min<std::size_t>(512, error_body.size())));
      return true;
    }
    try {
      parser.feed(std::string_view(data, n), on_event);
    } catch (std::exception const& e) {  // nothing may throw through httplib's callbacks
      failure = std::string("bad stream event: ") + e.what();
    }
    return failure.empty();
  };

  auto const start = clock::now();
  r.start_s = seconds_between(origin, start);
  httplib::Result const res = cli.send(req);
  r.latency_s = seconds_between(start, clock::now());

  if (!failure.empty()) {
    r.error = failure;
  } else if (!res) {
    r.error = (r.http_status == 0 ? "no response from " + c.host + ':' + std::to_string(c.port)
                                  : std::string("broken stream")) +
              " (httplib error: " + httplib::to_string(res.error()) + ")";
  } else if (r.http_status != 200) {
    r.error = "HTTP " + std::to_string(r.http_status) + ": " + excerpt(error_body);
  } else if (!done) {
    r.error = parser.has_partial_event() ? "stream cut in the middle of an event"
                                         : "stream ended without data: [DONE]";
  } else if (chunks == 0) {
    r.error = "stream carried no token";
  }
  if (!r.error.empty()) return r;
  r.ok = true;
  r.output_tokens = usage_out >= 0 ? usage_out : chunks;
  if (usage_in >= 0) r.input_tokens = usage_in;
  return r;
}

// One closed-loop phase: requests first_index, first_index + 1, ... until `count` were taken
// (0: no limit) or `duration_s` passed (0: no limit). Returns the results and the wall time.
inline std::pair<std::vector<request_result>, double> run_phase(
    std::vector<std::unique_ptr<httplib::Client>>& clients, run_config const& c, workload const& wl,
    std::uint64_t first_index, std::int64_t count, double duration_s, std::ostream* log,
    char const* phase) {
  std::atomic<std::int64_t> next{0};
  std::atomic<std::int64_t> finished{0};
  std::mutex mutex;
  std::vector<request_result> results;
  std::int64_t const report_every = count > 0 ? std::max<std::int64_t>(1, count / 10) : 100;
  auto const origin = clock::now();

  auto client_loop = [&](httplib::Client& cli) {
    std::vector<request_result> mine;
    while (true) {
      if (duration_s > 0.0 && seconds_between(origin, clock::now()) >= duration_s) break;
      std::int64_t const i = next.fetch_add(1);
      if (count > 0 && i >= count) break;
      request_spec const spec = wl.request(first_index + std::uint64_t(i));
      mine.push_back(send_one(cli, c, spec, origin));
      std::int64_t const n = finished.fetch_add(1) + 1;
      if (log != nullptr && n % report_every == 0) {
        std::lock_guard const lock(mutex);
        *log << phase << ": " << n << " requests done after "
             << seconds_between(origin, clock::now()) << " s\n";
      }
    }
    std::lock_guard const lock(mutex);
    results.insert(results.end(), std::make_move_iterator(mine.begin()),
                   std::make_move_iterator(mine.end()));
  };

  std::vector<std::thread> threads;
  threads.reserve(clients.size());
  for (auto& cli : clients) threads.emplace_back(client_loop, std::ref(*cli));
  for (std::thread& t : threads) t.join();
  double const wall = seconds_between(origin, clock::now());
  std::sort(results.begin(), results.end(),
            [](request_result const& a, request_result const& b) { return a.start_s < b.start_s; });
  return {std::move(results), wall};
}

inline std::unique_ptr<httplib::Client> make_client(run_config const& c) {
  auto cli = std::make_unique<httplib::Client>(c.host, c.port);
  cli->set_keep_alive(true);
  cli->set_decompress(false);
  // httplib writes headers and body in separate sends; with Nagle's algorithm the body would
  // wait for the server's delayed ACK (~40 ms) on a reused connection, inflating TTFT.
  cli->set_tcp_nodelay(true);
  cli->set_connection_timeout(
      std::chrono::microseconds(std::int64_t(std::llround(c.connect_timeout_s * 1e6))));
  cli->set_read_timeout(
      std::chrono::microseconds(std::int64_t(std::llround(c.read_timeout_s * 1e6))));
  cli->set_write_timeout(
      std::chrono::microseconds(std::int64_t(std::llround(c.read_timeout_s * 1e6))));
  return cli;
}

// One open-loop phase: request k (index first_index + k) is due at arrivals[k] seconds; it is
// sent on a new thread and connection as soon as fewer than max_concurrency are in flight.
// start_s records when it was sent; `late` counts requests sent more than 1 ms after they were
// due (the cap, or a client machine too slow for the rate).
inline std::pair<std::vector<request_result>, double> run_open_phase(
    run_config const& c, workload const& wl, std::uint64_t first_index,
    std::vector<double> const& arrivals, std::ostream* log, std::int64_t* late) {
  std::mutex mutex;
  std::condition_variable freed;
  int in_flight = 0;
  std::vector<request_result> results(arrivals.size());
  std::vector<std::thread> threads;
  threads.reserve(arrivals.size());
  std::int64_t n_late = 0;
  auto const origin = clock::now();
  for (std::size_t k = 0; k < arrivals.size(); ++k) {
    auto const due = origin + std::chrono::duration_cast<clock::duration>(
                                  std::chrono::duration<double>(arrivals[k]));
    std::this_thread::sleep_until(due);
    {
      std::unique_lock lock(mutex);
      freed.wait(lock, [&] { return in_flight < c.max_concurrency; });
      ++in_flight;
    }
    if (clock::now() - due > std::chrono::milliseconds(1)) ++n_late;
    threads.emplace_back([&, k] {
      auto cli = make_client(c);
      cli->set_keep_alive(false);
      results[k] = send_one(*cli, c, wl.request(first_index + k), origin);
      std::lock_guard const lock(mutex);
      --in_flight;
      freed.notify_one();
    });
    if (log != nullptr && (k + 1) % std::max<std::size_t>(1, arrivals.size() / 10) == 0)
      *log << "open loop: " << (k + 1) << " requests sent after "
           << seconds_between(origin, clock::now()) << " s\n";
  }
  for (std::thread& t : threads) t.join();
  double const wall = seconds_between(origin, clock::now());
  if (late != nullptr) *late = n_late;
  return {std::move(results), wall};
}

}  // namespace detail

// Runs the benchmark: the warm-up requests (all finished before measuring starts), then the
// measured phase. Progress lines go to `log` when given. Throws lightcore::error for a bad
// configuration; server failures are counted in the stats, never thrown.
inline run_output run(run_config const& c, std::ostream* log = nullptr) {
  validate(c);
  workload const wl(c.workload);
  std::vector<std::unique_ptr<httplib::Client>> clients;
  for (int i = 0; i < c.num_clients; ++i) clients.push_back(detail::make_client(c));
  if (c.warmup_requests > 0) {
    detail::run_phase(clients, c, wl, 0, c.warmup_requests, 0.0, log, "warm-up");
  }
  run_output out;
  std::vector<request_result> results;
  double wall = 0.0;
  if (c.request_rate > 0.0) {
    auto const arrivals =
        arrival_times(c.workload.seed, c.request_rate, c.num_requests, c.duration_s);
    std::tie(results, wall) = detail::run_open_phase(c, wl, std::uint64_t(c.warmup_requests),
                                                     arrivals, log, &out.late_requests);
  } else {
    std::tie(results, wall) = detail::run_phase(clients, c, wl, std::uint64_t(c.warmup_requests),
                                                c.num_requests, c.duration_s, log, "measured");
  }
  out.stats = aggregate(results, wall, c.slo);
  out.results = std::move(results);
  return out;
}

}  // namespace lightcore::loadgen
