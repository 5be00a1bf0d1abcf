// The HTTP front end: parse, submit into the request table, wait for the engine's output, reply
// (whole or streamed).
#include "frontend.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "api/response.hpp"
#include "api/stop_matcher.hpp"
#include "http_listen.hpp"
#include "modules/text/detokenizer.hpp"

namespace lightcore::server {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

std::uint64_t steady_ns(clock_type::time_point t) {
  return std::uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

void reply_error(httplib::Response& res, api_error const& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

api_error busy_error(std::uint32_t slots) {
  return {429,
          "the server holds its limit of " + std::to_string(slots) +
              " requests in flight (--slots); retry later",
          "", "rate_limit_error", "server_busy"};
}

api_error engine_down() {
  return {503, "the engine process is not running", "", "server_error", "engine_unavailable"};
}

// The socket of the connection a request came on (its peer address and port, our port), or -1.
// cpp-httplib 0.11 gives a handler no view of its connection, and a non-streamed reply writes
// nothing until the end, so this is how the handler learns that its client went away.
int connection_fd(httplib::Request const& req) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent const* e = ::readdir(dir)) {
    int const fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, self{};
    socklen_t pl = sizeof(peer), sl = sizeof(self);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &sl) != 0)
      continue;
    char host[INET6_ADDRSTRLEN] = {};
    int peer_port = -1, self_port = -1;
    if (peer.ss_family == AF_INET) {
      auto const* a = reinterpret_cast<sockaddr_in const*>(&peer);
      ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
      peer_port = ntohs(a->sin_port);
      self_port = ntohs(reinterpret_cast<sockaddr_in const*>(&self)->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      auto const* a = reinterpret_cast<sockaddr_in6 const*>(&peer);
      ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      peer_port = ntohs(a->sin6_port);
      self_port = ntohs(reinterpret_cast<sockaddr_in6 const*>(&self)->sin6_port);
    } else {
      continue;
    }
    if (peer_port == req.remote_port && self_port == req.local_port && req.remote_addr == host) {
      found = fd;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// Whether the peer of `fd` has closed its side (a client that gave up on its reply).
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace

// One request in flight (one choice of a reply): its slot in the table, the text built from its
// output so far. reserve() takes a slot, start() submits into it.
class frontend::generation {
 public:
  enum class progress { none, tokens, ended };

  generation(frontend& f, generation_request const& req, clock_type::time_point arrival,
             std::int32_t index, waiter* group)
      : f_(f),
        req_(req),
        detok_(f.tok_, req.skip_special_tokens),
        stops_(req.stop),
        arrival_(arrival),
        index_(index),
        group_(group) {}

  ~generation() {
    if (!slot_) return;
    waiter& own = *f_.waiters_[slot_->index];
    if (group_ != nullptr) {
      std::lock_guard g(own.m);
      own.target = nullptr;  // the group waiter may go before the slot is reused
    }
    if (!started_) {  // reserved only: nobody else holds the slot
      f_.table_->release(*slot_);
      return;
    }
    if (!done_) {
      f_.table_->request_abort(*slot_);  // the client went away: the engine frees its KV
      reason_ = finish_reason::abort;
    }
    f_.metrics_.record_finished(reason_, std::int64_t(req_.prompt_ids.size()), read_,
                                seconds_since(arrival_));
    f_.table_->release(*slot_);
    f_.metrics_.requests_in_flight.dec();
  }
  generation(generation const&) = delete;
  generation& operator=(generation const&) = delete;

  // Takes a table slot; false when every slot is in use.
  bool reserve() {
    auto h = f_.table_->allocate_slot();
    if (!h) return false;
    slot_ = *h;
    if (group_ != nullptr) {
      waiter& own = *f_.waiters_[h->index];
      std::lock_guard g(own.m);
      own.target = group_;
    }
    return true;
  }

  // Submits the request into its reserved slot; an error (too many stop ids) instead. The
  // parsers have checked the prompt and max_tokens against the limits the table was sized from.
  std::optional<api_error> start() {
    wire_params p;
    p.sampling = req_.sampling;
    // Choice i of a seeded request samples with seed + i: reproducible, and the choices differ.
    p.sampling.seed = req_.sampling.seed + std::uint64_t(index_);
    p.sampling.num_logprobs = req_.logprobs ? req_.top_logprobs : -1;
    p.max_new_tokens = req_.max_new_tokens;
    std::vector<std::int32_t> stop_ids(req_.stop_token_ids.begin(), req_.stop_token_ids.end());
    if (!req_.ignore_eos)
      stop_ids.insert(stop_ids.end(), f_.options_.eos_ids.begin(), f_.options_.eos_ids.end());
    if (stop_ids.size() > std::size_t(max_stop_token_ids))
      return api_error{400,
                       "too many stop token ids (" + std::to_string(stop_ids.size()) +
                           " with EOS); allowed: at most " + std::to_string(max_stop_token_ids),
                       "stop_token_ids", "invalid_request_error", ""};
    p.stop_count = std::int32_t(stop_ids.size());
    std::copy(stop_ids.begin(), stop_ids.end(), p.stop_ids);
    f_.stats_->admitted_ns(slot_->index).store(0, std::memory_order_relaxed);
    f_.table_->write_prompt(*slot_, req_.prompt_ids);
    f_.table_->submit(*slot_, f_.next_id_.fetch_add(1), p);
    started_ = true;
    f_.metrics_.requests_in_flight.inc();
    return std::nullopt;
  }

  // The waiter this request's output wakes (its slot's, or the group's).
  waiter& wake_source() const { return group_ != nullptr ? *group_ : *f_.waiters_[slot_->index]; }

  // Without waiting: appends output past what was read (tokens), or says that the request has
  // ended and nothing more will come (ended; reason() and error() say how), or none.
  // The logprob entry of output i (its id and logprob), with the alternatives it asked for.
  token_logprob entry(std::size_t i, std::int32_t id, float lp) const {
    std::size_t const k = f_.table_->config().top_logprobs;
    std::size_t const want = req_.logprobs ? std::size_t(std::max(req_.top_logprobs, 0)) : 0;
    std::vector<text::token_id> ids;
    std::vector<float> lps;
    for (std::size_t j = 0; j < std::min(want, k) && (i + 1) * k <= tops_.size(); ++j) {
      ipc::top_entry const& t = tops_[i * k + j];
      if (t.id < 0) break;
      ids.push_back(t.id);
      lps.push_back(t.logprob);
    }
    return make_token_logprob(f_.tok_, id, lp, ids, lps);
  }

  progress poll(std::vector<std::int32_t>& ids, std::vector<float>& lps) {
    if (done_) return progress::ended;
    auto const state = f_.table_->state(*slot_);
    std::uint32_t const n = f_.table_->output_count(*slot_);
    if (n > read_) {
      // Exactly [read_, n): the engine may publish more meanwhile, and outputs() and logprobs()
      // each read the count again; taking more here would hand a token out twice.
      auto const out = f_.table_->outputs(*slot_, read_).first(n - read_);
      ids.insert(ids.end(), out.begin(), out.end());
      auto const lp = f_.table_->logprobs(*slot_, read_);
      lps.insert(lps.end(), lp.begin(),
                 lp.begin() + std::ptrdiff_t(std::min<std::size_t>(lp.size(), n - read_)));
      std::size_t const k = f_.table_->config().top_logprobs;
      if (k > 0) {
        auto const top = f_.table_->top_logprobs(*slot_, read_).first(std::size_t(n - read_) * k);
        tops_.insert(tops_.end(), top.begin(), top.end());
      }
      observe(n - read_);
      read_ = n;
      return progress::tokens;
    }
    if (state >= ipc::slot_state::finished) {
      done_ = true;
      if (state == ipc::slot_state::error) {
        reason_ = finish_reason::error;
        error_ = f_.table_->error_message(*slot_);
      } else {
        reason_ = from_table(f_.table_->reason(*slot_));
      }
      return progress::ended;
    }
    if (!f_.engine_alive() || f_.stopping_.load()) {
      done_ = true;
      reason_ = finish_reason::error;
      std::lock_guard g(f_.death_m_);
      error_ = f_.death_.empty() ? "the server is shutting down" : f_.death_;
      return progress::ended;
    }
    return progress::none;
  }

  // Waits for output past what was read; appends the new ids and their logprobs. Returns false
  // once the request has ended and nothing more will come.
  bool next(std::vector<std::int32_t>& ids, std::vector<float>& lps) {
    for (;;) {
      std::uint64_t const seen = f_.seq_of(wake_source());
      auto const r = poll(ids, lps);
      if (r == progress::tokens) return true;
      if (r == progress::ended) return false;
      f_.wait_past(wake_source(), seen);
    }
  }

  // Text of the new ids, with stop strings applied; sets the stop reason when one matched.
  std::string text_of(std::int32_t id) {
    if (stops_.stopped()) return {};
    auto r = stops_.feed(detok_.push(id));
    if (r.stopped) stop_by_string();
    return std::move(r.text);
  }
  // The held-back text at the end of the stream.
  std::string final_text() {
    if (stops_.stopped()) return {};
    auto r = stops_.feed(detok_.flush());
    if (r.stopped) {
      stop_by_string();
      return std::move(r.text);
    }
    return r.text + stops_.finish();
  }
  bool stopped_by_string() const { return stops_.stopped(); }

  // Ends the request early (a stop string matched): the engine frees it.
  void stop_by_string() {
    if (done_) return;
    f_.table_->request_abort(*slot_);
    done_ = true;
    reason_ = finish_reason::stop;
  }

  finish_reason reason() const { return reason_; }
  std::string const& error() const { return error_; }
  generation_request const& request() const { return req_; }

 private:
  static finish_reason from_table(ipc::finish_reason r) {
    switch (r) {
      case ipc::finish_reason::stop: return finish_reason::stop;
      case ipc::finish_reason::length: return finish_reason::length;
      case ipc::finish_reason::abort: return finish_reason::abort;
      default: return finish_reason::error;
    }
  }
  void observe(std::uint32_t n) {
    auto const now = clock_type::now();
    if (read_ == 0) {
      f_.metrics_.time_to_first_token.observe(
          std::chrono::duration<double>(now - arrival_).count());
      std::uint64_t const admitted =
          f_.stats_->admitted_ns(slot_->index).load(std::memory_order_relaxed);
      std::uint64_t const arrived = steady_ns(arrival_);
      if (admitted != 0)
        f_.metrics_.request_queue_time.observe(
            admitted > arrived ? double(admitted - arrived) * 1e-9 : 0.0);
    } else {
      f_.metrics_.inter_token_latency.observe(std::chrono::duration<double>(now - last_).count() /
                                              double(n));
    }
    last_ = now;
  }

  frontend& f_;
  generation_request const& req_;  // owned by the handler's state, which outlives this
  text::detokenizer detok_;
  stop_matcher stops_;
  clock_type::time_point arrival_, last_;
  std::int32_t index_ = 0;
  waiter* group_ = nullptr;
  std::optional<ipc::slot_handle> slot_;
  bool started_ = false;
  std::uint32_t read_ = 0;
  std::vector<ipc::top_entry> tops_;  // table_->config().top_logprobs per output read
  bool done_ = false;
  finish_reason reason_ = finish_reason::stop;
  std::string error_;
};

frontend::frontend(frontend_options options, table_type& table, engine_stats_block const& stats,
                   text::tokenizer tok)
    : options_(std::move(options)),
      table_(&table),
      stats_(&stats),
      tok_(std::move(tok)),
      http_(std::make_unique<httplib::Server>()),
      started_(unix_time_now()) {
  for (std::uint32_t i = 0; i < table.config().slots; ++i)
    waiters_.push_back(std::make_unique<waiter>());
  // httplib serves each connection on one pool thread for its whole life (keep-alive included):
  // one per slot, and a few for /health, /metrics and refusals.
  int const threads =
      options_.http_threads > 0 ? options_.http_threads : int(table.config().slots) + 8;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(std::size_t(threads)); };
  // Above the API's limit, so that the API answers an oversize body with its JSON 413; bodies
  // past this get the same JSON from the error handler.
  http_->set_payload_max_length(options_.api.max_body_bytes + (1u << 20));
  http_->set_tcp_nodelay(true);  // a token per write: no Nagle delay before the client sees it
  routes();
}

frontend::~frontend() { stop(); }

int frontend::bind() {
  int const port = bind_with_backlog(*http_, options_.host, options_.port);
  LC_CHECK(port > 0, "cannot bind " << options_.host << ":" << options_.port
                                    << " (in use, or not an address of this machine)");
  return port;
}

void frontend::serve() {
  std::thread dispatcher([this] { dispatch(); });
  http_->listen_after_bind();
  stop();
  dispatcher.join();
}

void frontend::stop() {
  stopping_.store(true);
  for (auto& w : waiters_) bump(*w);
  if (http_) http_->stop();
}

void frontend::engine_died(std::string why) {
  {
    std::lock_guard g(death_m_);
    death_ = std::move(why);
  }
  engine_dead_.store(true, std::memory_order_release);
  for (auto& w : waiters_) bump(*w);
}

std::uint64_t frontend::seq_of(waiter& w) {
  std::lock_guard g(w.m);
  return w.seq;
}

void frontend::wait_past(waiter& w, std::uint64_t seen) {
  std::unique_lock lk(w.m);
  w.cv.wait(lk, [&] { return w.seq != seen || !engine_alive() || stopping_.load(); });
}

// Wakes whoever waits on slot waiter w: itself, or the group it forwards to.
void frontend::bump(waiter& w) {
  std::lock_guard g(w.m);
  waiter& t = w.target != nullptr ? *w.target : w;
  if (&t != &w) {
    std::lock_guard gt(t.m);
    ++t.seq;
    t.cv.notify_all();
  } else {
    ++w.seq;
    w.cv.notify_all();
  }
}

// Wakes the handler of every slot the engine published to. The timeout only bounds how late a
// shutdown is noticed; output wakes this thread at once.
void frontend::dispatch() {
  while (!stopping_.load()) {
    auto h = table_->next_output(std::chrono::milliseconds(200));
    if (h) bump(*waiters_[h->index]);
  }
}

void frontend::reject(httplib::Response& res, api_error const& e) {
  if (e.status == 503)
    metrics_.requests_unavailable.inc();
  else if (e.status >= 400 && e.status < 500)
    metrics_.requests_rejected.inc();
  reply_error(res, e);
}

std::string frontend::render_metrics() {
  std::lock_guard g(scrape_m_);
  engine_stats_values const& v = stats_->values();
  auto const relaxed = std::memory_order_relaxed;
  auto const get = [&](std::atomic<std::uint64_t> const& a) { return double(a.load(relaxed)); };
  metrics_.kv_slots_used.set(get(v.kv_used));
  metrics_.kv_slots_capacity.set(get(v.kv_capacity));
  metrics_.prefix_cached_tokens.set(get(v.cached_tokens));
  double const queried = get(v.prefix_query_tokens);
  metrics_.prefix_cache_hit_rate.set(queried > 0 ? get(v.prefix_hit_tokens) / queried : 0.0);
  metrics_.requests_running.set(get(v.running));
  metrics_.requests_waiting.set(get(v.waiting));
  metrics_.last_step_rows.set(get(v.last_rows));
  metrics_.last_step_forward_tokens.set(get(v.last_forward_tokens));
  // Counters move by what the engine added since the last scrape.
  double const steps = get(v.steps), forward = get(v.forward_tokens);
  if (steps > metrics_.engine_steps.value())
    metrics_.engine_steps.inc(steps - metrics_.engine_steps.value());
  if (forward > metrics_.engine_forward_tokens.value())
    metrics_.engine_forward_tokens.inc(forward - metrics_.engine_forward_tokens.value());
  return metrics_.registry.render();
}

void frontend::routes() {
  auto& s = *http_;
  // The API key, when set: every endpoint but /health, /metrics (probes and scrapers) and /pd/info.
  s.set_pre_routing_handler([this](httplib::Request const& req, httplib::Response& res) {
    // /pd/info names the control endpoint to routers, which hold no API key (the control
    // endpoint has none either: it belongs on a private network).
    if (options_.api_key.empty() || req.path == "/health" || req.path == "/metrics" ||
        req.path == "/pd/info")
      return httplib::Server::HandlerResponse::Unhandled;
    std::string const auth = req.get_header_value("Authorization");
    if (auth == "Bearer " + options_.api_key) return httplib::Server::HandlerResponse::Unhandled;
    reject(res, {401,
                 auth.empty() ? "no API key given; send the header 'Authorization: Bearer <key>'"
                              : "the API key is not valid; send 'Authorization: Bearer <key>' "
                                "with the server's key",
                 "", "authentication_error", "invalid_api_key"});
    res.set_header("WWW-Authenticate", "Bearer");
    return httplib::Server::HandlerResponse::Handled;
  });
  s.Get("/health", [this](httplib::Request const&, httplib::Response& res) {
    auto const why_not = options_.unavailable ? options_.unavailable() : std::nullopt;
    if (engine_alive() && !stopping_.load() && why_not) {
      res.status = 503;
      res.set_content(dump({{"status", "unavailable"}, {"reason", *why_not}}), "application/json");
    } else if (engine_alive() && !stopping_.load()) {
      res.set_content(R"({"status":"ok"})", "application/json");
    } else {
      res.status = 503;
      std::lock_guard g(death_m_);
      res.set_content(dump({{"status", "unavailable"}, {"reason", death_}}), "application/json");
    }
  });
  s.Get("/v1/models", [this](httplib::Request const&, httplib::Response& res) {
    res.set_content(dump(models_response(options_.api.served_model_name, started_)),
                    "application/json");
  });
  s.Get("/metrics", [this](httplib::Request const&, httplib::Response& res) {
    res.set_content(render_metrics(), "text/plain; version=0.0.4");
  });
  s.Post("/tokenize", [this](httplib::Request const& http_req, httplib::Response& res) {
    auto ids = parse_tokenize_body(http_req.body, tok_, options_.api);
    if (!ids) return reject(res, ids.error());
    std::size_t const count = ids.value().size();
    res.set_content(dump({{"tokens", std::move(ids.value())},
                          {"count", count},
                          {"max_model_len", options_.api.max_model_len}}),
                    "application/json");
  });
  s.Post("/detokenize", [this](httplib::Request const& http_req, httplib::Response& res) {
    auto text = parse_detokenize_body(http_req.body, tok_, options_.api);
    if (!text) return reject(res, text.error());
    res.set_content(dump({{"prompt", std::move(text.value())}}), "application/json");
  });

  enum class route { completion, chat, generate, generate_stream };
  auto handler = [this](route which) {
    return [this, which](httplib::Request const& http_req, httplib::Response& res) {
      auto const arrival = clock_type::now();  // TTFT and e2e start here, before parsing
      api_result<generation_request> parsed =
          which == route::completion ? parse_completion_body(http_req.body, tok_, options_.api)
          : which == route::chat     ? parse_chat_body(http_req.body, tok_, options_.api)
                                     : parse_generate_body(http_req.body, tok_, options_.api,
                                                           which == route::generate_stream);
      if (!parsed) return reject(res, parsed.error());
      metrics_.requests_received.inc();
      if (!engine_alive()) return reject(res, engine_down());
      if (options_.unavailable)
        if (auto why = options_.unavailable())
          return reject(res, {503, *why, "", "server_error", "no_instance"});
      if (parsed.value().logprobs &&
          std::uint32_t(parsed.value().top_logprobs) > options_.max_top_logprobs) {
        std::string const field = which == route::completion ? "logprobs" : "top_logprobs";
        return reject(res, {400,
                            "'" + field + "' = " + std::to_string(parsed.value().top_logprobs) +
                                " asks for more alternatives than this server keeps; allowed: 0.." +
                                std::to_string(options_.max_top_logprobs) +
                                " (the server's --max-top-logprobs)",
                            field, "invalid_request_error", ""});
      }
      if (options_.max_queue > 0) {
        auto const waiting = std::int64_t(stats_->values().waiting.load(std::memory_order_relaxed));
        if (waiting >= options_.max_queue)
          return reject(res, {429,
                              "the engine has " + std::to_string(waiting) +
                                  " requests waiting, its limit (--max-queue " +
                                  std::to_string(options_.max_queue) + "); retry later",
                              "", "rate_limit_error", "queue_full"});
      }

      // The request and its choices live in one shared state: a streamed reply outlives this
      // handler.
      struct reply_state {
        generation_request req;
        std::unique_ptr<waiter> group;  // n > 1: the choices' shared waiter
        std::vector<std::unique_ptr<generation>> gens;
        std::optional<stream_writer> writer;
        bool begun = false;
        std::vector<std::vector<std::int32_t>> ids;
        std::vector<std::vector<float>> lps;
        std::vector<std::size_t> emitted;
        std::vector<bool> finished;
        ~reply_state() { gens.clear(); }  // before the group waiter they may forward to
      };
      auto st = std::make_shared<reply_state>();
      st->req = std::move(parsed.value());
      generation_request const& req = st->req;
      std::size_t const n = std::size_t(std::max(req.n, 1));
      if (n > 1) st->group = std::make_unique<waiter>();
      for (std::size_t i = 0; i < n; ++i) {
        st->gens.push_back(
            std::make_unique<generation>(*this, req, arrival, std::int32_t(i), st->group.get()));
        if (!st->gens.back()->reserve()) return reject(res, busy_error(table_->config().slots));
      }
      for (auto& g : st->gens)
        if (auto e = g->start()) return reject(res, *e);
      std::int64_t const prompt_tokens = std::int64_t(req.prompt_ids.size());

      if (!req.stream) {
        // A client that closes its connection while it waits aborts its request (every new
        // token wakes this loop, which then looks at the socket).
        int const fd = connection_fd(http_req);
        std::vector<generation_output> outs(n);
        for (std::size_t c = 0; c < n; ++c) {
          generation& gen = *st->gens[c];
          generation_output& out = outs[c];
          out.prompt_tokens = prompt_tokens;
          std::vector<std::int32_t> ids;
          std::vector<float> lps;
          while (gen.next(ids, lps)) {
            if (peer_closed(fd)) return;  // the generations' destructors abort them
            for (std::size_t i = out.token_ids.size(); i < ids.size(); ++i) {
              out.token_ids.push_back(ids[i]);
              if (req.logprobs) out.logprobs.push_back(gen.entry(i, ids[i], lps[i]));
              out.text += gen.text_of(ids[i]);
              if (gen.stopped_by_string()) break;
            }
            if (gen.stopped_by_string()) break;
          }
          out.text += gen.final_text();
          out.reason = gen.reason();
          out.completion_tokens = std::int64_t(out.token_ids.size());
          if (out.reason == finish_reason::error) {
            reply_error(res, {500, "generation failed: " + gen.error(), "", "server_error", ""});
            return;
          }
        }
        nlohmann::json const body =
            which == route::completion ? completion_response(req, make_response_meta(req), outs)
            : which == route::chat     ? chat_response(req, make_response_meta(req), outs)
                                       : generate_response(req, outs[0]);
        res.set_content(dump(body), "application/json");
        return;
      }
      // Streamed: the provider waits for new tokens of any choice and writes their chunks; a
      // client that goes away fails the write, which ends the provider, and the releaser drops
      // the generations, whose destructors abort the requests in the engine (KV is freed).
      bool const openai = which != route::generate_stream;
      if (openai) st->writer.emplace(req, make_response_meta(req));
      st->ids.resize(n);
      st->lps.resize(n);
      st->emitted.assign(n, 0);
      st->finished.assign(n, false);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, st, openai, prompt_tokens, n](std::size_t, httplib::DataSink& sink) {
            auto write = [&](std::string const& chunk) {
              return chunk.empty() || sink.write(chunk.data(), chunk.size());
            };
            if (!st->begun) {
              st->begun = true;
              if (openai && !write(st->writer->begin())) return false;
            }
            waiter& source = st->gens[0]->wake_source();
            for (;;) {
              std::uint64_t const seen = seq_of(source);
              bool wrote = false;
              for (std::size_t c = 0; c < n; ++c) {
                if (st->finished[c]) continue;
                generation& g = *st->gens[c];
                auto const r = g.poll(st->ids[c], st->lps[c]);
                auto& ids = st->ids[c];
                for (; st->emitted[c] < ids.size() && !g.stopped_by_string(); ++st->emitted[c]) {
                  std::size_t const i = st->emitted[c];
                  std::string const text = g.text_of(ids[i]);
                  if (openai) {
                    std::vector<token_logprob> lp;
                    if (g.request().logprobs) lp.push_back(g.entry(i, ids[i], st->lps[c][i]));
                    if (!write(st->writer->delta(text, lp, c))) return false;
                  } else if (!write(generate_stream_event(
                                 ids[i], text, st->lps[c][i], tok_.is_special(ids[i]),
                                 std::int64_t(i + 1), prompt_tokens, std::nullopt))) {
                    return false;
                  }
                  wrote = true;
                }
                if (r != generation::progress::ended && !g.stopped_by_string()) continue;
                // This choice has ended: its held-back text and its finishing chunk.
                st->finished[c] = true;
                wrote = true;
                if (g.reason() == finish_reason::error) {
                  api_error const e{500, "generation failed: " + g.error(), "", "server_error", ""};
                  write(openai ? st->writer->error(e) : sse_event(error_body(e)));
                  sink.done();
                  return true;
                }
                std::string const tail = g.final_text();
                auto const count = std::int64_t(ids.size());
                if (openai) {
                  if (!tail.empty() && !write(st->writer->delta(tail, {}, c))) return false;
                  if (!write(st->writer->finish_choice(c, g.reason()))) return false;
                } else if (!write(generate_stream_final_event(tail, g.reason(), count,
                                                              prompt_tokens))) {
                  return false;
                }
              }
              if (std::all_of(st->finished.begin(), st->finished.end(), [](bool b) { return b; })) {
                if (openai) {
                  std::int64_t completion = 0;
                  for (auto const& ids : st->ids) completion += std::int64_t(ids.size());
                  if (!write(st->writer->end(prompt_tokens, completion))) return false;
                }
                sink.done();
                return true;
              }
              if (wrote) return true;
              wait_past(source, seen);
            }
          },
          [st](bool) { st->gens.clear(); });
    };
  };
  s.Post("/v1/completions", handler(route::completion));
  s.Post("/v1/chat/completions", handler(route::chat));
  s.Post("/generate", handler(route::generate));
  s.Post("/generate_stream", handler(route::generate_stream));
  if (options_.extra_routes) options_.extra_routes(s);
  s.set_error_handler([this](httplib::Request const& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    api_error e{res.status, "", "", "invalid_request_error", ""};
    if (res.status == 404) {
      e.message = "no route " + req.method + " " + req.path +
                  "; allowed: POST /v1/completions, /v1/chat/completions, /generate, "
                  "/generate_stream, /tokenize, /detokenize; GET /v1/models, /health, /metrics";
    } else if (res.status == 413) {
      e.message = "the request body is larger than the " +
                  std::to_string(options_.api.max_body_bytes) + " bytes allowed";
      e.code = "body_too_large";
    } else {
      e.message = "HTTP error " + std::to_string(res.status);
    }
    if (res.status >= 400 && res.status < 500) metrics_.requests_rejected.inc();
    res.set_content(dump(error_body(e)), "application/json");
  });
  s.set_exception_handler(
      [](httplib::Request const&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (std::exception const& e) {
          what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(dump(error_body({500, "internal error: " + what, "", "server_error", ""})),
                        "application/json");
      });
}

}  // namespace lightcore::server
