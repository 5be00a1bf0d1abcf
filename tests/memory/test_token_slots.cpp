// token_slots: ids come out unique and in range, exhaustion changes nothing, and every misuse
// (double free, foreign id, repeated id) is reported and leaves the allocator as it was.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/memory/token_slots.hpp"

namespace {

using lightcore::memory::token_slots;

// Runs f, expecting a lightcore::error whose message contains `needle`.
template <class F>
void expect_error(F&& f, std::string const& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (lightcore::error const& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenSlots, FreshAllocatorHandsOutAscendingIds) {
  token_slots s(10);
  EXPECT_EQ(s.capacity(), 10);
  EXPECT_EQ(s.used(), 0);
  EXPECT_EQ(s.available(), 10);
  std::vector<std::int32_t> out{99};  // appended to, not replaced
  ASSERT_TRUE(s.try_alloc(4, out));
  EXPECT_EQ(out, (std::vector<std::int32_t>{99, 0, 1, 2, 3}));
  EXPECT_EQ(s.used(), 4);
  EXPECT_EQ(s.available(), 6);
  for (std::int32_t id = 0; id < 4; ++id) EXPECT_TRUE(s.is_allocated(id));
  EXPECT_FALSE(s.is_allocated(4));
  EXPECT_FALSE(s.is_allocated(-1));
  EXPECT_FALSE(s.is_allocated(10));
  ASSERT_TRUE(s.try_alloc(0, out));
  EXPECT_EQ(out.size(), 5u);
}

TEST(TokenSlots, ExhaustionLeavesStateUnchanged) {
  token_slots s(5);
  std::vector<std::int32_t> a;
  ASSERT_TRUE(s.try_alloc(3, a));
  std::vector<std::int32_t> b{7, 7};
  EXPECT_FALSE(s.try_alloc(3, b));
  EXPECT_EQ(b, (std::vector<std::int32_t>{7, 7}));
  EXPECT_EQ(s.used(), 3);
  ASSERT_TRUE(s.try_alloc(2, b));  // exactly what is left
  EXPECT_EQ(s.available(), 0);
  EXPECT_FALSE(s.try_alloc(1, b));
  s.free(a);
  EXPECT_EQ(s.used(), 2);
  std::vector<std::int32_t> c;
  ASSERT_TRUE(s.try_alloc(3, c));
  std::sort(c.begin(), c.end());
  EXPECT_EQ(c, a);  // the freed ids come back
}

TEST(TokenSlots, DoubleFreeIsReportedAndChangesNothing) {
  token_slots s(8);
  std::vector<std::int32_t> ids;
  ASSERT_TRUE(s.try_alloc(4, ids));
  s.free(std::vector<std::int32_t>{ids[1]});
  // ids[0] is valid, ids[1] was freed already: nothing of the call may stick.
  expect_error([&] { s.free(std::vector<std::int32_t>{ids[0], ids[1]}); }, "not allocated");
  EXPECT_EQ(s.used(), 3);
  EXPECT_TRUE(s.is_allocated(ids[0]));
  // A repeated id within one call is a double free too.
  expect_error([&] { s.free(std::vector<std::int32_t>{ids[2], ids[2]}); }, "double free");
  EXPECT_EQ(s.used(), 3);
  EXPECT_TRUE(s.is_allocated(ids[2]));
  s.free(std::vector<std::int32_t>{ids[0], ids[2], ids[3]});
  EXPECT_EQ(s.used(), 0);
}

TEST(TokenSlots, OutOfRangeIdsAreReported) {
  token_slots s(8);
  std::vector<std::int32_t> ids;
  ASSERT_TRUE(s.try_alloc(2, ids));
  expect_error(
      [&] {
        s.free(std::vector<std::int32_t>{ids[0], 8});
      },
      "out of range; allowed: 0..7");
  expect_error([&] { s.free(std::vector<std::int32_t>{-3}); }, "slot -3");
  EXPECT_EQ(s.used(), 2);
  EXPECT_TRUE(s.is_allocated(ids[0]));
  expect_error([&] { s.try_alloc(-1, ids); }, "must be >= 0");
  expect_error([] { token_slots bad(-1); }, "out of range");
}

TEST(TokenSlots, RandomAllocFreeKeepsIdsUnique) {
  auto const seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  constexpr std::int64_t capacity = 1000;
  token_slots s(capacity);
  std::vector<std::vector<std::int32_t>> held;
  std::vector<int> owner(capacity, -1);
  std::int64_t live = 0;
  for (int step = 0; step < 5000; ++step) {
    if (held.empty() || rng() % 2 == 0) {
      std::vector<std::int32_t> ids;
      std::int64_t const n = rng() % 40;
      bool const ok = s.try_alloc(n, ids);
      ASSERT_EQ(ok, n <= capacity - live);
      if (!ok) continue;
      for (std::int32_t id : ids) {
        ASSERT_GE(id, 0);
        ASSERT_LT(id, capacity);
        ASSERT_EQ(owner[std::size_t(id)], -1) << "slot " << id << " handed out twice";
        owner[std::size_t(id)] = step;
      }
      live += n;
      held.push_back(std::move(ids));
    } else {
      std::size_t const k = rng() % held.size();
      for (std::int32_t id : held[k]) owner[std::size_t(id)] = -1;
      s.free(held[k]);
      live -= std::int64_t(held[k].size());
      held.erase(held.begin() + std::ptrdiff_t(k));
    }
    ASSERT_EQ(s.used(), live);
  }
}

TEST(TokenSlots, ResetFreesEverything) {
  token_slots s(4);
  std::vector<std::int32_t> ids;
  ASSERT_TRUE(s.try_alloc(4, ids));
  s.reset();
  EXPECT_EQ(s.used(), 0);
  ids.clear();
  ASSERT_TRUE(s.try_alloc(4, ids));
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1, 2, 3}));
}

}  // namespace
