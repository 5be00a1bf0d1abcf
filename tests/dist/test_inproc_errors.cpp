// inproc_communicator's failure paths: ranks that disagree (sizes, dtypes, collectives, counts),
// a rank that throws, a rank that skips a collective, a rank that never comes. Each must give an
// error on every rank, saying what was wrong, and never a hang (test::within guards each case).
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist_test_util.hpp"
#include "lightcore/dist/inproc_communicator.hpp"

namespace lightcore {
namespace {

using dist::inproc_communicator;
using dist::run_ranks;

#define EXPECT_CONTAINS(text, words)                          \
  EXPECT_NE(std::string(text).find(words), std::string::npos) \
      << "\"" << (text) << "\" does not say \"" << (words) << "\""

// Runs f on `world` ranks; returns each rank's error message ("" where f returned) and the
// message run_ranks rethrew.
struct outcome {
  std::vector<std::string> per_rank;
  std::string rethrown;
};

template <class F>
outcome run_expecting_errors(int world, F f, dist::inproc_options options = {}) {
  outcome o;
  o.per_rank.assign(std::size_t(world), "");
  std::mutex m;
  test::within(test::hang_limit, [&] {
    try {
      run_ranks(
          world,
          [&](inproc_communicator& c) {
            try {
              f(c);
            } catch (error const& e) {
              std::lock_guard lock(m);
              o.per_rank[std::size_t(c.rank())] = e.message();
              throw;
            }
          },
          options);
    } catch (error const& e) {
      o.rethrown = e.message();
    }
  });
  return o;
}

void expect_every_rank_fails(outcome const& o, std::string const& words) {
  for (std::size_t r = 0; r < o.per_rank.size(); ++r)
    EXPECT_CONTAINS(o.per_rank[r], words) << "rank " << r;
  EXPECT_CONTAINS(o.rethrown, words);
}

class InprocErrorTest : public ::testing::TestWithParam<int> {};

TEST_P(InprocErrorTest, MismatchedSizesFailOnEveryRank) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs two ranks to disagree";
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    std::int64_t const n = c.rank() == world - 1 ? 9 : 8;  // the last rank passes one more
    std::vector<float> x(std::size_t(n), 1.0f);
    c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {n}), {});
  });
  expect_every_rank_fails(o, "ranks disagree on the input");
  EXPECT_CONTAINS(o.rethrown, "[8]");
  EXPECT_CONTAINS(o.rethrown, "[9]");
}

TEST_P(InprocErrorTest, MismatchedDtypesFailOnEveryRank) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs two ranks to disagree";
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    std::vector<float> x(8, 1.0f);  // room for either dtype
    c.all_reduce_sum(tensor_view(x.data(), c.rank() == 1 ? dtype::bf16 : dtype::f32, {4}), {});
  });
  expect_every_rank_fails(o, "ranks disagree on the input");
  EXPECT_CONTAINS(o.rethrown, "bf16");
}

TEST_P(InprocErrorTest, DifferentCollectivesFailOnEveryRank) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs two ranks to disagree";
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    std::vector<float> x(4, 1.0f);
    if (c.rank() == world - 1)
      c.barrier({});
    else
      c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {4}), {});
  });
  expect_every_rank_fails(o, "ranks disagree on the collective");
}

TEST_P(InprocErrorTest, AllToAllCountsThatDisagreeFailOnEveryRank) {
  int const world = GetParam();
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    std::vector<std::int64_t> send(std::size_t(world), 1), recv(std::size_t(world), 1);
    if (c.rank() == 0) recv[std::size_t(world - 1)] = 0;  // rank W-1 still sends rank 0 a row
    std::vector<float> in(std::size_t(world) * 2), out(std::size_t(world) * 2);
    c.all_to_all_v(tensor_view(in.data(), dtype::f32, {world, 2}), send,
                   tensor_view(out.data(), dtype::f32, {world, 2}), recv, {});
  });
  expect_every_rank_fails(o, "all_to_all_v: rank " + std::to_string(world - 1) + " sends 1 rows");
}

// An argument error seen by one rank alone (the others' calls are valid) still stops them all.
TEST_P(InprocErrorTest, ALocalArgumentErrorStopsEveryRank) {
  int const world = GetParam();
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    std::vector<std::int32_t> x(4, 1);
    c.all_reduce_sum(tensor_view(x.data(), c.rank() == 0 ? dtype::i32 : dtype::f32, {4}), {});
  });
  expect_every_rank_fails(o, "dtype i32 cannot be summed");
  EXPECT_CONTAINS(o.per_rank.back(), world > 1 ? "rank 0 failed" : "cannot be summed");
}

// A rank that fails in its own code releases the others; run_ranks rethrows that rank's error,
// not the others' "rank N failed" echoes.
TEST_P(InprocErrorTest, AThrowingRankReleasesTheOthers) {
  int const world = GetParam();
  int const bad = world / 2;
  outcome o;
  test::within(test::hang_limit, [&] {
    try {
      run_ranks(world, [&](inproc_communicator& c) {
        std::vector<float> x(4, 1.0f);
        c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {4}), {});
        if (c.rank() == bad) LC_THROW("rank " << bad << " ran out of luck");
        c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {4}), {});
      });
    } catch (error const& e) {
      o.rethrown = e.message();
    }
  });
  EXPECT_EQ(o.rethrown, "rank " + std::to_string(bad) + " ran out of luck");
}

TEST_P(InprocErrorTest, ARankThatSkipsACollectiveFailsTheOthers) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs a second rank to skip";
  auto const o = run_expecting_errors(world, [&](inproc_communicator& c) {
    if (c.rank() == 1) return;  // finishes without the collective the others call
    std::vector<float> x(4, 1.0f);
    c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {4}), {});
  });
  for (std::size_t r = 0; r < o.per_rank.size(); ++r) {
    if (r != 1) {
      EXPECT_CONTAINS(o.per_rank[r], "rank 1 failed: it finished") << "rank " << r;
    }
  }
  EXPECT_EQ(o.per_rank[1], "");
}

// A rank that arrives too late: the others give up after the timeout, naming the missing rank.
TEST_P(InprocErrorTest, ARankThatNeverArrivesTimesOut) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs a second rank to be late";
  dist::inproc_options options;
  options.timeout = std::chrono::milliseconds(50);
  auto const o = run_expecting_errors(
      world,
      [&](inproc_communicator& c) {
        if (c.rank() == world - 1) std::this_thread::sleep_for(std::chrono::milliseconds(1000));
        c.barrier({});
      },
      options);
  // Rank W-1 is the last one missing (slow thread starts may add others before it).
  expect_every_rank_fails(o, "waited 50 ms in barrier for rank(s)");
  expect_every_rank_fails(o, " " + std::to_string(world - 1) + "; every rank must call");
}

// Once stopped, a group refuses every later collective instead of running half of them.
TEST_P(InprocErrorTest, APoisonedGroupRefusesLaterCollectives) {
  int const world = GetParam();
  if (world == 1) GTEST_SKIP() << "needs two ranks to disagree";
  std::vector<int> refused(std::size_t(world), 0);
  test::within(test::hang_limit, [&] {
    EXPECT_THROW(run_ranks(world,
                           [&](inproc_communicator& c) {
                             std::vector<float> x(4, 1.0f);
                             try {
                               c.all_reduce_sum(
                                   tensor_view(x.data(), dtype::f32, {c.rank() == 0 ? 3 : 4}), {});
                             } catch (error const&) {
                             }
                             try {
                               c.barrier({});
                             } catch (error const&) {
                               refused[std::size_t(c.rank())] = 1;
                               throw;
                             }
                           }),
                 error);
  });
  for (int r = 0; r < world; ++r) EXPECT_EQ(refused[std::size_t(r)], 1) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(Worlds, InprocErrorTest, ::testing::Values(1, 2, 3, 4, 8),
                         [](auto const& p) { return "world" + std::to_string(p.param); });

// Arguments every collective refuses on its own, with the words that say what is allowed.
TEST(InprocArguments, BadArgumentsNameWhatIsAllowed) {
  auto const fails_with = [](std::string const& words, auto&& call) {
    auto const o = run_expecting_errors(2, [&](inproc_communicator& c) { call(c); });
    expect_every_rank_fails(o, words);
  };
  std::vector<float> a(64), b(64);
  fails_with("root 2 is not a rank; allowed 0..1", [&](inproc_communicator& c) {
    c.broadcast(tensor_view(a.data(), dtype::f32, {4}), 2, {});
  });
  fails_with("needs 2 x 3 = 6 rows", [&](inproc_communicator& c) {
    c.all_gather(tensor_view(a.data(), dtype::f32, {3, 2}),
                 tensor_view(b.data(), dtype::f32, {5, 2}), {});
  });
  fails_with("differ in dimension 1", [&](inproc_communicator& c) {
    c.all_gather(tensor_view(a.data(), dtype::f32, {3, 2}),
                 tensor_view(b.data(), dtype::f32, {6, 3}), {});
  });
  fails_with("input is f32 but output is bf16", [&](inproc_communicator& c) {
    c.all_gather(tensor_view(a.data(), dtype::f32, {3}), tensor_view(b.data(), dtype::bf16, {6}),
                 {});
  });
  fails_with("needs 2 x 4 = 8 rows", [&](inproc_communicator& c) {
    c.reduce_scatter_sum(tensor_view(a.data(), dtype::f32, {7}),
                         tensor_view(b.data(), dtype::f32, {4}), {});
  });
  fails_with("must be contiguous", [&](inproc_communicator& c) {
    c.all_reduce_sum(tensor_view(a.data(), dtype::f32, {4, 4}).transpose(0, 1), {});
  });
  fails_with("but the communicator's device is cpu", [&](inproc_communicator& c) {
    c.all_reduce_sum(tensor_view(a.data(), dtype::f32, {4}, {1}, device::cuda(0)), {});
  });
  fails_with("send_counts has 3 entries; need one per rank (2)", [&](inproc_communicator& c) {
    std::vector<std::int64_t> const bad{1, 1, 1}, good{1, 1};
    c.all_to_all_v(tensor_view(a.data(), dtype::f32, {4, 2}), bad,
                   tensor_view(b.data(), dtype::f32, {4, 2}), good, {});
  });
  fails_with("recv_counts add up to 5 rows but the buffer has 4", [&](inproc_communicator& c) {
    std::vector<std::int64_t> const send{1, 1}, recv{2, 3};
    c.all_to_all_v(tensor_view(a.data(), dtype::f32, {4, 2}), send,
                   tensor_view(b.data(), dtype::f32, {4, 2}), recv, {});
  });
  fails_with("send_counts[1] = -1 is negative", [&](inproc_communicator& c) {
    std::vector<std::int64_t> const send{1, -1}, recv{1, 1};
    c.all_to_all_v(tensor_view(a.data(), dtype::f32, {4, 2}), send,
                   tensor_view(b.data(), dtype::f32, {4, 2}), recv, {});
  });
}

TEST(InprocArguments, GroupAndRankAreChecked) {
  EXPECT_THROW(dist::inproc_group(0), error);
  dist::inproc_group group(2);
  EXPECT_THROW(inproc_communicator(group, 2), error);
  EXPECT_THROW(inproc_communicator(group, -1), error);
}

}  // namespace
}  // namespace lightcore
