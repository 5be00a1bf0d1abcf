// mla_kv_prepare on CUDA against the CPU backend, which runs rmsnorm, apply_rope and mla_write_kv
// in turn: the roped q and key bit for bit (both apply rope_rotate_pair), the normalised latent
// within one bf16 ulp (the sum of squares is added in another order), slots scattered, through
// a slot list (with a padding token) and through req_to_token, untouched slots left as they were;
// W_UK absorbed into the last rows' q_nope in the same launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
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
  EXPECT_TRUE(test::same_bits(got.q, plain.q) && test::same_bits(got.pool, plain.pool) &&
              test::same_bits(got.kv_a, plain.kv_a))
      << "the absorb changed the rest of the step";
  // Close to a double product (test::absorb_misses); bits differ from the CPU's only where the
  // fp32 sums round to bf16 differently: rare.
  EXPECT_EQ(test::absorb_misses(c, w_uk, rows, got.q_absorbed), 0);
  std::int64_t off = 0;
  for (std::size_t i = 0; i < want.q_absorbed.size(); ++i)
    off += got.q_absorbed[i].bits != want.q_absorbed[i].bits;
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
