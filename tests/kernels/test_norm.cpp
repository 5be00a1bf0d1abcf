// norm on the CPU backend: the reference against the formula evaluated in double with the same
// bf16 rounding points, the fused variant against add-then-norm, in-place and strided views, and
// the errors for bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/norm/norm.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore {
namespace {

using kernels::fused_add_rmsnorm;
using kernels::rmsnorm;

constexpr float deepseek_eps = 1e-6f;

// Rows of bf16 values around zero, each row scaled by 2^s with s uniform in [-12, 8]: the small
// rows put the mean square near eps (1e-6), so that eps matters. Never all zeros.
std::vector<bf16> random_rows(std::int64_t rows, std::int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> scale(-12, 8);
  std::vector<bf16> v(std::size_t(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    int const s = scale(rng);
    for (std::int64_t c = 0; c < cols; ++c)
      v[std::size_t(r * cols + c)] = bf16(std::ldexp(normal(rng), s));
  }
  return v;
}

// Weights as checkpoints have them: positive and negative, magnitudes around 1.
std::vector<bf16> random_weight(std::int64_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (auto& w : v) w = bf16(dist(rng));
  return v;
}

// The formula in double: y = x / sqrt(mean(x^2) + eps) exactly (up to double rounding), then the
// reference's rounding points: bf16(y), then bf16(w * bf16(y)).
//
// The reference computes y in fp32: the exact sum of squares rounded once, / H, + eps, the
// reciprocal square root and x * inv_rms each round once more, so its y is within 6 * 2^-24
// < 2^-21 (relative) of the exact one. Its bf16(y) is therefore bf16 of some value in
// y * [1 - delta, 1 + delta] with delta = 2^-20 (a margin of 2): one of the (equal or adjacent)
// roundings of the two ends, and out is w times one of them, rounded. Every element must be one
// of these two; only where the fp32 error moved bf16(y) past a rounding boundary (rare:
// none in 1.3M elements when this was written, at most ~2^-21 / 2^-8 ~ 1e-4) the far one.
struct bracket_stats {
  std::int64_t outside = 0;      // elements that are neither candidate (must be 0)
  std::int64_t not_nearest = 0;  // elements that are the candidate of the far end
};

constexpr double bracket_delta = 0x1p-20;

bracket_stats check_against_double(std::vector<bf16> const& x, std::vector<bf16> const& weight,
                                   std::vector<bf16> const& out, std::int64_t rows,
                                   std::int64_t cols, float eps) {
  bracket_stats s;
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) {
      double const v = float(x[std::size_t(r * cols + c)]);
      sum_sq += v * v;
    }
    double const inv = 1.0 / std::sqrt(sum_sq / double(cols) + double(eps));
    for (std::int64_t c = 0; c < cols; ++c) {
      std::size_t const i = std::size_t(r * cols + c);
      double const y = double(float(x[i])) * inv;
      float const w = float(weight[std::size_t(c)]);
      float const nearest = float(bf16(w * float(bf16(float(y)))));
      float const lo = float(bf16(w * float(bf16(float(y * (1.0 - bracket_delta))))));
      float const hi = float(bf16(w * float(bf16(float(y * (1.0 + bracket_delta))))));
      float const got = float(out[i]);
      if (got == nearest) continue;
      if (got == lo || got == hi) {
        ++s.not_nearest;
      } else {
        ++s.outside;
        if (s.outside <= 5)
          ADD_FAILURE() << "row " << r << " col " << c << ": x " << float(x[i]) << ", w " << w
                        << ": got " << got << ", want " << nearest << " (or " << lo << " / " << hi
                        << ")";
      }
    }
  }
  return s;
}

class NormCpu : public ::testing::TestWithParam<std::int64_t> {  // the hidden size
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
};

TEST_P(NormCpu, MatchesDoubleFormulaWithTheSameRoundingPoints) {
  std::int64_t const hidden = GetParam();
  auto rng = test::test_rng();
  for (std::int64_t const rows : {1, 3, 64}) {
    SCOPED_TRACE(::testing::Message() << "rows " << rows << ", H " << hidden);
    auto const x = random_rows(rows, hidden, rng);
    auto const w = random_weight(hidden, rng);
    std::vector<bf16> out(x.size(), bf16::quiet_nan());
    rmsnorm(cpu_, tensor_view(const_cast<bf16*>(x.data()), dtype::bf16, {rows, hidden}),
            tensor_view(const_cast<bf16*>(w.data()), dtype::bf16, {hidden}),
            tensor_view(out.data(), dtype::bf16, {rows, hidden}), deepseek_eps, stream_);
    bracket_stats const s = check_against_double(x, w, out, rows, hidden, deepseek_eps);
    EXPECT_EQ(s.outside, 0);
    // At most ~1e-4 expected (see above); 1e-2 still fails a misplaced rounding point: w * y
    // without rounding y to bf16 first puts most rows over it.
    EXPECT_LE(double(s.not_nearest), 1e-2 * double(x.size()) + 1) << s.not_nearest << " elements";
  }
}

// The fused variant is residual = bf16(residual + x), then rmsnorm(residual), bit for bit.
TEST_P(NormCpu, FusedEqualsAddThenNorm) {
  std::int64_t const hidden = GetParam(), rows = 17;
  auto rng = test::test_rng();
  auto const x = random_rows(rows, hidden, rng);
  auto const r0 = random_rows(rows, hidden, rng);
  auto const w = random_weight(hidden, rng);
  auto r = r0;
  std::vector<bf16> out(x.size(), bf16::quiet_nan());
  fused_add_rmsnorm(cpu_, tensor_view(r.data(), dtype::bf16, {rows, hidden}),
                    tensor_view(const_cast<bf16*>(x.data()), dtype::bf16, {rows, hidden}),
                    tensor_view(const_cast<bf16*>(w.data()), dtype::bf16, {hidden}),
                    tensor_view(out.data(), dtype::bf16, {rows, hidden}), deepseek_eps, stream_);
  std::vector<bf16> sum(x.size()), want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) sum[i] = bf16(float(r0[i]) + float(x[i]));
  rmsnorm(cpu_, tensor_view(sum.data(), dtype::bf16, {rows, hidden}),
          tensor_view(const_cast<bf16*>(w.data()), dtype::bf16, {hidden}),
          tensor_view(want.data(), dtype::bf16, {rows, hidden}), deepseek_eps, stream_);
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(r[i].bits, sum[i].bits) << "residual element " << i;
    ASSERT_EQ(out[i].bits, want[i].bits) << "output element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(DeepSeekAndOddSizes, NormCpu,
                         ::testing::Values<std::int64_t>(7168, 2048, 1536, 512, 8, 264, 8200),
                         [](auto const& p) { return "H" + std::to_string(p.param); });

// A row of zeros normalises to zeros (1 / sqrt(eps) times 0), not NaN.
TEST(NormCpuEdges, ZeroRowGivesZeros) {
  backend::cpu cpu;
  std::vector<bf16> x(16, bf16(0.0f)), w(16, bf16(1.5f)), out(16, bf16::quiet_nan());
  rmsnorm(cpu, tensor_view(x.data(), dtype::bf16, {1, 16}),
          tensor_view(w.data(), dtype::bf16, {16}), tensor_view(out.data(), dtype::bf16, {1, 16}),
          deepseek_eps, cpu.make_stream());
  for (bf16 const o : out) EXPECT_EQ(float(o), 0.0f);
}

// A [rows, 512] slice of a [rows, 576] tensor (DeepSeek's kv_lora part of kv_a) and an in-place
// norm (out = x) give what contiguous copies give; the columns past the slice stay untouched.
TEST(NormCpuEdges, StridedRowsAndInPlace) {
  backend::cpu cpu;
  auto const stream = cpu.make_stream();
  auto rng = test::test_rng();
  std::int64_t const rows = 5, wide = 576, hidden = 512;
  auto const wide_x = random_rows(rows, wide, rng);
  auto const w = random_weight(hidden, rng);
  tensor_view const wv(const_cast<bf16*>(w.data()), dtype::bf16, {hidden});
  std::vector<bf16> packed(std::size_t(rows * hidden)), want(packed.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < hidden; ++c)
      packed[std::size_t(r * hidden + c)] = wide_x[std::size_t(r * wide + c)];
  rmsnorm(cpu, tensor_view(packed.data(), dtype::bf16, {rows, hidden}), wv,
          tensor_view(want.data(), dtype::bf16, {rows, hidden}), deepseek_eps, stream);

  auto in_place = wide_x;
  tensor_view const slice =
      tensor_view(in_place.data(), dtype::bf16, {rows, wide}).slice(1, 0, hidden);
  rmsnorm(cpu, slice, wv, slice, deepseek_eps, stream);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < wide; ++c) {
      std::size_t const i = std::size_t(r * wide + c);
      std::uint16_t const expect =
          c < hidden ? want[std::size_t(r * hidden + c)].bits : wide_x[i].bits;
      ASSERT_EQ(in_place[i].bits, expect) << "row " << r << " col " << c;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bad arguments: lightcore::error saying what was wrong and what is allowed
// ---------------------------------------------------------------------------------------------

class NormErrors : public ::testing::Test {
 protected:
  tensor_view view(dims shape, dtype t = dtype::bf16) {
    return tensor_view(buffer_.data(), t, shape);
  }
  tensor_view other(dims shape) { return tensor_view(other_.data(), dtype::bf16, shape); }
  tensor_view weight(std::int64_t n) { return tensor_view(weight_.data(), dtype::bf16, {n}); }
  void norm(tensor_view const& x, tensor_view const& w, tensor_view const& out,
            float eps = deepseek_eps) {
    rmsnorm(cpu_, x, w, out, eps, stream_);
  }

  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<float> buffer_ = std::vector<float>(4096, 1.0f);
  std::vector<float> other_ = std::vector<float>(4096, 1.0f);
  std::vector<bf16> weight_ = std::vector<bf16>(256, bf16(1.0f));
};

TEST_F(NormErrors, DtypeOtherThanBf16IsRejected) {
  test::expect_error(
      [&] {
        norm(view({2, 16}, dtype::f32), weight(16), other({2, 16}));
      },
      {"rmsnorm supports bf16 only", "x of dtype f32"});
  test::expect_error(
      [&] {
        norm(view({2, 16}), tensor_view(other_.data(), dtype::f32, {16}), other({2, 16}));
      },
      {"bf16 only", "weight of dtype f32"});
}

TEST_F(NormErrors, HiddenSizeNotAMultipleOf8IsNamed) {
  test::expect_error(
      [&] {
        norm(view({2, 12}), weight(12), other({2, 12}));
      },
      {"multiple of 8", "got H = 12"});
  test::expect_error(
      [&] {
        norm(view({1, 16392}), weight(8), other({1, 16392}));
      },
      {"up to 16384", "got H = 16392"});
}

TEST_F(NormErrors, ShapeMismatchNamesBothShapes) {
  test::expect_error(
      [&] {
        norm(view({2, 16}), weight(16), other({3, 16}));
      },
      {"out of shape [2, 16]", "got [3, 16]"});
  test::expect_error([&] { norm(view({32}), weight(32), other({32})); },
                     {"x of shape [rows, hidden]", "got [32]"});
  test::expect_error(
      [&] {
        fused_add_rmsnorm(cpu_, other({2, 8}), view({2, 16}), weight(16),
                          tensor_view(other_.data() + 64, dtype::bf16, {2, 16}), deepseek_eps,
                          stream_);
      },
      {"fused_add_rmsnorm needs residual of shape [2, 16]", "got [2, 8]"});
}

TEST_F(NormErrors, WeightLengthMustBeTheHiddenSize) {
  test::expect_error(
      [&] {
        norm(view({2, 16}), weight(24), other({2, 16}));
      },
      {"weight of shape [16]", "got [24]"});
}

TEST_F(NormErrors, NonContiguousLastDimensionIsRejected) {
  tensor_view const transposed = view({16, 8}).transpose(0, 1);  // [8, 16], column stride 8
  test::expect_error(
      [&] {
        norm(transposed, weight(16), other({8, 16}));
      },
      {"contiguous last dimension", "strides [1, 8]"});
  tensor_view const odd_rows = view({4, 20}).slice(1, 0, 16);  // row stride 20: not 16 bytes
  test::expect_error(
      [&] {
        norm(odd_rows, weight(16), other({4, 16}));
      },
      {"multiples of 8 elements"});
}

TEST_F(NormErrors, MisalignedOverlappingOrBadEpsIsRejected) {
  tensor_view const shifted = view({2, 24}).slice(1, 1, 17);  // starts 2 bytes in
  test::expect_error([&] { norm(shifted, weight(16), other({2, 16})); }, {"16-byte aligned"});
  tensor_view const x = view({4, 16});
  tensor_view const overlapping = view({6, 16}).slice(0, 2, 6);
  test::expect_error([&] { norm(x, weight(16), overlapping); }, {"out to be x itself or disjoint"});
  test::expect_error([&] { norm(x, weight(16), other({4, 16}), -1.0f); }, {"eps >= 0"});
  test::expect_error(
      [&] {
        norm(x, weight(16), other({4, 16}), std::numeric_limits<float>::quiet_NaN());
      },
      {"finite eps"});
  test::expect_error(
      [&] {
        fused_add_rmsnorm(cpu_, x, x, weight(16), other({4, 16}), deepseek_eps, stream_);
      },
      {"residual disjoint from x, out and weight"});
}

TEST_F(NormErrors, ViewOnAnotherDeviceIsRejected) {
  test::expect_error(
      [&] {
        norm(tensor_view(buffer_.data(), dtype::bf16, {2, 16}, device::cuda(0)), weight(16),
             other({2, 16}));
      },
      {"rmsnorm on cpu needs x there", "it is on cuda:0"});
}

}  // namespace
}  // namespace lightcore
