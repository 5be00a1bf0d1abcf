// Randomized stress: thousands of steps of arrivals, EOS, aborts (also between schedule and
// complete) and prefix-cache hits on a counting fake of the pool, for every policy combination.
// After every step: the pool is never over-committed (the fake throws), every running request
// holds exactly its computed slots, queued ones hold none, budgets and limits hold, nothing is
// paused and scheduled at once. At the end: every request finished (with the right number of
// tokens) or was aborted, each was released exactly once, and the pool is empty.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
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

constexpr std::int64_t capacity = 512;
constexpr std::int64_t max_seq_len = 256;
constexpr std::int64_t budget = 64;
constexpr std::int64_t prefill_cap = 40;
constexpr std::int64_t max_running = 16;

struct outcome {
  sc::scheduler_stats stats;
  std::uint64_t steps = 0;
};

template <class S>
void stress(S s, std::mt19937_64& rng, int requests, bool prefixes, bool aborts, outcome& out,
            std::int64_t pool = capacity) {
  fake_memory mem(pool);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  std::map<std::uint64_t, sc::testing::ending> specs;
  std::map<std::uint64_t, std::int64_t> generated;  // last seen, while the record exists
  std::set<std::uint64_t> live, aborted, released;
  std::int64_t accepted_tokens = 0;
  std::uint64_t next_id = 100;
  int added = 0;

  while (added < requests || !s.idle()) {
    // Bursty arrivals, so that the queue fills up and memory runs short.
    int const burst = chance(0.15) ? static_cast<int>(uniform(1, 6)) : 0;
    for (int b = 0; b < burst && added < requests; ++b, ++added) {
      std::uint64_t const id = next_id++;
      std::int64_t const prompt = chance(0.2) ? uniform(100, 200) : uniform(1, 60);
      std::int64_t const max_new = uniform(1, std::min<std::int64_t>(max_seq_len - prompt, 50));
      specs[id] = {max_new, uniform(1, max_new + max_new / 2)};
      if (prefixes && chance(0.3) && mem.free_slots() > 0)
        mem.seed_cache(id, std::min(mem.free_slots(), uniform(1, prompt)));
      s.add({.id = id, .prompt_tokens = prompt, .max_new_tokens = max_new});
      live.insert(id);
    }
    auto abort_some = [&](double p) {
      if (!aborts || live.empty() || !chance(p)) return;
      auto it = live.begin();
      std::advance(it, uniform(0, static_cast<std::int64_t>(live.size()) - 1));
      if (s.abort(*it)) aborted.insert(*it);
    };
    abort_some(0.02);

    sc::step_plan const plan = s.schedule(mem);
    ASSERT_LE(plan.forward_tokens(), s.config().max_tokens_per_step);
    std::int64_t prefill_tokens = 0;
    std::set<std::uint64_t> scheduled(plan.decode.begin(), plan.decode.end());
    for (sc::prefill_chunk const& c : plan.prefill) {
      ASSERT_GT(c.length, 0);
      prefill_tokens += c.length;
      ASSERT_TRUE(scheduled.insert(c.id).second) << "request " << c.id << " has two rows";
    }
    if (!plan.decode.empty() && s.config().max_prefill_tokens_while_decoding > 0) {
      ASSERT_LE(prefill_tokens, s.config().max_prefill_tokens_while_decoding);
    }
    for (std::uint64_t const id : plan.paused) {
      ASSERT_FALSE(scheduled.contains(id)) << "request " << id << " paused and scheduled";
      ASSERT_EQ(std::count(plan.resumed.begin(), plan.resumed.end(), id), 0);
    }
    for (std::uint64_t const id : plan.release) {
      ASSERT_TRUE(released.insert(id).second) << "request " << id << " released twice";
      ASSERT_EQ(s.find(id), nullptr);
      live.erase(id);
    }
    mem.execute(plan);
    abort_some(0.01);  // lands between schedule and complete

    std::vector<sc::token_result> results;
    auto row = [&](std::uint64_t id) {
      sc::request const* r = s.find(id);
      if (r->state == request_state::aborted && chance(0.5)) return;  // the engine may drop it
      bool const eos = r->generated + 1 == specs.at(id).eos_at;
      results.push_back({id, 7, eos});
      if (r->state != request_state::aborted) ++accepted_tokens;
    };
    for (std::uint64_t const id : plan.decode) row(id);
    for (sc::prefill_chunk const& c : plan.prefill)
      if (c.is_last) row(c.id);
    std::shuffle(results.begin(), results.end(), rng);
    s.complete(plan, results);

    ASSERT_LE(static_cast<std::int64_t>(s.running().size()), s.config().max_running_requests);
    for (std::uint64_t const id : s.running()) {
      sc::request const& r = *s.find(id);
      ASSERT_TRUE(sc::is_running(r.state));
      ASSERT_EQ(mem.held(id), r.computed) << "request " << id;
      ASSERT_TRUE(0 <= r.cached && r.cached <= r.computed && r.computed <= r.total_len());
      if (r.state == request_state::decoding) {
        ASSERT_EQ(r.computed, r.total_len() - 1);
      } else {
        ASSERT_LT(r.computed, r.total_len());
      }
    }
    for (std::uint64_t const id : s.queued()) {
      sc::request const& r = *s.find(id);
      ASSERT_TRUE(sc::is_queued(r.state));
      ASSERT_EQ(r.computed, 0);
      ASSERT_EQ(mem.held(id), 0);
    }
    for (std::uint64_t const id : live) {
      sc::request const* r = s.find(id);
      ASSERT_NE(r, nullptr);
      ASSERT_LE(r->generated, r->max_new_tokens);
      generated[id] = r->generated;
      if (r->state == request_state::finished) {
        sc::testing::ending const& sp = specs.at(id);
        ASSERT_EQ(r->generated, std::min(sp.eos_at, sp.max_new)) << "request " << id;
      }
      if (r->state == request_state::aborted) {
        ASSERT_TRUE(aborted.contains(id));
      }
    }
    ASSERT_LT(s.step(), 200000u) << "no progress: " << s.size() << " requests left";
  }
  sc::step_plan const last = s.schedule(mem);  // nothing left but, perhaps, nothing at all
  EXPECT_FALSE(last.has_forward());
  EXPECT_EQ(released.size(), static_cast<std::size_t>(requests));
  EXPECT_EQ(mem.used(), 0);
  std::int64_t total = 0;
  for (auto const& [id, g] : generated) total += g;
  EXPECT_EQ(total, accepted_tokens);
  EXPECT_EQ(s.stats().finished + s.stats().aborted, static_cast<std::uint64_t>(requests));
  EXPECT_EQ(s.stats().aborted, aborted.size());
  out = {s.stats(), s.step()};
}

template <class C>
class Stress : public ::testing::Test {};
using combos = sc::testing::every_policy<budget>;
TYPED_TEST_SUITE(Stress, combos);

TYPED_TEST(Stress, InvariantsHoldOverThousandsOfSteps) {
  using S = typename TypeParam::type;
  auto rng = lightcore::test::test_rng();
  sc::scheduler_config const config{.max_running_requests = max_running,
                                    .max_prefill_tokens_while_decoding = prefill_cap,
                                    .max_seq_len = max_seq_len};
  outcome o;
  stress(S(config, typename S::admission_type(8)), rng, 1500, true, true, o);
  if (this->HasFatalFailure()) return;
  EXPECT_GT(o.steps, 2000u);
  EXPECT_GT(o.stats.prefix_hit_tokens, 0);
  if constexpr (S::admission_type::mode == sc::admit::estimate::optimistic) {
    EXPECT_GT(o.stats.paused, 0u) << "the stress never reached memory pressure";
    EXPECT_GT(o.stats.resumed, 0u);
  }
}

// Conservative admission reserves every request's worst case. The peak formula assumes that each
// admitted prompt is prefilled at once and decodes from the next step; when the budget is large
// enough for that and there are no shared prefixes (whose release the scheduler cannot count), it
// never needs to pause. (With chunked or capped prefills a request's decode can start late, the
// others grow meanwhile, and the pause is the safety net of every mode.)
template <class C>
class ConservativeStress : public ::testing::Test {};
using conservative_combos = ::testing::Types<
    sc::testing::combo<sc::admit::conservative, sc::order::strict_fcfs, budget>,
    sc::testing::combo<sc::admit::conservative, sc::order::fcfs_skip_head, budget>>;
TYPED_TEST_SUITE(ConservativeStress, conservative_combos);

TYPED_TEST(ConservativeStress, NeverPausesWhenPrefillsAreNotDelayed) {
  using S = typename TypeParam::type;
  auto rng = lightcore::test::test_rng();
  outcome o;
  // 4 prompts of at most 200 tokens always fit a 1024-token step whole.
  stress(S({.max_running_requests = 4, .max_tokens_per_step = 1024, .max_seq_len = 256}), rng, 800,
         false, true, o, 256);
  if (this->HasFatalFailure()) return;
  EXPECT_EQ(o.stats.paused, 0u);
}

}  // namespace
