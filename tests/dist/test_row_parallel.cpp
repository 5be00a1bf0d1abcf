// A row-parallel linear layer, the pattern of tensor parallelism after attention's o_proj and an
// MLP's down_proj: rank r holds columns [r K/W, (r+1) K/W) of the activation and of the weight
// W[N, K], computes its partial product with kernels::gemm on the CPU, and an all-reduce sums the
// partials. The result must equal the unsharded product within bf16 rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/seed.hpp"
#include "dist_test_util.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/dist/inproc_communicator.hpp"

namespace lightcore {
namespace {

using dist::inproc_communicator;

class RowParallelTest : public ::testing::TestWithParam<int> {};

// y = x . w^T with x [M, K], w [N, K] sharded along K; bf16 or f32 partials.
void check_row_parallel(int world, dtype out_type, std::mt19937_64& rng) {
  std::int64_t const m = 7, n = 45, k = 384;  // K/W whole at W = 1, 2, 3, 4, 8; odd M and N
  ASSERT_EQ(k % world, 0);
  std::int64_t const shard = k / world;
  auto x = test::random_bf16(m * k, rng);
  auto w = test::random_bf16(n * k, rng);
  tensor_view const vx(x.data(), dtype::bf16, {m, k});
  tensor_view const vw(w.data(), dtype::bf16, {n, k});

  backend::cpu cpu;
  kernels::gemm_context<backend::cpu> ctx(cpu);
  std::vector<float> want(std::size_t(m * n));
  kernels::gemm(cpu, ctx, vx, vw, tensor_view(want.data(), dtype::f32, {m, n}), {},
                cpu.make_stream());

  // Each rank's partial kept in f32 too, for the error bound below.
  std::vector<std::vector<float>> partials(std::size_t(world), std::vector<float>(want.size()));
  std::vector<std::vector<float>> got(std::size_t(world), std::vector<float>(want.size()));
  test::within(test::hang_limit, [&] {
    dist::run_ranks(world, [&](inproc_communicator& c) {
      backend::cpu dev;
      kernels::gemm_context<backend::cpu> rank_ctx(dev);
      std::int64_t const k0 = c.rank() * shard, k1 = k0 + shard;
      auto& partial = partials[std::size_t(c.rank())];
      // The shards are column ranges of the full tensors (row stride K), as a loader would
      // hand them over without copying.
      kernels::gemm(dev, rank_ctx, vx.slice(1, k0, k1), vw.slice(1, k0, k1),
                    tensor_view(partial.data(), dtype::f32, {m, n}), {}, dev.make_stream());
      auto& y = got[std::size_t(c.rank())];
      if (out_type == dtype::f32) {
        y = partial;
        c.all_reduce_sum(tensor_view(y.data(), dtype::f32, {m, n}), dev.make_stream());
      } else {
        std::vector<bf16> yb(y.size());
        kernels::gemm(dev, rank_ctx, vx.slice(1, k0, k1), vw.slice(1, k0, k1),
                      tensor_view(yb.data(), dtype::bf16, {m, n}), {}, dev.make_stream());
        c.all_reduce_sum(tensor_view(yb.data(), dtype::bf16, {m, n}), dev.make_stream());
        for (std::size_t i = 0; i < y.size(); ++i) y[i] = float(yb[i]);
      }
    });
  });

  // bf16 output: each partial is rounded to bf16 (relative error <= 2^-8) and the fp32 sum of
  // the partials is rounded once more; fp32 partials differ from the unsharded product only by
  // the order of fp32 additions (K = 384 terms, relative error well under 1e-5 of the magnitude).
  double const unit = out_type == dtype::bf16 ? std::ldexp(1.0, -8) : 1e-5;
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(test::same_bits(got[std::size_t(r)], got[0])) << "rank " << r << " differs";
    int bad = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      double magnitude = std::fabs(want[i]);
      for (auto const& p : partials) magnitude += std::fabs(p[i]);
      double const tol = unit * magnitude + 1e-6;
      if (std::fabs(double(got[std::size_t(r)][i]) - want[i]) > tol && ++bad <= 5)
        ADD_FAILURE() << "rank " << r << " element " << i << ": " << got[std::size_t(r)][i]
                      << " vs unsharded " << want[i] << " (tolerance " << tol << ")";
    }
    EXPECT_EQ(bad, 0) << "rank " << r;
  }
}

TEST_P(RowParallelTest, Bf16OutputEqualsTheUnshardedProduct) {
  auto rng = test::test_rng();
  check_row_parallel(GetParam(), dtype::bf16, rng);
}

TEST_P(RowParallelTest, F32OutputEqualsTheUnshardedProduct) {
  auto rng = test::test_rng();
  check_row_parallel(GetParam(), dtype::f32, rng);
}

INSTANTIATE_TEST_SUITE_P(Worlds, RowParallelTest, ::testing::Values(1, 2, 3, 4, 8),
                         [](auto const& p) { return "world" + std::to_string(p.param); });

}  // namespace
}  // namespace lightcore
