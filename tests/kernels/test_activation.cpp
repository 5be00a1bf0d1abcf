// silu_and_mul on the CPU backend: the reference against an independent double-precision formula
// with the same rounding points (silu output to bf16, then the product to bf16), strided views,
// edge values, and the errors for bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "activation_test_util.hpp"
#include "convert_test_util.hpp"
#include "kernels/activation/activation.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore {
namespace {

using kernels::silu_and_mul;

// The definition in double: t = silu(g) rounded to bf16 (through float: every double silu of a
// bf16 gate that is not tiny rounds the same way through float as directly), out = t * u exactly
// (a product of two bf16 values fits in a float) rounded to bf16.
bf16 silu_and_mul_double(bf16 gate, bf16 up, bf16* t_out = nullptr) {
  double const g = double(float(gate));
  bf16 const t = bf16(float(g / (1.0 + std::exp(-g))));
  if (t_out != nullptr) *t_out = t;
  return bf16(float(double(float(t)) * double(float(up))));
}

// Runs silu_and_mul on the CPU over `rows` rows of a [rows, 2 * cols] input whose rows are
// `in_stride` apart, and compares with silu_and_mul_double. The fp32 silu of the reference
// (std::exp, division) is within a few fp32 ulps of the double one, so t may differ by one bf16
// ulp when it lies at a rounding boundary; then out may differ by up to 2 bf16 ulps (t's ulp is up
// to 2^-7 relative, the result's at least 2^-8). Elsewhere out must be bit-identical, and such
// boundary cases must be rare (< 1%).
void check_rows(std::int64_t rows, std::int64_t cols, std::int64_t in_stride,
                std::int64_t out_stride) {
  SCOPED_TRACE(::testing::Message() << "rows " << rows << ", I " << cols << ", strides "
                                    << in_stride << "/" << out_stride);
  auto rng = test::test_rng();
  auto const in = test::random_bf16(std::size_t(rows * in_stride), 12.0f, rng);
  std::vector<bf16> out(std::size_t(rows * out_stride), bf16::quiet_nan());
  backend::cpu cpu;
  silu_and_mul(cpu,
               tensor_view(const_cast<bf16*>(in.data()), dtype::bf16, {rows, 2 * cols},
                           {in_stride, 1}, device::cpu()),
               tensor_view(out.data(), dtype::bf16, {rows, cols}, {out_stride, 1}, device::cpu()),
               cpu.make_stream());
  std::int64_t boundary = 0, bad = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      bf16 const g = in[std::size_t(r * in_stride + c)];
      bf16 const u = in[std::size_t(r * in_stride + cols + c)];
      bf16 t{};
      bf16 const want = silu_and_mul_double(g, u, &t);
      bf16 const got = out[std::size_t(r * out_stride + c)];
      bool const t_same = bf16(float(g) / (1.0f + std::exp(-float(g)))).bits == t.bits;
      boundary += !t_same;
      bool const ok = t_same ? got.bits == want.bits : test::bf16_ulp_distance(got, want) <= 2;
      if (!ok && ++bad <= 8)
        ADD_FAILURE() << "[" << r << ", " << c << "] gate " << g << " up " << u << ": got " << got
                      << ", want " << want;
    }
    for (std::int64_t c = cols; c < out_stride; ++c)
      EXPECT_EQ(out[std::size_t(r * out_stride + c)].bits, bf16::quiet_nan().bits)
          << "padding written at [" << r << ", " << c << "]";
  }
  EXPECT_EQ(bad, 0);
  EXPECT_LE(boundary, std::max<std::int64_t>(1, rows * cols / 100))
      << "silu rounded differently from the double formula too often";
}

TEST(SiluAndMulCpu, MatchesDoubleFormula) {
  for (std::int64_t cols : {8, 1408, 2048}) check_rows(3, cols, 2 * cols, cols);
  check_rows(1, 18432, 2 * 18432, 18432);
  check_rows(2, 10944, 2 * 10944, 10944);
}

TEST(SiluAndMulCpu, StridedViews) {
  check_rows(5, 64, 2 * 64 + 24, 64 + 8);  // a slice of a wider buffer, padded output rows
}

TEST(SiluAndMulCpu, EdgeValues) {
  // gate 0 -> 0; gate 1 -> silu 0.7310586 -> bf16 0.73046875; large gate -> silu(g) = g; very
  // negative gate -> exp overflows to inf -> -0.
  std::vector<bf16> in = {bf16(0.0f), bf16(1.0f),  bf16(100.0f), bf16(-200.0f),
                          bf16(3.0f), bf16(-2.0f), bf16(2.0f),   bf16(-1.5f),
                          bf16(5.0f), bf16(1.0f),  bf16(0.5f),   bf16(7.0f),
                          bf16(0.0f), bf16(-1.0f), bf16(4.0f),   bf16(2.0f)};
  std::vector<bf16> out(8);
  backend::cpu cpu;
  silu_and_mul(cpu, tensor_view(in.data(), dtype::bf16, {1, 16}),
               tensor_view(out.data(), dtype::bf16, {1, 8}), cpu.make_stream());
  EXPECT_EQ(float(out[0]), 0.0f);
  EXPECT_EQ(float(out[1]), 0.73046875f);  // bf16(silu(1)) * 1
  EXPECT_EQ(float(out[2]), 50.0f);        // bf16(100) * 0.5
  EXPECT_EQ(float(out[3]), 0.0f);         // silu(-200) = -0, times 7
  EXPECT_EQ(out[3].bits, 0x8000) << "silu(-200) * 7 is -0";
  EXPECT_EQ(float(out[4]), 0.0f);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i].bits, silu_and_mul_double(in[i], in[8 + i]).bits);
}

class SiluAndMulErrors : public ::testing::Test {
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<bf16> a_ = std::vector<bf16>(1024, bf16(1.0f));
  std::vector<bf16> b_ = std::vector<bf16>(1024, bf16(2.0f));
  std::vector<float> f_ = std::vector<float>(1024, 1.0f);
  tensor_view in(dims shape) { return tensor_view(a_.data(), dtype::bf16, shape); }
  tensor_view out(dims shape) { return tensor_view(b_.data(), dtype::bf16, shape); }
};

TEST_F(SiluAndMulErrors, WrongDtypeNamesIt) {
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, tensor_view(f_.data(), dtype::f32, {2, 16}), out({2, 8}), stream_);
      },
      {"supports bf16 only", "input f32"});
}

TEST_F(SiluAndMulErrors, ShapeMismatchNamesShapes) {
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, in({2, 16}), out({2, 16}), stream_);
      },
      {"input [2, 32]", "got [2, 16]"});
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, in({3, 16}), out({2, 8}), stream_);
      },
      {"[tokens, 2 * I]", "got [3, 16]"});
  test::expect_error([&] { silu_and_mul(cpu_, in({32}), out({16}), stream_); },
                     {"input [tokens, 2 * I]", "[32]"});
}

TEST_F(SiluAndMulErrors, ColumnsNotMultipleOf8) {
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, in({2, 12}), out({2, 6}), stream_);
      },
      {"multiple of 8", "I = 6"});
}

TEST_F(SiluAndMulErrors, BadStridesAreRejected) {
  tensor_view const odd_rows(a_.data(), dtype::bf16, {2, 16}, {20, 1}, device::cpu());
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, odd_rows, out({2, 8}), stream_);
      },
      {"multiples of 8", "strides [20, 1]"});
  tensor_view const transposed = in({16, 8}).transpose(0, 1);
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, transposed, out({8, 8}), stream_);
      },
      {"unit column stride"});
}

TEST_F(SiluAndMulErrors, OverlapAndDeviceAreRejected) {
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, in({2, 16}), tensor_view(a_.data() + 8, dtype::bf16, {2, 8}), stream_);
      },
      {"disjoint"});
  test::expect_error(
      [&] {
        silu_and_mul(cpu_, tensor_view(a_.data(), dtype::bf16, {2, 16}, device::cuda(0)),
                     out({2, 8}), stream_);
      },
      {"silu_and_mul on cpu needs both views there", "input is on cuda:0"});
}

TEST_F(SiluAndMulErrors, EmptyIsANoOp) {
  silu_and_mul(cpu_, tensor_view(nullptr, dtype::bf16, {0, 16}),
               tensor_view(nullptr, dtype::bf16, {0, 8}), stream_);
}

}  // namespace
}  // namespace lightcore
