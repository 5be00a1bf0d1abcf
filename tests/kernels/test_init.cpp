// init (dummy weights): the CPU reference against an independent definition of the counter-based
// stream, its statistics, independence of seeds and tensors, and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/seed.hpp"
#include "kernels/init/init.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;
using kernels::init_spec;

// The definition written out again: splitmix64's output for counter index + 1 of the key's
// stream, four 16-bit uniforms summed, centred and scaled to unit variance, then mean + std * x.
double reference_value(std::uint64_t seed, std::uint64_t id, std::uint64_t index, float mean,
                       float stddev) {
  auto const mix = [](std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::uint64_t const golden = 0x9E3779B97F4A7C15ull;
  std::uint64_t const key = mix(seed ^ mix(id + golden));
  std::uint64_t const r = mix(key + (index + 1) * golden);
  double sum = 0;
  for (int i = 0; i < 4; ++i) sum += double((r >> (16 * i)) & 0xFFFF) + 0.5;
  float const x = float(sum / 65536.0 - 2.0) * 1.7320508f;  // exact before the product
  float const scaled = x * stddev;
  return double(scaled + mean);
}

template <class T>
std::vector<T> fill(cpu& b, std::int64_t n, init_spec const& s) {
  tensor<cpu> t(b, dtype_v<T>, {n});
  b.fill(t.data(), std::size_t(n), sizeof(T), 0xA5A5A5A5A5A5A5A5ull, b.make_stream());
  kernels::fill_random(b, t, s, b.make_stream());
  T const* p = t.view().data_as<T>();
  return std::vector<T>(p, p + n);
}

TEST(Init, MatchesTheDefinitionForEveryDtype) {
  cpu b;
  auto rng = test_rng();
  init_spec const s{rng(), rng(), 0.25f, 0.02f};
  std::int64_t const n = 4099;
  auto const f = fill<float>(b, n, s);
  auto const h = fill<bf16>(b, n, s);
  init_spec const codes{s.seed, s.tensor_id, 0.0f, 112.0f};
  auto const q = fill<fp8_e4m3>(b, n, codes);
  for (std::int64_t i = 0; i < n; ++i) {
    float const want =
        float(reference_value(s.seed, s.tensor_id, std::uint64_t(i), s.mean, s.stddev));
    ASSERT_EQ(f[std::size_t(i)], want) << i;
    ASSERT_EQ(h[std::size_t(i)].bits, bf16(want).bits) << i;
    float const code = float(reference_value(s.seed, s.tensor_id, std::uint64_t(i), 0.0f, 112.0f));
    ASSERT_EQ(q[std::size_t(i)].bits, fp8_e4m3(code).bits) << i;
  }
}

TEST(Init, NormalishHasUnitVarianceAndBoundedTails) {
  cpu b;
  auto rng = test_rng();
  std::int64_t const n = 1 << 20;
  auto const v = fill<float>(b, n, {rng(), 7, 0.0f, 1.0f});
  double sum = 0, sum2 = 0, sum4 = 0, peak = 0;
  for (float const x : v) {
    sum += x;
    sum2 += double(x) * x;
    sum4 += double(x) * x * x * x;
    peak = std::max(peak, double(std::fabs(x)));
  }
  double const mean = sum / double(n), var = sum2 / double(n) - mean * mean;
  // Standard errors at 2^20 samples: mean 1e-3, variance ~1.3e-3; 6 sigma bounds.
  EXPECT_NEAR(mean, 0.0, 6e-3);
  EXPECT_NEAR(var, 1.0, 8e-3);
  // Irwin-Hall(4) standardised has kurtosis 3 - 1.2 / 4 = 2.7 (a normal: 3).
  EXPECT_NEAR(sum4 / double(n), 2.7, 0.05);
  EXPECT_LE(peak, 2.0 * 1.7320508 + 1e-6);
}

TEST(Init, SeedsAndTensorsGiveIndependentStreams) {
  cpu b;
  auto rng = test_rng();
  std::uint64_t const seed = rng();
  auto const a = fill<float>(b, 1000, {seed, 1, 0.0f, 1.0f});
  auto const again = fill<float>(b, 1000, {seed, 1, 0.0f, 1.0f});
  auto const other_id = fill<float>(b, 1000, {seed, 2, 0.0f, 1.0f});
  auto const other_seed = fill<float>(b, 1000, {seed + 1, 1, 0.0f, 1.0f});
  EXPECT_EQ(a, again);
  int same_id = 0, same_seed = 0;
  double corr = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    same_id += a[i] == other_id[i];
    same_seed += a[i] == other_seed[i];
    corr += double(a[i]) * other_id[i];
  }
  EXPECT_LT(same_id, 5);
  EXPECT_LT(same_seed, 5);
  EXPECT_NEAR(corr / 1000.0, 0.0, 0.2);  // 6 standard errors of 1 / sqrt(1000)
  // A prefix of a longer tensor is the shorter tensor: values depend on the index alone.
  auto const longer = fill<float>(b, 1500, {seed, 1, 0.0f, 1.0f});
  EXPECT_TRUE(std::equal(a.begin(), a.end(), longer.begin()));
  // The tensor id of a name is stable.
  static_assert(kernels::init_tensor_id("a") != kernels::init_tensor_id("b"));
  EXPECT_EQ(kernels::init_tensor_id("model.norm.weight"),
            kernels::init_tensor_id("model.norm.weight"));
}

TEST(Init, ZeroStddevFillsTheMean) {
  cpu b;
  for (auto const x : fill<bf16>(b, 77, {3, 4, 1.0f, 0.0f})) ASSERT_EQ(x.bits, bf16(1.0f).bits);
}

TEST(Init, RejectsBadInputs) {
  cpu b;
  auto s = b.make_stream();
  tensor<cpu> t(b, dtype::f32, {8, 8});
  tensor<cpu> i(b, dtype::i32, {8});
  EXPECT_THROW(kernels::fill_random(b, i, {}, s), error);                         // dtype
  EXPECT_THROW(kernels::fill_random(b, t.view().transpose(0, 1), {}, s), error);  // strides
  EXPECT_THROW(kernels::fill_random(b, t.view().slice(1, 1, 8).slice(0, 0, 1), {}, s), error);
  EXPECT_THROW(kernels::fill_random(b, t, {0, 0, 0.0f, -1.0f}, s), error);  // stddev
  EXPECT_THROW(kernels::fill_random(b, t, {0, 0, NAN, 1.0f}, s), error);    // mean
  tensor_view const elsewhere(t.data(), dtype::f32, {8, 8}, device{device_kind::cuda, 0});
  EXPECT_THROW(kernels::fill_random(b, elsewhere, {}, s), error);  // device
  try {
    kernels::fill_random(b, i, {}, s);
  } catch (error const& e) {
    EXPECT_NE(e.message().find("bf16, f32 and fp8_e4m3"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace lightcore::test
