// The front end of the reference server: HTTP (OpenAI-compatible and LightLLM's /generate),
// tokenisation and the chat format, detokenisation, stop strings, SSE streaming and metrics. A
// request becomes a record in the shared-memory request table; the engine process fills its
// output, and the front end's dispatcher thread wakes the handler that waits for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/metrics.hpp"
#include "api/request.hpp"
#include "engine_stats.hpp"
#include "lightcore/ipc/request_table.hpp"
#include "modules/text/tokenizer.hpp"
#include "wire.hpp"

namespace httplib {
class Server;
struct Response;
}  // namespace httplib

namespace lightcore::server {

using table_type = ipc::request_table<wire_params>;

struct frontend_options {
  std::string host = "127.0.0.1";      // the address to bind; 127.0.0.1 unless told otherwise
  int port = 8000;                     // 0: any free port (printed at start)
  api_config api;                      // names and limits of the API
  std::vector<std::int32_t> eos_ids;   // stop ids added unless a request ignores EOS
  int http_threads = 0;                // 0: one per table slot plus a few
  std::string api_key;                 // non-empty: "Authorization: Bearer <key>" is required
                                       // everywhere but /health, /metrics, /pd/info; default none
  std::int64_t max_queue = 0;          // requests waiting in the engine; more get 429; 0: none
  std::uint32_t max_top_logprobs = 0;  // alternatives per token a request may ask for (0..20;
                                       // the request table keeps that many); default 0
  // More routes (the /pd/* endpoints of a prefill/decode role); default none.
  std::function<void(httplib::Server&)> extra_routes;
  // A reason why generation requests cannot be served now (they get 503 with it), or nullopt;
  // the pd-router's "no instance is available". Default: none.
  std::function<std::optional<std::string>()> unavailable;
};

class frontend {
 public:
  frontend(frontend_options options, table_type& table, engine_stats_block const& stats,
           text::tokenizer tok);
  ~frontend();
  frontend(frontend const&) = delete;
  frontend& operator=(frontend const&) = delete;

  // Binds; returns the port (useful with port 0). Throws when the address cannot be bound.
  int bind();
  // Serves until stop(); returns after the listener and the dispatcher have ended.
  void serve();
  // From any thread: stop accepting, wake every waiting handler.
  void stop();
  // The engine process is gone: /health fails, every request in flight ends with an error.
  void engine_died(std::string why);
  bool engine_alive() const { return !engine_dead_.load(std::memory_order_acquire); }

  class generation;  // one request in flight (frontend.cpp)

 private:
  // A handler waiting for output: the dispatcher bumps seq and notifies. A slot's waiter may
  // forward to another one (target, guarded by m): the n choices of one streamed reply share a
  // group waiter, so that one thread waits for all of them. Lock order: slot, then target.
  struct waiter {
    std::mutex m;
    std::condition_variable cv;
    std::uint64_t seq = 0;
    waiter* target = nullptr;  // nullptr: this waiter itself
  };

  void routes();
  void dispatch();
  void bump(waiter& w);
  std::uint64_t seq_of(waiter& w);
  void wait_past(waiter& w, std::uint64_t seen);  // until w.seq moved, the engine died or stop
  std::string render_metrics();
  // Counts an error reply by its status (4xx rejected, 503 unavailable) and writes it.
  void reject(httplib::Response& res, api_error const& e);

  frontend_options options_;
  table_type* table_;
  engine_stats_block const* stats_;
  text::tokenizer tok_;
  server_metrics metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::vector<std::unique_ptr<waiter>> waiters_;  // one per table slot
  std::atomic<bool> stopping_{false};
  std::atomic<bool> engine_dead_{false};
  std::string death_;
  std::mutex death_m_;
  std::atomic<std::uint64_t> next_id_{1};
  std::mutex scrape_m_;  // /metrics: one scrape at a time moves the engine's counters
  std::int64_t started_ = 0;
};

}  // namespace lightcore::server
