// The front end of the reference server: HTTP (OpenAI-compatible and LightLLM's /generate),
// tokenisation and the chat format, detokenisation, stop strings, SSE streaming and metrics. A
// request becomes a record in the shared-memory request table; the engine process fills its
// output, and the front end's dispatcher thread wakes the handler that waits for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "api/metrics.hpp"
#include "api/request.hpp"
#include "lightcore/ipc/request_table.hpp"
#include "modules/text/tokenizer.hpp"
#include "wire.hpp"

namespace httplib {
class Server;
}

namespace lightcore::server {

using table_type = ipc::request_table<wire_params>;

struct frontend_options {
  std::string host = "127.0.0.1";     // the address to bind; 127.0.0.1 unless told otherwise
  int port = 8000;                    // 0: any free port (printed at start)
  api_config api;                     // names and limits of the API
  std::vector<std::int32_t> eos_ids;  // stop ids added unless a request ignores EOS
  int http_threads = 0;               // 0: one per table slot plus a few
};

class frontend {
 public:
  frontend(frontend_options options, table_type& table, text::tokenizer tok);
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
  // A handler waiting for its slot's output: the dispatcher bumps seq and notifies.
  struct waiter {
    std::mutex m;
    std::condition_variable cv;
    std::uint64_t seq = 0;
  };

  void routes();
  void dispatch();

  frontend_options options_;
  table_type* table_;
  text::tokenizer tok_;
  server_metrics metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::vector<std::unique_ptr<waiter>> waiters_;  // one per table slot
  std::atomic<bool> stopping_{false};
  std::atomic<bool> engine_dead_{false};
  std::string death_;
  std::mutex death_m_;
  std::atomic<std::uint64_t> next_id_{1};
  std::int64_t started_ = 0;
};

}  // namespace lightcore::server
