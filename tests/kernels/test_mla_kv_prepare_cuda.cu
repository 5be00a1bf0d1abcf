// mla_kv_prepare on CUDA against the CPU backend, which runs rmsnorm, apply_rope and mla_write_kv
// in turn: the roped q and key bit for bit (both apply rope_rotate_pair), the normalised latent
// within one bf16 ulp (the sum of squares is added in another order), slots scattered, through
// a slot list (with a padding token) and through req_to_token, untouched slots left as they were.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <tuple>

#include "activation_test_util.hpp"
#include "common/cuda.hpp"
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

INSTANTIATE_TEST_SUITE_P(Shapes, MlaKvPrepareCuda,
                         ::testing::Combine(::testing::Values(1, 3, 300),
                                            ::testing::Values(1, 16, 128)),
                         [](::testing::TestParamInfo<std::tuple<int, int>> const& info) {
                           return "T" + std::to_string(std::get<0>(info.param)) + "_H" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace lightcore
