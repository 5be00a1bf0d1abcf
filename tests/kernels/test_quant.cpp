// quantize_per_token_group on the CPU backend: bit-exact against the double-precision definition,
// the dequantised values within fp8's rounding error, amax at +-448, zero groups, both scale
// layouts (padded too) agreeing, and the errors for bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/quant/quant.hpp"
#include "lightcore/backend/cpu.hpp"
#include "quant_test_util.hpp"

namespace lightcore {
namespace {

using kernels::quant_group_size;
using kernels::quantize_per_token_group;
using kernels::scale_layout;

struct quantized {
  std::vector<fp8_e4m3> q;
  std::vector<float> scales;  // row-major [rows][groups], read back from either layout
};

// Quantises x [rows, cols] on the CPU, scales in `layout` with leading dimension `ld` (>= the
// inner extent; the padding is checked untouched), and returns q and the scales row-major.
quantized run_cpu(std::vector<bf16>& x, std::int64_t rows, std::int64_t cols, scale_layout layout,
                  std::int64_t ld) {
  std::int64_t const groups = cols / quant_group_size;
  std::int64_t const outer = layout == scale_layout::row_major ? rows : groups;
  std::int64_t const inner = layout == scale_layout::row_major ? groups : rows;
  std::vector<fp8_e4m3> q(std::size_t(rows * cols), fp8_e4m3::from_bits(0xFF));
  std::vector<float> s(std::size_t(outer * ld), -1.0f);
  backend::cpu cpu;
  quantize_per_token_group(
      cpu, tensor_view(x.data(), dtype::bf16, {rows, cols}),
      tensor_view(q.data(), dtype::fp8_e4m3, {rows, cols}),
      tensor_view(s.data(), dtype::f32, {outer, inner}, {ld, 1}, device::cpu()), layout,
      cpu.make_stream());
  quantized r{std::move(q), std::vector<float>(std::size_t(rows * groups))};
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::int64_t i = 0; i < ld; ++i) {
      float const v = s[std::size_t(o * ld + i)];
      if (i >= inner) {
        EXPECT_EQ(v, -1.0f) << "scale padding written at [" << o << ", " << i << "]";
        continue;
      }
      std::int64_t const m = layout == scale_layout::row_major ? o : i;
      std::int64_t const g = layout == scale_layout::row_major ? i : o;
      r.scales[std::size_t(m * groups + g)] = v;
    }
  }
  return r;
}

TEST(QuantCpu, MatchesDoubleDefinitionBitExactly) {
  auto rng = test::test_rng();
  for (auto [rows, cols] : {std::pair{1, 128}, {3, 7168}, {17, 2048}, {5, 18432}}) {
    SCOPED_TRACE(::testing::Message() << "M " << rows << ", K " << cols);
    auto x = test::random_activations(rows, cols, rng);
    std::vector<fp8_e4m3> want_q;
    std::vector<float> want_s;
    test::quantize_double(x, rows, cols, want_q, want_s);
    for (scale_layout layout : {scale_layout::row_major, scale_layout::k_major}) {
      SCOPED_TRACE(::testing::Message() << layout);
      std::int64_t const inner = layout == scale_layout::row_major ? cols / 128 : rows;
      auto const got = run_cpu(x, rows, cols, layout, (inner + 3) / 4 * 4);  // padded to 4
      EXPECT_EQ(std::memcmp(got.q.data(), want_q.data(), want_q.size()), 0) << "codes differ";
      EXPECT_EQ(std::memcmp(got.scales.data(), want_s.data(), want_s.size() * 4), 0)
          << "scales differ";
    }
  }
}

// Dequantised q * scale is within fp8_e4m3's rounding error of x: a 3-bit mantissa rounds to
// nearest with relative error <= 2^-4 for normal codes; below 2^-6 (subnormal codes) the error is
// at most half the spacing 2^-9, i.e. 2^-10 * scale in x's units.
TEST(QuantCpu, DequantisesWithinFp8Error) {
  auto rng = test::test_rng();
  std::int64_t const rows = 9, cols = 7168, groups = cols / 128;
  auto x = test::random_activations(rows, cols, rng);
  auto const r = run_cpu(x, rows, cols, scale_layout::row_major, groups);
  std::int64_t bad = 0;
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t k = 0; k < cols; ++k) {
      double const scale = r.scales[std::size_t(m * groups + k / 128)];
      double const v = float(x[std::size_t(m * cols + k)]);
      double const deq = double(float(r.q[std::size_t(m * cols + k)])) * scale;
      double const bound = 0x1p-4 * std::fabs(v) * (1 + 0x1p-20) + 0x1p-10 * scale;
      if (!(std::fabs(deq - v) <= bound) && ++bad <= 8)
        ADD_FAILURE() << "[" << m << ", " << k << "] x " << v << " dequantises to " << deq;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(QuantCpu, AmaxMapsToPlusMinus448) {
  auto rng = test::test_rng();
  std::int64_t const rows = 4, cols = 2048, groups = cols / 128;
  auto x = test::random_activations(rows, cols, rng);
  auto const r = run_cpu(x, rows, cols, scale_layout::k_major, rows);
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t g = 0; g < groups; ++g) {
      float amax = 0.0f;
      for (std::int64_t k = g * 128; k < (g + 1) * 128; ++k)
        amax = std::max(amax, std::fabs(float(x[std::size_t(m * cols + k)])));
      if (amax == 0.0f) continue;
      EXPECT_EQ(r.scales[std::size_t(m * groups + g)], amax / 448.0f);
      for (std::int64_t k = g * 128; k < (g + 1) * 128; ++k) {
        float const v = float(x[std::size_t(m * cols + k)]);
        if (std::fabs(v) != amax) continue;
        EXPECT_EQ(r.q[std::size_t(m * cols + k)].bits, v > 0 ? 0x7E : 0xFE)
            << "amax element " << v << " of group (" << m << ", " << g << ")";
      }
    }
  }
}

// An all-zero group: scale 1e-10 / 448 (finite, normal), codes +-0, dequantised exactly 0. A group
// of values below the floor is scaled by the floor, not blown up to 448.
TEST(QuantCpu, ZeroAndTinyGroupsAreSafe) {
  std::vector<bf16> x(3 * 128, bf16(0.0f));
  for (int k = 0; k < 128; k += 2) x[std::size_t(k)] = bf16(-0.0f);
  x[128 + 5] = bf16(1e-12f);
  x[256 + 7] = bf16(3.0f);  // an ordinary group next to them
  auto const r = run_cpu(x, 3, 128, scale_layout::row_major, 1);
  float const floor_scale = 1e-10f / 448.0f;
  EXPECT_EQ(r.scales[0], floor_scale);
  EXPECT_TRUE(std::isnormal(r.scales[0]));
  for (int k = 0; k < 128; ++k) {
    EXPECT_EQ(float(r.q[std::size_t(k)]), 0.0f) << k;
    EXPECT_EQ(float(r.q[std::size_t(k)]) * r.scales[0], 0.0f);
  }
  EXPECT_EQ(r.scales[1], floor_scale);
  EXPECT_EQ(float(r.q[128 + 5]), float(fp8_e4m3(float(bf16(1e-12f)) / floor_scale)));
  EXPECT_LT(float(r.q[128 + 5]), 448.0f);
  EXPECT_EQ(r.scales[2], 3.0f / 448.0f);
  EXPECT_EQ(r.q[256 + 7].bits, 0x7E);
}

TEST(QuantCpu, NanElementGivesNanCodeAndFiniteScale) {
  std::vector<bf16> x(128, bf16(1.0f));
  x[3] = bf16::quiet_nan();
  x[4] = bf16(2.0f);
  auto const r = run_cpu(x, 1, 128, scale_layout::row_major, 1);
  EXPECT_EQ(r.scales[0], 2.0f / 448.0f);  // amax ignores NaN
  EXPECT_EQ(r.q[3].bits, 0x7F);
  EXPECT_EQ(r.q[4].bits, 0x7E);
}

class QuantErrors : public ::testing::Test {
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<bf16> x_ = std::vector<bf16>(4096, bf16(1.0f));
  std::vector<std::uint8_t> q_ = std::vector<std::uint8_t>(4096);
  std::vector<float> s_ = std::vector<float>(256);
  tensor_view x(dims d) { return tensor_view(x_.data(), dtype::bf16, d); }
  tensor_view q(dims d) { return tensor_view(q_.data(), dtype::fp8_e4m3, d); }
  tensor_view s(dims d) { return tensor_view(s_.data(), dtype::f32, d); }
};

TEST_F(QuantErrors, KNotMultipleOf128NamesK) {
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({2, 96}), q({2, 96}), s({2, 1}), scale_layout::row_major,
                                 stream_);
      },
      {"multiple of 128", "K = 96"});
}

TEST_F(QuantErrors, WrongDtypesAreNamed) {
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({2, 128}), tensor_view(q_.data(), dtype::u8, {2, 128}),
                                 s({2, 1}), scale_layout::row_major, stream_);
      },
      {"x bf16, q fp8_e4m3, scales f32", "q u8"});
}

TEST_F(QuantErrors, WrongScaleShapeNamesTheLayoutAndShape) {
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({4, 256}), q({4, 256}), s({4, 2}), scale_layout::k_major,
                                 stream_);
      },
      {"k_major scales needs them [2, 4]", "got [4, 2]"});
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({4, 256}), q({4, 256}), s({2, 4}), scale_layout::row_major,
                                 stream_);
      },
      {"row_major scales needs them [4, 2]"});
}

TEST_F(QuantErrors, BadStridesAreRejected) {
  tensor_view const transposed = s({4, 2}).transpose(0, 1);  // [2, 4], strides [1, 2]
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({4, 256}), q({4, 256}), transposed, scale_layout::k_major,
                                 stream_);
      },
      {"contiguous", "strides [1, 2]"});
  tensor_view const odd(x_.data(), dtype::bf16, {2, 128}, {132, 1}, device::cpu());
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, odd, q({2, 128}), s({2, 1}), scale_layout::row_major,
                                 stream_);
      },
      {"multiples of 8"});
}

TEST_F(QuantErrors, OverlapAndDeviceAreRejected) {
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({2, 128}),
                                 tensor_view(x_.data() + 64, dtype::fp8_e4m3, {2, 128}), s({2, 1}),
                                 scale_layout::row_major, stream_);
      },
      {"disjoint"});
  test::expect_error(
      [&] {
        quantize_per_token_group(cpu_, x({2, 128}), q({2, 128}),
                                 tensor_view(s_.data(), dtype::f32, {2, 1}, device::cuda(0)),
                                 scale_layout::row_major, stream_);
      },
      {"needs every view there", "scales on cuda:0"});
}

}  // namespace
}  // namespace lightcore
