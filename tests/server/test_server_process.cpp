// The reference server end to end: the real lightcore_server binary with its built-in tiny model
// on the CPU, started on a free port, driven over HTTP. Replies, streaming, bad input, a client
// that goes away mid-stream, the engine process dying, and SIGTERM (the shared-memory segment is
// removed). Skips, saying why, where DeepSeek-V3's tokenizer has not been fetched.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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

namespace lightcore::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

fs::path tokenizer_dir() {
  if (char const* d = std::getenv("LIGHTCORE_TOKENIZER_DIR")) return d;
  return LIGHTCORE_TOKENIZER_DIR_DEFAULT;
}

// The server as a child process; its stdout is read until it prints its URL.
class server_process {
 public:
  explicit server_process(std::vector<std::string> extra = {}) {
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> args = {LIGHTCORE_SERVER_BINARY,
                                     "--tokenizer",
                                     tokenizer_dir().string(),
                                     "--port",
                                     "0",
                                     "--device",
                                     "cpu",
                                     "--slots",
                                     "16",
                                     "--max-running",
                                     "8",
                                     "--max-seq-len",
                                     "512"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    std::string line;
    char c = 0;
    while (::read(out[0], &c, 1) == 1) {
      if (c != '\n') {
        line += c;
        continue;
      }
      auto const at = line.find("http://127.0.0.1:");
      if (at != std::string::npos) {
        port_ = std::stoi(line.substr(at + 17));
        break;
      }
      line.clear();
    }
    ::close(out[0]);
    if (port_ == 0) throw std::runtime_error("the server did not start");
  }
  ~server_process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGTERM);
      wait_exit(10s);
    }
  }
  server_process(server_process const&) = delete;
  server_process& operator=(server_process const&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60s);
    return c;
  }
  // The engine process: the server's one child.
  pid_t engine_pid() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) +
                     "/children");
    pid_t p = 0;
    in >> p;
    return p;
  }
  // Waits for the server to exit; its wait status, or nullopt on timeout.
  std::optional<int> wait_exit(std::chrono::seconds limit) {
    auto const end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return status;
      }
      std::this_thread::sleep_for(20ms);
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
};

class ServerProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(tokenizer_dir() / "tokenizer.json"))
      GTEST_SKIP() << "no " << (tokenizer_dir() / "tokenizer.json")
                   << ": scripts/setup.sh fetches DeepSeek-V3's tokenizer with npm";
  }
};

nlohmann::json post(httplib::Client& c, std::string const& path, nlohmann::json const& body,
                    int expect_status = 200) {
  auto r = c.Post(path, body.dump(), "application/json");
  EXPECT_TRUE(r) << "no response from " << path;
  if (!r) return {};
  EXPECT_EQ(r->status, expect_status) << r->body;
  return nlohmann::json::parse(r->body);
}

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
  bad("/v1/completions", R"({"prompt": "x", "n": 2})", 400, "n");
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

}  // namespace
}  // namespace lightcore::test
