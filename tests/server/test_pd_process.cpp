// Prefill/decode separation end to end: real lightcore_server processes in the prefill, decode
// and pd-router roles (the built-in tiny model on the CPU, KV over the TCP transport), against a
// plain single instance. Greedy outputs through P + D equal the single instance's (completions
// and chat, whole and streamed, prefix hits on the decode side); a decode instance killed while
// it serves fails only its request, the prefill side's KV is released, later requests go to the
// decode instance left, and with none left the router answers 503. The control endpoints refuse
// bad messages with clear errors. A decode instance that dies in the middle of a transfer
// (a stand-in that closes the KV connection after the first layer frame) costs only its request,
// and the prefill side's held KV is released. Skips where DeepSeek-V3's tokenizer has not been
// fetched.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/pd/tcp_transport.hpp"
#include "server_process.hpp"

namespace lightcore::test {
namespace {

std::string url_of(server_process const& s) {
  return "http://127.0.0.1:" + std::to_string(s.port());
}

// The control endpoint an instance's public address names.
std::string control_of(server_process const& s) {
  auto c = s.client();
  auto r = c.Get("/pd/info");
  if (!r || r->status != 200) return {};
  return nlohmann::json::parse(r->body).value("control", "");
}

httplib::Client client_for(std::string const& url);

// Bytes of one token's KV over every layer of an instance's pool (its /pd/info layout; the tiny
// model's pools are bf16).
std::int64_t kv_bytes_per_token(server_process const& s) {
  auto c = client_for(control_of(s));
  auto const layout = nlohmann::json::parse(c.Get("/pd/info")->body).at("layout");
  EXPECT_EQ(layout.at("dtype"), "bf16");
  return layout.at("layers").get<std::int64_t>() * layout.at("width").get<std::int64_t>() * 2;
}

httplib::Client client_for(std::string const& url) {
  auto const colon = url.rfind(':');
  httplib::Client c(url.substr(7, colon - 7), std::stoi(url.substr(colon + 1)));
  c.set_read_timeout(60s);
  return c;
}

// Starts servers in parallel (each loads the model), in the order given.
std::vector<std::unique_ptr<server_process>> start_all(
    std::vector<std::vector<std::string>> const& flags) {
  std::vector<std::unique_ptr<server_process>> out(flags.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < flags.size(); ++i)
    threads.emplace_back([&, i] { out[i] = std::make_unique<server_process>(flags[i]); });
  for (auto& t : threads) t.join();
  return out;
}

std::unique_ptr<server_process> start_router(std::vector<server_process const*> prefill,
                                             std::vector<server_process const*> decode) {
  std::vector<std::string> flags = {"--role", "pd-router"};
  for (auto const* p : prefill) flags.insert(flags.end(), {"--prefill", url_of(*p)});
  for (auto const* d : decode) flags.insert(flags.end(), {"--decode", url_of(*d)});
  return std::make_unique<server_process>(flags);
}

// Whatever else held KV was given back: the pool's used slots are the prefix cache's.
void expect_kv_released(server_process const& s, char const* who) {
  auto c = s.client();
  // The stats block is published after the engine's loop turns; give it a moment.
  double used = -1, cached = -2;
  for (int i = 0; i < 50 && used != cached; ++i) {
    std::string const m = c.Get("/metrics")->body;
    used = metric(m, "lightcore_kv_slots_used");
    cached = metric(m, "lightcore_prefix_cache_tokens");
    if (used != cached) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(used, cached) << who << ": KV slots are held beyond the prefix cache";
  auto cc = client_for(control_of(s));
  auto const load = nlohmann::json::parse(cc.Get("/pd/load")->body);
  EXPECT_EQ(load["transfers"], 0) << who << ": " << load.dump();
  EXPECT_EQ(load["queued_tokens"], 0) << who << ": " << load.dump();
}

// A whole reply's text and token logprobs.
struct reply {
  std::string text;
  std::vector<double> logprobs;
  std::string finish;
};

reply complete(httplib::Client& c, nlohmann::json body) {
  body["logprobs"] = 0;
  auto const j = post(c, "/v1/completions", body);
  reply r;
  if (!j.contains("choices")) return r;
  r.text = j["choices"][0]["text"];
  r.finish = j["choices"][0]["finish_reason"];
  for (auto const& x : j["choices"][0]["logprobs"]["token_logprobs"]) r.logprobs.push_back(x);
  return r;
}

// The concatenated text of a streamed completion or chat reply, and whether it ended well.
std::string streamed_text(httplib::Client& c, std::string const& path, nlohmann::json body,
                          bool* clean = nullptr) {
  body["stream"] = true;
  auto r = c.Post(path, body.dump(), "application/json");
  std::string text;
  bool done = false, error = false;
  if (!r) return "<no response>";
  for (auto const& d : sse_data(r->body)) {
    if (d == "[DONE]") {
      done = true;
      continue;
    }
    auto const j = nlohmann::json::parse(d);
    if (j.contains("error")) error = true;
    if (!j.contains("choices") || j["choices"].empty()) continue;
    auto const& ch = j["choices"][0];
    if (ch.contains("text")) text += ch["text"].get<std::string>();
    if (ch.contains("delta") && ch["delta"].contains("content"))
      text += ch["delta"]["content"].get<std::string>();
  }
  if (clean != nullptr) *clean = done && !error;
  return text;
}

void expect_same(reply const& a, reply const& b, std::string const& what) {
  EXPECT_EQ(a.text, b.text) << what;
  EXPECT_EQ(a.finish, b.finish) << what;
  ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
  for (std::size_t i = 0; i < a.logprobs.size(); ++i)
    EXPECT_NEAR(a.logprobs[i], b.logprobs[i], 1e-4) << what << " token " << i;
}

// What every stand-in instance shares: a control HTTP server on a free port that answers
// /pd/info and /pd/load from the description its subclass gives, and the endpoints the subclass
// registers on http_ before serve(). A subclass calls stop() first in its destructor (the
// handlers use its members).
class stand_in {
 public:
  stand_in(stand_in const&) = delete;
  stand_in& operator=(stand_in const&) = delete;
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 protected:
  stand_in() = default;
  ~stand_in() { stop(); }

  // A /pd/info: the role, this control URL, the tiny model's layout on the CPU, an idle load
  // with kv_free of 1000 slots free, and the `extra` fields.
  nlohmann::json describe(char const* role, std::int64_t kv_free, nlohmann::json extra) const {
    nlohmann::json j = {{"role", role},
                        {"control", url()},
                        {"node", "stand-in"},
                        {"device", "cpu"},
                        {"layout", {{"layers", 4}, {"width", 576}, {"dtype", "bf16"}}},
                        {"load",
                         {{"queued_tokens", 0},
                          {"waiting", 0},
                          {"running", 0},
                          {"kv_free", kv_free},
                          {"kv_capacity", 1000},
                          {"transfers", 0}}}};
    j.update(extra);
    return j;
  }

  template <class Info>
  void serve(Info info) {
    http_.Get("/pd/info", [info](httplib::Request const&, httplib::Response& res) {
      res.set_content(info().dump(), "application/json");
    });
    http_.Get("/pd/load", [info](httplib::Request const&, httplib::Response& res) {
      res.set_content(info()["load"].dump(), "application/json");
    });
    http_.set_keep_alive_max_count(1);  // stop() then waits for no idle keep-alive connection
    port_ = http_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { http_.listen_after_bind(); });
  }

  void stop() {
    http_.stop();
    if (thread_.joinable()) thread_.join();
  }

  httplib::Server http_;

 private:
  int port_ = 0;
  std::thread thread_;
};

// A decode instance that dies in the middle of a transfer: its control endpoint accepts the
// allocation, its KV endpoint greets the prefill side like a tcp_kv_server (the tiny model's
// layout), reads the first layer frame and closes the connection without acknowledging it.
// Its /pd/decode waits for that, then drops the connection; die() stops it answering at all.
class dying_decode : public stand_in {
 public:
  dying_decode() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 4) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("the stand-in KV endpoint cannot listen");
    kv_port_ = ntohs(a.sin_port);
    kv_thread_ = std::thread([this] { serve_kv(); });
    http_.Post("/pd/allocate", [](httplib::Request const& req, httplib::Response& res) {
      auto const j = nlohmann::json::parse(req.body);
      std::vector<int> slots(j["tokens"].size());
      for (std::size_t i = 0; i < slots.size(); ++i) slots[i] = int(i);
      res.set_content(nlohmann::json{{"type", "allocate_result"},
                                     {"version", 1},
                                     {"request_id", j["request_id"]},
                                     {"accepted", true},
                                     {"free_slots", 1000},
                                     {"transfer_id", 1},
                                     {"prefix_hit", 0},
                                     {"dst_slots", slots}}
                          .dump(),
                      "application/json");
    });
    http_.Post("/pd/message", [](httplib::Request const&, httplib::Response& res) {
      res.set_content("{}", "application/json");
    });
    http_.Post("/pd/decode", [this](httplib::Request const&, httplib::Response& res) {
      std::unique_lock lk(m_);
      cv_.wait_for(lk, 20s, [&] { return kv_closed_; });
      res.set_chunked_content_provider("application/x-ndjson",
                                       [](std::size_t, httplib::DataSink&) { return false; });
    });
    serve([this] { return info(); });
  }
  ~dying_decode() {
    die();
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    kv_thread_.join();
  }
  int frames_seen() const { return frames_.load(); }
  void die() { stop(); }

 private:
  nlohmann::json info() const {
    return describe("decode", 1000, {{"kv", "127.0.0.1:" + std::to_string(kv_port_)}});
  }
  void serve_kv() {
    int const fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd >= 0) {
      pd::detail::hello_payload const hello{4, std::uint32_t(dtype::bf16), 576, 1000};
      pd::tcp_frame_header h;
      bool closed = false;
      std::vector<char> payload;
      if (pd::detail::send_frame(fd, pd::tcp_frame_kind::hello, 0, 0, 0, &hello, sizeof hello) &&
          pd::detail::recv_header(fd, h, closed).empty()) {
        payload.resize(h.payload_bytes);
        if (pd::detail::recv_all(fd, payload.data(), payload.size())) ++frames_;
      }
      ::close(fd);  // dead: no acknowledgement
    }
    std::lock_guard g(m_);
    kv_closed_ = true;
    cv_.notify_all();
  }

  int listen_fd_ = -1;
  int kv_port_ = 0;
  std::atomic<int> frames_{0};
  std::mutex m_;
  std::condition_variable cv_;
  bool kv_closed_ = false;
  std::thread kv_thread_;
};

// A prefill instance that answers the first token and then goes silent: it never sends the KV.
// It acknowledges the decode side's abort (as a kv_sender with nothing in flight does), so the
// decode side frees the allocation at once instead of after its abort grace.
class silent_prefill : public stand_in {
 public:
  silent_prefill() {
    http_.Post("/pd/prefill", [this](httplib::Request const& req, httplib::Response& res) {
      auto const j = nlohmann::json::parse(req.body);
      {
        std::lock_guard g(m_);
        decode_ = j["decode"]["control"].get<std::string>();
      }
      res.set_content(nlohmann::json{{"token", 42},
                                     {"logprob", -1.0},
                                     {"index", 0},
                                     {"finished", "none"},
                                     {"top_ids", nlohmann::json::array()},
                                     {"top_logprobs", nlohmann::json::array()}}
                          .dump(),
                      "application/json");
    });
    http_.Post("/pd/cancel", [](httplib::Request const&, httplib::Response& res) {
      res.set_content("{}", "application/json");
    });
    http_.Post("/pd/message", [this](httplib::Request const& req, httplib::Response& res) {
      auto j = nlohmann::json::parse(req.body);
      res.set_content("{}", "application/json");
      if (j.value("type", "") != "abort") return;
      ++aborts_;
      j["ack"] = true;
      j["origin"] = "prefill";
      std::string decode;
      {
        std::lock_guard g(m_);
        decode = decode_;
      }
      client_for(decode).Post("/pd/message", j.dump(), "application/json");
    });
    serve([this] { return info(); });
  }
  ~silent_prefill() { stop(); }
  int aborts() const { return aborts_.load(); }

 private:
  nlohmann::json info() const { return describe("prefill", 1000, nlohmann::json::object()); }

  std::atomic<int> aborts_{0};
  std::mutex m_;
  std::string decode_;
};

// A decode instance that reports a given load and refuses every allocation with out_of_slots
// (full), noting when it was asked: the order the router tries decode instances in.
class full_decode : public stand_in {
 public:
  full_decode(std::int64_t kv_free, std::atomic<int>& clock) : kv_free_(kv_free), clock_(&clock) {
    http_.Post("/pd/allocate", [this](httplib::Request const& req, httplib::Response& res) {
      asked_at_ = ++*clock_;
      auto const j = nlohmann::json::parse(req.body);
      res.set_content(nlohmann::json{{"type", "allocate_result"},
                                     {"version", 1},
                                     {"request_id", j["request_id"]},
                                     {"accepted", false},
                                     {"free_slots", 0},
                                     {"reason", "out_of_slots"},
                                     {"message", "full"}}
                          .dump(),
                      "application/json");
    });
    serve([this] { return info(); });
  }
  ~full_decode() { stop(); }
  int asked_at() const { return asked_at_.load(); }  // 0: never asked

 private:
  nlohmann::json info() const { return describe("decode", kv_free_, {{"kv", "127.0.0.1:1"}}); }

  std::int64_t kv_free_;
  std::atomic<int>* clock_;
  std::atomic<int> asked_at_{0};
};

using PdProcess = ServerProcess;

TEST_F(PdProcess, GreedyOutputsThroughPrefillAndDecodeEqualASingleInstance) {
  // The decode instance runs two requests at most: the concurrent ones wait there, landed,
  // for a free row.
  auto s = start_all({{}, {"--role", "prefill"}, {"--role", "decode", "--max-running", "2"}});
  server_process& single = *s[0];
  server_process& p = *s[1];
  server_process& d = *s[2];
  auto router = start_router({&p}, {&d});
  auto one = single.client();
  auto pd = router->client();

  auto const greedy = [](nlohmann::json prompt, int max_tokens) {
    return nlohmann::json{
        {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true}};
  };
  // A fresh prompt, the same prompt again (the decode side's prefix cache holds all of it: no
  // KV moves), a longer one sharing its start (only the suffix moves), token ids, one token
  // (the prefill side answers alone).
  std::vector<nlohmann::json> const bodies = {
      greedy("The quick brown fox jumps over", 8), greedy("The quick brown fox jumps over", 8),
      greedy("The quick brown fox jumps over the lazy dog, twice", 6),
      greedy(nlohmann::json::array({100, 200, 300, 400, 500, 600}), 5),
      greedy("A single token", 1)};
  for (auto const& b : bodies) expect_same(complete(one, b), complete(pd, b), b.dump());

  // Streamed, completions and chat.
  nlohmann::json const chat = {{"messages", {{{"role", "user"}, {"content", "Hello there!"}}}},
                               {"max_tokens", 6},
                               {"temperature", 0}};
  bool clean_one = false, clean_pd = false;
  EXPECT_EQ(streamed_text(one, "/v1/chat/completions", chat, &clean_one),
            streamed_text(pd, "/v1/chat/completions", chat, &clean_pd));
  EXPECT_TRUE(clean_one && clean_pd);
  EXPECT_EQ(post(one, "/v1/chat/completions", chat)["choices"][0]["message"],
            post(pd, "/v1/chat/completions", chat)["choices"][0]["message"]);
  auto const stream_body = greedy("Once upon a time", 6);
  EXPECT_EQ(streamed_text(one, "/v1/completions", stream_body, &clean_one),
            streamed_text(pd, "/v1/completions", stream_body, &clean_pd));
  EXPECT_TRUE(clean_one && clean_pd);

  // Several at once, on both.
  std::vector<std::thread> threads;
  std::vector<reply> got(4), want(4);
  for (int i = 0; i < 4; ++i)
    for (bool through_pd : {false, true})
      threads.emplace_back([&, i, through_pd] {
        auto c = through_pd ? router->client() : single.client();
        (through_pd ? got : want)[std::size_t(i)] =
            complete(c, greedy("Request number " + std::to_string(i), 6));
      });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i)
    expect_same(want[std::size_t(i)], got[std::size_t(i)], "concurrent " + std::to_string(i));

  expect_kv_released(p, "prefill");
  expect_kv_released(d, "decode");
  // The prompts moved layer by layer, each transfer begun before its prompt's forward.
  auto const pload = nlohmann::json::parse(client_for(control_of(p)).Get("/pd/load")->body);
  EXPECT_GT(pload["streamed"].get<std::int64_t>(), 0) << pload.dump();
  // Landed transfers are counted with their bytes: whole rows of every layer.
  EXPECT_GT(pload["transfers_ended"].get<std::int64_t>(), 0) << pload.dump();
  EXPECT_GT(pload["transfer_bytes"].get<std::int64_t>(), 0) << pload.dump();
  EXPECT_EQ(pload["transfer_bytes"].get<std::int64_t>() % kv_bytes_per_token(p), 0) << pload.dump();
}

// (P sends each prompt's KV after its prefill step here: the path the layer-by-layer one replaces.)
TEST_F(PdProcess, AKilledDecodeInstanceFailsOnlyItsRequest) {
  auto s = start_all({{"--role", "prefill", "--pd-send-after-prefill"},
                      {"--role", "decode"},
                      {"--role", "decode"}});
  server_process& p = *s[0];
  auto router = start_router({&p}, {s[1].get(), s[2].get()});
  auto c = router->client();
  nlohmann::json const long_one = {{"prompt", "Tell me a very long story"},
                                   {"max_tokens", 400},
                                   {"temperature", 0},
                                   {"ignore_eos", true},
                                   {"stream", true}};
  // A long stream; once it runs, its decode instance is killed.
  std::string body;
  std::thread client([&] {
    auto cc = router->client();
    auto r = cc.Post("/v1/completions", long_one.dump(), "application/json");
    if (r) body = r->body;
  });
  server_process* victim = nullptr;
  server_process* survivor = nullptr;
  for (int i = 0; i < 500 && victim == nullptr; ++i) {
    for (int k : {1, 2}) {
      auto cc = client_for(control_of(*s[std::size_t(k)]));
      auto const load = nlohmann::json::parse(cc.Get("/pd/load")->body);
      if (load["running"].get<int>() > 0) {
        victim = s[std::size_t(k)].get();
        survivor = s[std::size_t(3 - k)].get();
      }
    }
    if (victim == nullptr) std::this_thread::sleep_for(10ms);
  }
  ASSERT_NE(victim, nullptr) << "the request never reached a decode instance";
  ASSERT_EQ(::kill(victim->engine_pid(), SIGKILL), 0);
  client.join();
  auto const events = sse_data(body);
  ASSERT_FALSE(events.empty());
  bool error = false;
  for (auto const& e : events)
    if (e != "[DONE]" && nlohmann::json::parse(e).contains("error")) {
      error = true;
      EXPECT_NE(e.find("decode instance"), std::string::npos) << e;
    }
  EXPECT_TRUE(error) << "the stream ended without an error event: " << body.substr(0, 400);
  EXPECT_TRUE(victim->wait_exit(10s).has_value()) << "the instance's front end did not exit";

  // The prefill side gave its KV back; the next requests go to the decode instance left.
  expect_kv_released(p, "prefill");
  nlohmann::json const short_one = {
      {"prompt", "After the crash"}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}};
  for (int i = 0; i < 3; ++i) {
    auto const r = post(c, "/v1/completions", short_one);
    EXPECT_EQ(r["usage"]["completion_tokens"], 6) << r.dump();
  }
  expect_kv_released(*survivor, "decode");
  auto const pload = nlohmann::json::parse(client_for(control_of(p)).Get("/pd/load")->body);
  EXPECT_EQ(pload["streamed"], 0) << pload.dump();
  EXPECT_GE(pload["transfers_ended"].get<std::int64_t>(), 3) << pload.dump();

  // No decode instance at all: a clear 503 for each request.
  ASSERT_EQ(::kill(survivor->engine_pid(), SIGKILL), 0);
  EXPECT_TRUE(survivor->wait_exit(10s).has_value());
  std::this_thread::sleep_for(300ms);  // the router's next look at its instances
  auto r = c.Post("/v1/completions", short_one.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_NE(r->body.find("no decode instance is available"), std::string::npos) << r->body;
  auto const health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503) << health->body;
  EXPECT_NE(health->body.find("no decode instance"), std::string::npos) << health->body;
  expect_kv_released(p, "prefill");
}

TEST_F(PdProcess, ADecodeInstanceDyingMidTransferReleasesThePrefillSidesKv) {
  auto s = start_all({{"--role", "prefill"}});
  server_process& p = *s[0];
  dying_decode d;
  auto router = std::make_unique<server_process>(
      std::vector<std::string>{"--role", "pd-router", "--prefill", url_of(p), "--decode", d.url()});
  auto c = router->client();
  nlohmann::json const body = {{"prompt", "The transfer of this prompt never lands"},
                               {"max_tokens", 8},
                               {"temperature", 0},
                               {"ignore_eos", true}};
  auto r = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  EXPECT_NE(r->body.find("decode instance"), std::string::npos) << r->body;
  EXPECT_EQ(d.frames_seen(), 1) << "the prefill side sent no layer before the decode side died";
  expect_kv_released(p, "prefill");

  // The dead instance stays out: with no decode instance left, a clear 503.
  d.die();
  std::this_thread::sleep_for(300ms);
  r = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_NE(r->body.find("no decode instance is available"), std::string::npos) << r->body;
}

TEST_F(PdProcess, APrefillInstanceThatNeverSendsTheKvCostsOnlyItsRequest) {
  auto s = start_all({{"--role", "decode", "--pd-timeout-ms", "1000"}});
  server_process& d = *s[0];
  silent_prefill p;
  auto router = std::make_unique<server_process>(
      std::vector<std::string>{"--role", "pd-router", "--pd-timeout-ms", "1000", "--prefill",
                               p.url(), "--decode", url_of(d)});
  auto c = router->client();
  nlohmann::json const body = {
      {"prompt", "Nothing of this lands"}, {"max_tokens", 5}, {"ignore_eos", true}};
  auto r = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  EXPECT_NE(r->body.find("decode instance failed"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("timeout"), std::string::npos) << r->body;
  EXPECT_EQ(p.aborts(), 1) << "the decode side did not tell the prefill side it gave up";
  // The decode side freed the allocation (the acknowledgement ends its abort at once).
  expect_kv_released(d, "decode");
  auto dc = client_for(control_of(d));
  EXPECT_EQ(nlohmann::json::parse(dc.Get("/pd/load")->body)["kv_free"],
            nlohmann::json::parse(dc.Get("/pd/load")->body)["kv_capacity"]);
}

TEST_F(PdProcess, TheRouterPicksByLoadAndRetriesAFullDecodeInstanceElsewhere) {
  silent_prefill p;
  std::atomic<int> clock{0};
  full_decode small(100, clock), large(900, clock);
  auto router = std::make_unique<server_process>(
      std::vector<std::string>{"--role", "pd-router", "--prefill", p.url(), "--decode", small.url(),
                               "--decode", large.url()});
  auto c = router->client();
  auto r = c.Post("/v1/completions",
                  nlohmann::json{{"prompt", "Where does this go?"}, {"max_tokens", 4}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  // Both refused: the request fails with the reason, after asking the one with more free KV
  // first and the other next.
  EXPECT_EQ(r->status, 500) << r->body;
  EXPECT_NE(r->body.find("out_of_slots"), std::string::npos) << r->body;
  EXPECT_EQ(large.asked_at(), 1);
  EXPECT_EQ(small.asked_at(), 2);
}

TEST_F(PdProcess, ControlEndpointsRefuseBadMessagesClearly) {
  auto s = start_all({{"--role", "prefill", "--api-key", "k"}, {"--role", "decode"}});
  // Routers hold no API key: /pd/info answers without one, the API does not.
  auto front = s[0]->client();
  EXPECT_EQ(front.Get("/v1/models")->status, 401);
  ASSERT_FALSE(control_of(*s[0]).empty());
  auto pc = client_for(control_of(*s[0]));
  auto dc = client_for(control_of(*s[1]));
  auto expect_error = [](httplib::Result const& r, int status, std::string const& fragment) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status) << r->body;
    EXPECT_NE(r->body.find(fragment), std::string::npos) << r->body;
  };
  expect_error(pc.Post("/pd/prefill", "{not json", "application/json"), 400, "parse");
  expect_error(pc.Post("/pd/prefill", R"({"request_id": 1, "tokens": []})", "application/json"),
               400, "tokens");
  expect_error(pc.Post("/pd/message", R"({"type":"layer","version":1,"transfer_id":1,"layer":0})",
                       "application/json"),
               400, "only abort");
  expect_error(
      dc.Post("/pd/message", R"({"type":"abort","version":2,"transfer_id":1})", "application/json"),
      400, "version 2");
  // A batch of messages is refused whole when one of them is malformed, naming which.
  expect_error(dc.Post("/pd/message", "[]", "application/json"), 400, "at least one message");
  expect_error(dc.Post("/pd/message",
                       R"([{"type":"layer","version":1,"transfer_id":1,"layer":0},{"type":"x"}])",
                       "application/json"),
               400, "message 1 of the batch");
  // An allocation whose layout differs from the decode pool's is refused with that reason.
  nlohmann::json alloc = {{"type", "allocate"},
                          {"version", 1},
                          {"request_id", 7},
                          {"tokens", {1, 2, 3}},
                          {"layout", {{"layers", 3}, {"width", 576}, {"dtype", "bf16"}}},
                          {"reply_to", "http://127.0.0.1:1"}};
  auto r = dc.Post("/pd/allocate", alloc.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto const refused = nlohmann::json::parse(r->body);
  EXPECT_EQ(refused["accepted"], false);
  EXPECT_EQ(refused["reason"], "layout_mismatch");
  expect_error(
      dc.Post("/pd/allocate", nlohmann::json{{"type", "allocate"}}.dump(), "application/json"), 400,
      "version");
  // A decode request for a transfer this instance never allocated.
  nlohmann::json const decode = {{"transfer_id", 999},
                                 {"tokens", {1, 2, 3}},
                                 {"first_token", 5},
                                 {"params",
                                  {{"temperature", 0},
                                   {"top_k", 0},
                                   {"top_p", 1},
                                   {"min_p", 0},
                                   {"repetition_penalty", 1},
                                   {"presence_penalty", 0},
                                   {"frequency_penalty", 0},
                                   {"num_logprobs", -1},
                                   {"seed", 0},
                                   {"max_new_tokens", 4},
                                   {"stop_ids", nlohmann::json::array()}}}};
  r = dc.Post("/pd/decode", decode.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("no transfer 999"), std::string::npos) << r->body;
  auto bad = decode;
  bad["params"]["max_new_tokens"] = 1;
  expect_error(dc.Post("/pd/decode", bad.dump(), "application/json"), 400, ">= 2");
  // The decode side allocated nothing for any of these.
  auto const load = nlohmann::json::parse(dc.Get("/pd/load")->body);
  EXPECT_EQ(load["transfers"], 0);
}

// The role flags are checked before anything starts: status 2 and the reason.
TEST(PdFlags, BadRoleFlagsExitWithTheReason) {
  auto run = [](std::string const& flags) {
    std::string const cmd = std::string(LIGHTCORE_SERVER_BINARY) + " " + flags + " 2>&1";
    FILE* f = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[512];
    while (f != nullptr && std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
    int const status = f != nullptr ? ::pclose(f) : -1;
    return std::pair<int, std::string>{WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
  };
  auto const expect = [&](std::string const& flags, std::string const& fragment) {
    auto const [code, out] = run(flags);
    EXPECT_EQ(code, 2) << flags << ": " << out;
    EXPECT_NE(out.find(fragment), std::string::npos) << flags << ": " << out;
  };
  expect("--role pd-router", "needs at least one --prefill URL and one --decode URL");
  expect("--role pd-router --prefill http://127.0.0.1:1", "one --decode URL");
  expect("--role conductor", "allowed: single, prefill, decode, pd-router");
  expect("--role pd-router --prefill 127.0.0.1:1 --decode http://127.0.0.1:2", "http://host:port");
  expect("--prefill http://127.0.0.1:1", "flags of --role pd-router");
  expect("--role decode --mock-engine", "single role only");
  expect("--role prefill --pd-transport carrier-pigeon", "allowed: auto, ipc, nccl");
  expect("--role pd-router --pd-start-timeout-ms 0", "--pd-start-timeout-ms");
}

}  // namespace
}  // namespace lightcore::test
