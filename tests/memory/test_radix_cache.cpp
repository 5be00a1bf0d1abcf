// radix_cache: matching, splitting, duplicate prefixes, locks, LRU eviction and the slots it hands
// back, the disabled mode, stats, misuse, an allocation-free steady state, and a randomized run
// against a reference model in which every slot is owned exactly once (tree, request or free).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <new>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/memory/radix_cache.hpp"
#include "lightcore/memory/token_slots.hpp"

// Counts every allocation through operator new in this binary, so a test can show that a code
// path allocates nothing. The replacements pair malloc with free; GCC's check for mismatched
// new/delete cannot see that they are replaced and would warn.
namespace {
std::atomic<std::int64_t> allocations{0};
}  // namespace
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

namespace lc = lightcore;
using lc::memory::radix_cache;
using lc::memory::token_slots;
using ids = std::vector<std::int32_t>;

template <class F>
void expect_error(F&& f, std::string const& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (lc::error const& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

ids to_vector(std::span<std::int32_t const> s) { return {s.begin(), s.end()}; }

// Evicts n tokens and returns the freed slots, one inner vector per callback.
std::vector<ids> evict_all_of(radix_cache& c, std::int64_t n, std::int64_t expect_freed) {
  std::vector<ids> calls;
  std::int64_t const freed =
      c.evict(n, [&](std::span<std::int32_t const> s) { calls.push_back(to_vector(s)); });
  EXPECT_EQ(freed, expect_freed);
  return calls;
}

TEST(RadixCache, EmptyTreeMatchesNothing) {
  radix_cache c;
  auto const m = c.match(ids{1, 2, 3});
  EXPECT_EQ(m.length, 0);
  EXPECT_TRUE(m.slots.empty());
  EXPECT_EQ(m.node, c.root_handle());
  EXPECT_EQ(c.stats().queries, 1);
  EXPECT_EQ(c.stats().query_tokens, 3);
  EXPECT_EQ(c.stats().hit_tokens, 0);
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.evict(10, [](std::span<std::int32_t const>) { FAIL(); }), 0);
}

TEST(RadixCache, MatchFindsTheLongestPrefixAndSplitsInsideAnEdge) {
  radix_cache c;
  auto const ins = c.insert(ids{1, 2, 3, 4}, ids{10, 11, 12, 13});
  EXPECT_EQ(ins.existing, 0);
  EXPECT_EQ(c.cached_tokens(), 4);
  EXPECT_EQ(c.live_nodes(), 2u);  // root + one edge

  auto m = c.match(ids{1, 2, 3, 4, 5});
  EXPECT_EQ(m.length, 4);
  EXPECT_EQ(to_vector(m.slots), (ids{10, 11, 12, 13}));
  EXPECT_EQ(m.node, ins.node);

  m = c.match(ids{1, 2, 9});  // ends inside the edge: split after 2 tokens
  EXPECT_EQ(m.length, 2);
  EXPECT_EQ(to_vector(m.slots), (ids{10, 11}));
  EXPECT_EQ(c.live_nodes(), 3u);
  EXPECT_EQ(c.cached_tokens(), 4);  // a split moves no token

  auto const again = c.match(ids{1, 2});
  EXPECT_EQ(again.node, m.node);  // the split node ends exactly there
  // The handle of the lower half survives the split.
  auto const full = c.match(ids{1, 2, 3, 4});
  EXPECT_EQ(full.node, ins.node);
  EXPECT_EQ(to_vector(full.slots), (ids{10, 11, 12, 13}));
  EXPECT_EQ(c.match(ids{2, 1}).length, 0);
  EXPECT_EQ(c.match(ids{}).length, 0);
}

TEST(RadixCache, CachedPrefixAnswersLikeMatchAndChangesNothing) {
  radix_cache c;
  c.insert(ids{1, 2, 3, 4}, ids{10, 11, 12, 13});
  c.insert(ids{1, 2, 7}, ids{30, 31, 20});  // shares the first two tokens: splits the edge
  auto const nodes = c.live_nodes();
  auto const queries = c.stats().queries;
  std::vector<ids> const qs = {ids{1, 2, 3, 4, 5}, ids{1, 2, 3, 9}, ids{1, 2, 7, 8},
                               ids{1, 9},          ids{5},          ids{}};
  std::vector<std::int64_t> peeks;
  for (ids const& q : qs) peeks.push_back(c.cached_prefix(q));
  EXPECT_EQ(c.live_nodes(), nodes) << "cached_prefix split an edge";
  EXPECT_EQ(c.stats().queries, queries) << "cached_prefix counted as a lookup";
  for (std::size_t i = 0; i < qs.size(); ++i)
    EXPECT_EQ(peeks[i], c.match(qs[i]).length) << "query " << i;
  // match() splits inside an edge, cached_prefix() never does: the node count moved only there.
  EXPECT_GT(c.live_nodes(), nodes);
  radix_cache off({.enabled = false});
  EXPECT_EQ(off.cached_prefix(ids{1, 2}), 0);
}

TEST(RadixCache, InsertReportsTheDuplicatePrefixAndKeepsTheFirstOwner) {
  radix_cache c;
  c.insert(ids{1, 2, 3, 4}, ids{10, 11, 12, 13});
  auto const ins = c.insert(ids{1, 2, 7, 8}, ids{20, 21, 22, 23});
  EXPECT_EQ(ins.existing, 2);  // the caller frees 20 and 21
  EXPECT_EQ(c.cached_tokens(), 6);
  EXPECT_EQ(to_vector(c.match(ids{1, 2, 7, 8}).slots), (ids{10, 11, 22, 23}));
  EXPECT_EQ(to_vector(c.match(ids{1, 2, 3, 4}).slots), (ids{10, 11, 12, 13}));

  auto const dup = c.insert(ids{1, 2, 7, 8}, ids{30, 31, 32, 33});
  EXPECT_EQ(dup.existing, 4);
  EXPECT_EQ(dup.node, ins.node);
  auto const shorter = c.insert(ids{1, 2, 7}, ids{40, 41, 42});  // ends inside an edge
  EXPECT_EQ(shorter.existing, 3);
  EXPECT_EQ(c.match(ids{1, 2, 7}).node, shorter.node);
  auto const longer = c.insert(ids{1, 2, 7, 8, 9}, ids{50, 51, 52, 53, 54});
  EXPECT_EQ(longer.existing, 4);
  EXPECT_EQ(c.cached_tokens(), 7);
  EXPECT_EQ(to_vector(c.match(ids{1, 2, 7, 8, 9}).slots), (ids{10, 11, 22, 23, 54}));
  EXPECT_EQ(c.stats().inserted_tokens, 7);
  EXPECT_EQ(c.insert(ids{}, ids{}).existing, 0);
}

TEST(RadixCache, LockedPathsAreNeverEvicted) {
  radix_cache c;
  auto const a = c.insert(ids{1, 2, 3}, ids{10, 11, 12});
  c.insert(ids{1, 2, 4}, ids{20, 21, 22});  // shares [1, 2] with a
  c.insert(ids{5, 6}, ids{30, 31});
  EXPECT_EQ(c.evictable_tokens(), 6);
  c.lock(a.node);
  EXPECT_EQ(c.evictable_tokens(), 3);  // [1, 2] and [3] are on a's path
  auto const freed = evict_all_of(c, 100, 3);
  std::set<std::int32_t> got;
  for (auto const& call : freed) got.insert(call.begin(), call.end());
  EXPECT_EQ(got, (std::set<std::int32_t>{22, 30, 31}));
  EXPECT_EQ(c.cached_tokens(), 3);
  EXPECT_EQ(c.evictable_tokens(), 0);
  EXPECT_EQ(c.match(ids{1, 2, 3}).length, 3);
  c.lock(a.node);  // locks nest
  c.unlock(a.node);
  EXPECT_EQ(c.evictable_tokens(), 0);
  c.unlock(a.node);
  EXPECT_EQ(c.evictable_tokens(), 3);
  // The parent [1, 2] becomes a leaf once [3] goes, and goes too.
  auto const rest = evict_all_of(c, 3, 3);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0], (ids{12}));
  EXPECT_EQ(rest[1], (ids{10, 11}));
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.live_nodes(), 1u);
}

TEST(RadixCache, EvictsLeastRecentlyUsedFirstWithExactlyTheirSlots) {
  radix_cache c;
  c.insert(ids{1, 1}, ids{10, 11});
  c.insert(ids{2, 2}, ids{20, 21});
  c.insert(ids{3, 3}, ids{30, 31});
  c.match(ids{1, 1, 1});  // refreshes [1, 1]: now [2, 2] is the oldest
  auto calls = evict_all_of(c, 2, 2);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (ids{20, 21}));
  c.insert(ids{3, 3, 3}, ids{30, 31, 32});  // refreshes [3, 3]
  calls = evict_all_of(c, 1, 1);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (ids{11}));  // the tail of [1, 1]: exactly one token
  EXPECT_EQ(c.match(ids{1, 1}).length, 1);
  c.match(ids{1});  // refreshes [1]: the branch [3, 3] -> [3] is older now
  // The leaf [3] goes first, then its parent [3, 3], which became a leaf, then [1].
  calls = evict_all_of(c, 4, 4);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0], (ids{32}));
  EXPECT_EQ(calls[1], (ids{30, 31}));
  EXPECT_EQ(calls[2], (ids{10}));
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.stats().evicted_tokens, 7);
}

TEST(RadixCache, EvictionTrimsTheLastLeafToFreeExactlyWhatWasAsked) {
  radix_cache c;
  ids tokens, slots;
  for (std::int32_t i = 0; i < 10; ++i) {
    tokens.push_back(i);
    slots.push_back(100 + i);
  }
  auto const h = c.insert(tokens, slots).node;
  auto const calls = evict_all_of(c, 3, 3);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (ids{107, 108, 109}));
  EXPECT_EQ(c.cached_tokens(), 7);
  auto const m = c.match(tokens);
  EXPECT_EQ(m.length, 7);
  EXPECT_EQ(to_vector(m.slots), (ids{100, 101, 102, 103, 104, 105, 106}));
  // The old handle named a 10-token prefix that no longer exists.
  expect_error([&] { c.lock(h); }, "stale handle");
  c.lock(m.node);
  EXPECT_EQ(c.evict(5, [](std::span<std::int32_t const>) {}), 0);
  c.unlock(m.node);
}

TEST(RadixCache, MisuseIsReported) {
  radix_cache c;
  auto const h = c.insert(ids{1, 2}, ids{10, 11}).node;
  expect_error([&] { c.unlock(h); }, "not locked");
  expect_error([&] { c.insert(ids{1, 2, 3}, ids{10, 11}); }, "exactly one slot");
  expect_error([&] { c.insert(ids{7}, ids{-1}); }, "negative");
  expect_error([&] { c.insert(ids{7, 8}, ids{11, 12}); }, "slot 11");  // held by [1, 2]
  expect_error([&] { c.insert(ids{7, 8}, ids{12, 12}); }, "repeated");
  EXPECT_EQ(c.cached_tokens(), 2);   // failed inserts took nothing
  c.insert(ids{7, 8}, ids{12, 13});  // and left 12 takeable
  EXPECT_EQ(c.cached_tokens(), 4);
  c.evict(4, [](std::span<std::int32_t const>) {});
  expect_error([&] { c.lock(h); }, "stale handle");
  expect_error([&] { c.lock({12345, 0}); }, "no such node");
}

TEST(RadixCache, DisabledModeIsANoOp) {
  radix_cache c({.enabled = false});
  EXPECT_FALSE(c.enabled());
  auto const ins = c.insert(ids{1, 2, 3}, ids{10, 11, 12});
  EXPECT_EQ(ins.existing, 3);  // the tree took nothing: the caller frees every slot
  auto const m = c.match(ids{1, 2, 3});
  EXPECT_EQ(m.length, 0);
  EXPECT_TRUE(m.slots.empty());
  c.lock(m.node);
  c.unlock(m.node);
  c.unlock(m.node);  // no references are kept, so nothing to underflow
  EXPECT_EQ(c.evict(10, [](std::span<std::int32_t const>) { FAIL(); }), 0);
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.stats().queries, 0);
  EXPECT_EQ(c.stats().inserted_tokens, 0);
}

TEST(RadixCache, StatsCountHitsAndEvictions) {
  radix_cache c;
  c.insert(ids{1, 2, 3, 4}, ids{0, 1, 2, 3});
  c.match(ids{1, 2, 3, 4, 5, 6, 7, 8});  // 4 of 8
  c.match(ids{1, 2});                    // 2 of 2
  c.match(ids{9, 9});                    // 0 of 2
  auto const& s = c.stats();
  EXPECT_EQ(s.queries, 3);
  EXPECT_EQ(s.query_tokens, 12);
  EXPECT_EQ(s.hit_tokens, 6);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 0.5);
  EXPECT_EQ(s.inserted_tokens, 4);
  c.evict(1, [](std::span<std::int32_t const>) {});
  EXPECT_EQ(c.stats().evicted_tokens, 1);
  c.reset_stats();
  EXPECT_EQ(c.stats().queries, 0);
  EXPECT_DOUBLE_EQ(c.stats().hit_rate(), 0.0);
}

TEST(RadixCache, ResetHandsBackEverySlot) {
  radix_cache c;
  auto const h = c.insert(ids{1, 2, 3}, ids{5, 6, 7}).node;
  c.insert(ids{1, 9}, ids{8, 9});
  c.lock(h);
  std::set<std::int32_t> back;
  c.reset([&](std::span<std::int32_t const> s) { back.insert(s.begin(), s.end()); });
  EXPECT_EQ(back, (std::set<std::int32_t>{5, 6, 7, 9}));
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.evictable_tokens(), 0);
  EXPECT_EQ(c.live_nodes(), 1u);
  expect_error([&] { c.unlock(h); }, "stale handle");
  c.insert(ids{1, 2, 3}, ids{5, 6, 7});  // the slots are takeable again
  EXPECT_EQ(c.match(ids{1, 2, 3}).length, 3);
}

// One serving-like workload: requests match, lock, take fresh slots (evicting when the pool is
// full), publish their sequence with insert and unlock. Sequences share prefixes often.
class workload {
 public:
  workload(std::uint32_t seed, std::int64_t capacity, std::int64_t presize)
      : rng_(seed), slots_(capacity), cache_({.slot_capacity = presize}) {
    for (auto& base : bases_) {
      base.resize(24);
      for (auto& t : base) t = std::int32_t(rng_() % 3);
    }
    tokens_.reserve(64);
    own_.reserve(64);
    all_.reserve(64);
  }

  // One request start to finish; returns false when it could not get its slots.
  bool request() {
    tokens_ = bases_[rng_() % bases_.size()];
    tokens_.resize(1 + rng_() % tokens_.size());
    for (auto k = std::uint32_t(rng_() % 8); k > 0; --k)
      tokens_.push_back(std::int32_t(rng_() % 5));
    auto const m = cache_.match(tokens_);
    cache_.lock(m.node);
    all_.assign(m.slots.begin(), m.slots.end());
    auto const need = std::int64_t(tokens_.size()) - m.length;
    if (slots_.available() < need)
      cache_.evict(need - slots_.available(),
                   [&](std::span<std::int32_t const> s) { slots_.free(s); });
    own_.clear();
    bool const ok = slots_.try_alloc(need, own_);
    if (ok) {
      all_.insert(all_.end(), own_.begin(), own_.end());
      auto const ins = cache_.insert(tokens_, all_);
      std::span<std::int32_t const> const dup(all_);
      slots_.free(dup.subspan(std::size_t(m.length), std::size_t(ins.existing - m.length)));
    }
    cache_.unlock(m.node);
    return ok;
  }

  radix_cache& cache() { return cache_; }
  token_slots& slots() { return slots_; }

 private:
  std::mt19937 rng_;
  token_slots slots_;
  radix_cache cache_;
  std::vector<ids> bases_ = std::vector<ids>(6);
  ids tokens_, own_, all_;
};

TEST(RadixCache, PresizedCacheNeverAllocates) {
  workload w(12345, 256, 256);
  std::int64_t const probe = allocations.load();
  static std::vector<ids> kept;  // escapes, so the allocation cannot be optimised away
  kept.emplace_back(16);         // the counter sees it: zero below means something
  ASSERT_GT(allocations.load(), probe);
  auto const nodes = w.cache().node_pool_size();
  auto const map = w.cache().child_map_capacity();
  auto const table = w.cache().slot_table_size();
  std::int64_t const before = allocations.load();
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE(w.request());
  EXPECT_EQ(allocations.load() - before, 0) << "match/insert/evict allocated";
  EXPECT_EQ(w.cache().child_map_capacity(), map);
  EXPECT_EQ(w.cache().slot_table_size(), table);
  EXPECT_GE(w.cache().node_pool_size(), nodes);       // grew within the reserved capacity
  EXPECT_GT(w.cache().stats().evicted_tokens, 1000);  // the run did churn
  EXPECT_GT(w.cache().stats().hit_rate(), 0.1);
  EXPECT_EQ(w.slots().used(), w.cache().cached_tokens());
}

TEST(RadixCache, GrowOnDemandCacheStopsAllocatingAfterWarmUp) {
  workload w(12345, 256, 0);  // fixed seed: the warm-up reaches the peak deterministically
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(w.request());
  auto const map = w.cache().child_map_capacity();
  auto const table = w.cache().slot_table_size();
  std::int64_t const before = allocations.load();
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(w.request());
  EXPECT_EQ(allocations.load() - before, 0) << "match/insert/evict allocated in steady state";
  EXPECT_EQ(w.cache().child_map_capacity(), map);
  EXPECT_EQ(w.cache().slot_table_size(), table);
  EXPECT_LE(w.cache().node_pool_size(), 257u);  // bounded by the slots it can hold
}

// The reference: every cached prefix (as a token sequence) mapped to the slot of its last token.
// The cached set is prefix-closed, so the longest match is the first absent prefix minus one.
class reference {
 public:
  // Length of the longest cached prefix; appends its slots to `slots` when given.
  std::int64_t longest(ids const& tokens, ids* slots = nullptr) const {
    ids prefix;
    std::int64_t n = 0;
    for (std::int32_t t : tokens) {
      prefix.push_back(t);
      auto it = map_.find(prefix);
      if (it == map_.end()) break;
      if (slots != nullptr) slots->push_back(it->second);
      ++n;
    }
    return n;
  }
  void insert(ids const& tokens, ids const& slots) {
    ids prefix;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      prefix.push_back(tokens[i]);
      if (map_.emplace(prefix, slots[i]).second) owner_[slots[i]] = prefix;
    }
  }
  // Drops the prefix that slot s holds; false when no cached prefix has that slot.
  bool erase_slot(std::int32_t s) {
    auto it = owner_.find(s);
    if (it == owner_.end()) return false;
    map_.erase(it->second);
    owner_.erase(it);
    return true;
  }
  bool prefix_closed() const {
    for (auto const& [seq, slot] : map_)
      if (seq.size() > 1 && !map_.contains(ids(seq.begin(), seq.end() - 1))) return false;
    return true;
  }
  std::size_t size() const { return map_.size(); }
  std::map<std::int32_t, ids> const& owners() const { return owner_; }

 private:
  std::map<ids, std::int32_t> map_;
  std::map<std::int32_t, ids> owner_;
};

TEST(RadixCache, RandomizedAgainstAReferenceModelOwnsEverySlotOnce) {
  auto const seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  constexpr std::int64_t capacity = 300;
  token_slots pool(capacity);
  radix_cache cache;  // per-slot tables grow on demand here
  reference model;

  struct request {
    ids tokens;
    ids slots;  // matched (the tree's) then its own
    std::int64_t matched;
    radix_cache::handle node;
  };
  std::vector<request> running;
  std::vector<ids> bases(5);
  for (auto& b : bases) {
    b.resize(20);
    for (auto& t : b) t = std::int32_t(rng() % 3);
  }

  auto on_freed = [&](std::span<std::int32_t const> s) {
    for (std::int32_t slot : s) {
      ASSERT_TRUE(model.erase_slot(slot)) << "evicted slot " << slot << " was not cached";
      for (request const& r : running)
        for (std::int64_t i = 0; i < r.matched; ++i)
          ASSERT_NE(r.slots[std::size_t(i)], slot) << "evicted a slot of a locked prefix";
    }
    pool.free(s);  // throws on a double free
  };

  auto check_invariants = [&] {
    ASSERT_EQ(cache.cached_tokens(), std::int64_t(model.size()));
    std::set<std::int32_t> owned;
    std::int64_t own = 0;
    for (auto const& [slot, seq] : model.owners()) owned.insert(slot);
    std::set<ids> locked;
    for (request const& r : running) {
      for (std::size_t i = std::size_t(r.matched); i < r.slots.size(); ++i) {
        ASSERT_TRUE(owned.insert(r.slots[i]).second) << "slot " << r.slots[i] << " owned twice";
        ++own;
      }
      for (std::int64_t n = 1; n <= r.matched; ++n)
        locked.insert(ids(r.tokens.begin(), r.tokens.begin() + n));
    }
    ASSERT_EQ(pool.used(), std::int64_t(model.size()) + own);
    ASSERT_EQ(std::int64_t(owned.size()), pool.used());
    for (std::int32_t s : owned) ASSERT_TRUE(pool.is_allocated(s));
    ASSERT_EQ(cache.evictable_tokens(), std::int64_t(model.size() - locked.size()));
    ASSERT_TRUE(model.prefix_closed());
  };

  for (int step = 0; step < 4000; ++step) {
    auto const op = std::uint32_t(rng() % 10);
    if (op < 4 && running.size() < 8) {  // admit a request
      request r;
      r.tokens = bases[rng() % bases.size()];
      r.tokens.resize(1 + rng() % r.tokens.size());
      for (auto k = std::uint32_t(rng() % 10); k > 0; --k)
        r.tokens.push_back(std::int32_t(rng() % 4));
      ids expect_slots;
      std::int64_t const expect = model.longest(r.tokens, &expect_slots);
      auto const m = cache.match(r.tokens);
      ASSERT_EQ(m.length, expect);
      ASSERT_EQ(to_vector(m.slots), expect_slots);
      cache.lock(m.node);
      r.matched = m.length;
      r.node = m.node;
      r.slots = expect_slots;
      auto const need = std::int64_t(r.tokens.size()) - m.length;
      if (pool.available() < need) {
        std::int64_t const want = need - pool.available();
        std::int64_t const can = cache.evictable_tokens();
        ASSERT_EQ(cache.evict(want, on_freed), std::min(want, can));
      }
      if (pool.try_alloc(need, r.slots)) {
        running.push_back(std::move(r));
      } else {
        cache.unlock(m.node);
      }
    } else if (op < 8 && !running.empty()) {  // finish: publish, free duplicates, unlock
      std::size_t const k = rng() % running.size();
      request r = std::move(running[k]);
      running.erase(running.begin() + std::ptrdiff_t(k));
      std::int64_t const present = model.longest(r.tokens);
      auto const ins = cache.insert(r.tokens, r.slots);
      ASSERT_EQ(ins.existing, present);
      ASSERT_GE(ins.existing, r.matched);
      pool.free(std::span<std::int32_t const>(r.slots).subspan(
          std::size_t(r.matched), std::size_t(ins.existing - r.matched)));
      model.insert(r.tokens, r.slots);
      cache.unlock(r.node);
    } else if (op == 8 && !running.empty()) {  // abort: the request's own slots go back
      std::size_t const k = rng() % running.size();
      request const& r = running[k];
      pool.free(std::span<std::int32_t const>(r.slots).subspan(std::size_t(r.matched)));
      cache.unlock(r.node);
      running.erase(running.begin() + std::ptrdiff_t(k));
    } else {  // pressure from elsewhere
      std::int64_t const want = rng() % 30;
      std::int64_t const can = cache.evictable_tokens();
      ASSERT_EQ(cache.evict(want, on_freed), std::min(want, can));
    }
    check_invariants();
    if (HasFatalFailure()) return;
  }

  for (request const& r : running) {
    pool.free(std::span<std::int32_t const>(r.slots).subspan(std::size_t(r.matched)));
    cache.unlock(r.node);
  }
  running.clear();
  auto const cached = std::int64_t(model.size());
  EXPECT_EQ(cache.evictable_tokens(), cached);
  EXPECT_EQ(cache.evict(capacity, on_freed), cached);
  EXPECT_EQ(model.size(), 0u);
  EXPECT_EQ(pool.used(), 0);
  EXPECT_EQ(cache.cached_tokens(), 0);
  EXPECT_EQ(cache.live_nodes(), 1u);
  EXPECT_GT(cache.stats().hit_tokens, 0);
}

}  // namespace
