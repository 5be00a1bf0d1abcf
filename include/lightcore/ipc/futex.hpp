// Cross-process wake-ups on a 32-bit word in shared memory: futex_word (wait while the word holds
// a value, wake n waiters) and event_counter (the pattern that never loses a wake-up).
//
// The futex calls are the shared (non-private) ones, FUTEX_WAIT / FUTEX_WAKE without
// FUTEX_PRIVATE_FLAG, because waiter and waker live in different processes that map the same
// page at different addresses; the kernel keys such a futex by the page, not the address.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>

namespace lightcore::ipc {

static_assert(sizeof(std::atomic<std::uint32_t>) == 4 &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "a futex needs a lock-free 32-bit atomic laid out as a plain word");

// Waits "forever" (no timeout).
inline constexpr std::chrono::nanoseconds no_timeout = std::chrono::nanoseconds::max();

// Sleeps while `word` holds `expected`, up to `timeout`. Returns false only on timeout; true
// when woken, when the word no longer held `expected`, or on a signal (callers re-check their
// condition in every case).
inline bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       std::chrono::nanoseconds timeout = no_timeout) {
  timespec ts = {};
  timespec* tsp = nullptr;
  if (timeout != no_timeout) {
    if (timeout.count() <= 0) return word.load(std::memory_order_acquire) != expected;
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    tsp = &ts;
  }
  long const rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT,
                            expected, tsp, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

// Wakes up to `n` waiters on `word`; returns how many woke.
inline int futex_wake(std::atomic<std::uint32_t>& word, int n = INT_MAX) {
  long const rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, n,
                            nullptr, nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

// A 32-bit word in shared memory that processes wait on and wake. Standard layout, 4 bytes:
// place it in a shm_region (zero-filled memory is a valid futex_word holding 0).
struct futex_word {
  std::atomic<std::uint32_t> value{0};

  bool wait(std::uint32_t expected, std::chrono::nanoseconds timeout = no_timeout) {
    return futex_wait(value, expected, timeout);
  }
  int wake(int n = INT_MAX) { return futex_wake(value, n); }
};
static_assert(sizeof(futex_word) == 4);

// A sequence number bumped on every notify, plus a count of sleepers so that a notify with
// nobody asleep costs no system call. Waiters follow the pattern
//   auto const seen = ev.prepare();   // 1. read the counter
//   if (condition()) return;          // 2. check the condition
//   ev.wait(seen, timeout);           // 3. sleep only while the counter is still `seen`
// and notifiers make the condition true before notify(). A notify between 1 and 3 changes the
// counter, so the sleep in 3 returns at once: no wake-up is lost. wait_for() wraps the loop.
// Zero-filled memory is a valid event_counter.
struct event_counter {
  std::atomic<std::uint32_t> sequence{0};
  std::atomic<std::uint32_t> sleepers{0};

  std::uint32_t prepare() const { return sequence.load(std::memory_order_seq_cst); }

  // Sleeps until the counter differs from `seen` or `timeout` passes; false on timeout.
  bool wait(std::uint32_t seen, std::chrono::nanoseconds timeout = no_timeout) {
    // seq_cst on both sides: either this load sees the notifier's increment, or the notifier's
    // load of `sleepers` sees this increment and wakes us.
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    bool woke = true;
    if (sequence.load(std::memory_order_seq_cst) == seen)
      woke = futex_wait(sequence, seen, timeout);
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
    return woke || sequence.load(std::memory_order_acquire) != seen;
  }

  void notify_all() {
    sequence.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0) futex_wake(sequence, INT_MAX);
  }

  // Waits until pred() holds or `timeout` passes; returns pred()'s last value.
  template <class Pred>
  bool wait_for(Pred&& pred, std::chrono::nanoseconds timeout = no_timeout) {
    using clock = std::chrono::steady_clock;
    auto const deadline = timeout == no_timeout ? clock::time_point::max() : clock::now() + timeout;
    for (;;) {
      auto const seen = prepare();
      if (pred()) return true;
      std::chrono::nanoseconds left = no_timeout;
      if (timeout != no_timeout) {
        left = deadline - clock::now();
        if (left.count() <= 0) return pred();
      }
      wait(seen, left);
    }
  }
};
static_assert(sizeof(event_counter) == 8);

}  // namespace lightcore::ipc
