// The control plane of a prefill or decode instance, in its engine process: an HTTP server for
// the /pd/* endpoints (docs/pd.md, "Server roles"), the queue that hands work from its handler
// threads to the engine thread (which owns the pool, the prefix cache, the kv_sender and the
// kv_receiver), the replies the engine thread streams back, and an outbox that posts protocol
// messages to other instances in order without blocking the engine thread.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lightcore/pd/messages.hpp"

namespace lightcore::server {

// A POST /pd/message body: one protocol message, or an array of them (what pd_outbox sends when
// several were queued together), in order. Every one is parsed before any is handled, so a
// malformed batch is refused whole (lightcore::error naming the element).
std::vector<pd::message> parse_message_batch(std::string const& body);

// An "http://host:port" address, split. Throws lightcore::error for another form.
struct http_endpoint {
  std::string host;
  int port = 0;
};
http_endpoint parse_http_url(std::string const& url);

// Posts JSON bodies to other instances from one thread, in the order given, so that neither
// the engine thread nor a transport's completion thread waits on the network. A failed post is
// counted and dropped: the protocol's deadlines cover a lost message. Protocol messages queued
// back to back for one endpoint go as one POST of a JSON array (a prompt sent layer by layer
// queues a `layer` message per layer while the forward runs).
class pd_outbox {
 public:
  pd_outbox();
  ~pd_outbox();  // posts what is queued (each post bounded by its timeouts), then stops
  pd_outbox(pd_outbox const&) = delete;
  pd_outbox& operator=(pd_outbox const&) = delete;

  // url: "http://host:port"; path: with its query string. A body posted as it is.
  void post(std::string url, std::string path, std::string body);
  // A protocol message (a JSON object) that may share its POST with the messages queued next to
  // it for the same url and path: the body is then the array of them, in order.
  void post_message(std::string url, std::string path, std::string body);
  std::uint64_t posts() const noexcept { return posts_.load(); }
  std::uint64_t failures() const noexcept { return failures_.load(); }

 private:
  struct item {
    std::string url, path, body;
    bool message = false;  // may be batched with its neighbours (post_message)
  };
  void run();

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<item> queue_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<std::uint64_t> posts_{0};
  std::map<std::string, std::unique_ptr<httplib::Client>> clients_;  // by url; run() only
  std::thread worker_;
};

// Work for the engine thread, queued by any thread; run_all() runs it between steps.
class pd_inbox {
 public:
  // wake: called after every post, from the posting thread (the engine process wakes its loop
  // with it); empty: none.
  explicit pd_inbox(std::function<void()> wake = {}) : wake_(std::move(wake)) {}
  void post(std::function<void()> job);
  std::size_t run_all();  // the engine thread; returns the jobs run
  bool pending() const noexcept { return pending_.load(std::memory_order_acquire); }

 private:
  std::mutex m_;
  std::vector<std::function<void()>> jobs_;
  std::atomic<bool> pending_{false};
  std::function<void()> wake_;
};

// A reply the engine thread produces (lines of JSON) and an HTTP handler thread writes out.
// Either side may end it: the engine with close(), the handler with abandon() (its client went
// away), which the engine sees through abandoned().
class pd_reply {
 public:
  void push(std::string line);  // the engine thread
  void close();                 // the engine thread: nothing more comes
  // The handler: waits up to `timeout` for lines, moves them into out; false once closed and
  // drained.
  bool wait_pop(std::vector<std::string>& out, std::chrono::milliseconds timeout);
  void abandon() noexcept { abandoned_.store(true); }
  bool abandoned() const noexcept { return abandoned_.load(); }
  bool closed() const;

 private:
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::string> lines_;
  bool closed_ = false;
  std::atomic<bool> abandoned_{false};
};

// Answers a request with the reply's lines as a chunked body of newline-ended JSON objects
// (application/x-ndjson). The engine learns of a client that went away through abandoned().
void stream_reply(httplib::Response& res, std::shared_ptr<pd_reply> reply);

// Waits (up to `limit`) for the reply's first line and answers with it as one JSON body; 504
// when none came in time. The reply is abandoned when the handler returns.
void single_reply(httplib::Response& res, std::shared_ptr<pd_reply> const& reply,
                  std::chrono::milliseconds limit);

// The control HTTP server on its own thread.
class pd_control_server {
 public:
  // threads: HTTP handler threads. Each request in flight holds one for its whole life (P's
  // /pd/prefill waits for the first token, D's /pd/decode streams every token), and the protocol's
  // own messages need more beside them: size it above the instance's request slots.
  explicit pd_control_server(std::size_t threads);
  ~pd_control_server();  // stops listening and joins
  pd_control_server(pd_control_server const&) = delete;
  pd_control_server& operator=(pd_control_server const&) = delete;

  httplib::Server& http() noexcept { return *http_; }
  // Binds host:port (port 0: any free one); returns the port. Routes are added after this and
  // before listen(), which starts serving on its own thread.
  int bind(std::string const& host, int port);
  void listen();

 private:
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
};

// A JSON error body {"error": {"message", "type", "code"}} with the given status.
void reply_json_error(httplib::Response& res, int status, std::string const& message,
                      std::string const& code);

}  // namespace lightcore::server
