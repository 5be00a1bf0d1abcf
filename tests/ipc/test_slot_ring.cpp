// slot_ring: FIFO order, full and empty rings, bad capacities, and MPSC stress with producer
// threads plus a fork()ed producer process: every value delivered exactly once, in order per
// producer.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "ipc_test_util.hpp"
#include "lightcore/ipc/shm_region.hpp"
#include "lightcore/ipc/slot_ring.hpp"

namespace lightcore {
namespace {

using namespace std::chrono_literals;
using ipc::shm_region;
using ipc::slot_ring;

TEST(SlotRing, FifoFullAndEmpty) {
  auto region = shm_region::create(test::unique_shm_name("ring"), slot_ring::bytes_for(4));
  auto ring = slot_ring::init(region.payload(), 4);
  EXPECT_EQ(ring.capacity(), 4u);
  EXPECT_FALSE(ring.try_pop().has_value());
  for (std::uint32_t v : {10u, 11u, 12u, 13u}) EXPECT_TRUE(ring.push(v));
  EXPECT_FALSE(ring.push(14)) << "a full ring refuses";
  EXPECT_EQ(ring.size(), 4u);
  auto other = slot_ring::attach(region.payload());  // a second view of the same ring
  EXPECT_EQ(other.pop(1s), 10u);
  EXPECT_TRUE(ring.push(14));
  for (std::uint32_t v : {11u, 12u, 13u, 14u}) EXPECT_EQ(ring.pop(1s), v);
  auto const t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ring.pop(20ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 15ms);
  // Many laps around the ring.
  for (std::uint32_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(ring.push(i));
    ASSERT_EQ(ring.try_pop(), i);
  }
}

// A consumer sleeping in pop_or() returns when its interrupt holds and the ring is woken, at once
// and with no value; a value pushed meanwhile still comes first; without wake() the interrupt is
// seen at the timeout at the latest.
TEST(SlotRing, PopOrReturnsOnAWokenInterrupt) {
  auto region = shm_region::create(test::unique_shm_name("ring"), slot_ring::bytes_for(4));
  auto ring = slot_ring::init(region.payload(), 4);
  std::atomic<bool> stop{false};
  auto const t0 = std::chrono::steady_clock::now();
  std::thread waker([&] {
    std::this_thread::sleep_for(30ms);
    stop.store(true);
    ring.wake();
  });
  auto const v = ring.pop_or(ipc::no_timeout, [&] { return stop.load(); });
  auto const waited = std::chrono::steady_clock::now() - t0;
  waker.join();
  EXPECT_FALSE(v.has_value());
  EXPECT_GE(waited, 25ms);
  EXPECT_LT(waited, 2s) << "the wake-up was lost";
  ASSERT_TRUE(ring.push(7));
  EXPECT_EQ(ring.pop_or(1s, [&] { return stop.load(); }), 7u)
      << "a value comes before the interrupt";
  stop.store(false);
  std::atomic<bool> late{false};
  std::thread setter([&] {
    std::this_thread::sleep_for(10ms);
    late.store(true);  // no wake(): seen at the timeout
  });
  auto const t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ring.pop_or(60ms, [&] { return late.load(); }).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 50ms);
  setter.join();
}

TEST(SlotRing, BadCapacityAndMemory) {
  EXPECT_THROW_WITH(slot_ring::bytes_for(3), "allowed: a power of two");
  EXPECT_THROW_WITH(slot_ring::bytes_for(0), "allowed: a power of two");
  EXPECT_THROW_WITH(slot_ring::bytes_for(1u << 25), "allowed: a power of two");
  alignas(64) unsigned char zeros[512] = {};
  EXPECT_THROW_WITH(slot_ring::attach(zeros), "no initialised ring");
  EXPECT_THROW_WITH(slot_ring::init(zeros + 4, 2), "not 64-byte aligned");
}

// Value layout: producer id in the top 8 bits, sequence number below.
constexpr std::uint32_t encode(std::uint32_t producer, std::uint32_t seq) {
  return producer << 24 | seq;
}

TEST(SlotRing, MpscStressThreadsAndProcess) {
  constexpr std::uint32_t capacity = 64;  // small: producers often find it full
  constexpr std::uint32_t per_producer = 20000;
  constexpr std::uint32_t threads = 3;
  constexpr std::uint32_t process_id = threads;  // the forked producer
  constexpr std::uint32_t producers = threads + 1;

  auto region = shm_region::create(test::unique_shm_name("mpsc"), slot_ring::bytes_for(capacity));
  auto ring = slot_ring::init(region.payload(), capacity);

  auto produce = [](slot_ring r, std::uint32_t id) {
    for (std::uint32_t i = 0; i < per_producer; ++i) {
      while (!r.push(encode(id, i))) std::this_thread::yield();  // full: the test waits
    }
  };
  pid_t const child = test::fork_child([&] {
    produce(slot_ring::attach(region.payload()), process_id);
    return true;
  });
  std::vector<std::thread> workers;
  for (std::uint32_t t = 0; t < threads; ++t) workers.emplace_back(produce, ring, t);

  std::vector<std::uint32_t> next(producers, 0);
  std::uint32_t received = 0, out_of_order = 0, unknown = 0;
  while (received < producers * per_producer) {
    auto const v = ring.pop(5s);
    if (!v) break;  // a lost value or a hang
    std::uint32_t const p = *v >> 24, seq = *v & 0xffffffu;
    if (p >= producers) {
      ++unknown;
      continue;
    }
    if (seq != next[p]) ++out_of_order;
    next[p] = seq + 1;
    ++received;
  }
  for (auto& w : workers) w.join();
  test::expect_child_ok(child);
  EXPECT_EQ(received, producers * per_producer);
  EXPECT_EQ(out_of_order, 0u);
  EXPECT_EQ(unknown, 0u);
  for (std::uint32_t p = 0; p < producers; ++p)
    EXPECT_EQ(next[p], per_producer) << "producer " << p;
  EXPECT_FALSE(ring.try_pop().has_value()) << "a value was delivered twice";
}

}  // namespace
}  // namespace lightcore
