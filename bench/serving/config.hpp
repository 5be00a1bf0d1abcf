// Configuration of a serving benchmark run: where the server is, how many closed-loop clients,
// how many requests or for how long, the workload, timeouts and the SLOs of goodput.
#pragma once

#include <cstdint>
#include <string>

#include "bench/serving/stats.hpp"
#include "bench/serving/workload.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::loadgen {

struct run_config {
  std::string host = "127.0.0.1";        // server address
  int port = 8000;                       // server port
  std::string path = "/v1/completions";  // endpoint (OpenAI completions, streaming)
  std::string model = "";                // "model" field of the request; omitted when empty
  int num_clients = 8;                   // concurrent closed-loop clients (threads)
  double request_rate = 0.0;             // requests/s of an open loop (Poisson); 0: closed loop
  int max_concurrency = 1024;            // open loop: requests in flight at most (threads)
  std::int64_t num_requests = 256;       // measured requests; 0: no count limit (duration)
  double duration_s = 0.0;               // measured phase length, seconds; 0: no limit
  std::int64_t warmup_requests = 0;      // requests sent first and left out of the stats
  double connect_timeout_s = 10.0;       // TCP connect timeout, seconds
  double read_timeout_s = 600.0;         // longest silence on a stream, seconds
  workload_config workload;              // prompts and output lengths
  slo_config slo;                        // goodput bounds
};

// Checks a configuration; the error names the bad field and what is allowed.
inline void validate(run_config const& c) {
  LC_CHECK(!c.host.empty(), "host is empty; give the server's address, e.g. 127.0.0.1");
  LC_CHECK(c.port >= 1 && c.port <= 65535,
           "port " << c.port << " is not allowed; it must be in [1, 65535]");
  LC_CHECK(!c.path.empty() && c.path.front() == '/',
           "path '" << c.path << "' is not allowed; it must start with '/'");
  LC_CHECK(c.num_clients >= 1 && c.num_clients <= 4096,
           "num_clients " << c.num_clients << " is not allowed; it must be in [1, 4096]");
  LC_CHECK(
      c.request_rate >= 0.0 && c.request_rate < 1e7,
      "request rate " << c.request_rate
                      << " is not allowed; it must be in [0, 1e7) requests/s (0: closed loop)");
  LC_CHECK(c.max_concurrency >= 1 && c.max_concurrency <= 16384,
           "max_concurrency " << c.max_concurrency << " is not allowed; it must be in [1, 16384]");
  LC_CHECK(c.num_requests >= 0,
           "num_requests " << c.num_requests << " is not allowed; it must be >= 0");
  LC_CHECK(c.duration_s >= 0.0,
           "duration " << c.duration_s << " s is not allowed; it must be >= 0");
  LC_CHECK(c.num_requests > 0 || c.duration_s > 0.0,
           "neither num_requests nor duration is set; give at least one of them (> 0)");
  LC_CHECK(c.warmup_requests >= 0,
           "warmup_requests " << c.warmup_requests << " is not allowed; it must be >= 0");
  LC_CHECK(c.connect_timeout_s > 0.0,
           "connect timeout " << c.connect_timeout_s << " s is not allowed; it must be > 0");
  LC_CHECK(c.read_timeout_s > 0.0,
           "read timeout " << c.read_timeout_s << " s is not allowed; it must be > 0");
  LC_CHECK(c.slo.ttft_ms >= 0.0 && c.slo.itl_p99_ms >= 0.0,
           "SLO bounds (ttft " << c.slo.ttft_ms << " ms, itl p99 " << c.slo.itl_p99_ms
                               << " ms) are not allowed; they must be >= 0 (0 disables one)");
  validate(c.workload);
}

}  // namespace lightcore::loadgen
