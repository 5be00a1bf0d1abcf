// inproc_communicator: every collective at world sizes 1, 2, 3, 4 and 8 against its sequential
// definition, on fresh random inputs; every rank must hold the same bits. Sizes are odd so that
// no operation can get away with assuming even splits or aligned tails.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/seed.hpp"
#include "dist_test_util.hpp"
#include "lightcore/dist/inproc_communicator.hpp"

namespace lightcore {
namespace {

using dist::inproc_communicator;
using dist::run_ranks;

static_assert(dist::Communicator<inproc_communicator>);

class InprocTest : public ::testing::TestWithParam<int> {
 protected:
  int world() const { return GetParam(); }
  std::size_t w() const { return std::size_t(GetParam()); }
};

template <class T>
std::vector<std::vector<T>> per_rank(int world, std::int64_t n, std::mt19937_64& rng) {
  std::vector<std::vector<T>> v;
  for (int r = 0; r < world; ++r) {
    if constexpr (std::is_same_v<T, bf16>)
      v.push_back(test::random_bf16(n, rng));
    else
      v.push_back(test::random_f32(n, rng));
  }
  return v;
}

template <class T>
void check_all_reduce(int world, std::mt19937_64& rng) {
  std::int64_t const rows = 37, cols = 29;  // 1073 elements: odd, prime factors
  auto inputs = per_rank<T>(world, rows * cols, rng);
  auto const want = test::rank_order_sum(inputs, 0, inputs[0].size());
  auto bufs = inputs;
  test::within(test::hang_limit, [&] {
    run_ranks(world, [&](inproc_communicator& c) {
      auto& b = bufs[std::size_t(c.rank())];
      c.all_reduce_sum(tensor_view(b.data(), dtype_v<T>, {rows, cols}), {});
    });
  });
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(test::same_bits(bufs[std::size_t(r)], want))
        << "rank " << r << " differs from the rank-order fp32 sum";
  if (world > 1) {
    EXPECT_FALSE(test::same_bits(bufs[0], inputs[0])) << "nothing was summed";
  }
}

TEST_P(InprocTest, AllReduceSumBf16IsTheRankOrderFp32Sum) {
  auto rng = test::test_rng();
  check_all_reduce<bf16>(world(), rng);
}

TEST_P(InprocTest, AllReduceSumF32IsTheRankOrderSum) {
  auto rng = test::test_rng();
  check_all_reduce<float>(world(), rng);
}

TEST_P(InprocTest, AllGatherConcatenatesInRankOrder) {
  auto rng = test::test_rng();
  std::int64_t const m = 5, cols = 7;
  auto const inputs = per_rank<bf16>(world(), m * cols, rng);
  std::vector<std::vector<bf16>> outs(w(), std::vector<bf16>(w() * m * cols, bf16(-777.0f)));
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      auto in = inputs[std::size_t(c.rank())];
      auto& out = outs[std::size_t(c.rank())];
      c.all_gather(tensor_view(in.data(), dtype::bf16, {m, cols}),
                   tensor_view(out.data(), dtype::bf16, {world() * m, cols}), {});
    });
  });
  std::vector<bf16> want;
  for (auto const& in : inputs) want.insert(want.end(), in.begin(), in.end());
  for (int r = 0; r < world(); ++r) EXPECT_TRUE(test::same_bits(outs[std::size_t(r)], want));
}

// The common in-place form: each rank's input is its own slice of the output.
TEST_P(InprocTest, AllGatherInPlace) {
  auto rng = test::test_rng();
  std::int64_t const m = 3, cols = 11;
  auto const inputs = per_rank<float>(world(), m * cols, rng);
  std::vector<std::vector<float>> outs(w(), std::vector<float>(w() * m * cols, -1.0f));
  for (std::size_t r = 0; r < w(); ++r)
    std::copy(inputs[r].begin(), inputs[r].end(), outs[r].begin() + std::ptrdiff_t(r * m * cols));
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      tensor_view const out(outs[std::size_t(c.rank())].data(), dtype::f32, {world() * m, cols});
      c.all_gather(out.slice(0, c.rank() * m, (c.rank() + 1) * m), out, {});
    });
  });
  std::vector<float> want;
  for (auto const& in : inputs) want.insert(want.end(), in.begin(), in.end());
  for (int r = 0; r < world(); ++r) EXPECT_TRUE(test::same_bits(outs[std::size_t(r)], want));
}

template <class T>
void check_reduce_scatter(int world, std::mt19937_64& rng) {
  std::int64_t const m = 13, cols = 9;
  std::size_t const part = std::size_t(m * cols);
  auto const inputs = per_rank<T>(world, world * m * cols, rng);
  std::vector<std::vector<T>> outs(std::size_t(world), std::vector<T>(part, T(-555.0f)));
  test::within(test::hang_limit, [&] {
    run_ranks(world, [&](inproc_communicator& c) {
      auto in = inputs[std::size_t(c.rank())];
      c.reduce_scatter_sum(tensor_view(in.data(), dtype_v<T>, {world * m, cols}),
                           tensor_view(outs[std::size_t(c.rank())].data(), dtype_v<T>, {m, cols}),
                           {});
    });
  });
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(test::same_bits(outs[std::size_t(r)],
                                test::rank_order_sum(inputs, std::size_t(r) * part, part)))
        << "rank " << r;
}

TEST_P(InprocTest, ReduceScatterSumBf16) {
  auto rng = test::test_rng();
  check_reduce_scatter<bf16>(world(), rng);
}

TEST_P(InprocTest, ReduceScatterSumF32) {
  auto rng = test::test_rng();
  check_reduce_scatter<float>(world(), rng);
}

// Rows carry (source, destination, index), so a row delivered to the wrong place is named.
TEST_P(InprocTest, AllToAllVDeliversEveryRowOnceInRankOrder) {
  auto rng = test::test_rng();
  std::uniform_int_distribution<std::int64_t> count(0, 4);   // zero counts included
  std::int64_t const cols = 3, spare_in = 2, spare_out = 3;  // rows past the counts: untouched
  std::vector<std::vector<std::int64_t>> sends(w(), std::vector<std::int64_t>(w()));
  for (auto& row : sends)
    for (auto& n : row) n = count(rng);
  std::vector<std::vector<std::int64_t>> recvs(w(), std::vector<std::int64_t>(w()));
  for (std::size_t s = 0; s < w(); ++s)
    for (std::size_t d = 0; d < w(); ++d) recvs[d][s] = sends[s][d];

  auto const row_value = [](std::size_t src, std::size_t dst, std::int64_t i, std::int64_t col) {
    return std::int32_t(src * 100000 + dst * 1000 + std::size_t(i) * 10 + std::size_t(col));
  };
  constexpr std::int32_t poison = -1;
  std::vector<std::vector<std::int32_t>> ins(w()), outs(w());
  std::vector<std::int64_t> in_rows(w()), out_rows(w());
  for (std::size_t r = 0; r < w(); ++r) {
    for (std::size_t d = 0; d < w(); ++d)
      for (std::int64_t i = 0; i < sends[r][d]; ++i)
        for (std::int64_t col = 0; col < cols; ++col) ins[r].push_back(row_value(r, d, i, col));
    ins[r].resize(ins[r].size() + std::size_t(spare_in * cols), poison);
    in_rows[r] = std::int64_t(ins[r].size()) / cols;
    std::int64_t received = 0;
    for (auto n : recvs[r]) received += n;
    out_rows[r] = received + spare_out;
    outs[r].assign(std::size_t(out_rows[r] * cols), poison);
  }
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      std::size_t const r = std::size_t(c.rank());
      c.all_to_all_v(tensor_view(ins[r].data(), dtype::i32, {in_rows[r], cols}), sends[r],
                     tensor_view(outs[r].data(), dtype::i32, {out_rows[r], cols}), recvs[r], {});
    });
  });
  for (std::size_t r = 0; r < w(); ++r) {
    std::vector<std::int32_t> want;
    for (std::size_t s = 0; s < w(); ++s)
      for (std::int64_t i = 0; i < recvs[r][s]; ++i)
        for (std::int64_t col = 0; col < cols; ++col) want.push_back(row_value(s, r, i, col));
    want.resize(outs[r].size(), poison);
    EXPECT_EQ(outs[r], want) << "rank " << r;
  }
}

TEST_P(InprocTest, BroadcastFromEveryRoot) {
  auto rng = test::test_rng();
  std::int64_t const n = 1001;  // bytes of any dtype: u8, odd
  std::uniform_int_distribution<int> byte(0, 255);
  for (int root = 0; root < world(); ++root) {
    std::vector<std::vector<std::uint8_t>> bufs(w(), std::vector<std::uint8_t>(std::size_t(n)));
    for (auto& b : bufs)
      for (auto& x : b) x = std::uint8_t(byte(rng));
    auto const want = bufs[std::size_t(root)];
    test::within(test::hang_limit, [&] {
      run_ranks(world(), [&](inproc_communicator& c) {
        c.broadcast(tensor_view(bufs[std::size_t(c.rank())].data(), dtype::u8, {n}), root, {});
      });
    });
    for (int r = 0; r < world(); ++r)
      EXPECT_EQ(bufs[std::size_t(r)], want) << "root " << root << ", rank " << r;
  }
}

// No rank leaves the barrier before every rank has reached it.
TEST_P(InprocTest, BarrierOrdersEveryRankBeforeAnyLeaves) {
  std::atomic<int> arrived{0};
  std::vector<int> seen(w(), -1);
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      // Later ranks arrive later, so a barrier that let rank 0 through early would be seen.
      std::this_thread::sleep_for(std::chrono::milliseconds(2 * c.rank()));
      arrived.fetch_add(1);
      c.barrier({});
      seen[std::size_t(c.rank())] = arrived.load();
    });
  });
  for (int r = 0; r < world(); ++r) EXPECT_EQ(seen[std::size_t(r)], world()) << "rank " << r;
}

// A tensor-parallel step runs thousands of collectives: repeated use must neither drift nor
// grow. Integer-valued inputs keep every sum exact, so each round is checked exactly.
TEST_P(InprocTest, ThousandAllReducesStayExact) {
  constexpr int rounds = 1000;
  std::int64_t const n = 67;
  std::vector<int> failures(w(), 0);
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      std::vector<float> x(static_cast<std::size_t>(n));
      for (int round = 0; round < rounds; ++round) {
        for (std::int64_t i = 0; i < n; ++i) x[std::size_t(i)] = float(c.rank() + round + i);
        c.all_reduce_sum(tensor_view(x.data(), dtype::f32, {n}), {});
        // sum over r of (r + round + i) = W (W - 1) / 2 + W (round + i)
        for (std::int64_t i = 0; i < n; ++i) {
          float const want = float(world() * (world() - 1) / 2 + world() * (round + int(i)));
          if (x[std::size_t(i)] != want) ++failures[std::size_t(c.rank())];
        }
      }
    });
  });
  for (int r = 0; r < world(); ++r) EXPECT_EQ(failures[std::size_t(r)], 0) << "rank " << r;
}

TEST_P(InprocTest, EmptyBuffersAreAllowed) {
  test::within(test::hang_limit, [&] {
    run_ranks(world(), [&](inproc_communicator& c) {
      c.all_reduce_sum(tensor_view(nullptr, dtype::bf16, {0, 4}), {});
      c.all_gather(tensor_view(nullptr, dtype::f32, {0}), tensor_view(nullptr, dtype::f32, {0}),
                   {});
      std::vector<std::int64_t> const zeros(std::size_t(c.world_size()), 0);
      c.all_to_all_v(tensor_view(nullptr, dtype::u8, {0, 2}), zeros,
                     tensor_view(nullptr, dtype::u8, {0, 2}), zeros, {});
    });
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, InprocTest, ::testing::Values(1, 2, 3, 4, 8),
                         [](auto const& p) { return "world" + std::to_string(p.param); });

}  // namespace
}  // namespace lightcore
