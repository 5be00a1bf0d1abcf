// The real lightcore_server binary as a child process of a test: started on a free port with the
// built-in tiny model on the CPU, driven over HTTP; and what the process suites share (JSON
// posts, /metrics samples, SSE events).
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace lightcore::test {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

inline fs::path tokenizer_dir() {
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

inline nlohmann::json post(httplib::Client& c, std::string const& path, nlohmann::json const& body,
                           int expect_status = 200) {
  auto r = c.Post(path, body.dump(), "application/json");
  EXPECT_TRUE(r) << "no response from " << path;
  if (!r) return {};
  EXPECT_EQ(r->status, expect_status) << r->body;
  return nlohmann::json::parse(r->body);
}

// A sample's value in a /metrics text; -1 when absent.
inline double metric(std::string const& text, std::string const& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

// The data of every SSE event of a body ("data: x" or LightLLM's "data:x").
inline std::vector<std::string> sse_data(std::string const& body) {
  std::vector<std::string> out;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("data:", 0) == 0)
      out.push_back(line.size() > 5 && line[5] == ' ' ? line.substr(6) : line.substr(5));
  return out;
}

}  // namespace lightcore::test
