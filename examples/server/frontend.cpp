// The HTTP front end: parse, submit into the request table, wait for the engine's output, reply
// (whole or streamed).
#include "frontend.hpp"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "api/response.hpp"
#include "api/stop_matcher.hpp"
#include "modules/text/detokenizer.hpp"

namespace lightcore::server {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

void reply_error(httplib::Response& res, api_error const& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

api_error busy_error(std::uint32_t slots) {
  return {
      503,
      "the server holds its limit of " + std::to_string(slots) + " requests in flight; retry later",
      "", "server_busy", "server_busy"};
}

}  // namespace

// One request in flight: its slot in the table, the text built from its output so far.
class frontend::generation {
 public:
  generation(frontend& f, generation_request const& req)
      : f_(f), req_(req), detok_(f.tok_, req.skip_special_tokens), stops_(req.stop) {}

  ~generation() {
    if (!slot_) return;
    if (!done_) {
      f_.table_->request_abort(*slot_);  // the client went away: the engine frees its KV
      reason_ = finish_reason::abort;
    }
    f_.metrics_.record_finished(reason_, std::int64_t(req_.prompt_ids.size()), read_,
                                seconds_since(start_));
    f_.table_->release(*slot_);
    f_.metrics_.requests_running.dec();
  }
  generation(generation const&) = delete;
  generation& operator=(generation const&) = delete;

  // Puts the request into the table; an error (busy, too many stop ids) instead.
  std::optional<api_error> submit() {
    if (!f_.engine_alive())
      return api_error{503, "the engine process is not running", "", "server_error", ""};
    if (req_.logprobs && req_.top_logprobs > 0)
      return api_error{400,
                       "top_logprobs > 0 is not supported by this server (the chosen token's "
                       "logprob is); allowed: 0",
                       "top_logprobs", "invalid_request_error", ""};
    wire_params p;
    p.sampling = req_.sampling;
    p.sampling.num_logprobs = req_.logprobs ? 0 : -1;
    p.max_new_tokens = req_.max_new_tokens;
    std::vector<std::int32_t> stop_ids(req_.stop_token_ids.begin(), req_.stop_token_ids.end());
    if (!req_.ignore_eos)
      stop_ids.insert(stop_ids.end(), f_.options_.eos_ids.begin(), f_.options_.eos_ids.end());
    if (stop_ids.size() > std::size_t(max_stop_token_ids))
      return api_error{400,
                       "too many stop token ids (" + std::to_string(stop_ids.size()) +
                           " with EOS); allowed: at most " + std::to_string(max_stop_token_ids),
                       "stop_token_ids", "invalid_request_error", ""};
    if (req_.prompt_ids.size() > f_.table_->config().max_prompt)
      return api_error{413,
                       "the prompt has " + std::to_string(req_.prompt_ids.size()) +
                           " tokens; allowed: at most " +
                           std::to_string(f_.table_->config().max_prompt),
                       "prompt", "invalid_request_error", ""};
    if (std::uint32_t(req_.max_new_tokens) > f_.table_->config().max_output)
      return api_error{400,
                       "max_tokens " + std::to_string(req_.max_new_tokens) +
                           " exceeds the server's limit of " +
                           std::to_string(f_.table_->config().max_output),
                       "max_tokens", "invalid_request_error", ""};
    p.stop_count = std::int32_t(stop_ids.size());
    std::copy(stop_ids.begin(), stop_ids.end(), p.stop_ids);
    auto h = f_.table_->allocate_slot();
    if (!h) return busy_error(f_.table_->config().slots);
    slot_ = *h;
    f_.metrics_.requests_running.inc();
    f_.table_->write_prompt(*h, req_.prompt_ids);
    f_.table_->submit(*h, f_.next_id_.fetch_add(1), p);
    start_ = clock_type::now();
    return std::nullopt;
  }

  // Waits for output past what was read; appends the new ids and their logprobs. Returns false
  // once the request has ended (reason() and error() say how) and nothing more will come.
  bool next(std::vector<std::int32_t>& ids, std::vector<float>& lps) {
    if (done_) return false;
    waiter& w = *f_.waiters_[slot_->index];
    std::unique_lock lk(w.m);
    for (;;) {
      std::uint64_t const seen = w.seq;
      lk.unlock();
      auto const state = f_.table_->state(*slot_);
      std::uint32_t const n = f_.table_->output_count(*slot_);
      if (n > read_) {
        auto const out = f_.table_->outputs(*slot_, read_);
        ids.insert(ids.end(), out.begin(), out.end());
        auto const lp = f_.table_->logprobs(*slot_, read_);
        lps.insert(lps.end(), lp.begin(), lp.end());
        observe(n - read_);
        read_ = n;
        return true;
      }
      if (state >= ipc::slot_state::finished) {
        done_ = true;
        if (state == ipc::slot_state::error) {
          reason_ = finish_reason::error;
          error_ = f_.table_->error_message(*slot_);
        } else {
          reason_ = from_table(f_.table_->reason(*slot_));
        }
        return false;
      }
      if (!f_.engine_alive() || f_.stopping_.load()) {
        done_ = true;
        reason_ = finish_reason::error;
        std::lock_guard g(f_.death_m_);
        error_ = f_.death_.empty() ? "the server is shutting down" : f_.death_;
        return false;
      }
      lk.lock();
      w.cv.wait(lk, [&] { return w.seq != seen || !f_.engine_alive() || f_.stopping_.load(); });
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
    if (read_ == 0)
      f_.metrics_.time_to_first_token.observe(std::chrono::duration<double>(now - start_).count());
    else
      f_.metrics_.inter_token_latency.observe(std::chrono::duration<double>(now - last_).count() /
                                              double(n));
    last_ = now;
  }

  frontend& f_;
  generation_request req_;
  text::detokenizer detok_;
  stop_matcher stops_;
  std::optional<ipc::slot_handle> slot_;
  std::uint32_t read_ = 0;
  bool done_ = false;
  finish_reason reason_ = finish_reason::stop;
  std::string error_;
  clock_type::time_point start_, last_;
};

frontend::frontend(frontend_options options, table_type& table, text::tokenizer tok)
    : options_(std::move(options)),
      table_(&table),
      tok_(std::move(tok)),
      http_(std::make_unique<httplib::Server>()),
      started_(unix_time_now()) {
  for (std::uint32_t i = 0; i < table.config().slots; ++i)
    waiters_.push_back(std::make_unique<waiter>());
  int const threads =
      options_.http_threads > 0 ? options_.http_threads : int(table.config().slots) + 8;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(std::size_t(threads)); };
  http_->set_payload_max_length(options_.api.max_body_bytes);
  http_->set_tcp_nodelay(true);  // a token per write: no Nagle delay before the client sees it
  routes();
}

frontend::~frontend() { stop(); }

int frontend::bind() {
  if (options_.port == 0) {
    int const port = http_->bind_to_any_port(options_.host);
    LC_CHECK(port > 0, "cannot bind " << options_.host << " to any port");
    return port;
  }
  LC_CHECK(http_->bind_to_port(options_.host, options_.port),
           "cannot bind " << options_.host << ":" << options_.port
                          << " (in use, or not an address of this machine)");
  return options_.port;
}

void frontend::serve() {
  std::thread dispatcher([this] { dispatch(); });
  http_->listen_after_bind();
  stopping_.store(true);
  for (auto& w : waiters_) w->cv.notify_all();
  dispatcher.join();
}

void frontend::stop() {
  stopping_.store(true);
  for (auto& w : waiters_) {
    std::lock_guard g(w->m);
    w->cv.notify_all();
  }
  if (http_) http_->stop();
}

void frontend::engine_died(std::string why) {
  {
    std::lock_guard g(death_m_);
    death_ = std::move(why);
  }
  engine_dead_.store(true, std::memory_order_release);
  for (auto& w : waiters_) {
    std::lock_guard g(w->m);
    w->cv.notify_all();
  }
}

// Wakes the handler of every slot the engine published to. The timeout only bounds how late a
// shutdown is noticed; output wakes this thread at once.
void frontend::dispatch() {
  while (!stopping_.load()) {
    auto h = table_->next_output(std::chrono::milliseconds(200));
    if (!h) continue;
    waiter& w = *waiters_[h->index];
    {
      std::lock_guard g(w.m);
      ++w.seq;
    }
    w.cv.notify_all();
  }
}

void frontend::routes() {
  auto& s = *http_;
  s.Get("/health", [this](httplib::Request const&, httplib::Response& res) {
    if (engine_alive() && !stopping_.load()) {
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
    res.set_content(metrics_.registry.render(), "text/plain; version=0.0.4");
  });

  enum class route { completion, chat, generate, generate_stream };
  auto handler = [this](route which) {
    return [this, which](httplib::Request const& http_req, httplib::Response& res) {
      api_result<generation_request> parsed =
          which == route::completion ? parse_completion_body(http_req.body, tok_, options_.api)
          : which == route::chat     ? parse_chat_body(http_req.body, tok_, options_.api)
                                     : parse_generate_body(http_req.body, tok_, options_.api,
                                                           which == route::generate_stream);
      if (!parsed) {
        metrics_.requests_rejected.inc();
        reply_error(res, parsed.error());
        return;
      }
      metrics_.requests_received.inc();
      generation_request const& req = parsed.value();
      auto gen = std::make_shared<generation>(*this, req);
      if (auto e = gen->submit()) {
        metrics_.requests_rejected.inc();
        reply_error(res, *e);
        return;
      }
      std::int64_t const prompt_tokens = std::int64_t(req.prompt_ids.size());
      if (!req.stream) {
        generation_output out;
        out.prompt_tokens = prompt_tokens;
        std::vector<std::int32_t> ids;
        std::vector<float> lps;
        while (gen->next(ids, lps)) {
          for (std::size_t i = out.token_ids.size(); i < ids.size(); ++i) {
            out.token_ids.push_back(ids[i]);
            if (req.logprobs) out.logprobs.push_back(make_token_logprob(tok_, ids[i], lps[i]));
            out.text += gen->text_of(ids[i]);
            if (gen->stopped_by_string()) break;
          }
          if (gen->stopped_by_string()) break;
        }
        out.text += gen->final_text();
        out.reason = gen->reason();
        out.completion_tokens = std::int64_t(out.token_ids.size());
        if (out.reason == finish_reason::error) {
          reply_error(res, {500, "generation failed: " + gen->error(), "", "server_error", ""});
          return;
        }
        nlohmann::json const body =
            which == route::completion ? completion_response(req, make_response_meta(req), out)
            : which == route::chat     ? chat_response(req, make_response_meta(req), out)
                                       : generate_response(req, out);
        res.set_content(dump(body), "application/json");
        return;
      }
      // Streamed: the provider blocks for each new token and writes its chunk; a client that
      // goes away fails the write, which ends the provider, and the releaser drops the
      // generation, whose destructor aborts the request in the engine (its KV is freed).
      struct stream_state {
        std::shared_ptr<generation> gen;
        std::optional<stream_writer> writer;
        bool begun = false;
        std::vector<std::int32_t> ids;
        std::vector<float> lps;
        std::size_t emitted = 0;
      };
      auto st = std::make_shared<stream_state>();
      st->gen = gen;
      bool const openai = which != route::generate_stream;
      if (openai) st->writer.emplace(req, make_response_meta(req));
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, st, openai, prompt_tokens](std::size_t, httplib::DataSink& sink) {
            generation& g = *st->gen;
            auto write = [&](std::string const& chunk) {
              return chunk.empty() || sink.write(chunk.data(), chunk.size());
            };
            if (!st->begun) {
              st->begun = true;
              if (openai && !write(st->writer->begin())) return false;
            }
            bool const more = g.next(st->ids, st->lps);
            for (; st->emitted < st->ids.size() && !g.stopped_by_string(); ++st->emitted) {
              std::size_t const i = st->emitted;
              std::string const text = g.text_of(st->ids[i]);
              if (openai) {
                std::vector<token_logprob> lp;
                if (g.request().logprobs)
                  lp.push_back(make_token_logprob(tok_, st->ids[i], st->lps[i]));
                if (!write(st->writer->delta(text, lp))) return false;
              } else {
                bool const last = !more && i + 1 == st->ids.size();
                std::optional<finish_reason> fin;
                if (last) fin = g.reason();
                if (!write(generate_stream_event(st->ids[i], text, st->lps[i],
                                                 tok_.is_special(st->ids[i]), std::int64_t(i + 1),
                                                 prompt_tokens, fin)))
                  return false;
              }
            }
            if (more && !g.stopped_by_string()) return true;
            if (g.reason() == finish_reason::error) {
              api_error const e{500, "generation failed: " + g.error(), "", "server_error", ""};
              write(openai ? st->writer->error(e) : sse_event(error_body(e)));
            } else if (openai) {
              std::string const tail = g.final_text();
              if (!tail.empty() && !write(st->writer->delta(tail))) return false;
              if (!write(
                      st->writer->finish(g.reason(), prompt_tokens, std::int64_t(st->ids.size()))))
                return false;
            }
            sink.done();
            return true;
          },
          [st](bool) { st->gen.reset(); });
    };
  };
  s.Post("/v1/completions", handler(route::completion));
  s.Post("/v1/chat/completions", handler(route::chat));
  s.Post("/generate", handler(route::generate));
  s.Post("/generate_stream", handler(route::generate_stream));
  s.set_error_handler([](httplib::Request const& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    api_error e{res.status, "", "", "invalid_request_error", ""};
    e.message = res.status == 404 ? "no route " + req.method + " " + req.path +
                                        "; allowed: POST /v1/completions, /v1/chat/completions, "
                                        "/generate, /generate_stream; GET /v1/models, /health, "
                                        "/metrics"
                                  : "HTTP error " + std::to_string(res.status);
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
