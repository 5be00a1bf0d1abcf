// Helpers for the IPC tests: unique segment names and running a function in a fork()ed child.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "lightcore/ipc/shm_region.hpp"

namespace lightcore::test {

// A segment name no other test (or concurrently running test binary) uses.
inline std::string unique_shm_name(std::string const& what) {
  static std::atomic<int> counter{0};
  return ipc::instance_name("lctest", ipc::default_instance_id(),
                            what + "-" + std::to_string(counter.fetch_add(1)));
}

inline bool shm_exists(std::string const& name) {
  struct stat st = {};
  return ::stat(("/dev/shm" + name).c_str(), &st) == 0;
}

// Forks a child that runs f() and exits with 0 when f returns true, 1 when it returns false or
// throws (the message goes to stderr), never running the parent's destructors or atexit
// handlers. The child is killed by SIGALRM after `limit_s` seconds, so a hang is a failure.
template <class F>
pid_t fork_child(F f, unsigned limit_s = 15) {
  std::fflush(nullptr);
  pid_t const pid = ::fork();
  if (pid != 0) return pid;
  ::alarm(limit_s);
  int code = 1;
  try {
    code = f() ? 0 : 1;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "child failed: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "child failed with an unknown exception\n");
  }
  std::fflush(nullptr);
  ::_exit(code);
}

// Waits for `pid` and returns its raw wait status.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

inline void expect_child_ok(pid_t pid) {
  int const status = wait_child(pid);
  EXPECT_TRUE(WIFEXITED(status)) << "child ended by signal " << WTERMSIG(status);
  if (WIFEXITED(status)) {
    EXPECT_EQ(WEXITSTATUS(status), 0) << "child reported a failure";
  }
}

}  // namespace lightcore::test

#define EXPECT_THROW_WITH(stmt, words)                                    \
  do {                                                                    \
    try {                                                                 \
      stmt;                                                               \
      ADD_FAILURE() << #stmt " did not throw";                            \
    } catch (::lightcore::error const& e) {                               \
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos)     \
          << "\"" << e.what() << "\" does not say \"" << (words) << "\""; \
    }                                                                     \
  } while (0)
