// Scripted multi-step simulations against expected-state tables: each row says which requests
// prefill which ranges, which decode, which are paused, resumed or released, and how many slots
// the fake pool has available once the engine has carried the plan out.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "fake_memory.hpp"
#include "lightcore/sched/scheduler.hpp"

namespace {

namespace sc = lightcore::sched;
using sc::request_state;
using sc::testing::expected_step;
using sc::testing::fake_memory;

template <class Admission, class Order = sc::order::strict_fcfs>
using sched16 = sc::scheduler<Admission, Order, sc::chunk::fixed<16>>;

sc::request req(std::uint64_t id, std::int64_t prompt, std::int64_t max_new) {
  return {.id = id, .prompt_tokens = prompt, .max_new_tokens = max_new};
}

TEST(Scripted, SingleRequestPrefillDecodeFinish) {
  sched16<sc::admit::conservative> s({.max_seq_len = 64});
  fake_memory mem(100);
  s.add(req(1, 10, 3));
  std::map<std::uint64_t, std::int64_t> outputs;
  // Step 0 prefills the prompt and samples token 1; steps 1-2 decode tokens 2-3; the third token
  // reaches max_new_tokens, so step 3 releases the 10 + 2 computed slots.
  std::vector<expected_step> const table = {
      {.prefill = {{1, 0, 10, true}}, .decode = {}, .available_after = 90},
      {.prefill = {}, .decode = {1}, .available_after = 89},
      {.prefill = {}, .decode = {1}, .available_after = 88},
      {.prefill = {}, .decode = {}, .release = {1}, .available_after = 100},
  };
  sc::request const* r = s.find(1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->state, request_state::waiting);
  run_table(s, mem, {table[0]}, {}, outputs);
  EXPECT_EQ(r->state, request_state::decoding);
  EXPECT_EQ(r->computed, 10);
  EXPECT_EQ(r->generated, 1);
  run_table(s, mem, {table[1], table[2]}, {}, outputs);
  EXPECT_EQ(r->state, request_state::finished);
  EXPECT_EQ(r->generated, 3);
  EXPECT_EQ(r->computed, 12);
  run_table(s, mem, {table[3]}, {}, outputs);
  EXPECT_EQ(s.find(1), nullptr);
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(outputs[1], 3);
  EXPECT_EQ(s.stats().finished, 1u);
}

TEST(Scripted, LongPromptIsChunkedAcrossSteps) {
  sched16<sc::admit::conservative> s({.max_seq_len = 64});
  fake_memory mem(100);
  s.add(req(1, 40, 2));
  std::map<std::uint64_t, std::int64_t> outputs;
  run_table(s, mem,
            {
                {.prefill = {{1, 0, 16, false}}, .decode = {}, .available_after = 84},
                {.prefill = {{1, 16, 16, false}}, .decode = {}, .available_after = 68},
                {.prefill = {{1, 32, 8, true}}, .decode = {}, .available_after = 60},
                {.prefill = {}, .decode = {1}, .available_after = 59},
                {.prefill = {}, .decode = {}, .release = {1}, .available_after = 100},
            },
            {}, outputs);
  EXPECT_EQ(outputs[1], 2);  // only the last chunk and the decode sampled
}

TEST(Scripted, MixedBatchSplitsTheBudgetBetweenDecodeAndPrefill) {
  sched16<sc::admit::conservative> s({.max_seq_len = 64});
  fake_memory mem(100);
  s.add(req(1, 10, 5));
  std::map<std::uint64_t, std::int64_t> outputs;
  run_table(s, mem, {{.prefill = {{1, 0, 10, true}}, .decode = {}, .available_after = 90}}, {},
            outputs);
  s.add(req(2, 30, 2));
  // Request 1's decode row takes 1 token of the 16; request 2's prompt gets the other 15.
  std::vector<expected_step> const table = {
      {.prefill = {{2, 0, 15, false}}, .decode = {1}, .available_after = 74},
      {.prefill = {{2, 15, 15, true}}, .decode = {1}, .available_after = 58},
      {.prefill = {}, .decode = {1, 2}, .available_after = 56},
      {.prefill = {}, .decode = {1}, .release = {2}, .available_after = 86},
  };
  for (expected_step const& e : table) {
    sc::step_plan const plan = s.schedule(mem);
    EXPECT_LE(plan.forward_tokens(), 16);
    EXPECT_EQ(sc::testing::rows(plan), e.prefill);
    EXPECT_EQ(plan.decode, e.decode);
    EXPECT_EQ(plan.release, e.release);
    mem.execute(plan);
    EXPECT_EQ(mem.available_tokens(), e.available_after);
    s.complete(plan, sc::testing::sample(plan, {}, outputs));
  }
  EXPECT_EQ(outputs[1], 5);
  EXPECT_EQ(outputs[2], 2);
}

TEST(Scripted, PrefillCapWhileDecodingKeepsDecodeStepsShort) {
  sched16<sc::admit::conservative> s({.max_prefill_tokens_while_decoding = 4, .max_seq_len = 64});
  fake_memory mem(100);
  s.add(req(1, 10, 3));
  std::map<std::uint64_t, std::int64_t> outputs;
  run_table(s, mem, {{.prefill = {{1, 0, 10, true}}, .decode = {}, .available_after = 90}}, {},
            outputs);
  s.add(req(2, 20, 1));
  // While request 1 decodes, request 2 gets 4 prompt tokens a step; once 1 is done, the whole
  // budget.
  run_table(
      s, mem,
      {
          {.prefill = {{2, 0, 4, false}}, .decode = {1}, .available_after = 85},
          {.prefill = {{2, 4, 4, false}}, .decode = {1}, .available_after = 80},
          {.prefill = {{2, 8, 12, true}}, .decode = {}, .release = {1}, .available_after = 80},
          {.prefill = {}, .decode = {}, .release = {2}, .available_after = 100},
      },
      {}, outputs);
}

TEST(Scripted, ConservativeAdmissionWaitsForThePeakToFit) {
  // Capacity 64. A (30 + 20 new) alone peaks at 50. With B (10 + 30 new) the peak is
  // max(30 + 10, 2 * (20 - g) + 40 + g) = 80 - g for A's g generated tokens: B waits until
  // g >= 16, but A ends by EOS at its 3rd token first, and B is admitted once A is released.
  sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<64>> s(
      {.max_seq_len = 64});
  fake_memory mem(64);
  s.add(req(1, 30, 20));
  s.add(req(2, 10, 30));
  std::map<std::uint64_t, std::int64_t> outputs;
  run_table(
      s, mem,
      {
          {.prefill = {{1, 0, 30, true}}, .decode = {}, .available_after = 34},
          {.prefill = {}, .decode = {1}, .available_after = 33},
          {.prefill = {}, .decode = {1}, .available_after = 32},
          {.prefill = {{2, 0, 10, true}}, .decode = {}, .release = {1}, .available_after = 54},
      },
      {{1, 3}}, outputs);
  EXPECT_EQ(s.find(2)->state, request_state::decoding);
  EXPECT_EQ(s.stats().paused, 0u);
}

TEST(Scripted, AdmissionCountsEveryRequestAdmittedInTheSameStep) {
  // Capacity 256. A (39 + 23) and B (162 + 32) peak at max(32 + 162, 2 * 23 + 201) = 247; adding
  // C (49 + 42) gives max(42 + 49, 2 * 32 + 211, ...) = 275: C waits although each of A and B
  // alone would leave room for it.
  sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<512>> s(
      {.max_seq_len = 256});
  fake_memory mem(256);
  s.add(req(1, 39, 23));
  s.add(req(2, 162, 32));
  s.add(req(3, 49, 42));
  std::map<std::uint64_t, std::int64_t> outputs;
  run_table(
      s, mem,
      {{.prefill = {{1, 0, 39, true}, {2, 0, 162, true}}, .decode = {}, .available_after = 55}}, {},
      outputs);
  EXPECT_EQ(s.find(3)->state, request_state::waiting);
}

// A (8 + 16 new, EOS at its 6th token) and B (8 + 16 new) on 24 slots. Conservatively they peak
// at max(16 + 8, 2 * 8 + 16) = 32 > 24, so B would wait; the optimistic guess of 1 output token
// admits both. By step 5 the pool is full: B, the newest, is paused (its 12 slots go to the
// prefix cache, one of them evicted by A's decode). A ends; B resumes with its 11 cached tokens
// pinned and recomputes [11, 13) of prompt + 5 generated tokens, then decodes to the end.
TEST(Scripted, OptimisticAdmitsMorePausesTheNewestAndResumesIt) {
  using opt = sc::scheduler<sc::admit::optimistic, sc::order::strict_fcfs, sc::chunk::fixed<32>>;
  opt s({.max_seq_len = 24}, sc::admit::optimistic(1));
  fake_memory mem(24);
  s.add(req(1, 8, 16));
  s.add(req(2, 8, 16));
  std::map<std::uint64_t, std::int64_t> outputs;
  std::map<std::uint64_t, std::int64_t> const eos = {{1, 6}};
  run_table(s, mem,
            {
                {.prefill = {{1, 0, 8, true}, {2, 0, 8, true}}, .decode = {}, .available_after = 8},
                {.prefill = {}, .decode = {1, 2}, .available_after = 6},
                {.prefill = {}, .decode = {1, 2}, .available_after = 4},
                {.prefill = {}, .decode = {1, 2}, .available_after = 2},
                {.prefill = {}, .decode = {1, 2}, .available_after = 0},
                {.prefill = {}, .decode = {1}, .paused = {2}, .available_after = 11},
            },
            eos, outputs);
  sc::request const* b = s.find(2);
  EXPECT_EQ(b->state, request_state::paused);
  EXPECT_EQ(b->generated, 5);
  EXPECT_EQ(b->computed, 0);
  EXPECT_EQ(s.queued().front(), 2u);
  EXPECT_EQ(mem.prefix_hit(*b), 11);
  EXPECT_EQ(s.find(1)->state, request_state::finished);
  EXPECT_EQ(s.admission().output_estimate(), 6);
  run_table(s, mem,
            {
                {.prefill = {{2, 11, 2, true}},
                 .decode = {},
                 .resumed = {2},
                 .release = {1},
                 .available_after = 11},
                {.prefill = {}, .decode = {2}, .available_after = 10},
            },
            eos, outputs);
  EXPECT_EQ(b->state, request_state::decoding);
  EXPECT_EQ(b->cached, 11);
  EXPECT_EQ(b->computed, 14);
  EXPECT_EQ(b->generated, 7);
  // B runs to max_new_tokens: 16 outputs, 8 + 15 slots at the end.
  while (!s.idle()) {
    sc::step_plan const plan = s.schedule(mem);
    EXPECT_TRUE(plan.paused.empty());
    mem.execute(plan);
    s.complete(plan, sc::testing::sample(plan, eos, outputs));
    ASSERT_LT(s.step(), 40u);
  }
  EXPECT_EQ(outputs[1], 6);
  EXPECT_EQ(outputs[2], 16);
  EXPECT_EQ(s.stats().paused, 1u);
  EXPECT_EQ(s.stats().resumed, 1u);
  EXPECT_EQ(mem.used(), 0);

  // The same pair under conservative admission runs one at a time.
  sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<32>> c(
      {.max_seq_len = 24});
  fake_memory mem2(24);
  c.add(req(1, 8, 16));
  c.add(req(2, 8, 16));
  sc::step_plan const first = c.schedule(mem2);
  EXPECT_EQ(sc::testing::rows(first), (std::vector<sc::testing::chunk_row>{{1, 0, 8, true}}));
}

TEST(Scripted, StrictFcfsWaitsBehindTheHeadSkipHeadLetsSmallOnesGo) {
  // Capacity 32. A (10 + 10) peaks at 20; B (20 + 12) with A at max(32, 2*10 + 30) = 50; C (4 + 4)
  // with A at max(20, 2*4 + 14) = 22.
  auto run = [](auto s) {
    fake_memory mem(32);
    s.add(req(1, 10, 10));
    s.add(req(2, 20, 12));
    s.add(req(3, 4, 4));
    sc::step_plan const plan = s.schedule(mem);
    std::vector<sc::testing::chunk_row> first = sc::testing::rows(plan);
    mem.execute(plan);
    std::map<std::uint64_t, std::int64_t> outputs;
    s.complete(plan, sc::testing::sample(plan, {}, outputs));
    while (!s.idle()) {
      sc::step_plan const p = s.schedule(mem);
      mem.execute(p);
      s.complete(p, sc::testing::sample(p, {}, outputs));
      EXPECT_LT(s.step(), 100u);
      if (s.step() >= 100u) break;
    }
    EXPECT_EQ(outputs[1], 10);
    EXPECT_EQ(outputs[2], 12);
    EXPECT_EQ(outputs[3], 4);
    return first;
  };
  using row = sc::testing::chunk_row;
  EXPECT_EQ(
      run(sc::scheduler<sc::admit::conservative, sc::order::strict_fcfs, sc::chunk::fixed<64>>(
          {.max_seq_len = 32})),
      (std::vector<row>{{1, 0, 10, true}}));
  EXPECT_EQ(
      run(sc::scheduler<sc::admit::conservative, sc::order::fcfs_skip_head, sc::chunk::fixed<64>>(
          {.max_seq_len = 32})),
      (std::vector<row>{{1, 0, 10, true}, {3, 0, 4, true}}));
}

TEST(Scripted, PrefixHitsShortenThePrefill) {
  sched16<sc::admit::conservative> s({.max_seq_len = 64});
  fake_memory mem(100);
  mem.seed_cache(1, 6);   // a shared system prompt
  mem.seed_cache(2, 10);  // the whole prompt: the last token is still computed for its logits
  mem.seed_cache(3, 4);
  s.add(req(1, 10, 1));
  s.add(req(2, 10, 1));
  s.add(req(3, 40, 1));
  std::map<std::uint64_t, std::int64_t> outputs;
  // 100 slots, 20 of them evictable cache. Step 0 pins 6 + 9 + 4 and computes 4 + 1 + 11 (the
  // budget of 16 is spent); request 2's tenth cached token stays evictable.
  run_table(
      s, mem,
      {
          {.prefill = {{1, 6, 4, true}, {2, 9, 1, true}, {3, 4, 11, false}},
           .decode = {},
           .available_after = 65},
          {.prefill = {{3, 15, 16, false}}, .decode = {}, .release = {1, 2}, .available_after = 69},
          {.prefill = {{3, 31, 9, true}}, .decode = {}, .available_after = 60},
          {.prefill = {}, .decode = {}, .release = {3}, .available_after = 100},
      },
      {}, outputs);
  EXPECT_EQ(s.stats().admitted_tokens, 60);
  EXPECT_EQ(s.stats().prefix_hit_tokens, 19);
  EXPECT_DOUBLE_EQ(s.stats().prefix_hit_rate(), 19.0 / 60.0);
}

}  // namespace
