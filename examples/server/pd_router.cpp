// The pd-router's instance registry and dispatcher: the protocol of one request, as the router
// drives it over the instances' control endpoints (docs/pd.md, "Server roles").
#include "pd_router.hpp"

#include <httplib.h>

#include <algorithm>
#include <iostream>
#include <random>
#include <utility>

#include "lightcore/pd/messages.hpp"
#include "pd_control.hpp"

namespace lightcore::server {
namespace {

using namespace std::chrono_literals;

// One HTTP exchange: status 0 and the error when no answer came (refused, reset, timed out).
struct http_result {
  int status = 0;
  std::string body;
  std::string error;
};

httplib::Client make_client(std::string const& url, std::chrono::milliseconds read_timeout) {
  http_endpoint const e = parse_http_url(url);
  httplib::Client c(e.host, e.port);
  c.set_connection_timeout(2s);
  c.set_read_timeout(read_timeout);
  c.set_tcp_nodelay(true);  // one small request each: no Nagle wait for the peer's ACK
  return c;
}

http_result exchange(std::string const& url, std::string const& method, std::string const& path,
                     std::string const& body, std::chrono::milliseconds read_timeout) {
  http_result out;
  try {
    httplib::Client c = make_client(url, read_timeout);
    auto r = method == "GET" ? c.Get(path) : c.Post(path, body, "application/json");
    if (!r) {
      out.error = httplib::to_string(r.error());
      return out;
    }
    out.status = r->status;
    out.body = r->body;
  } catch (std::exception const& e) {
    out.error = e.what();
  }
  return out;
}

// The message of an error body {"error": {"message": ...}}, or the body itself.
std::string error_text(http_result const& r) {
  if (r.status == 0) return r.error;
  auto const j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j.at("error").is_object())
    return j.at("error").value("message", r.body);
  return "HTTP " + std::to_string(r.status) + ": " + r.body;
}

std::string error_code(http_result const& r) {
  auto const j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j.at("error").is_object() &&
      j.at("error").contains("code") && j.at("error").at("code").is_string())
    return j.at("error").at("code").get<std::string>();
  return {};
}

ipc::finish_reason finish_from_name(std::string const& s) {
  if (s == "stop") return ipc::finish_reason::stop;
  if (s == "length") return ipc::finish_reason::length;
  if (s == "abort") return ipc::finish_reason::abort;
  return ipc::finish_reason::none;
}

}  // namespace

pd_registry::pd_registry(router_options const& o) : o_(o) {
  for (auto const& u : o_.prefill)
    instances_.push_back({server_role::prefill, u, {}, {}, {}, false});
  for (auto const& u : o_.decode) instances_.push_back({server_role::decode, u, {}, {}, {}, false});
  refresh();
  poller_ = std::thread([this] { poll_loop(); });
}

pd_registry::~pd_registry() {
  {
    std::lock_guard g(m_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  poller_.join();
}

void pd_registry::poll_loop() {
  for (;;) {
    {
      std::unique_lock lk(m_);
      stop_cv_.wait_for(lk, o_.poll_interval, [&] { return stopping_.load(); });
      if (stopping_) return;
    }
    refresh();
  }
}

void pd_registry::refresh() {
  std::vector<std::pair<std::string, std::string>> targets;  // url, control
  {
    std::lock_guard g(m_);
    for (auto const& i : instances_) targets.emplace_back(i.url, i.control);
  }
  for (std::size_t k = 0; k < targets.size(); ++k) {
    auto [url, control] = targets[k];
    nlohmann::json info;
    bool up = false, slow = false;
    // The public URL's /pd/info names the control endpoint; the control endpoint's own has the
    // layout, the KV address and the load.
    if (control.empty()) {
      auto const r = exchange(url, "GET", "/pd/info", "", 500ms);
      auto const j = nlohmann::json::parse(r.body, nullptr, false);
      if (r.status == 200 && j.is_object() && j.contains("control") && j.at("control").is_string())
        control = j.at("control").get<std::string>();
    }
    if (!control.empty()) {
      auto const r = exchange(control, "GET", "/pd/info", "", 500ms);
      info = nlohmann::json::parse(r.body, nullptr, false);
      up = r.status == 200 && info.is_object() && info.contains("load");
      slow = r.status == 0 && r.error == httplib::to_string(httplib::Error::Read);
    }
    std::lock_guard g(m_);
    instance& i = instances_[k];
    if (up && info.value("role", "") != name_of(i.role)) {
      std::cerr << "pd-router: " << url << " is a " << info.value("role", "?") << " instance, "
                << "not " << name_of(i.role) << "; ignored\n";
      up = false;
    }
    if (!control.empty() && up) i.control = control;
    // One slow answer is a busy instance, not a gone one: it stays up (with its last load) until
    // three reads in a row have timed out. A refused connection marks it down at once, as does
    // a request that fails on it (mark_down).
    if (up) {
      i.missed = 0;
    } else if (i.up && slow && ++i.missed < 3) {
      continue;
    }
    i.up = up;
    if (up) {
      try {
        i.load = load_from_json(info.at("load"));
      } catch (std::exception const&) {
        i.up = false;
      }
      i.info = std::move(info);
      i.info.erase("load");
    }
  }
}

std::optional<std::string> pd_registry::unavailable() const {
  std::lock_guard g(m_);
  bool p = false, d = false;
  for (auto const& i : instances_) {
    p = p || (i.up && i.role == server_role::prefill);
    d = d || (i.up && i.role == server_role::decode);
  }
  if (p && d) return std::nullopt;
  return std::string("no ") +
         (!p && !d ? "prefill and no decode"
          : !p     ? "prefill"
                   : "decode") +
         " instance is available; retry later";
}

std::optional<pd_registry::pick_result> pd_registry::pick(server_role role,
                                                          std::vector<std::size_t> const& exclude) {
  std::lock_guard g(m_);
  std::optional<std::size_t> best;
  auto score = [&](instance const& i) -> double {
    // Prefill: the fewest tokens waiting to be prefilled; decode: the most free KV, less what
    // waits to decode. Requests this router has placed there count too, so a burst spreads.
    return role == server_role::prefill
               ? double(i.load.queued_tokens + i.load.waiting) + 64.0 * double(i.assigned)
               : -double(i.load.kv_free) + double(i.load.queued_tokens) +
                     64.0 * double(i.assigned + i.load.running);
  };
  for (std::size_t k = 0; k < instances_.size(); ++k) {
    instance const& i = instances_[k];
    if (i.role != role || !i.up || std::find(exclude.begin(), exclude.end(), k) != exclude.end())
      continue;
    if (!best || score(i) < score(instances_[*best])) best = k;
  }
  if (!best) return std::nullopt;
  instance& i = instances_[*best];
  ++i.assigned;
  return pick_result{*best, i.control, i.info};
}

void pd_registry::done(std::size_t index) {
  std::lock_guard g(m_);
  if (index < instances_.size() && instances_[index].assigned > 0) --instances_[index].assigned;
}

void pd_registry::mark_down(std::size_t index) {
  std::lock_guard g(m_);
  if (index < instances_.size()) instances_[index].up = false;
}

// ---- the dispatcher ------------------------------------------------------------------------

struct pd_dispatcher::job {
  ipc::slot_handle slot;
  std::atomic<bool> aborted{false};
};

pd_dispatcher::pd_dispatcher(table_type& table, pd_registry& registry, router_options const& o)
    : table_(&table), registry_(&registry), o_(o) {
  std::random_device rd;
  id_base_ = (std::uint64_t(rd()) << 32 | rd()) & ~(std::uint64_t{0xffff} << 48);
  thread_ = std::thread([this] { run(); });
}

pd_dispatcher::~pd_dispatcher() {
  stopping_ = true;
  {
    std::lock_guard g(m_);
    for (auto& [i, j] : live_) j->aborted = true;
  }
  thread_.join();
}

void pd_dispatcher::reap(bool all) {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (all || it->finished->load()) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void pd_dispatcher::run() {
  while (!stopping_) {
    reap(false);
    auto ev = table_->next_event(std::chrono::milliseconds(100));
    if (!ev) continue;
    if (ev->what == ipc::table_event::kind::abort_requested) {
      std::lock_guard g(m_);
      if (auto it = live_.find(ev->slot.index); it != live_.end() && it->second->slot == ev->slot)
        it->second->aborted = true;
      continue;
    }
    auto j = std::make_shared<job>();
    j->slot = ev->slot;
    table_->start(j->slot);
    if (table_->abort_requested(j->slot)) j->aborted = true;  // before it was taken
    {
      std::lock_guard g(m_);
      live_[j->slot.index] = j;
    }
    auto finished = std::make_shared<std::atomic<bool>>(false);
    workers_.push_back({std::thread([this, j, finished] { work(j, *finished); }), finished});
  }
  reap(true);
}

void pd_dispatcher::work(std::shared_ptr<job> const& j, std::atomic<bool>& finished) {
  try {
    serve(*j);
  } catch (std::exception const& e) {
    try {  // unless the slot was ended before the failure
      table_->fail(j->slot, std::string("the router failed: ") + e.what());
      table_->release(j->slot);
    } catch (std::exception const&) {
    }
  }
  {
    std::lock_guard g(m_);
    if (auto it = live_.find(j->slot.index); it != live_.end() && it->second == j) live_.erase(it);
  }
  finished.store(true);
}

// One request through a prefill and a decode instance. Ends the slot (finish or fail, then the
// engine side's release) on every path.
void pd_dispatcher::serve(job& j) {
  ipc::slot_handle const h = j.slot;
  wire_params const params = table_->params(h);
  auto const prompt_span = table_->prompt(h);
  std::vector<std::int32_t> const prompt(prompt_span.begin(), prompt_span.end());
  std::uint64_t const request_id = id_base_ + next_id_.fetch_add(1);
  std::size_t const top_k = table_->config().top_logprobs;
  std::int64_t produced = 0;

  auto end = [&](ipc::finish_reason why) {
    table_->finish(h, why);
    table_->release(h);
  };
  auto fail = [&](std::string const& why) {
    table_->fail(h, why);
    table_->release(h);
  };
  auto append = [&](pd_token const& t) {
    std::vector<std::int32_t> const id{t.token};
    std::vector<float> const lp{t.logprob};
    std::vector<ipc::top_entry> tops(top_k);
    for (std::size_t k = 0; k < top_k && k < t.top_ids.size(); ++k)
      tops[k] = {t.top_ids[k], t.top_logprobs[k]};
    table_->append_output(h, id, lp, tops);
    ++produced;
  };

  std::vector<std::size_t> bad_p, bad_d;
  std::string last_error = "no attempt was made";
  for (int attempt = 0; attempt < o_.attempts; ++attempt) {
    if (j.aborted) return end(ipc::finish_reason::abort);
    auto p = registry_->pick(server_role::prefill, bad_p);
    if (!p)
      return fail(last_error.empty() || attempt == 0
                      ? "no prefill instance is available"
                      : "no prefill instance is available (" + last_error + ")");
    auto d = registry_->pick(server_role::decode, bad_d);
    if (!d) {
      registry_->done(p->index);
      return fail(attempt == 0 ? "no decode instance is available"
                               : "no decode instance is available (" + last_error + ")");
    }
    struct release_both {
      pd_registry* r;
      std::size_t a, b;
      ~release_both() {
        r->done(a);
        r->done(b);
      }
    } const placed{registry_, p->index, d->index};

    // 1. The decode instance allocates first (its prefix cache: only the suffix moves).
    pd::allocate_request ar;
    ar.request_id = request_id;
    ar.tokens = prompt;
    ar.timeout_ms = o_.timeout_ms;
    ar.start_timeout_ms = o_.start_timeout_ms;
    try {
      auto const& l = p->info.at("layout");
      ar.layout.layers = l.at("layers").get<std::int32_t>();
      ar.layout.width = l.at("width").get<std::int64_t>();
      ar.layout.type = pd::detail::dtype_from_name(io::json_fields(l, "layout"), "dtype");
    } catch (std::exception const& e) {
      return fail(std::string("the prefill instance reports no usable layout: ") + e.what());
    }
    nlohmann::json body = pd::to_json(pd::message(ar));
    body["reply_to"] = p->control;
    auto const r1 = exchange(d->control, "POST", "/pd/allocate", body.dump(), 35s);
    if (r1.status == 0) {
      last_error = "decode instance " + d->control + " is gone: " + r1.error;
      registry_->mark_down(d->index);
      bad_d.push_back(d->index);
      continue;
    }
    if (r1.status != 200)
      return fail("the decode instance refused the allocation: " + error_text(r1));
    pd::allocate_response alloc;
    try {
      alloc = std::get<pd::allocate_response>(pd::parse_message(nlohmann::json::parse(r1.body)));
    } catch (std::exception const& e) {
      return fail(std::string("the decode instance's allocate_result is malformed: ") + e.what());
    }
    if (!alloc.accepted) {
      last_error = "decode instance refused (" + std::string(pd::name_of(alloc.reason)) +
                   "): " + alloc.message;
      if (alloc.reason == pd::failure::out_of_slots || alloc.reason == pd::failure::shutdown) {
        bad_d.push_back(d->index);
        continue;
      }
      return fail("the decode instance refused the request: " + last_error);
    }
    // Gives the allocation back in P's name when P never began sending into it.
    auto abort_allocation = [&](std::string const& why) {
      pd::transfer_abort const a{alloc.id, pd::failure::cancelled, pd::side::prefill, why, false};
      exchange(d->control, "POST", "/pd/message", pd::to_json(pd::message(a)).dump(), 5s);
    };
    if (j.aborted) {
      abort_allocation("the request was aborted");
      return end(ipc::finish_reason::abort);
    }

    // 2. The prefill instance computes the prompt, answers with the first token, sends the KV.
    nlohmann::json pb = {{"request_id", request_id},
                         {"tokens", prompt},
                         {"params", params_to_json(params)},
                         {"allocation", pd::to_json(pd::message(alloc))},
                         {"decode", d->info}};
    auto const r2 = exchange(p->control, "POST", "/pd/prefill", pb.dump(),
                             std::chrono::milliseconds(o_.start_timeout_ms) + 5s);
    if (r2.status == 0) {
      last_error = "prefill instance " + p->control + " is gone: " + r2.error;
      abort_allocation(last_error);
      registry_->mark_down(p->index);
      bad_p.push_back(p->index);
      continue;
    }
    if (r2.status != 200) {
      last_error = error_text(r2);
      if (error_code(r2) == "transport") {  // P could not reach D's KV endpoint: another D
        bad_d.push_back(d->index);
        continue;
      }
      return fail("the prefill instance failed: " + last_error);
    }
    pd_token first;
    try {
      first = token_from_json(nlohmann::json::parse(r2.body));
    } catch (std::exception const& e) {
      return fail(std::string("the prefill instance's answer is malformed: ") + e.what());
    }
    append(first);
    if (auto const why = finish_from_name(first.finished); why != ipc::finish_reason::none)
      return end(why);
    auto cancel_prefill = [&] {
      exchange(p->control, "POST", "/pd/cancel", nlohmann::json{{"request_id", request_id}}.dump(),
               5s);
    };
    if (j.aborted) {
      cancel_prefill();
      return end(ipc::finish_reason::abort);
    }

    // 3. The decode instance adopts the request once the KV has landed and streams the rest.
    nlohmann::json const db = {{"transfer_id", alloc.id},
                               {"tokens", prompt},
                               {"first_token", first.token},
                               {"params", params_to_json(params)}};
    std::string buffer, stream_error;
    ipc::finish_reason finished = ipc::finish_reason::none;
    httplib::Request req;
    req.method = "POST";
    req.path = "/pd/decode";
    req.body = db.dump();
    req.set_header("Content-Type", "application/json");
    int status = 0;
    req.response_handler = [&](httplib::Response const& res) {
      status = res.status;
      return true;
    };
    req.content_receiver = [&](char const* data, std::size_t n, std::uint64_t, std::uint64_t) {
      buffer.append(data, n);
      for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
        std::string const line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        auto const lj = nlohmann::json::parse(line, nullptr, false);
        if (!lj.is_object()) continue;
        if (lj.contains("error")) {
          stream_error = lj.at("error").is_object()
                             ? lj.at("error").value("message", lj.at("error").dump())
                             : lj.at("error").dump();
          return false;
        }
        try {
          pd_token const t = token_from_json(lj);
          append(t);
          finished = finish_from_name(t.finished);
        } catch (std::exception const& e) {
          stream_error = std::string("a malformed token event: ") + e.what();
          return false;
        }
      }
      return !j.aborted.load();
    };
    httplib::Result r3{nullptr, httplib::Error::Success};
    try {
      httplib::Client c = make_client(d->control, 600s);
      r3 = c.send(req);
    } catch (std::exception const& e) {
      stream_error = e.what();
    }
    if (finished != ipc::finish_reason::none) return end(finished);
    if (j.aborted) return end(ipc::finish_reason::abort);
    cancel_prefill();  // frees the prefill side's KV early if its transfer still runs
    if (!stream_error.empty()) return fail("the decode instance failed: " + stream_error);
    if (status != 0 && status != 200) {
      // Error replies come whole: their body went through the receiver into the buffer.
      http_result const whole{status, buffer, ""};
      return fail("the decode instance refused the request: " + error_text(whole));
    }
    registry_->mark_down(d->index);
    return fail("the decode instance " + d->control + " went away after " +
                std::to_string(produced) + " tokens" +
                (r3 ? std::string() : std::string(": ") + httplib::to_string(r3.error())));
  }
  fail("no instance pair could serve the request after " + std::to_string(o_.attempts) +
       " attempts: " + last_error);
}

}  // namespace lightcore::server
