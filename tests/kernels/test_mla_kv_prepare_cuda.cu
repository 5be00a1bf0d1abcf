// mla_kv_prepare on CUDA against the CPU backend, which runs rmsnorm, apply_rope and mla_write_kv
// in turn: the roped q and key bit for bit (both apply rope_rotate_pair), the normalised latent
// within one bf16 ulp (the sum of squares is added in another order), slots scattered, through
// a slot list (with a padding token) and through req_to_token, untouched slots left as they were;
// W_UK absorbed into the last rows' q_nope in the same launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "activation_test_util.hpp"
#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "mla_kv_prepare_test_util.hpp"

namespace lightcore {
namespace {

class MlaKvPrepareCuda : public test::cuda_test,
                         public ::testing::WithParamInterface<std::tuple<int, int>> {};

TEST_P(MlaKvPrepareCuda, MatchesTheThreeOpsOnTheCpu) {
  auto const [tokens, heads] = GetParam();
  test::kv_prepare_case const c(tokens, heads, 1234 + std::uint64_t(tokens * 131 + heads));
  backend::cpu cpu;
  backend::cuda gpu(0);
  for (bool through_table : {false, true}) {
    SCOPED_TRACE(through_table ? "req_to_token" : "slot list");
    auto const want = test::run_kv_prepare(cpu, c, through_table);
    auto const got = test::run_kv_prepare(gpu, c, through_table);
    EXPECT_EQ(got.kv_a.size(), c.kv_a.size());
    std::int64_t kv_a_changed = 0, q_bad = 0, rope_bad = 0, latent_far = 0, latent_off = 0;
    for (std::size_t i = 0; i < c.kv_a.size(); ++i)
      kv_a_changed += got.kv_a[i].bits != c.kv_a[i].bits;
    for (std::size_t i = 0; i < c.q.size(); ++i) q_bad += got.q[i].bits != want.q[i].bits;
    for (std::int64_t s = 0; s < c.slots; ++s)
      for (std::int64_t j = 0; j < 576; ++j) {
        auto const i = std::size_t(s * 576 + j);
        if (j >= 512) {
          rope_bad += got.pool[i].bits != want.pool[i].bits;
        } else if (got.pool[i].bits != want.pool[i].bits) {
          ++latent_off;
          latent_far += test::bf16_ulp_distance(got.pool[i], want.pool[i]) > 1;
        }
      }
    EXPECT_EQ(kv_a_changed, 0) << "kv_a is only read";
    EXPECT_EQ(q_bad, 0) << "roped q heads";
    EXPECT_EQ(rope_bad, 0) << "roped keys in the pool (and the untouched slots)";
    EXPECT_EQ(latent_far, 0) << "normalised latents more than one bf16 ulp apart";
    // The order of the sum moves the fp32 inverse RMS by an ulp at most, which rounds a bf16
    // output the other way only now and then.
    EXPECT_LE(latent_off, tokens * 512 / 50) << "of " << tokens * 512 << " latent elements";
  }
}

// W_UK absorbed by the step's extra CTAs: q, the pool and kv_a exactly as without it, and each
// absorbed element close to a double product (below); up to 8 rows, the last ones of the batch
// (the decode rows of a mixed batch).
TEST_P(MlaKvPrepareCuda, AbsorbsWukBesideTheStep) {
  auto const [tokens, heads] = GetParam();
  test::kv_prepare_case const c(tokens, heads, 77 + std::uint64_t(tokens * 131 + heads));
  auto const w_uk = test::random_w_uk(heads, 5 + std::uint64_t(heads));
  std::int64_t const rows = std::min<std::int64_t>(tokens, kernels::mla_fold_w_uk_max_rows);
  backend::cpu cpu;
  backend::cuda gpu(0);
  auto const want = test::run_kv_prepare(cpu, c, true, &w_uk, rows);
  auto const got = test::run_kv_prepare(gpu, c, true, &w_uk, rows);
  auto const plain = test::run_kv_prepare(gpu, c, true);
  auto const same = [](std::vector<bf16> const& x, std::vector<bf16> const& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(bf16)) == 0;
  };
  EXPECT_TRUE(same(got.q, plain.q) && same(got.pool, plain.pool) && same(got.kv_a, plain.kv_a))
      << "the absorb changed the rest of the step";
  // Against a double product: 2^-8 of the element plus 1e-5 of the sum of |terms| (the fp32 sums
  // of 128 terms in any order are well inside; near-cancelling sums are covered by the second
  // term). Bits differ from the CPU's only where the fp32 sums round to bf16 differently: rare.
  std::int64_t far = 0, off = 0;
  std::int64_t const r0 = tokens - rows;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t n = 0; n < 512; ++n) {
        double exact = 0, scale = 0;
        for (std::int64_t k = 0; k < 128; ++k) {
          double const term =
              double(float(c.q[std::size_t(((r0 + r) * heads + h) * c.q_dim + k)])) *
              double(float(w_uk[std::size_t((h * 128 + k) * 512 + n)]));
          exact += term;
          scale += std::abs(term);
        }
        std::size_t const i = std::size_t((r * heads + h) * 512 + n);
        double const g = float(got.q_absorbed[i]);
        off += got.q_absorbed[i].bits != want.q_absorbed[i].bits;
        if (!(std::abs(g - exact) <= std::abs(exact) / 256 + 1e-5 * scale) && ++far <= 8)
          ADD_FAILURE() << "row " << r << " head " << h << " column " << n << ": " << g << ", want "
                        << exact;
      }
    }
  }
  EXPECT_EQ(far, 0);
  EXPECT_LE(off, std::int64_t(want.q_absorbed.size()) / 10);
}

class MlaKvPrepareCudaAbsorb : public test::cuda_test {};

TEST_F(MlaKvPrepareCudaAbsorb, RefusesMoreRowsThanItTakes) {
  test::kv_prepare_case const c(9, 16, 3);
  auto const w_uk = test::random_w_uk(16, 4);
  backend::cuda gpu(0);
  test::expect_error([&] { test::run_kv_prepare(gpu, c, false, &w_uk, 9); },
                     {"absorbs W_UK for at most 8 rows; got 9"});
}

INSTANTIATE_TEST_SUITE_P(Shapes, MlaKvPrepareCuda,
                         ::testing::Combine(::testing::Values(1, 3, 300),
                                            ::testing::Values(1, 16, 128)),
                         [](::testing::TestParamInfo<std::tuple<int, int>> const& info) {
                           return "T" + std::to_string(std::get<0>(info.param)) + "_H" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace lightcore
