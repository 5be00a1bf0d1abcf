// What the prefill and the decode role share in an engine process: the engine-thread interface
// the engine loop drives (poll between steps, token events of the role's requests), the load
// snapshot and the instance description served on GET /pd/load and GET /pd/info.
#pragma once

#include <httplib.h>

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "lightcore/engine/engine.hpp"
#include "pd_control.hpp"
#include "pd_protocol.hpp"

namespace lightcore::server {

// Engine request ids of prefill/decode requests carry this bit; the front end's own ids (a
// counter from 1) never do, so both kinds live in one engine.
inline constexpr std::uint64_t pd_id_bit = std::uint64_t{1} << 63;

// An engine token event as the control endpoints send it (the token, its logprob, position,
// alternatives and how the request ended).
inline pd_token pd_token_of(engine::token_event const& t) {
  pd_token tok;
  tok.token = t.token;
  tok.logprob = t.logprob;
  tok.index = t.index;
  tok.top_ids.assign(t.top_ids.begin(), t.top_ids.end());
  tok.top_logprobs.assign(t.top_logprobs.begin(), t.top_logprobs.end());
  tok.finished = t.finished == engine::finish_reason::stop     ? "stop"
                 : t.finished == engine::finish_reason::length ? "length"
                 : t.finished == engine::finish_reason::abort  ? "abort"
                                                               : "none";
  return tok;
}

class pd_node {
 public:
  virtual ~pd_node() = default;

  // Registers the role's endpoints, and GET /pd/info and GET /pd/load.
  void routes(httplib::Server& s) {
    s.Get("/pd/info", [this](httplib::Request const&, httplib::Response& res) {
      nlohmann::json j = info();
      j["load"] = to_json(load());
      res.set_content(j.dump(), "application/json");
    });
    s.Get("/pd/load", [this](httplib::Request const&, httplib::Response& res) {
      res.set_content(to_json(load()).dump(), "application/json");
    });
    role_routes(s);
  }

  // The engine thread, once per loop turn (before the step): queued work, transfers' progress,
  // timeouts; then the load snapshot.
  virtual void poll() = 0;
  // Whether poll() has time-driven work (transfers under way, requests waiting for their KV):
  // the engine loop then polls every millisecond while idle; otherwise it sleeps until the
  // request table or the control endpoint's queue wakes it.
  virtual bool busy() const = 0;
  // The engine thread: a token event; true when it belongs to this role's requests.
  virtual bool on_token(engine::token_event const& t) = 0;

  pd_load load() const {
    std::lock_guard g(load_m_);
    return load_;
  }

 protected:
  virtual void role_routes(httplib::Server& s) = 0;
  virtual nlohmann::json info() const = 0;

  // The engine thread: publishes the load after a turn.
  // l: the role's own fields (queued_tokens, transfers, the prefill side's transfer counts);
  // the engine's are filled in here.
  template <class Engine>
  void publish_load(Engine const& eng, pd_load l) {
    engine::engine_stats const st = eng.stats();
    l.waiting = std::int64_t(eng.scheduler().queued().size());
    l.running = std::int64_t(eng.scheduler().running().size());
    l.kv_capacity = st.kv.capacity;
    l.kv_free = st.kv.capacity - st.kv.used + st.evictable_tokens;
    std::lock_guard g(load_m_);
    load_ = l;
  }

 private:
  mutable std::mutex load_m_;
  pd_load load_;
};

}  // namespace lightcore::server
