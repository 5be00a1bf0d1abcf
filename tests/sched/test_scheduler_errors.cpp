// Aborts in every state, the configured limits, and misuse: bad requests, bad configurations, a
// memory that reports nonsense, and plans completed out of order or with the wrong results.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fake_memory.hpp"
#include "lightcore/sched/scheduler.hpp"

namespace {

namespace sc = lightcore::sched;
using sc::request_state;
using sc::testing::fake_memory;
using row = sc::testing::chunk_row;
using sched16 =
    sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<16>>;

sc::request req(std::uint64_t id, std::int64_t prompt, std::int64_t max_new) {
  return {.id = id, .prompt_tokens = prompt, .max_new_tokens = max_new};
}

void expect_error(std::function<void()> const& f, std::string const& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one saying \"" << needle << "\"";
  } catch (lightcore::error const& e) {
    EXPECT_NE(e.message().find(needle), std::string::npos)
        << "message: " << e.message() << "\nexpected to contain: " << needle;
  }
}

// One step the way the engine does it.
template <class S>
sc::step_plan step(S& s, fake_memory& mem, std::map<std::uint64_t, std::int64_t>& outputs) {
  sc::step_plan plan = s.schedule(mem);
  mem.execute(plan);
  s.complete(plan, sc::testing::sample(plan, {}, outputs));
  return plan;
}

TEST(Abort, WaitingRequestIsReleasedWithoutEverRunning) {
  sched16 s({.max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 10, 2));
  s.add(req(2, 10, 2));
  EXPECT_TRUE(s.abort(2));
  EXPECT_EQ(s.find(2)->state, request_state::aborted);
  EXPECT_FALSE(s.abort(2)) << "a second abort finds nothing live";
  sc::step_plan const plan = step(s, mem, outputs);
  EXPECT_EQ(sc::testing::rows(plan), (std::vector<row>{{1, 0, 10, true}}));
  EXPECT_EQ(plan.release, (std::vector<std::uint64_t>{2}));
  EXPECT_EQ(s.find(2), nullptr);
  EXPECT_FALSE(s.abort(2));
  EXPECT_FALSE(s.abort(12345));
  EXPECT_EQ(s.stats().aborted, 1u);
}

TEST(Abort, PrefillingAndDecodingRequestsGiveTheirSlotsBack) {
  sched16 s({.max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 40, 4));  // chunked: still prefilling after one step
  s.add(req(2, 8, 4));
  step(s, mem, outputs);  // 1: [0, 16)
  step(s, mem, outputs);  // 1: [16, 32)
  EXPECT_EQ(s.find(1)->state, request_state::prefilling);
  EXPECT_TRUE(s.abort(1));
  sc::step_plan const p = step(s, mem, outputs);
  EXPECT_EQ(p.release, (std::vector<std::uint64_t>{1}));
  EXPECT_EQ(sc::testing::rows(p), (std::vector<row>{{2, 0, 8, true}}));
  EXPECT_EQ(mem.held(1), 0);
  EXPECT_EQ(mem.available_tokens(), 92);
  step(s, mem, outputs);  // 2 decodes
  EXPECT_EQ(s.find(2)->state, request_state::decoding);
  EXPECT_TRUE(s.abort(2));
  sc::step_plan const q = step(s, mem, outputs);
  EXPECT_EQ(q.release, (std::vector<std::uint64_t>{2}));
  EXPECT_TRUE(q.decode.empty());
  EXPECT_EQ(mem.available_tokens(), 100);
  EXPECT_TRUE(s.idle());
}

TEST(Abort, BetweenScheduleAndCompleteIgnoresTheRow) {
  sched16 s({.max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 10, 4));
  sc::step_plan const plan = s.schedule(mem);
  mem.execute(plan);
  EXPECT_TRUE(s.abort(1));
  s.complete(plan, sc::testing::sample(plan, {}, outputs));  // its token is dropped
  EXPECT_EQ(s.find(1)->generated, 0);
  sc::step_plan const next = step(s, mem, outputs);
  EXPECT_EQ(next.release, (std::vector<std::uint64_t>{1}));
  EXPECT_EQ(mem.available_tokens(), 100) << "the slots of the aborted step are freed too";
}

TEST(Abort, PausedRequestLeavesTheQueue) {
  using opt = sc::scheduler<sc::admit::optimistic, sc::order::strict_fcfs, sc::chunk::fixed<32>>;
  opt s({.max_seq_len = 24}, sc::admit::optimistic(1));
  fake_memory mem(24);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 8, 16));
  s.add(req(2, 8, 16));
  for (int i = 0; i < 6; ++i) step(s, mem, outputs);  // as in the scripted test: 2 is paused
  ASSERT_EQ(s.find(2)->state, request_state::paused);
  EXPECT_TRUE(s.abort(2));
  EXPECT_TRUE(s.queued().empty());
  sc::step_plan const p = step(s, mem, outputs);
  EXPECT_EQ(p.release, (std::vector<std::uint64_t>{2}));
  EXPECT_TRUE(p.resumed.empty());
  EXPECT_EQ(p.decode, (std::vector<std::uint64_t>{1}));
}

TEST(Abort, FinishedRequestCannotBeAborted) {
  sched16 s({.max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 10, 1));
  step(s, mem, outputs);
  EXPECT_EQ(s.find(1)->state, request_state::finished);
  EXPECT_FALSE(s.abort(1));
  EXPECT_EQ(s.stats().aborted, 0u);
}

TEST(Limits, MaxRunningRequests) {
  sched16 s({.max_running_requests = 2, .max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 4, 1));
  s.add(req(2, 4, 2));
  s.add(req(3, 4, 1));
  sc::step_plan p = step(s, mem, outputs);
  EXPECT_EQ(sc::testing::rows(p), (std::vector<row>{{1, 0, 4, true}, {2, 0, 4, true}}));
  p = step(s, mem, outputs);  // 1 finished in step 0: room for 3
  EXPECT_EQ(sc::testing::rows(p), (std::vector<row>{{3, 0, 4, true}}));
  EXPECT_EQ(p.decode, (std::vector<std::uint64_t>{2}));
}

TEST(Limits, MaxTokensPerStepOverridesTheChunkPolicy) {
  sched16 s({.max_tokens_per_step = 8, .max_seq_len = 64});
  fake_memory mem(100);
  std::map<std::uint64_t, std::int64_t> outputs;
  s.add(req(1, 20, 1));
  std::vector<row> chunks;
  for (int i = 0; i < 3; ++i)
    for (row const& r : sc::testing::rows(step(s, mem, outputs))) chunks.push_back(r);
  EXPECT_EQ(chunks, (std::vector<row>{{1, 0, 8, false}, {1, 8, 8, false}, {1, 16, 4, true}}));
}

TEST(BadInput, RequestsAreRejectedWithTheReason) {
  sched16 s({.max_seq_len = 64});
  expect_error([&] { s.add(req(1, 0, 4)); },
               "request 1 has a prompt of 0 tokens; a prompt needs at least 1 token");
  expect_error([&] { s.add(req(2, 4, 0)); }, "max_new_tokens = 0; allowed: >= 1");
  expect_error([&] { s.add(req(3, 40, 30)); },
               "needs prompt 40 + max_new_tokens 30 tokens, more than max_seq_len 64");
  expect_error([&] { s.add(req(4, 65, 1)); }, "more than max_seq_len 64");
  sc::request used = req(5, 4, 4);
  used.generated = 2;
  expect_error([&] { s.add(used); }, "request 5 is not fresh (generated 2");
  s.add(req(6, 4, 4));
  expect_error([&] { s.add(req(6, 4, 4)); }, "request id 6 is already in use");
  EXPECT_EQ(s.size(), 1u);
}

TEST(BadInput, ConfigurationsAreRejectedWithWhatIsAllowed) {
  expect_error([] { sched16 s({.max_running_requests = 20}); },
               "max_running_requests is 20; allowed: 1..16");
  expect_error([] { sched16 s({.max_running_requests = -1}); }, "allowed: 1..16, or 0");
  EXPECT_EQ(sched16(sc::scheduler_config{}).config().max_running_requests, 16)
      << "0 means the budget";
  EXPECT_EQ(sched16(sc::scheduler_config{}).config().max_tokens_per_step, 16)
      << "0 means the chunk policy's";
  expect_error([] { sched16 s({.max_tokens_per_step = -1}); }, "max_tokens_per_step is -1");
  expect_error([] { sched16 s({.max_prefill_tokens_while_decoding = -2}); },
               "max_prefill_tokens_while_decoding is -2; allowed: >= 0");
  expect_error([] { sched16 s({.max_seq_len = 1}); }, "max_seq_len is 1; allowed: >= 2");
  sched16 s({.max_seq_len = 64});
  fake_memory small(32);
  expect_error([&] { s.schedule(small); }, "the KV pool holds 32 tokens, fewer than max_seq_len");
}

struct lying_memory {
  std::int64_t available = 0;
  std::int64_t hit = 0;
  std::int64_t capacity() const { return 100; }
  std::int64_t available_tokens() const { return available; }
  std::int64_t prefix_hit(sc::request const&) const { return hit; }
};

TEST(BadInput, MemoryReportsAreChecked) {
  sched16 s({.max_seq_len = 64});
  s.add(req(1, 4, 4));
  expect_error([&] { s.schedule(lying_memory{.available = -1}); },
               "memory reports -1 available tokens; allowed: 0..100");
  expect_error([&] { s.schedule(lying_memory{.available = 101}); }, "allowed: 0..100");
  expect_error([&] { s.schedule(lying_memory{.available = 100, .hit = -3}); },
               "prefix hit of -3 tokens for request 1");
}

TEST(BadInput, PlansCompleteOnceInOrderWithOneResultPerSamplingRow) {
  sched16 s({.max_seq_len = 64});
  fake_memory mem(100);
  s.add(req(1, 10, 4));
  s.add(req(2, 40, 4));
  sc::step_plan const plan = s.schedule(mem);  // 1: [0, 10) last; 2: [0, 6)
  expect_error([&] { s.complete(plan, {}); }, "no result for request 1");
  std::vector<sc::token_result> extra = {{1, 5, false}, {2, 6, false}};
  expect_error([&] { s.complete(plan, extra); }, "result for request 2, which has no sampling row");
  std::vector<sc::token_result> twice = {{1, 5, false}, {1, 6, false}};
  expect_error([&] { s.complete(plan, twice); }, "two results for request 1");
  sc::step_plan stale = plan;
  stale.step = 7;
  std::vector<sc::token_result> const good = {{1, 5, false}};
  expect_error([&] { s.complete(stale, good); }, "got the plan of step 7");
  s.complete(plan, good);  // the rejected calls changed nothing
  EXPECT_EQ(s.find(1)->generated, 1);
  EXPECT_EQ(s.find(2)->computed, 6);
  expect_error([&] { s.complete(plan, good); }, "the oldest step in flight is none");
}

}  // namespace
