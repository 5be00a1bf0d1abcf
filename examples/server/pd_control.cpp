// The control plane's plumbing: the outbox thread, the engine-thread queue, streamed replies.
#include "pd_control.hpp"

#include <nlohmann/json.hpp>
#include <utility>

#include "http_listen.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::server {

http_endpoint parse_http_url(std::string const& url) {
  std::string const scheme = "http://";
  LC_CHECK(url.rfind(scheme, 0) == 0,
           "'" << url << "' is not an address of the form http://host:port");
  std::string rest = url.substr(scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  auto const colon = rest.rfind(':');
  LC_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < rest.size(),
           "'" << url << "' names no port; allowed: http://host:port");
  http_endpoint e;
  e.host = rest.substr(0, colon);
  try {
    std::size_t used = 0;
    e.port = std::stoi(rest.substr(colon + 1), &used);
    LC_CHECK(used == rest.size() - colon - 1, "");
  } catch (std::exception const&) {
    e.port = -1;
  }
  LC_CHECK(e.port > 0 && e.port < 65536, "'" << url << "' has no valid port; allowed: 1..65535");
  return e;
}

std::vector<pd::message> parse_message_batch(std::string const& body) {
  nlohmann::json const j = nlohmann::json::parse(body);
  std::vector<pd::message> out;
  if (!j.is_array()) {
    out.push_back(pd::parse_message(j));
    return out;
  }
  LC_CHECK(!j.empty(), "a message batch must hold at least one message");
  out.reserve(j.size());
  for (std::size_t i = 0; i < j.size(); ++i) {
    try {
      out.push_back(pd::parse_message(j[i]));
    } catch (std::exception const& e) {
      LC_THROW("message " << i << " of the batch: " << e.what());
    }
  }
  return out;
}

pd_outbox::pd_outbox() : worker_([this] { run(); }) {}

pd_outbox::~pd_outbox() {
  {
    std::lock_guard g(m_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void pd_outbox::post(std::string url, std::string path, std::string body) {
  {
    std::lock_guard g(m_);
    queue_.push_back({std::move(url), std::move(path), std::move(body), false});
  }
  cv_.notify_one();
}

void pd_outbox::post_message(std::string url, std::string path, std::string body) {
  {
    std::lock_guard g(m_);
    queue_.push_back({std::move(url), std::move(path), std::move(body), true});
  }
  cv_.notify_one();
}

void pd_outbox::run() {
  for (;;) {
    item it;
    {
      std::unique_lock lk(m_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      it = std::move(queue_.front());
      queue_.pop_front();
      if (it.message && !queue_.empty() && queue_.front().message && queue_.front().url == it.url &&
          queue_.front().path == it.path) {
        std::string batch = "[" + it.body;
        while (!queue_.empty() && queue_.front().message && queue_.front().url == it.url &&
               queue_.front().path == it.path) {
          batch += ',';
          batch += queue_.front().body;
          queue_.pop_front();
        }
        it.body = batch + "]";
      }
    }
    auto& c = clients_[it.url];
    if (!c) {
      try {
        http_endpoint const e = parse_http_url(it.url);
        c = std::make_unique<httplib::Client>(e.host, e.port);
        c->set_connection_timeout(std::chrono::seconds(2));
        c->set_read_timeout(std::chrono::seconds(5));
        c->set_keep_alive(true);
        // Small posts back to back on a kept-alive connection: without this, Nagle holds each
        // request's body until the peer's delayed ACK of its headers (~40 ms a message).
        c->set_tcp_nodelay(true);
      } catch (std::exception const&) {
        ++failures_;
        clients_.erase(it.url);
        continue;
      }
    }
    auto r = c->Post(it.path, it.body, "application/json");
    ++posts_;
    if (!r || r->status != 200) {
      ++failures_;
      clients_.erase(it.url);  // a fresh connection next time (the peer may have restarted)
    }
  }
}

void pd_inbox::post(std::function<void()> job) {
  {
    std::lock_guard g(m_);
    jobs_.push_back(std::move(job));
    pending_.store(true, std::memory_order_release);
  }
  if (wake_) wake_();
}

std::size_t pd_inbox::run_all() {
  std::vector<std::function<void()>> jobs;
  {
    std::lock_guard g(m_);
    jobs.swap(jobs_);
    pending_.store(false, std::memory_order_release);
  }
  for (auto& j : jobs) j();
  return jobs.size();
}

void pd_reply::push(std::string line) {
  {
    std::lock_guard g(m_);
    if (closed_) return;
    lines_.push_back(std::move(line));
  }
  cv_.notify_all();
}

void pd_reply::close() {
  {
    std::lock_guard g(m_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool pd_reply::closed() const {
  std::lock_guard g(m_);
  return closed_;
}

bool pd_reply::wait_pop(std::vector<std::string>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lk(m_);
  cv_.wait_for(lk, timeout, [&] { return closed_ || !lines_.empty(); });
  while (!lines_.empty()) {
    out.push_back(std::move(lines_.front()));
    lines_.pop_front();
  }
  return !closed_;
}

void stream_reply(httplib::Response& res, std::shared_ptr<pd_reply> reply) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "application/x-ndjson",
      [reply](std::size_t, httplib::DataSink& sink) {
        std::vector<std::string> lines;
        bool const open = reply->wait_pop(lines, std::chrono::milliseconds(200));
        for (std::string& l : lines) {
          l += '\n';
          if (!sink.write(l.data(), l.size())) {
            reply->abandon();
            return false;
          }
        }
        // An idle wait writes nothing; a client gone meanwhile is noticed at the next write.
        if (!open) sink.done();
        return true;
      },
      [reply](bool success) {
        if (!success) reply->abandon();
      });
}

void single_reply(httplib::Response& res, std::shared_ptr<pd_reply> const& reply,
                  std::chrono::milliseconds limit) {
  auto const end = std::chrono::steady_clock::now() + limit;
  std::vector<std::string> lines;
  while (lines.empty() && std::chrono::steady_clock::now() < end)
    if (!reply->wait_pop(lines, std::chrono::milliseconds(100)) && lines.empty()) break;
  if (lines.empty()) {
    reply->abandon();
    return reply_json_error(res, 504, "the engine gave no answer in time", "timeout");
  }
  // A line may carry its own status (an error): {"status": 4xx/5xx, "error": {...}}.
  auto j = nlohmann::json::parse(lines.front(), nullptr, false);
  if (j.is_object() && j.contains("status") && j.at("status").is_number_integer()) {
    res.status = j.at("status").get<int>();
    j.erase("status");
  }
  res.set_content(j.dump(), "application/json");
}

pd_control_server::pd_control_server(std::size_t threads)
    : http_(std::make_unique<httplib::Server>()) {
  LC_CHECK(threads >= 1, "pd_control_server: at least one handler thread");
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_tcp_nodelay(true);
}

pd_control_server::~pd_control_server() {
  http_->stop();
  if (listener_.joinable()) listener_.join();
}

int pd_control_server::bind(std::string const& host, int port) {
  int const bound = bind_with_backlog(*http_, host, port);
  LC_CHECK(bound > 0,
           "cannot bind the control endpoint on " << host << ":" << port << " (0: any port)");
  return bound;
}

void pd_control_server::listen() {
  listener_ = std::thread([this] { http_->listen_after_bind(); });
}

void reply_json_error(httplib::Response& res, int status, std::string const& message,
                      std::string const& code) {
  res.status = status;
  res.set_content(
      nlohmann::json{{"error",
                      {{"message", message},
                       {"type", status >= 500 ? "server_error" : "invalid_request_error"},
                       {"code", code}}}}
          .dump(),
      "application/json");
}

}  // namespace lightcore::server
