// convert on the CPU backend: every supported pair on fresh random inputs against the scalar
// numeric types, edge encodings checked against hand-derived bits (NaN, +-Inf, +-0, ties,
// saturation, subnormals), exhaustive fp8 decoding, and the errors for bad arguments.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore {
namespace {

using kernels::convert;

template <class S, class D>
struct cast {
  using src = S;
  using dst = D;
};
// Written out rather than generated from kernels::convert_pairs, so that the table is tested too.
using supported_casts =
    ::testing::Types<cast<float, bf16>, cast<bf16, float>, cast<float, fp16>, cast<fp16, float>,
                     cast<float, fp8_e4m3>, cast<fp8_e4m3, float>, cast<bf16, fp8_e4m3>,
                     cast<fp8_e4m3, bf16>>;
constexpr std::size_t supported_cast_count = 8;

struct cast_names {
  template <class C>
  static std::string GetName(int) {
    return std::string(name_of(dtype_v<typename C::src>)) + "_to_" +
           std::string(name_of(dtype_v<typename C::dst>));
  }
};

template <class C>
class ConvertCpu : public ::testing::Test {};
TYPED_TEST_SUITE(ConvertCpu, supported_casts, cast_names);

TYPED_TEST(ConvertCpu, IsInTheTable) {
  using Src = typename TypeParam::src;
  using Dst = typename TypeParam::dst;
  EXPECT_TRUE(kernels::is_convert_supported(dtype_v<Src>, dtype_v<Dst>));
  EXPECT_EQ(kernels::convert_pairs.size(), supported_cast_count)
      << "the table and this test's list of casts disagree: " << kernels::supported_convert_pairs();
}

// Exact agreement, bit for bit (NaN encodings included), with Dst(float(x)) of the numeric types:
// the reference does no arithmetic of its own, so there is no tolerance to justify.
TYPED_TEST(ConvertCpu, MatchesScalarTypesOnRandomInputs) {
  using Src = typename TypeParam::src;
  using Dst = typename TypeParam::dst;
  backend::cpu cpu;
  auto const stream = cpu.make_stream();
  auto rng = test::test_rng();
  for (dims const& shape : {dims{}, dims{0}, dims{1}, dims{7}, dims{3, 5}, dims{2, 3, 129},
                            dims{4099}, dims{64, 1024}}) {
    SCOPED_TRACE(::testing::Message() << "shape " << shape);
    auto const n = std::size_t(shape.product());
    std::vector<Src> src(n);
    test::fill_random(dtype_v<Src>, src.data(), n, rng);
    std::vector<Dst> got(n);
    std::memset(got.data(), 0xFF, n * sizeof(Dst));
    convert(cpu, tensor_view(src.data(), dtype_v<Src>, shape),
            tensor_view(got.data(), dtype_v<Dst>, shape), stream);
    std::vector<Dst> want(n);
    for (std::size_t i = 0; i < n; ++i) want[i] = Dst(static_cast<float>(src[i]));
    EXPECT_EQ(
        test::bit_mismatches(got.data(), want.data(), n, dtype_v<Dst>, src.data(), dtype_v<Src>),
        "");
  }
}

// ---------------------------------------------------------------------------------------------
// Edge encodings, derived by hand from the formats (not from the numeric types)
// ---------------------------------------------------------------------------------------------

struct edge {
  std::uint32_t src;   // source encoding
  std::uint32_t want;  // destination encoding
  char const* what;
};

void expect_edges(dtype src_type, dtype dst_type, std::initializer_list<edge> edges) {
  std::size_t const n = edges.size(), ss = size_of(src_type), ds = size_of(dst_type);
  std::vector<unsigned char> src(n * ss), got(n * ds, 0xFF);
  std::size_t i = 0;
  for (edge const& e : edges) std::memcpy(src.data() + ss * i++, &e.src, ss);  // low bytes
  backend::cpu cpu;
  convert(cpu, tensor_view(src.data(), src_type, {std::int64_t(n)}),
          tensor_view(got.data(), dst_type, {std::int64_t(n)}), cpu.make_stream());
  i = 0;
  for (edge const& e : edges) {
    EXPECT_EQ(test::element_bits(got.data(), i++, ds), e.want)
        << src_type << " -> " << dst_type << ": " << e.what << " (0x" << std::hex << e.src << ")";
  }
}

TEST(ConvertEdges, F32ToBf16) {
  expect_edges(dtype::f32, dtype::bf16,
               {{0x3F80'0000, 0x3F80, "1"},
                {0x8000'0000, 0x8000, "-0"},
                {0x7F80'0000, 0x7F80, "+Inf"},
                {0xFF80'0000, 0xFF80, "-Inf"},
                {0x7FC0'0000, 0x7FFF, "NaN becomes the canonical NaN"},
                {0xFFC0'0001, 0x7FFF, "-NaN with payload becomes the canonical NaN"},
                {0x3F80'8000, 0x3F80, "1 + 2^-8: a tie, to even (down)"},
                {0x3F81'8000, 0x3F82, "1 + 3*2^-8: a tie, to even (up)"},
                {0x3F80'8001, 0x3F81, "just above a tie rounds up"},
                {0x7F7F'FFFF, 0x7F80, "FLT_MAX rounds to +Inf"},
                {0x0000'0001, 0x0000, "smallest float denormal rounds to 0"},
                {0x0001'0000, 0x0001, "a bf16 subnormal, exact"},
                {0x0001'8000, 0x0002, "a subnormal tie, to even"},
                {0x8001'0000, 0x8001, "a negative subnormal"}});
}

TEST(ConvertEdges, Bf16ToF32) {
  expect_edges(dtype::bf16, dtype::f32,
               {{0x3F80, 0x3F80'0000, "1"},
                {0x8000, 0x8000'0000, "-0"},
                {0x0001, 0x0001'0000, "smallest subnormal stays a float denormal"},
                {0xFF80, 0xFF80'0000, "-Inf"},
                {0x7FC1, 0x7FC1'0000, "NaN keeps its payload (a shift, as on CUDA)"},
                {0xFFFF, 0xFFFF'0000, "-NaN keeps sign and payload"}});
}

TEST(ConvertEdges, F32ToF16) {
  expect_edges(dtype::f32, dtype::f16,
               {{0x3F80'0000, 0x3C00, "1"},
                {0x8000'0000, 0x8000, "-0"},
                {0x477F'E000, 0x7BFF, "65504, the largest finite"},
                {0x477F'EFFF, 0x7BFF, "just below 65520 rounds down"},
                {0x477F'F000, 0x7C00, "65520: the tie goes to the even +Inf"},
                {0xFF80'0000, 0xFC00, "-Inf"},
                {0x7FC0'0000, 0x7FFF, "NaN becomes the canonical NaN"},
                {0xFFC0'0000, 0x7FFF, "-NaN becomes the canonical NaN"},
                {0x3880'0000, 0x0400, "2^-14, the smallest normal"},
                {0x3380'0000, 0x0001, "2^-24, the smallest subnormal"},
                {0x3300'0000, 0x0000, "2^-25: a tie, to even zero"},
                {0x3340'0000, 0x0001, "1.5 * 2^-25 rounds up"},
                {0x33C0'0000, 0x0002, "1.5 * 2^-24: a tie, to even"},
                {0x0000'0001, 0x0000, "smallest float denormal rounds to 0"}});
}

TEST(ConvertEdges, F16ToF32) {
  expect_edges(dtype::f16, dtype::f32,
               {{0x3C00, 0x3F80'0000, "1"},
                {0x0001, 0x3380'0000, "smallest subnormal, 2^-24"},
                {0x8001, 0xB380'0000, "negative subnormal"},
                {0x7BFF, 0x477F'E000, "65504"},
                {0x7C00, 0x7F80'0000, "+Inf"},
                {0xFC00, 0xFF80'0000, "-Inf"},
                {0x7E00, 0x7FFF'FFFF, "NaN becomes CUDA's canonical float NaN"},
                {0xFE01, 0x7FFF'FFFF, "-NaN too"}});
}

TEST(ConvertEdges, F32ToFp8) {
  expect_edges(dtype::f32, dtype::fp8_e4m3,
               {{0x3F80'0000, 0x38, "1"},
                {0x8000'0000, 0x80, "-0"},
                {0x43E0'0000, 0x7E, "448, the largest finite"},
                {0x43D8'0000, 0x7E, "432: a tie between 416 and 448, to even (448)"},
                {0x43D0'0000, 0x7D, "416"},
                {0x43E8'0000, 0x7E, "464 rounds to 448"},
                {0x43F0'0000, 0x7E, "480 saturates to 448"},
                {0xF149'F2CA, 0xFE, "-1e30 saturates to -448"},
                {0x7F80'0000, 0x7E, "+Inf saturates to 448"},
                {0xFF80'0000, 0xFE, "-Inf saturates to -448"},
                {0x7FC0'0000, 0x7F, "NaN"},
                {0xFFC0'0000, 0x7F, "-NaN becomes the positive NaN"},
                {0x3C80'0000, 0x08, "2^-6, the smallest normal"},
                {0x3B00'0000, 0x01, "2^-9, the smallest subnormal"},
                {0xBB00'0000, 0x81, "-2^-9"},
                {0x3A80'0000, 0x00, "2^-10: a tie, to even zero"},
                {0x3AC0'0000, 0x01, "1.5 * 2^-10 rounds up"},
                {0x3B40'0000, 0x02, "1.5 * 2^-9: a tie, to even"},
                {0x3F88'0000, 0x38, "1.0625: a tie, to even (down)"},
                {0x3F98'0000, 0x3A, "1.1875: a tie, to even (up)"},
                {0x0000'0001, 0x00, "a float denormal rounds to 0"}});
}

TEST(ConvertEdges, Bf16ToFp8) {
  expect_edges(dtype::bf16, dtype::fp8_e4m3,
               {{0x3F80, 0x38, "1"},
                {0x8000, 0x80, "-0"},
                {0x43E0, 0x7E, "448"},
                {0x43E8, 0x7E, "464 rounds to 448"},
                {0x7F80, 0x7E, "+Inf saturates"},
                {0xFF80, 0xFE, "-Inf saturates"},
                {0x7FC0, 0x7F, "NaN"},
                {0xFFC1, 0x7F, "-NaN becomes the positive NaN"},
                {0x3B00, 0x01, "2^-9"},
                {0x3A80, 0x00, "2^-10: a tie, to even zero"},
                {0x3AC0, 0x01, "1.5 * 2^-10 rounds up"},
                {0x0001, 0x00, "a bf16 subnormal rounds to 0"},
                {0x3F88, 0x38, "1.0625: a tie, to even (down)"},
                {0x3F98, 0x3A, "1.1875: a tie, to even (up)"}});
}

// Every fp8 encoding, decoded by the format's definition: (-1)^s * (8 + m) * 2^(e - 10) for
// e > 0, (-1)^s * m * 2^-9 for e == 0; S.1111.111 is NaN.
std::uint32_t fp8_e4m3_as_float_bits(unsigned b) {
  if ((b & 0x7Fu) == 0x7Fu) return 0x7FFF'FFFF;  // CUDA's float NaN for both fp8 NaN codes
  int const e = int(b >> 3) & 0xF;
  int const m = int(b) & 7;
  float const magnitude = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(float(8 + m), e - 10);
  return std::bit_cast<std::uint32_t>((b & 0x80u) ? -magnitude : magnitude);
}

TEST(ConvertEdges, Fp8ToF32AndBf16Exhaustive) {
  std::vector<std::uint8_t> src(256);
  for (unsigned b = 0; b < 256; ++b) src[b] = std::uint8_t(b);
  std::vector<std::uint32_t> f32(256);
  std::vector<std::uint16_t> bf(256);
  backend::cpu cpu;
  convert(cpu, tensor_view(src.data(), dtype::fp8_e4m3, {256}),
          tensor_view(f32.data(), dtype::f32, {256}), cpu.make_stream());
  convert(cpu, tensor_view(src.data(), dtype::fp8_e4m3, {256}),
          tensor_view(bf.data(), dtype::bf16, {256}), cpu.make_stream());
  for (unsigned b = 0; b < 256; ++b) {
    std::uint32_t const want = fp8_e4m3_as_float_bits(b);
    EXPECT_EQ(f32[b], want) << "fp8 0x" << std::hex << b << " -> f32";
    // Every fp8 value is exact in bf16 (3 of its 7 mantissa bits, exponents well inside its range).
    std::uint32_t const want_bf16 = (b & 0x7Fu) == 0x7Fu ? 0x7FFFu : want >> 16;
    EXPECT_EQ(bf[b], want_bf16) << "fp8 0x" << std::hex << b << " -> bf16";
  }
}

// bf16 -> fp8 rounds once, exactly like f32 -> fp8 of the same (exactly widened) value: checked on
// all 65536 bf16 encodings.
TEST(ConvertEdges, Bf16ToFp8AgreesWithF32ToFp8Exhaustive) {
  constexpr std::int64_t n = 1 << 16;
  std::vector<std::uint16_t> bf(n);
  std::vector<std::uint32_t> f32(n);
  for (std::int64_t i = 0; i < n; ++i) {
    bf[i] = std::uint16_t(i);
    f32[i] = std::uint32_t(i) << 16;
  }
  std::vector<std::uint8_t> via_bf16(n), via_f32(n);
  backend::cpu cpu;
  convert(cpu, tensor_view(bf.data(), dtype::bf16, {n}),
          tensor_view(via_bf16.data(), dtype::fp8_e4m3, {n}), cpu.make_stream());
  convert(cpu, tensor_view(f32.data(), dtype::f32, {n}),
          tensor_view(via_f32.data(), dtype::fp8_e4m3, {n}), cpu.make_stream());
  EXPECT_EQ(test::bit_mismatches(via_bf16.data(), via_f32.data(), n, dtype::fp8_e4m3, bf.data(),
                                 dtype::bf16),
            "");
}

// ---------------------------------------------------------------------------------------------
// Bad arguments: lightcore::error saying what was wrong and what is allowed
// ---------------------------------------------------------------------------------------------

class ConvertErrors : public ::testing::Test {
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<float> a_ = std::vector<float>(64, 1.0f);
  std::vector<float> b_ = std::vector<float>(64, 2.0f);
};

TEST_F(ConvertErrors, UnsupportedPairNamesItAndListsTheTable) {
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {8}),
                tensor_view(b_.data(), dtype::i32, {8}), stream_);
      },
      {"convert from f32 to i32 is not supported", "supported: f32->bf16, bf16->f32",
       "bf16->fp8_e4m3, fp8_e4m3->bf16"});
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::bf16, {8}),
                tensor_view(b_.data(), dtype::f16, {8}), stream_);
      },
      {"convert from bf16 to f16 is not supported"});
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {8}),
                tensor_view(b_.data(), dtype::f32, {8}), stream_);
      },
      {"convert from f32 to f32 is not supported"});
}

TEST_F(ConvertErrors, ShapeMismatchNamesBothShapes) {
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {2, 3}),
                tensor_view(b_.data(), dtype::bf16, {3, 2}), stream_);
      },
      {"equal shapes", "source is [2, 3], destination [3, 2]"});
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {6}),
                tensor_view(b_.data(), dtype::bf16, {2, 3}), stream_);
      },
      {"equal shapes", "[6]", "[2, 3]"});
}

TEST_F(ConvertErrors, NonContiguousViewIsRejected) {
  tensor_view const transposed = tensor_view(a_.data(), dtype::f32, {4, 8}).transpose(0, 1);
  test::expect_error(
      [&] {
        convert(cpu_, transposed, tensor_view(b_.data(), dtype::bf16, {8, 4}), stream_);
      },
      {"contiguous", "strides [1, 8]", "(not contiguous)"});
  tensor_view const every_other =
      tensor_view(b_.data(), dtype::bf16, {8, 8}).slice(1, 0, 4);  // row stride 8, 4 columns
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {8, 4}), every_other, stream_);
      },
      {"contiguous", "(not contiguous)"});
}

TEST_F(ConvertErrors, ViewOnAnotherDeviceIsRejected) {
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {8}, device::cuda(0)),
                tensor_view(b_.data(), dtype::bf16, {8}), stream_);
      },
      {"convert on cpu needs both views there", "source is on cuda:0"});
}

TEST_F(ConvertErrors, OverlappingViewsAreRejected) {
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(a_.data(), dtype::f32, {16}),
                tensor_view(a_.data() + 4, dtype::bf16, {16}), stream_);
      },
      {"disjoint"});
}

TEST_F(ConvertErrors, NullDataIsRejected) {
  test::expect_error(
      [&] {
        convert(cpu_, tensor_view(nullptr, dtype::f32, {16}),
                tensor_view(b_.data(), dtype::bf16, {16}), stream_);
      },
      {"null pointer"});
  // An empty view may have no memory: nothing to do, no error.
  convert(cpu_, tensor_view(nullptr, dtype::f32, {0, 16}),
          tensor_view(nullptr, dtype::bf16, {0, 16}), stream_);
}

}  // namespace
}  // namespace lightcore
