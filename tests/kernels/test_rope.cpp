// rope on the CPU backend and the YaRN parameters: inv_freq, attention factor and softmax scale
// against the formulas evaluated here in double (and DeepSeek-V3's hand-derived correction range);
// the rotation against transformers' apply_rotary_pos_emb_interleave written out in the test
// (exact within a stated bound, and against its bf16 arithmetic by relative L2); position 0;
// errors for bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/rope/rope.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/backend/cpu.hpp"
#include "rope_test_util.hpp"

namespace lightcore {
namespace {

using kernels::apply_rope;
using kernels::yarn_config;

constexpr double pi = std::numbers::pi;
constexpr int nope = 128;                      // DeepSeek-V3's qk_nope_head_dim
constexpr int qk_head = nope + 64;             // 192
constexpr int latent = 512;                    // kv_lora_rank; k_rope is the latent row's last 64
constexpr std::int64_t r1_positions = 163840;  // DeepSeek-R1's max_position_embeddings

// ---------------------------------------------------------------------------------------------
// YaRN parameters
// ---------------------------------------------------------------------------------------------

// DeepSeek-V3: find_correction_dim(32) = 64 ln(4096 / (64 pi)) / (2 ln 10000) = 10.47 -> floor 10,
// find_correction_dim(1) = 64 ln(4096 / (2 pi)) / (2 ln 10000) = 22.51 -> ceil 23.
TEST(Yarn, DeepSeekCorrectionRange) {
  yarn_config const c;
  double const dim_fast = 64 * std::log(4096 / (32 * 2 * pi)) / (2 * std::log(10000.0));
  double const dim_slow = 64 * std::log(4096 / (1 * 2 * pi)) / (2 * std::log(10000.0));
  EXPECT_NEAR(dim_fast, 10.4722, 1e-4);
  EXPECT_NEAR(dim_slow, 22.5134, 1e-4);
  auto const r = kernels::yarn_correction_range(c);
  EXPECT_EQ(r.low, 10.0);
  EXPECT_EQ(r.high, 23.0);
  yarn_config untruncated = c;
  untruncated.truncate = false;
  auto const u = kernels::yarn_correction_range(untruncated);
  EXPECT_NEAR(u.low, dim_fast, 1e-12);
  EXPECT_NEAR(u.high, dim_slow, 1e-12);
}

TEST(Yarn, DeepSeekInvFreq) {
  yarn_config const c;
  std::vector<double> const f = kernels::yarn_inv_freq(c);
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i < 32; ++i) {
    SCOPED_TRACE(::testing::Message() << "i = " << i);
    double const original = std::pow(10000.0, -double(i) / 32);  // theta^(-2i/64)
    double ramp = (i - 10.0) / (23.0 - 10.0);
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    double const want = original / 40 * ramp + original * (1 - ramp);
    EXPECT_NEAR(f[std::size_t(i)], want, 1e-15 * original);
    if (i <= 10) {
      EXPECT_NEAR(f[std::size_t(i)], original, 1e-15 * original) << "extrapolated";
    }
    if (i >= 23) {
      EXPECT_NEAR(f[std::size_t(i)], original / 40, 1e-15 * original) << "interpolated";
    }
  }
  EXPECT_EQ(f[0], 1.0);
}

// Edge cases of the reference kept as they are: find_correction_range clamps low to >= 0 and high
// to <= dim - 1 but not high from below, and linear_ramp_factor nudges an empty range by 0.001.
TEST(Yarn, DegenerateRangesMatchReference) {
  yarn_config c;
  c.original_max_position_embeddings = 1;  // low: floor(-18.4) -> 0; high: ceil(-6.39) = -6
  auto const r = kernels::yarn_correction_range(c);
  EXPECT_EQ(r.low, 0.0);
  EXPECT_EQ(r.high, -6.0);
  std::vector<double> f = kernels::yarn_inv_freq(c);  // ramp i / -6 clamps to 0: all extrapolated
  for (int i = 0; i < 32; ++i)
    EXPECT_NEAR(f[std::size_t(i)], std::pow(10000.0, -i / 32.0), 1e-15) << "i = " << i;

  yarn_config step;  // low == high = 17.69 (no truncation): ramp 0 up to 17, 1 from 18
  step.truncate = false;
  step.beta_fast = step.beta_slow = 4;
  auto const rs = kernels::yarn_correction_range(step);
  EXPECT_EQ(rs.low, rs.high);
  EXPECT_NEAR(rs.low, 64 * std::log(4096 / (4 * 2 * pi)) / (2 * std::log(10000.0)), 1e-12);
  f = kernels::yarn_inv_freq(step);
  for (int i = 0; i < 32; ++i) {
    double const original = std::pow(10000.0, -i / 32.0);
    EXPECT_NEAR(f[std::size_t(i)], i <= 17 ? original : original / 40, 1e-15) << "i = " << i;
  }
}

TEST(Yarn, AttentionFactor) {
  yarn_config c;  // DeepSeek-V3/R1: mscale = mscale_all_dim = 1 -> get_mscale ratio 1
  EXPECT_EQ(kernels::yarn_attention_factor(c), 1.0);
  c.mscale = 0.707;  // both set: get_mscale(40, 0.707) / get_mscale(40, 1)
  EXPECT_NEAR(kernels::yarn_attention_factor(c),
              (0.1 * 0.707 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1), 1e-15);
  c.mscale_all_dim = 0;  // one absent: get_mscale(40) = 0.1 ln 40 + 1
  EXPECT_NEAR(kernels::yarn_attention_factor(c), 1.3688879454113936, 1e-15);
  c.attention_factor = 0.5;  // explicit wins
  EXPECT_EQ(kernels::yarn_attention_factor(c), 0.5);
  yarn_config small;
  small.factor = 1.0;  // get_mscale(s <= 1) = 1
  small.mscale_all_dim = 0;
  EXPECT_EQ(kernels::yarn_attention_factor(small), 1.0);
}

// DeepseekV3Attention: scaling = 192^-0.5 * yarn_get_mscale(40, 1)^2 = 0.07216878 * 1.87385 =
// 0.13523377886088 (python: 192**-0.5 * (0.1*math.log(40)+1)**2 = 0.1352337788608801).
TEST(Yarn, SoftmaxScale) {
  yarn_config c;
  double const m = 0.1 * std::log(40.0) + 1;
  EXPECT_NEAR(kernels::yarn_softmax_scale(c, qk_head), m * m / std::sqrt(192.0), 1e-16);
  EXPECT_NEAR(kernels::yarn_softmax_scale(c, qk_head), 0.1352337788608801, 1e-15);
  c.mscale_all_dim = 0.5;
  double const m_half = 0.05 * std::log(40.0) + 1;
  EXPECT_NEAR(kernels::yarn_softmax_scale(c, qk_head), m_half * m_half / std::sqrt(192.0), 1e-16);
  c.mscale_all_dim = 0;  // absent: no correction
  EXPECT_NEAR(kernels::yarn_softmax_scale(c, qk_head), 1 / std::sqrt(192.0), 1e-16);
}

// Rows of the cache: cos then sin of p inv_freq_i times the attention factor, rounded once
// (checked to 1 float ulp against long double, at small and at R1's largest positions).
TEST(Yarn, CosSinCache) {
  for (double mscale_all_dim : {1.0, 0.0}) {
    yarn_config c;
    c.mscale_all_dim = mscale_all_dim;
    double const af = kernels::yarn_attention_factor(c);
    std::vector<double> const f = kernels::yarn_inv_freq(c);
    std::vector<float> const cache = kernels::yarn_cos_sin_cache(c, r1_positions);
    ASSERT_EQ(cache.size(), std::size_t(r1_positions) * 64);
    for (std::int64_t p : {std::int64_t(0), std::int64_t(1), std::int64_t(4095),
                           std::int64_t(77777), r1_positions - 1}) {
      for (int i = 0; i < 32; ++i) {
        long double const angle = (long double)p * (long double)f[std::size_t(i)];
        auto const want_c = double(std::cos(angle) * af), want_s = double(std::sin(angle) * af);
        float const got_c = cache[std::size_t(p) * 64 + std::size_t(i)];
        float const got_s = cache[std::size_t(p) * 64 + 32 + std::size_t(i)];
        EXPECT_LE(std::abs(got_c - want_c), std::ldexp(1.0, -24) * af)
            << "cos p " << p << " i " << i;
        EXPECT_LE(std::abs(got_s - want_s), std::ldexp(1.0, -24) * af)
            << "sin p " << p << " i " << i;
      }
    }
    for (int i = 0; i < 32; ++i) {  // position 0: cos = attention factor, sin = 0
      EXPECT_EQ(cache[std::size_t(i)], float(af));
      EXPECT_EQ(cache[32 + std::size_t(i)], 0.0f);
    }
  }
}

TEST(Yarn, BadConfigsAreRejected) {
  auto bad = [](auto mutate, char const* what) {
    yarn_config c;
    mutate(c);
    test::expect_error([&] { kernels::yarn_inv_freq(c); }, {what});
  };
  bad([](yarn_config& c) { c.rotary_dim = 63; }, "rotary_dim 63");
  bad([](yarn_config& c) { c.factor = 0; }, "factor 0");
  bad([](yarn_config& c) { c.rope_theta = 1; }, "rope_theta 1");
  bad([](yarn_config& c) { c.beta_slow = 0; }, "beta_slow 0");
  bad([](yarn_config& c) { c.original_max_position_embeddings = 0; }, "original_max");
  test::expect_error([] { kernels::yarn_cos_sin_cache(yarn_config{}, 0); }, {"max_positions 0"});
  test::expect_error([] { kernels::yarn_softmax_scale(yarn_config{}, 0); }, {"qk_head_dim 0"});
}

// ---------------------------------------------------------------------------------------------
// apply_rope on the CPU
// ---------------------------------------------------------------------------------------------

// q as in the model ([tokens, heads, 192], rope in the last 64) and the latent rows
// ([tokens, 576], rope in the last 64); views into them.
struct rope_case {
  std::int64_t tokens, heads;
  std::vector<bf16> q, kv;
  std::vector<std::int32_t> positions;

  rope_case(std::int64_t t, std::int64_t h, std::mt19937_64& rng, std::int64_t max_position)
      : tokens(t),
        heads(h),
        q(test::random_bf16(std::size_t(t * h * qk_head), rng)),
        kv(test::random_bf16(std::size_t(t * (latent + 64)), rng)),
        positions(std::size_t(t)) {
    std::uniform_int_distribution<std::int32_t> pos(0, std::int32_t(max_position - 1));
    for (auto& p : positions) p = pos(rng);
  }
  tensor_view q_rope() {
    return tensor_view(q.data(), dtype::bf16, {tokens, heads, qk_head}).slice(2, nope, qk_head);
  }
  tensor_view k_rope() {
    return tensor_view(kv.data(), dtype::bf16, {tokens, latent + 64}).slice(1, latent, latent + 64);
  }
  tensor_view pos() { return tensor_view(positions.data(), dtype::i32, {tokens}); }
};

tensor_view cache_view(std::vector<float>& cache) {
  return tensor_view(cache.data(), dtype::f32, {std::int64_t(cache.size() / 64), 64});
}

std::vector<float>& deepseek_cache() {
  static std::vector<float> cache = kernels::yarn_cos_sin_cache(yarn_config{}, r1_positions);
  return cache;
}

// Every output within rope_tolerance of the exact reference, every non-rope element untouched,
// and the whole against the reference's bf16 arithmetic within relative L2 1e-2.
TEST(RopeCpu, MatchesInterleaveReference) {
  backend::cpu cpu;
  auto rng = test::test_rng();
  std::vector<float>& cache = deepseek_cache();
  for (auto [t, h] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {5, 16}, {33, 128}, {3, 2}}) {
    SCOPED_TRACE(::testing::Message() << "tokens " << t << " heads " << h);
    rope_case c(t, h, rng, r1_positions);
    std::vector<bf16> const q0 = c.q, kv0 = c.kv;
    apply_rope(cpu, c.q_rope(), c.k_rope(), c.pos(), cache_view(cache), cpu.make_stream());
    double err2 = 0, ref2 = 0;
    std::int64_t bad = 0, untouched_changed = 0;
    auto check_row = [&](bf16 const* before, bf16 const* after, float const* cs) {
      auto const ref = test::hf_interleave_rope(before, cs);
      auto const ref_bf16 = test::hf_interleave_rope_bf16(before, cs);
      for (int j = 0; j < 64; ++j) {
        double const got = float(after[j]);
        bool const ok =
            std::abs(got - ref.value[j]) <= test::rope_tolerance(ref.value[j], ref.magnitude[j]);
        if (!ok && ++bad <= 5) {
          ADD_FAILURE() << "dim " << j << ": got " << got << ", want " << ref.value[j];
        }
        err2 += (got - float(ref_bf16[j])) * (got - float(ref_bf16[j]));
        ref2 += double(float(ref_bf16[j])) * float(ref_bf16[j]);
      }
    };
    for (std::int64_t i = 0; i < t; ++i) {
      float const* cs = cache.data() + std::size_t(c.positions[std::size_t(i)]) * 64;
      for (std::int64_t hh = 0; hh < h; ++hh) {
        std::size_t const row = std::size_t((i * h + hh) * qk_head);
        for (int j = 0; j < nope; ++j) untouched_changed += c.q[row + j].bits != q0[row + j].bits;
        check_row(q0.data() + row + nope, c.q.data() + row + nope, cs);
      }
      std::size_t const krow = std::size_t(i * (latent + 64));
      for (int j = 0; j < latent; ++j)
        untouched_changed += c.kv[krow + j].bits != kv0[krow + j].bits;
      check_row(kv0.data() + krow + latent, c.kv.data() + krow + latent, cs);
    }
    EXPECT_EQ(bad, 0);
    EXPECT_EQ(untouched_changed, 0) << "elements outside the rope views changed";
    double const rel_l2 = std::sqrt(err2 / ref2);
    EXPECT_LT(rel_l2, 1e-2) << "against the reference's bf16 arithmetic";
    RecordProperty("rel_l2_vs_bf16_reference", std::to_string(rel_l2));
  }
}

// Position 0: cos = attention factor, sin = 0, so the row comes out de-interleaved and scaled by
// the factor: exactly the permutation for DeepSeek-V3 (factor 1), x' * 1.3689 when mscale_all_dim
// is absent. (The reference's cos is bf16(1.3689) = 1.3671875; ours keeps the float factor.)
TEST(RopeCpu, PositionZeroDeinterleavesAndScales) {
  backend::cpu cpu;
  auto rng = test::test_rng();
  for (double mscale_all_dim : {1.0, 0.0}) {
    yarn_config cfg;
    cfg.mscale_all_dim = mscale_all_dim;
    std::vector<float> cache = kernels::yarn_cos_sin_cache(cfg, 8);
    float const af = float(kernels::yarn_attention_factor(cfg));
    rope_case c(4, 3, rng, 1);  // every position 0
    std::vector<bf16> const q0 = c.q, kv0 = c.kv;
    apply_rope(cpu, c.q_rope(), c.k_rope(), c.pos(), cache_view(cache), cpu.make_stream());
    auto expect_row = [&](bf16 const* before, bf16 const* after) {
      for (int i = 0; i < 32; ++i) {
        EXPECT_EQ(after[i].bits, bf16(float(before[2 * i]) * af).bits) << "dim " << i;
        EXPECT_EQ(after[32 + i].bits, bf16(float(before[2 * i + 1]) * af).bits) << "dim " << 32 + i;
      }
    };
    for (std::size_t row = 0; row < 12; ++row)
      expect_row(q0.data() + row * qk_head + nope, c.q.data() + row * qk_head + nope);
    for (std::size_t t = 0; t < 4; ++t)
      expect_row(kv0.data() + t * 576 + latent, c.kv.data() + t * 576 + latent);
  }
}

TEST(RopeCpu, ZeroTokensIsANoOp) {
  backend::cpu cpu;
  std::vector<float>& cache = deepseek_cache();
  tensor_view const q(nullptr, dtype::bf16, {0, 128, 64});
  tensor_view const k(nullptr, dtype::bf16, {0, 64});
  tensor_view const p(nullptr, dtype::i32, {0});
  apply_rope(cpu, q, k, p, cache_view(cache), cpu.make_stream());
}

TEST(RopeCpu, BadArgumentsAreRejected) {
  backend::cpu cpu;
  auto const s = cpu.make_stream();
  auto rng = test::test_rng();
  std::vector<float> cache = kernels::yarn_cos_sin_cache(yarn_config{}, 16);
  tensor_view const cv = cache_view(cache);
  rope_case c(4, 2, rng, 16);
  tensor_view const q = c.q_rope(), k = c.k_rope(), p = c.pos();
  std::vector<float> f32(4 * 2 * 64);
  std::vector<std::int64_t> i64(4);
  auto run = [&](tensor_view const& qq, tensor_view const& kk, tensor_view const& pp,
                 tensor_view const& cc) { apply_rope(cpu, qq, kk, pp, cc, s); };
  test::expect_error([&] { run(q.slice(2, 0, 63), k, p, cv); }, {"q_rope of shape", "64"});
  test::expect_error(
      [&] {
        run(tensor_view(c.q.data(), dtype::bf16, {4, 1, 128}), k, p, cv);
      },
      {"q_rope of shape"});
  test::expect_error([&] { run(q, k.slice(1, 0, 32), p, cv); }, {"k_rope of shape"});
  test::expect_error(
      [&] {
        run(tensor_view(f32.data(), dtype::f32, {4, 2, 64}), k, p, cv);
      },
      {"bf16 q_rope", "f32"});
  test::expect_error([&] { run(q, k, tensor_view(i64.data(), dtype::i64, {4}), cv); },
                     {"i32 positions", "i64"});
  test::expect_error(
      [&] {
        run(q, k, p, tensor_view(c.q.data(), dtype::bf16, {4, 64}));
      },
      {"f32 cos/sin cache"});
  test::expect_error([&] { run(q, k, p, cv.slice(1, 0, 32)); }, {"cos/sin cache of shape"});
  test::expect_error([&] { run(q, k.slice(0, 0, 3), p, cv); }, {"4 tokens", "[3, 64]"});
  test::expect_error([&] { run(q, k, p.slice(0, 0, 2), cv); }, {"positions [2]"});
  test::expect_error([&] { run(q.transpose(0, 1), k, p, cv); }, {"2 tokens"});
  // Heads that overlap: a head stride of 32 over 64-dim rows.
  test::expect_error(
      [&] {
        run(tensor_view(c.q.data(), dtype::bf16, {4, 2, 64}, {192, 32, 1}, device::cpu()), k, p,
            cv);
      },
      {"heads not to overlap", "32"});
  test::expect_error(
      [&] {
        run(tensor_view(c.q.data(), dtype::bf16, {4, 2, 64}, {384, 192, 2}, device::cpu()), k, p,
            cv);
      },
      {"last dim", "contiguous"});
  test::expect_error(
      [&] {
        run(q, k, p, tensor_view(cache.data(), dtype::f32, {16, 64}, {64, 1}, device::cuda(0)));
      },
      {"apply_rope on cpu needs every view there", "cuda:0"});

  // Positions outside the cache: an error naming the token, and nothing written.
  std::vector<bf16> const q0 = c.q, kv0 = c.kv;
  c.positions[2] = 16;
  test::expect_error([&] { run(q, k, p, cv); }, {"position 16 of token 2", "0..15"});
  c.positions[2] = -1;
  test::expect_error([&] { run(q, k, p, cv); }, {"position -1 of token 2"});
  bool unchanged = true;
  for (std::size_t i = 0; i < q0.size(); ++i) unchanged &= q0[i].bits == c.q[i].bits;
  for (std::size_t i = 0; i < kv0.size(); ++i) unchanged &= kv0[i].bits == c.kv[i].bits;
  EXPECT_TRUE(unchanged) << "a rejected call modified its inputs";
}

}  // namespace
}  // namespace lightcore
