// The reference server end to end: the real lightcore_server binary with its built-in tiny model
// on the CPU, started on a free port, driven over HTTP. Replies, streaming, bad input, a client
// that goes away mid-stream, the engine process dying, and SIGTERM (the shared-memory segment is
// removed). Skips, saying why, where DeepSeek-V3's tokenizer has not been fetched.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server_process.hpp"

namespace lightcore::test {
namespace {

TEST_F(ServerProcess, AnswersCompletionsChatAndGenerate) {
  server_process s;
  auto c = s.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = nlohmann::json::parse(c.Get("/v1/models")->body);
  EXPECT_EQ(m["data"][0]["id"], "lightcore-tiny");

  nlohmann::json const greedy = {{"prompt", "The quick brown fox"},
                                 {"max_tokens", 12},
                                 {"temperature", 0},
                                 {"ignore_eos", true}};
  auto const a = post(c, "/v1/completions", greedy);
  auto const b = post(c, "/v1/completions", greedy);
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]) << "greedy is deterministic";
  EXPECT_EQ(a["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(a["usage"]["completion_tokens"], 12);
  EXPECT_EQ(a["usage"]["prompt_tokens"], 5);  // BOS and four words

  auto const chat = post(c, "/v1/chat/completions",
                         {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                          {"max_tokens", 5},
                          {"logprobs", true}});
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(chat["choices"][0]["message"]["content"].is_string());
  EXPECT_LE(chat["usage"]["completion_tokens"].get<int>(), 5);
  EXPECT_EQ(chat["choices"][0]["logprobs"]["content"].size(),
            chat["usage"]["completion_tokens"].get<std::size_t>());

  auto const gen =
      post(c, "/generate", {{"inputs", "Hello"}, {"parameters", {{"max_new_tokens", 3}}}});
  EXPECT_TRUE(gen["generated_text"].is_array());

  // Prompts given as token ids: the count is exact.
  auto const ids =
      post(c, "/v1/completions",
           {{"prompt", {100, 200, 300, 400, 500}}, {"max_tokens", 2}, {"ignore_eos", true}});
  EXPECT_EQ(ids["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(ids["usage"]["completion_tokens"], 2);
}

TEST_F(ServerProcess, StreamsServerSentEvents) {
  server_process s;
  auto c = s.client();
  std::string body;
  auto r = c.Post("/v1/completions",
                  nlohmann::json{{"prompt", "Once upon a time"},
                                 {"max_tokens", 6},
                                 {"stream", true},
                                 {"ignore_eos", true},
                                 {"stream_options", {{"include_usage", true}}}}
                      .dump(),
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  std::istringstream in(r->body);
  int chunks = 0;
  bool done = false, usage = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("data: ", 0) != 0) continue;
    std::string const data = line.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    EXPECT_FALSE(done) << "an event after [DONE]";
    auto const j = nlohmann::json::parse(data);
    if (j.contains("usage") && j["usage"].is_object()) {
      usage = true;
      EXPECT_EQ(j["usage"]["completion_tokens"], 6);
    } else {
      ++chunks;
    }
  }
  EXPECT_TRUE(done);
  EXPECT_TRUE(usage);
  EXPECT_GE(chunks, 6);  // one per token, then the one with finish_reason
}

TEST_F(ServerProcess, BadInputGetsAClearClientError) {
  server_process s;
  auto c = s.client();
  auto bad = [&](std::string const& path, std::string const& body, int status,
                 std::string const& fragment) {
    auto r = c.Post(path, body, "application/json");
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body << " -> " << r->body;
    auto const j = nlohmann::json::parse(r->body);
    EXPECT_NE(j["error"]["message"].get<std::string>().find(fragment), std::string::npos)
        << r->body;
  };
  bad("/v1/completions", "{not json", 400, "JSON");
  bad("/v1/completions", R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens");
  bad("/v1/completions", R"({"prompt": "x", "temperature": -1})", 400, "temperature");
  bad("/v1/completions", R"({"prompt": ""})", 400, "prompt");
  bad("/v1/completions", R"({"prompt": "x", "n": 17})", 400, "n");
  bad("/v1/completions", R"({"prompt": "x", "max_tokens": 100000})", 400, "max_tokens");
  bad("/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "role");
  bad("/v1/completions", R"({"prompt": "x", "model": "gpt-5"})", 404, "model");
  auto r = c.Get("/v1/nothing");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  // The server is still fine.
  post(c, "/v1/completions", {{"prompt", "ok"}, {"max_tokens", 1}});
}

TEST_F(ServerProcess, ADroppedStreamIsAbortedAndTheServerGoesOn) {
  server_process s;
  {
    httplib::Client c("127.0.0.1", s.port());
    int chunks = 0;
    // Stop reading after two chunks: the client closes the connection.
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = nlohmann::json{
        {"prompt", "Tell a long story"},
        {"max_tokens", 400},
        {"stream", true},
        {"ignore_eos",
         true}}.dump();
    req.content_receiver = [&](char const*, std::size_t, std::uint64_t, std::uint64_t) {
      return ++chunks < 2;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    c.send(req, res, err);
    EXPECT_GE(chunks, 2);
  }
  auto c = s.client();
  // The aborted request ends with reason abort, long before its 400 tokens.
  bool aborted = false;
  for (int i = 0; i < 200 && !aborted; ++i) {
    auto const m = c.Get("/metrics")->body;
    aborted =
        m.find("lightcore_request_success_total{finish_reason=\"abort\"} 1") != std::string::npos;
    if (!aborted) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(aborted) << c.Get("/metrics")->body;
  // Its KV came back: what the pool holds is the prefix cache's, and nothing runs.
  bool returned = false;
  std::string m;
  for (int i = 0; i < 200 && !returned; ++i) {
    m = c.Get("/metrics")->body;
    returned = metric(m, "lightcore_num_requests_running") == 0 &&
               metric(m, "lightcore_kv_slots_used") == metric(m, "lightcore_prefix_cache_tokens") &&
               metric(m, "lightcore_kv_slots_used") > 0;
    if (!returned) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(returned) << m;
  EXPECT_EQ(metric(m, "lightcore_num_requests_in_flight"), 0);
  auto const after = post(c, "/v1/completions", {{"prompt", "still here"}, {"max_tokens", 2}});
  EXPECT_TRUE(after["choices"][0]["text"].is_string());
}

TEST_F(ServerProcess, ManyConcurrentRequestsAllFinish) {
  server_process s;
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int t = 0; t < 12; ++t)
    clients.emplace_back([&, t] {
      auto c = s.client();
      auto r = c.Post("/v1/completions",
                      nlohmann::json{{"prompt", "request " + std::to_string(t)},
                                     {"max_tokens", 4 + t % 3},
                                     {"ignore_eos", true}}
                          .dump(),
                      "application/json");
      if (r && r->status == 200 &&
          nlohmann::json::parse(r->body)["usage"]["completion_tokens"] == 4 + t % 3)
        ++ok;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 12);
}

TEST_F(ServerProcess, ExitsNonZeroWhenTheEngineDies) {
  server_process s;
  pid_t const engine = s.engine_pid();
  ASSERT_GT(engine, 0);
  ASSERT_EQ(::kill(engine, SIGKILL), 0);
  auto const status = s.wait_exit(20s);
  ASSERT_TRUE(status) << "the server did not exit after its engine died";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0);
}

TEST_F(ServerProcess, SigtermRemovesTheSharedMemory) {
  server_process s;
  pid_t const engine = s.engine_pid();
  std::string const name = "lightcore." + std::to_string(s.pid()) + ".requests";
  ASSERT_TRUE(fs::exists(fs::path("/dev/shm") / name));
  EXPECT_EQ(fs::status(fs::path("/dev/shm") / name).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  ASSERT_EQ(::kill(s.pid(), SIGTERM), 0);
  auto const status = s.wait_exit(20s);
  ASSERT_TRUE(status);
  EXPECT_FALSE(fs::exists(fs::path("/dev/shm") / name));
  // The engine process follows it (it gets SIGTERM when its parent dies).
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = ::kill(engine, 0) != 0;
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(gone) << "engine process " << engine << " outlived the server";
}

TEST_F(ServerProcess, StopsSeedsChoicesTokenizeAndLimits) {
  server_process s;
  auto c = s.client();
  // Stop strings: the text ends before the stop string, with finish_reason stop.
  nlohmann::json req = {{"prompt", "The quick brown fox"},
                        {"max_tokens", 12},
                        {"temperature", 0},
                        {"ignore_eos", true}};
  std::string const full = post(c, "/v1/completions", req)["choices"][0]["text"];
  ASSERT_GE(full.size(), 4u);
  std::size_t cut = full.size() / 2;
  while (cut > 1 && (full[cut] & 0xC0) == 0x80) --cut;  // one whole character from here
  std::size_t end = cut + 1;
  while (end < full.size() && (full[end] & 0xC0) == 0x80) ++end;
  std::string const stop = full.substr(cut, end - cut);
  req["stop"] = stop;
  auto const stopped = post(c, "/v1/completions", req);
  std::string const text = stopped["choices"][0]["text"];
  EXPECT_EQ(text, full.substr(0, full.find(stop))) << "stop '" << stop << "' in '" << full << "'";
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");

  // Seeded sampling is reproducible; another seed differs.
  nlohmann::json sampled = {{"prompt", "Once"},
                            {"max_tokens", 8},
                            {"temperature", 0.8},
                            {"seed", 11},
                            {"ignore_eos", true}};
  auto const a = post(c, "/v1/completions", sampled)["choices"][0]["text"];
  auto const b = post(c, "/v1/completions", sampled)["choices"][0]["text"];
  sampled["seed"] = 12;
  auto const d = post(c, "/v1/completions", sampled)["choices"][0]["text"];
  EXPECT_EQ(a, b);
  EXPECT_NE(a, d);

  // n = 3: three choices; choice 0 is the seed's own sample; usage sums the completions.
  sampled["seed"] = 11;
  sampled["n"] = 3;
  auto const three = post(c, "/v1/completions", sampled);
  ASSERT_EQ(three["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(three["choices"][i]["index"], i);
  EXPECT_EQ(three["choices"][0]["text"], a);
  EXPECT_NE(three["choices"][1]["text"], three["choices"][0]["text"]);
  EXPECT_EQ(three["usage"]["completion_tokens"], 24);
  sampled["n"] = 17;
  post(c, "/v1/completions", sampled, 400);

  // Streamed n = 2: chunks carry their choice index.
  auto const r = c.Post("/v1/chat/completions",
                        nlohmann::json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                       {"max_tokens", 3},
                                       {"n", 2},
                                       {"stream", true},
                                       {"ignore_eos", true},
                                       {"stream_options", {{"include_usage", true}}}}
                            .dump(),
                        "application/json");
  ASSERT_TRUE(r);
  int finished[2] = {0, 0};
  std::int64_t usage = -1;
  for (auto const& e : sse_data(r->body)) {
    if (e == "[DONE]") continue;
    auto const j = nlohmann::json::parse(e);
    if (!j["choices"].empty() && !j["choices"][0]["finish_reason"].is_null())
      ++finished[j["choices"][0]["index"].get<int>()];
    if (j["usage"].is_object()) usage = j["usage"]["completion_tokens"];
  }
  EXPECT_EQ(finished[0], 1);
  EXPECT_EQ(finished[1], 1);
  EXPECT_EQ(usage, 6);

  // /tokenize and /detokenize round trip.
  auto const tok = post(c, "/tokenize", {{"prompt", "Hello, world!"}});
  EXPECT_EQ(tok["count"], tok["tokens"].size());
  auto const detok = post(c, "/detokenize", {{"tokens", tok["tokens"]}});
  EXPECT_NE(detok["prompt"].get<std::string>().find("Hello, world!"), std::string::npos);
  post(c, "/detokenize", {{"tokens", "nope"}}, 400);

  // /generate_stream ends with a finished event holding the reason and the counts.
  auto const g =
      c.Post("/generate_stream",
             nlohmann::json{{"inputs", "Hello"},
                            {"parameters", {{"max_new_tokens", 3}, {"ignore_eos", true}}}}
                 .dump(),
             "application/json");
  ASSERT_TRUE(g);
  auto const events = sse_data(g->body);
  ASSERT_FALSE(events.empty());
  auto const last = nlohmann::json::parse(events.back());
  EXPECT_EQ(last["finished"], true) << g->body;
  EXPECT_EQ(last["finish_reason"], "length");
  EXPECT_EQ(last["count_output_tokens"], 3);

  // logprobs > 0 is refused naming the client's field.
  auto const lp = post(c, "/v1/completions", {{"prompt", "x"}, {"logprobs", 2}}, 400);
  EXPECT_EQ(lp["error"]["param"], "logprobs");

  // An oversize body gets the API's JSON 413.
  std::string big = R"({"prompt": ")" + std::string((8u << 20) + 16, 'a') + R"("})";
  auto const too_big = c.Post("/v1/completions", big, "application/json");
  ASSERT_TRUE(too_big);
  EXPECT_EQ(too_big->status, 413);
  auto const tb = nlohmann::json::parse(too_big->body);
  EXPECT_EQ(tb["error"]["code"], "body_too_large") << too_big->body;
  auto const m = c.Get("/metrics")->body;
  EXPECT_GE(metric(m, "lightcore_requests_rejected_total"), 4);
  EXPECT_EQ(metric(m, "lightcore_requests_unavailable_total"), 0);
  EXPECT_GT(metric(m, "lightcore_engine_steps_total"), 0);
  EXPECT_GT(metric(m, "lightcore_request_queue_time_seconds_count"), 0);
  EXPECT_EQ(metric(m, "lightcore_kv_slots_capacity"), 65536);
}

TEST_F(ServerProcess, ApiKeyGuardsEveryEndpointButHealthAndMetrics) {
  server_process s({"--api-key", "sesame"});
  auto c = s.client();
  auto const body = nlohmann::json{{"prompt", "x"}, {"max_tokens", 1}}.dump();
  auto none = c.Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(nlohmann::json::parse(none->body)["error"]["type"], "authentication_error");
  auto wrong =
      c.Post("/v1/completions", {{"Authorization", "Bearer nope"}}, body, "application/json");
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(c.Get("/v1/models")->status, 401);
  auto ok =
      c.Post("/v1/completions", {{"Authorization", "Bearer sesame"}}, body, "application/json");
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(c.Get("/metrics")->status, 200);
}

TEST_F(ServerProcess, TwoHundredConcurrentStreamsAllFinish) {
  server_process s({"--slots", "256", "--max-running", "256"});
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int t = 0; t < 200; ++t)
    clients.emplace_back([&, t] {
      auto c = s.client();
      auto r = c.Post("/v1/completions",
                      nlohmann::json{{"prompt", "stream " + std::to_string(t)},
                                     {"max_tokens", 2},
                                     {"stream", true},
                                     {"ignore_eos", true}}
                          .dump(),
                      "application/json");
      if (r && r->status == 200 && r->body.find("data: [DONE]") != std::string::npos)
        ++ok;
      else if (t % 50 == 0)
        ADD_FAILURE() << "stream " << t << ": "
                      << (r ? std::to_string(r->status) + " " + r->body.substr(0, 200)
                            : "httplib error " + httplib::to_string(r.error()));
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 200);
}

TEST_F(ServerProcess, SlotsExceededGets429) {
  server_process s({"--slots", "2"});
  std::atomic<bool> stop{false};
  std::vector<std::thread> long_ones;
  for (int i = 0; i < 2; ++i)
    long_ones.emplace_back([&] {
      httplib::Client c("127.0.0.1", s.port());
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = nlohmann::json{
          {"prompt", "long"},
          {"max_tokens", 400},
          {"stream", true},
          {"ignore_eos",
           true}}.dump();
      req.content_receiver = [&](char const*, std::size_t, std::uint64_t, std::uint64_t) {
        return !stop.load();
      };
      httplib::Response res;
      httplib::Error err = httplib::Error::Success;
      c.send(req, res, err);
    });
  auto c = s.client();
  int status = 0;
  std::string body;
  for (int i = 0; i < 100 && status != 429; ++i) {
    std::this_thread::sleep_for(50ms);
    auto r = c.Post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})", "application/json");
    if (r) status = r->status, body = r->body;
  }
  stop = true;
  for (auto& t : long_ones) t.join();
  EXPECT_EQ(status, 429) << body;
  EXPECT_NE(body.find("retry later"), std::string::npos) << body;
}

TEST_F(ServerProcess, SigtermDuringLoadLeavesNoSharedMemory) {
  server_process s;
  std::string const prefix = "lightcore." + std::to_string(s.pid()) + ".";
  ASSERT_TRUE(fs::exists(fs::path("/dev/shm") / (prefix + "stats")));
  std::vector<std::thread> clients;
  for (int t = 0; t < 6; ++t)
    clients.emplace_back([&] {
      auto c = s.client();
      c.Post("/v1/completions",
             R"({"prompt": "load", "max_tokens": 300, "stream": true, "ignore_eos": true})",
             "application/json");
    });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(::kill(s.pid(), SIGTERM), 0);
  ASSERT_TRUE(s.wait_exit(20s));
  for (auto& t : clients) t.join();
  for (auto const& e : fs::directory_iterator("/dev/shm"))
    EXPECT_NE(e.path().filename().string().rfind(prefix, 0), 0u) << e.path() << " was left";
}

TEST_F(ServerProcess, AClientThatGivesUpOnAWholeReplyAbortsItsRequest) {
  server_process s;
  {
    // 400 tokens take the CPU engine several seconds; the client waits 0.5 s, then closes.
    httplib::Client c("127.0.0.1", s.port());
    c.set_read_timeout(std::chrono::milliseconds(500));
    auto r = c.Post(
        "/v1/completions",
        nlohmann::json{{"prompt", "Tell a long story"}, {"max_tokens", 400}, {"ignore_eos", true}}
            .dump(),
        "application/json");
    EXPECT_FALSE(r) << "the reply came before the client's timeout";
  }
  auto c = s.client();
  auto const started = std::chrono::steady_clock::now();
  bool aborted = false;
  while (!aborted && std::chrono::steady_clock::now() - started < std::chrono::seconds(3)) {
    aborted = c.Get("/metrics")
                  ->body.find("lightcore_request_success_total{finish_reason=\"abort\"} 1") !=
              std::string::npos;
    if (!aborted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(aborted) << "the request was not aborted within 3 s of its client leaving";
}

TEST_F(ServerProcess, TopLogprobsComeWithEveryToken) {
  server_process s({"--max-top-logprobs", "3"});
  auto c = s.client();
  auto const chat = post(c, "/v1/chat/completions",
                         {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                          {"max_tokens", 4},
                          {"ignore_eos", true},
                          {"logprobs", true},
                          {"top_logprobs", 2}});
  auto const& content = chat["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 4u);
  for (auto const& t : content) {
    ASSERT_EQ(t["top_logprobs"].size(), 2u) << t.dump();
    // The alternatives come largest first, and no sampled token is likelier than the likeliest.
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(),
              t["top_logprobs"][1]["logprob"].get<double>());
    EXPECT_LE(t["logprob"].get<double>(), t["top_logprobs"][0]["logprob"].get<double>() + 1e-6);
  }
  auto const completion =
      post(c, "/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"logprobs", 3}});
  EXPECT_EQ(completion["choices"][0]["logprobs"]["top_logprobs"][0].size(), 3u)
      << completion.dump();
  auto const too_many =
      post(c, "/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"logprobs", 4}}, 400);
  EXPECT_NE(too_many["error"]["message"].get<std::string>().find("allowed: 0..3"),
            std::string::npos)
      << too_many.dump();
}

TEST_F(ServerProcess, MockEngineServes) {
  server_process s({"--mock-engine"});
  auto c = s.client();
  nlohmann::json const req = {{"prompt", "mock"}, {"max_tokens", 32}};
  auto const a = post(c, "/v1/completions", req);
  EXPECT_EQ(a["usage"]["completion_tokens"], 32) << "EOS never comes";
  EXPECT_EQ(a["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(post(c, "/v1/completions", req)["choices"][0]["text"], a["choices"][0]["text"])
      << "a fixed function of the prompt";
  auto const r = c.Post("/v1/completions", R"({"prompt": "mock", "max_tokens": 5, "stream": true})",
                        "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(sse_data(r->body).back(), "[DONE]");
  EXPECT_GT(metric(c.Get("/metrics")->body, "lightcore_engine_steps_total"), 0);
}

}  // namespace
}  // namespace lightcore::test
