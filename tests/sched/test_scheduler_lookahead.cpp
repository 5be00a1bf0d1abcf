// Overlapped scheduling: the engine plans step t + 1 while step t runs, so schedule() is called
// with one plan in flight and counts its rows as done before their tokens are known. Randomized
// runs on the counting fake of the pool, for every policy combination: the pool is never
// over-committed (the fake throws), every request gets exactly the tokens it would get one step
// at a time, a request that ends on a stop token costs at most one extra row, everything is
// released once, and the pool ends empty. Plus the misuse: two plans ahead.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "common/seed.hpp"
#include "fake_memory.hpp"
#include "lightcore/sched/scheduler.hpp"

namespace {

namespace sc = lightcore::sched;
using sc::request_state;
using sc::testing::fake_memory;

constexpr std::int64_t budget = 64;

template <class S>
void run_overlapped(S s, std::mt19937_64& rng, int requests, std::int64_t pool,
                    sc::scheduler_stats& stats) {
  fake_memory mem(pool);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  std::map<std::uint64_t, sc::testing::ending> specs;
  std::map<std::uint64_t, std::int64_t> tokens;  // what the "engine" delivered per request
  std::set<std::uint64_t> ended, aborted, released, live;
  std::int64_t wasted_rows = 0, stop_endings = 0;
  std::optional<sc::step_plan> in_flight;
  std::uint64_t next_id = 1;
  int added = 0;
  for (int steps = 0; added < requests || !s.idle() || in_flight; ++steps) {
    ASSERT_LT(steps, 200000) << "no progress";
    int const burst = chance(0.2) ? int(uniform(1, 5)) : 0;
    for (int b = 0; b < burst && added < requests; ++b, ++added) {
      std::uint64_t const id = next_id++;
      std::int64_t const prompt = chance(0.2) ? uniform(80, 160) : uniform(1, 50);
      std::int64_t const max_new = uniform(1, 40);
      specs[id] = {max_new, uniform(1, max_new + max_new / 2)};
      if (chance(0.3) && mem.free_slots() > 0)
        mem.seed_cache(id, std::min(mem.free_slots(), uniform(1, prompt)));
      s.add({.id = id, .prompt_tokens = prompt, .max_new_tokens = max_new});
      live.insert(id);
    }
    if (!live.empty() && chance(0.02)) {
      auto it = live.begin();
      std::advance(it, uniform(0, std::int64_t(live.size()) - 1));
      if (s.abort(*it)) aborted.insert(*it);
    }

    // Plan t + 1 (step t still "runs"), carry it out, then complete step t.
    std::optional<sc::step_plan> next;
    if (!s.idle()) {
      next = s.schedule(mem);
      ASSERT_LE(next->forward_tokens(), s.config().max_tokens_per_step);
      for (std::uint64_t const id : next->release) {
        ASSERT_TRUE(released.insert(id).second) << "request " << id << " released twice";
        live.erase(id);
      }
      mem.execute(*next);
    }
    if (in_flight) {
      std::vector<sc::token_result> results;
      auto row = [&](std::uint64_t id) {
        if (aborted.contains(id)) return;  // the engine drops aborted requests' tokens
        if (ended.contains(id)) {          // finished in the step before: a wasted row
          ++wasted_rows;
          return;
        }
        std::int64_t const n = ++tokens[id];
        sc::testing::ending const& sp = specs.at(id);
        bool const stop = n == sp.eos_at && n < sp.max_new;
        bool const end = n == sp.eos_at || n == sp.max_new;
        if (stop) ++stop_endings;
        if (end) ended.insert(id);
        results.push_back({id, 7, end});
      };
      for (std::uint64_t const id : in_flight->decode) row(id);
      for (sc::prefill_chunk const& c : in_flight->prefill)
        if (c.is_last) row(c.id);
      std::shuffle(results.begin(), results.end(), rng);
      s.complete(*in_flight, results);
    }
    in_flight = next;
    if (in_flight && !in_flight->has_forward() && in_flight->release.empty() &&
        in_flight->paused.empty()) {
      s.complete(*in_flight, {});  // an empty plan completes at once
      in_flight.reset();
    }
  }
  EXPECT_EQ(released.size(), std::size_t(requests));
  EXPECT_EQ(mem.used(), 0);
  for (auto const& [id, sp] : specs) {
    if (aborted.contains(id)) continue;
    EXPECT_EQ(tokens[id], std::min(sp.eos_at, sp.max_new)) << "request " << id;
  }
  EXPECT_LE(wasted_rows, stop_endings) << "a request ending by max_new_tokens ran past it";
  EXPECT_EQ(s.stats().finished + s.stats().aborted, std::uint64_t(requests));
  stats = s.stats();
}

template <class C>
class Lookahead : public ::testing::Test {};
using combos = sc::testing::every_policy<budget>;
TYPED_TEST_SUITE(Lookahead, combos);

TYPED_TEST(Lookahead, EveryRequestGetsItsTokensAndThePoolEndsEmpty) {
  using S = typename TypeParam::type;
  auto rng = lightcore::test::test_rng();
  sc::scheduler_stats stats;
  run_overlapped(
      S({.max_running_requests = 12, .max_prefill_tokens_while_decoding = 40, .max_seq_len = 256},
        typename S::admission_type(8)),
      rng, 800, 384, stats);
  if (this->HasFatalFailure()) return;
  EXPECT_GT(stats.prefix_hit_tokens, 0);
  if constexpr (S::admission_type::mode == sc::admit::estimate::optimistic) {
    EXPECT_GT(stats.paused, 0u) << "the run never reached memory pressure";
  }
}

TEST(LookaheadMisuse, OnePlanMayRunAheadNotTwo) {
  sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<16>> s(
      {.max_seq_len = 64});
  fake_memory mem(100);
  s.add({.id = 1, .prompt_tokens = 10, .max_new_tokens = 3});
  sc::step_plan const a = s.schedule(mem);  // 1: [0, 10), samples its first token
  sc::step_plan const b = s.schedule(mem);  // runs ahead: 1 decodes its second token
  EXPECT_EQ(b.decode, (std::vector<std::uint64_t>{1}));
  EXPECT_EQ(s.plans_in_flight(), 2u);
  EXPECT_THROW(s.schedule(mem), lightcore::error);
  EXPECT_THROW(s.complete(b, {}), lightcore::error);  // out of order
  std::vector<sc::token_result> const first = {{1, 5, false}};
  s.complete(a, first);
  std::vector<sc::token_result> const second = {{1, 6, false}};
  s.complete(b, second);
  EXPECT_EQ(s.find(1)->generated, 2);
  // The third token is the last (max_new_tokens 3): the plan after it does not decode it again.
  sc::step_plan const c = s.schedule(mem);
  sc::step_plan const d = s.schedule(mem);
  EXPECT_EQ(c.decode, (std::vector<std::uint64_t>{1}));
  EXPECT_TRUE(d.decode.empty());
  EXPECT_EQ(d.release, (std::vector<std::uint64_t>{1}));  // known to end: released at once
  EXPECT_EQ(s.find(1), nullptr);
  std::vector<sc::token_result> const third = {{1, 7, true}};
  s.complete(c, third);
  s.complete(d, {});
  EXPECT_EQ(s.stats().finished, 1u);
}

}  // namespace
