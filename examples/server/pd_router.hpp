// The pd-router role: its front end is the ordinary one (parsing, tokenisation, detokenisation,
// stop strings, streaming), and in place of an engine a dispatcher serves the request table by
// running each request on a prefill and a decode instance: allocate on the decode instance,
// prefill (first token) on the prefill instance, which sends the KV, then decode (the rest) on
// the decode instance. Instances are picked by the load they report, and an instance that is
// gone before the request's first token is replaced by another; after it, the request fails
// alone.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "lightcore/ipc/request_table.hpp"
#include "pd_protocol.hpp"
#include "wire.hpp"

namespace lightcore::server {

struct router_options {
  std::vector<std::string> prefill;  // prefill instances: "http://host:port" (front end or control)
  std::vector<std::string> decode;   // decode instances, likewise
  std::int64_t timeout_ms = 30'000;  // a KV transfer's budget from its first layer, ms; 30 s
  // How long a prompt may wait for its prefill (the prefill instance's queue included): the
  // decode side's hold on its slots before the first layer lands, and the router's wait for the
  // first token; ms, default 600 s.
  std::int64_t start_timeout_ms = 600'000;
  std::chrono::milliseconds poll_interval{100};  // how often instances' load is read; 100 ms
  int attempts = 4;  // instance pairs tried before the first token, at most
};

// The instances the router knows, their control endpoints and last reported load, refreshed by
// a poller thread.
class pd_registry {
 public:
  struct instance {
    server_role role = server_role::prefill;
    std::string url;      // as given
    std::string control;  // its engine's control endpoint (from GET <url>/pd/info)
    nlohmann::json info;  // the control endpoint's /pd/info
    pd_load load;
    bool up = false;
    std::int64_t assigned = 0;  // requests this router has on it now
    int missed = 0;             // /pd/info reads that failed in a row (a busy instance is slow)
  };
  struct pick_result {
    std::size_t index = 0;
    std::string control;
    nlohmann::json info;
  };

  explicit pd_registry(router_options const& o);
  ~pd_registry();
  pd_registry(pd_registry const&) = delete;
  pd_registry& operator=(pd_registry const&) = delete;

  // nullopt when a request can be served now; else why not (no prefill or no decode instance).
  std::optional<std::string> unavailable() const;
  // The least loaded instance of the role that is up and not excluded (and counts it assigned).
  std::optional<pick_result> pick(server_role role, std::vector<std::size_t> const& exclude);
  void done(std::size_t index);  // the request picked with index has left the instance
  void mark_down(std::size_t index);
  // Reads every instance's info and load now (the poller does it every poll_interval).
  void refresh();

 private:
  void poll_loop();

  router_options o_;
  mutable std::mutex m_;
  std::vector<instance> instances_;
  std::atomic<bool> stopping_{false};
  std::condition_variable stop_cv_;
  std::thread poller_;
};

// The router's engine: consumes the request table; one thread per request in flight.
class pd_dispatcher {
 public:
  using table_type = ipc::request_table<wire_params>;

  pd_dispatcher(table_type& table, pd_registry& registry, router_options const& o);
  ~pd_dispatcher();  // stops taking requests; waits for those in flight
  pd_dispatcher(pd_dispatcher const&) = delete;
  pd_dispatcher& operator=(pd_dispatcher const&) = delete;

 private:
  struct job;
  void run();
  void work(std::shared_ptr<job> const& j, std::atomic<bool>& finished);  // a worker thread
  void serve(job& j);
  void reap(bool all);

  table_type* table_;
  pd_registry* registry_;
  router_options o_;
  std::atomic<bool> stopping_{false};
  std::uint64_t id_base_ = 0;  // random: ids stay unique across routers sharing instances
  std::atomic<std::uint64_t> next_id_{0};
  std::mutex m_;
  std::unordered_map<std::uint32_t, std::shared_ptr<job>> live_;  // by table slot index
  struct worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<worker> workers_;  // run() only
  std::thread thread_;
};

}  // namespace lightcore::server
