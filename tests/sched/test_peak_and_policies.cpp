// The peak formula on hand-computed cases, the admission estimates, and the request lifecycle
// predicates.
#include <gtest/gtest.h>

#include <vector>

#include "lightcore/sched/peak.hpp"
#include "lightcore/sched/policies.hpp"
#include "lightcore/sched/request.hpp"

namespace {

namespace sc = lightcore::sched;
using sc::token_need;

std::int64_t peak(std::vector<token_need> needs) { return sc::peak_tokens(needs); }

TEST(Peak, HandComputedCases) {
  EXPECT_EQ(peak({}), 0);
  EXPECT_EQ(peak({{10, 5}}), 15);
  // Sorted by remaining: (5,8) (10,5) (20,3) -> max(8*1+5, 5*2+15, 3*3+35) = max(13, 25, 44).
  EXPECT_EQ(peak({{10, 5}, {20, 3}, {5, 8}}), 44);
  // A long-running request dominates: (1,100) then (1,1) -> max(101, 1*2+2).
  EXPECT_EQ(peak({{1, 1}, {1, 100}}), 101);
  // Equal remaining: everything is alive at the end -> 2*2 + 10.
  EXPECT_EQ(peak({{4, 2}, {6, 2}}), 14);
  // The middle term wins: (0,10) (50,6) (100,1) -> max(10, 12+50, 3+150) = 153; with the last
  // one gone: max(10, 62) = 62.
  EXPECT_EQ(peak({{100, 1}, {0, 10}, {50, 6}}), 153);
  EXPECT_EQ(peak({{0, 10}, {50, 6}}), 62);
  // The worked case of the admission test: A(30 held, 20 left) + B(10, 30) = max(40, 80).
  EXPECT_EQ(peak({{30, 20}, {10, 30}}), 80);
}

TEST(Peak, NeverBelowTheTokensHeldNow) {
  std::vector<token_need> needs;
  std::int64_t held = 0;
  for (int i = 0; i < 50; ++i) {
    needs.push_back({(i * 37) % 101, (i * 53) % 17});
    held += needs.back().current;
    std::vector<token_need> copy = needs;
    EXPECT_GE(sc::peak_tokens(copy), held);
  }
}

TEST(Admission, ConservativeExpectsEveryTokenUpToTheLimit) {
  sc::admit::conservative a;
  sc::request r{.id = 1, .prompt_tokens = 10, .max_new_tokens = 20};
  EXPECT_EQ(a.remaining(r), 20);
  r.generated = 15;
  EXPECT_EQ(a.remaining(r), 5);
  a.record_finished(r);  // says nothing to the conservative mode
  EXPECT_EQ(a.remaining(r), 5);
}

TEST(Admission, OptimisticUsesTheMeanOutputClamped) {
  sc::admit::optimistic a(8);
  EXPECT_EQ(a.output_estimate(), 8);
  sc::request r{.id = 1, .prompt_tokens = 10, .max_new_tokens = 20};
  EXPECT_EQ(a.remaining(r), 8);
  r.generated = 3;
  EXPECT_EQ(a.remaining(r), 5);
  sc::request done{.id = 2, .prompt_tokens = 1, .max_new_tokens = 9, .generated = 3};
  a.record_finished(done);
  done.generated = 6;
  a.record_finished(done);
  EXPECT_EQ(a.output_estimate(), 5);  // ceil((3 + 6) / 2)
  r.generated = 2;
  EXPECT_EQ(a.remaining(r), 3);
  r.generated = 7;  // beyond the estimate: still at least one token to come
  EXPECT_EQ(a.remaining(r), 1);
  sc::request short_one{.id = 3, .prompt_tokens = 1, .max_new_tokens = 4};
  EXPECT_EQ(a.remaining(short_one), 4);  // never more than max_new_tokens - generated
}

TEST(Admission, RejectsANonPositiveInitialGuess) {
  try {
    sc::admit::optimistic a(0);
    FAIL() << "accepted initial_output_tokens = 0";
  } catch (lightcore::error const& e) {
    EXPECT_NE(e.message().find("initial_output_tokens is 0; allowed: >= 1"), std::string::npos)
        << e.what();
  }
}

TEST(Policies, SatisfyTheirConcepts) {
  static_assert(sc::admission_policy<sc::admit::conservative>);
  static_assert(sc::admission_policy<sc::admit::optimistic>);
  static_assert(!sc::admission_policy<sc::order::strict_fcfs>);
  static_assert(sc::order_policy<sc::order::fcfs_skip_head>);
  static_assert(!sc::order_policy<sc::chunk::fixed<16>>);
  static_assert(sc::chunk_policy<sc::chunk::fixed<16>>);
  static_assert(!sc::order::strict_fcfs::skip_head && sc::order::fcfs_skip_head::skip_head);
  static_assert(sc::chunk::fixed<4096>::tokens_per_step == 4096);
}

TEST(Request, LifecycleIsOrdered) {
  using s = sc::request_state;
  static_assert(s::waiting < s::prefilling && s::prefilling < s::decoding &&
                s::decoding < s::finished);
  static_assert(sc::is_queued(s::waiting) && sc::is_queued(s::paused) &&
                !sc::is_queued(s::prefilling));
  static_assert(sc::is_running(s::prefilling) && sc::is_running(s::decoding) &&
                !sc::is_running(s::paused) && !sc::is_running(s::finished));
  static_assert(sc::is_done(s::finished) && sc::is_done(s::aborted) && !sc::is_done(s::decoding));
  EXPECT_EQ(sc::to_string(s::paused), "paused");
  sc::request r{.id = 1, .prompt_tokens = 10, .max_new_tokens = 5, .generated = 2, .computed = 3};
  EXPECT_EQ(r.total_len(), 12);
  EXPECT_EQ(r.to_compute(), 9);
  EXPECT_EQ(r.max_remaining(), 3);
}

}  // namespace
