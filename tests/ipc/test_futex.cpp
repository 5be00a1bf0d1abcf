// Wake-ups across processes: futex_word timeouts and wakes with a fork()ed child, and an
// event_counter ping-pong over many rounds in which a single lost wake-up would show as a
// timeout.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <new>
#include <thread>

#include "ipc_test_util.hpp"
#include "lightcore/ipc/futex.hpp"
#include "lightcore/ipc/shm_region.hpp"

namespace lightcore {
namespace {

using namespace std::chrono_literals;
using ipc::event_counter;
using ipc::futex_word;
using ipc::shm_region;

struct shared_words {
  futex_word word;
  futex_word child_waiting;
  event_counter ping;
  event_counter pong;
  std::atomic<std::uint32_t> turn{0};
  std::atomic<std::uint32_t> child_timeouts{0};
};

shared_words& words_in(shm_region& r) { return *new (r.payload()) shared_words; }

TEST(Futex, WaitTimesOutOrReturnsAtOnce) {
  futex_word w;
  w.value.store(5);
  auto const t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(w.wait(5, 30ms)) << "the value never changed: the wait must time out";
  auto const waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, 25ms);
  EXPECT_LT(waited, 2s);
  EXPECT_TRUE(w.wait(4, 1s)) << "the value is not the expected one: return at once";
  EXPECT_FALSE(w.wait(5, 0ns));
  EXPECT_EQ(w.wake(), 0) << "nobody waits";
}

TEST(Futex, WakeCrossesProcesses) {
  auto region = shm_region::create(test::unique_shm_name("futex"), sizeof(shared_words));
  auto& s = words_in(region);
  pid_t const child = test::fork_child([&] {
    s.child_waiting.value.store(1);
    s.child_waiting.wake();
    // Sleeps until the parent changes the word; the long timeout only guards against a hang.
    while (s.word.value.load() == 0) {
      if (!s.word.wait(0, 5s)) return false;
    }
    return s.word.value.load() == 42;
  });
  while (s.child_waiting.value.load() == 0) s.child_waiting.wait(0, 1s);
  std::this_thread::sleep_for(20ms);  // let the child go to sleep in the kernel
  s.word.value.store(42);
  int woken = 0;
  for (int i = 0; i < 100 && woken == 0; ++i) {  // retry in case the child was not asleep yet
    woken = s.word.wake(1);
    if (woken == 0) std::this_thread::sleep_for(1ms);
  }
  test::expect_child_ok(child);
  EXPECT_LE(woken, 1);
}

TEST(Futex, EventCounterPingPongLosesNoWakeUp) {
  constexpr std::uint32_t rounds = 3000;
  auto region = shm_region::create(test::unique_shm_name("pingpong"), sizeof(shared_words));
  auto& s = words_in(region);
  pid_t const child = test::fork_child([&] {
    for (std::uint32_t i = 0; i < rounds; ++i) {
      bool const ok = s.ping.wait_for([&] { return s.turn.load() == 2 * i + 1; }, 5s);
      if (!ok) {
        s.child_timeouts.fetch_add(1);
        return false;
      }
      s.turn.store(2 * i + 2);
      s.pong.notify_all();
    }
    return true;
  });
  std::uint32_t timeouts = 0;
  for (std::uint32_t i = 0; i < rounds; ++i) {
    s.turn.store(2 * i + 1);
    s.ping.notify_all();
    if (!s.pong.wait_for([&] { return s.turn.load() == 2 * i + 2; }, 5s)) {
      ++timeouts;
      break;
    }
  }
  test::expect_child_ok(child);
  EXPECT_EQ(timeouts, 0u);
  EXPECT_EQ(s.child_timeouts.load(), 0u);
  EXPECT_EQ(s.turn.load(), 2 * rounds);
}

TEST(Futex, EventCounterWaitForTimesOut) {
  event_counter ev;
  auto const t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ev.wait_for([] { return false; }, 20ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 15ms);
  auto const seen = ev.prepare();
  ev.notify_all();  // between prepare and wait: the wait must not sleep
  EXPECT_TRUE(ev.wait(seen, 5s));
  EXPECT_TRUE(ev.wait_for([] { return true; }, 0ns));
}

}  // namespace
}  // namespace lightcore
