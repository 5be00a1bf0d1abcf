// arena: random allocate/release sequences against a shadow model: live blocks never overlap,
// stay inside the arena, and a fully released arena coalesces back to reusable memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <random>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/memory/arena.hpp"

namespace {

using lightcore::backend::cpu;
using lightcore::memory::arena;

struct block {
  std::byte* p;
  std::size_t bytes;
};

void expect_disjoint(std::vector<block> live) {
  std::sort(live.begin(), live.end(), [](block const& a, block const& b) { return a.p < b.p; });
  for (std::size_t i = 1; i < live.size(); ++i)
    ASSERT_LE(live[i - 1].p + live[i - 1].bytes, live[i].p) << "live blocks overlap";
}

TEST(Arena, RandomSequencesNeverOverlapAndCoalesce) {
  cpu host;
  auto const seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  arena<cpu> a(host, 1 << 20);
  std::vector<block> live;
  std::size_t live_bytes = 0;
  for (int step = 0; step < 20000; ++step) {
    bool const alloc = live.empty() || rng() % 100 < 55;
    if (alloc) {
      std::size_t const bytes = (1 + rng() % 64) * cpu::alignment * (rng() % 8 == 0 ? 64 : 1);
      std::byte* p = a.allocate(bytes);
      ASSERT_TRUE(a.owns(p));
      ASSERT_TRUE(a.owns(p + bytes - 1));
      live.push_back({p, bytes});
      live_bytes += bytes;
    } else {
      std::size_t const i = rng() % live.size();
      a.release(live[i].p, live[i].bytes);
      live_bytes -= live[i].bytes;
      live.erase(live.begin() + std::ptrdiff_t(i));
    }
    ASSERT_EQ(a.stats().live_bytes, live_bytes);
    if (step % 500 == 0) expect_disjoint(live);
  }
  expect_disjoint(live);
  for (block const& b : live) a.release(b.p, b.bytes);
  EXPECT_EQ(a.stats().live_bytes, 0u);
  // Fully coalesced: the largest chunk can be handed out whole again without growing.
  std::size_t const reserved = a.stats().reserved_bytes;
  std::byte* whole = a.allocate(1 << 20);
  EXPECT_EQ(a.stats().reserved_bytes, reserved);
  a.release(whole, 1 << 20);
}

TEST(Arena, SameSequenceSameAddresses) {
  cpu host;
  arena<cpu> a(host, 1 << 20);
  auto run = [&] {
    std::vector<std::byte*> out;
    std::byte* x = a.allocate(4096);
    std::byte* y = a.allocate(8192);
    a.release(x, 4096);
    std::byte* z = a.allocate(2048);
    out = {x, y, z};
    a.release(y, 8192);
    a.release(z, 2048);
    return out;
  };
  auto const first = run();
  auto const second = run();
  EXPECT_EQ(first, second);
  EXPECT_EQ(first[2], first[0]) << "best fit reuses the freed front block";
}

TEST(Arena, ResetAndConsolidate) {
  cpu host;
  arena<cpu> a(host, 4096);
  std::byte* x = a.allocate(4096);
  std::byte* y = a.allocate(4096);  // a second chunk
  EXPECT_EQ(a.stats().chunks, 2u);
  EXPECT_THROW(a.consolidate(8192), lightcore::error);  // blocks are live
  a.reset();
  EXPECT_EQ(a.stats().live_bytes, 0u);
  a.consolidate(8192);
  EXPECT_EQ(a.stats().chunks, 1u);
  EXPECT_EQ(a.stats().reserved_bytes, 8192u);
  x = a.allocate(4096);
  y = a.allocate(4096);
  EXPECT_EQ(x + 4096, y) << "one chunk: consecutive blocks are adjacent";
  EXPECT_EQ(a.stats().reserved_bytes, 8192u);
  EXPECT_THROW(a.allocate(100), lightcore::error);  // not a multiple of the alignment
}

}  // namespace
