// Removal of this process's shared-memory segments when SIGINT or SIGTERM ends it, so that an
// interrupted server leaves nothing behind in /dev/shm.
//
// The registry is a fixed array of paths (no allocation); the handler only calls unlink(2),
// sigaction(2) and raise(3), which are async-signal-safe. After unlinking it restores the
// disposition that was in place before install_signal_cleanup() and re-raises the signal, so
// the process still ends the way it would have (exit status "killed by SIGTERM"), or a handler
// installed earlier still runs. shm_region registers the segments it creates and unregisters
// them when it removes them; a segment is only covered once install_signal_cleanup() has run.
// A crash (SIGKILL, SIGSEGV) is not covered: the next run's create() or remove_stale() removes
// such a segment, since its owner is dead.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <string_view>

namespace lightcore::ipc {

namespace detail {

struct cleanup_registry {
  static constexpr std::size_t capacity = 64;     // segments one process may register
  static constexpr std::size_t path_bytes = 256;  // "/dev/shm/<name>" with its terminator

  // 0: free, 1: being written or erased, 2: holds a path the handler may unlink.
  std::atomic<int> state[capacity] = {};
  char path[capacity][path_bytes] = {};
  struct sigaction previous_int = {};
  struct sigaction previous_term = {};
  std::atomic<bool> installed{false};
};

inline cleanup_registry& registry() {
  static cleanup_registry r;
  return r;
}

inline void cleanup_handler(int sig) {
  auto& r = registry();
  for (std::size_t i = 0; i < cleanup_registry::capacity; ++i) {
    if (r.state[i].load(std::memory_order_acquire) == 2) ::unlink(r.path[i]);
  }
  ::sigaction(sig, sig == SIGINT ? &r.previous_int : &r.previous_term, nullptr);
  ::raise(sig);  // delivered once this handler returns, under the restored disposition
}

}  // namespace detail

// Registers the shm segment `name` ("/lightcore...") for removal by the signal handler.
// Returns false when the name is too long or the registry is full (the segment then relies on
// its destructor or on stale removal by a later run).
inline bool register_for_signal_cleanup(std::string_view name) {
  constexpr std::string_view dir = "/dev/shm";
  auto& r = detail::registry();
  if (dir.size() + name.size() + 1 > detail::cleanup_registry::path_bytes) return false;
  for (std::size_t i = 0; i < detail::cleanup_registry::capacity; ++i) {
    int expected = 0;
    if (!r.state[i].compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) continue;
    std::memcpy(r.path[i], dir.data(), dir.size());
    std::memcpy(r.path[i] + dir.size(), name.data(), name.size());
    r.path[i][dir.size() + name.size()] = '\0';
    r.state[i].store(2, std::memory_order_release);
    return true;
  }
  return false;
}

// Forgets `name` (the segment was removed, or its ownership ended).
inline void unregister_from_signal_cleanup(std::string_view name) {
  constexpr std::string_view dir = "/dev/shm";
  auto& r = detail::registry();
  for (std::size_t i = 0; i < detail::cleanup_registry::capacity; ++i) {
    int expected = 2;
    if (!r.state[i].compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) continue;
    std::string_view const path(r.path[i]);
    bool const match = path.size() == dir.size() + name.size() && path.substr(dir.size()) == name &&
                       path.substr(0, dir.size()) == dir;
    r.state[i].store(match ? 0 : 2, std::memory_order_release);
    if (match) return;
  }
}

// Installs the SIGINT/SIGTERM handler once per process (later calls do nothing).
inline void install_signal_cleanup() {
  auto& r = detail::registry();
  if (r.installed.exchange(true)) return;
  struct sigaction action = {};
  action.sa_handler = &detail::cleanup_handler;
  sigemptyset(&action.sa_mask);
  sigaddset(&action.sa_mask, SIGINT);
  sigaddset(&action.sa_mask, SIGTERM);
  action.sa_flags = 0;
  ::sigaction(SIGINT, &action, &r.previous_int);
  ::sigaction(SIGTERM, &action, &r.previous_term);
}

}  // namespace lightcore::ipc
