// bf16, fp16 and fp8_e4m3 on the host: layout, constant evaluation, and every conversion checked
// bit for bit against references that share no code with lightcore's.
//
// Tolerance: none. Decoding is exact and encoding is correctly rounded (ties to even), so results
// are compared as bit patterns, NaN included: a NaN result must be the exact encoding that CUDA
// produces (bf16 0x7FFF, fp16 0x7FFF, fp8 0x7F; float 0x7FFFFFFF from fp16/fp8 NaN codes), since
// kernels and checkpoints depend on it. Random inputs come from a fresh seed each run, printed so a
// failure can be replayed with LIGHTCORE_TEST_SEED=<seed>.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp16.hpp"
#include "lightcore/core/fp8.hpp"

namespace {

using lightcore::bf16;
using lightcore::fp16;
using lightcore::fp8_e4m3;

// ---- Layout and constant evaluation ---------------------------------------------------------

template <class T>
constexpr bool is_storage_type(std::size_t size) {
  return sizeof(T) == size && alignof(T) == size && std::is_trivially_copyable_v<T> &&
         std::is_standard_layout_v<T> && std::is_trivially_default_constructible_v<T> &&
         std::is_constructible_v<T, float> &&
         !std::is_convertible_v<float, T> &&  // rounds: explicit
         std::is_convertible_v<T, float>;     // exact: implicit
}
static_assert(is_storage_type<bf16>(2));
static_assert(is_storage_type<fp16>(2));
static_assert(is_storage_type<fp8_e4m3>(1));

// Conversions run in constant expressions, on the software path.
static_assert(bf16(1.0f).bits == 0x3F80);
static_assert(bf16(-2.5f).bits == 0xC020);
static_assert(bf16::from_bits(0x4049).to_float() == 3.140625f);
static_assert(fp16(1.0f).bits == 0x3C00);
static_assert(fp16(65520.0f).bits == 0x7C00);  // the tie above 65504 goes to the even Inf
static_assert(fp16::from_bits(0x0001).to_float() == 0x1p-24f);
static_assert(fp8_e4m3(1.0f).bits == 0x38);
static_assert(fp8_e4m3(1000.0f).bits == 0x7E && fp8_e4m3(-1e30f).bits == 0xFE);
static_assert(fp8_e4m3::from_bits(0x01).to_float() == 0x1p-9f);
static_assert(fp8_e4m3::max_finite().to_float() == 448.0f);
static_assert(std::numeric_limits<fp8_e4m3>::max().to_float() == 448.0f);
static_assert(std::numeric_limits<fp8_e4m3>::lowest().to_float() == -448.0f);
static_assert(std::numeric_limits<bf16>::epsilon().to_float() == 0x1p-7f);
static_assert(std::numeric_limits<fp16>::max().to_float() == 65504.0f);
static_assert(std::numeric_limits<fp16>::denorm_min().to_float() == 0x1p-24f);
static_assert(fp8_e4m3(bf16(3.3f)).bits == fp8_e4m3(3.3f).bits);  // cross-type through float

// ---- Reference description of each format ----------------------------------------------------

// Field widths and CUDA's NaN conventions, from the format definitions and CUDA's documentation;
// nothing here calls lightcore's conversions.
template <class T>
struct format;
template <>
struct format<bf16> {
  using storage = std::uint16_t;
  static constexpr int exponent_bits = 8, mantissa_bits = 7, bias = 127;
  static constexpr bool ieee_specials = true;  // all-ones exponent: Inf and NaNs
  static constexpr storage canonical_nan = 0x7FFF;
  // bf16 -> float is a 16-bit shift on CUDA's host path: NaN payloads survive.
  static std::uint32_t nan_to_float_bits(storage c) { return std::uint32_t{c} << 16; }
};
template <>
struct format<fp16> {
  using storage = std::uint16_t;
  static constexpr int exponent_bits = 5, mantissa_bits = 10, bias = 15;
  static constexpr bool ieee_specials = true;
  static constexpr storage canonical_nan = 0x7FFF;
  static std::uint32_t nan_to_float_bits(storage) { return 0x7FFF'FFFFu; }
};
template <>
struct format<fp8_e4m3> {
  using storage = std::uint8_t;
  static constexpr int exponent_bits = 4, mantissa_bits = 3, bias = 7;
  static constexpr bool ieee_specials = false;  // only S.1111.111 is special (NaN); saturating
  static constexpr storage canonical_nan = 0x7F;
  static std::uint32_t nan_to_float_bits(storage) { return 0x7FFF'FFFFu; }
};

template <class T>
constexpr std::uint32_t code_count =
    1u << (1 + format<T>::exponent_bits + format<T>::mantissa_bits);
template <class T>
constexpr std::uint32_t sign_bit = code_count<T> / 2;
template <class T>
constexpr std::uint32_t all_ones_exponent = (1u << format<T>::exponent_bits) - 1;
template <class T>
constexpr std::uint32_t mantissa_mask = (1u << format<T>::mantissa_bits) - 1;
// The largest finite magnitude code: just below Inf for IEEE-style formats, just below the NaN
// code for E4M3.
template <class T>
constexpr std::uint32_t max_finite_code_of() {
  if (format<T>::ieee_specials) return (all_ones_exponent<T> << format<T>::mantissa_bits) - 1;
  return sign_bit<T> - 2;
}
template <class T>
constexpr std::uint32_t max_finite_code = max_finite_code_of<T>();

template <class T>
bool is_nan_code(std::uint32_t c) {
  std::uint32_t const e = (c >> format<T>::mantissa_bits) & all_ones_exponent<T>;
  std::uint32_t const m = c & mantissa_mask<T>;
  if (format<T>::ieee_specials) return e == all_ones_exponent<T> && m != 0;
  return e == all_ones_exponent<T> && m == mantissa_mask<T>;
}

// The value of a non-NaN code, from its fields, exactly (every such value fits a double).
template <class T>
double reference_value(std::uint32_t c) {
  constexpr int m_bits = format<T>::mantissa_bits;
  std::uint32_t const e = (c >> m_bits) & all_ones_exponent<T>;
  std::uint32_t const m = c & mantissa_mask<T>;
  double magnitude;
  if (format<T>::ieee_specials && e == all_ones_exponent<T>) {
    magnitude = std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    magnitude = std::ldexp(static_cast<double>(m), 1 - format<T>::bias - m_bits);
  } else {
    magnitude = std::ldexp(static_cast<double>((1u << m_bits) | m),
                           static_cast<int>(e) - format<T>::bias - m_bits);
  }
  return (c & sign_bit<T>) != 0 ? -magnitude : magnitude;
}

// The value the code above the largest finite one would have if it were an ordinary number:
// 2^(emax+1) for IEEE-style formats (RNE rounds to Inf as if the exponent were unbounded), 480 for
// E4M3 (where that code is NaN, and the rounding saturates instead).
template <class T>
double value_above_max_finite() {
  constexpr int m_bits = format<T>::mantissa_bits;
  std::uint32_t const c = max_finite_code<T> + 1;
  std::uint32_t const e = (c >> m_bits) & all_ones_exponent<T>;
  return std::ldexp(static_cast<double>((1u << m_bits) | (c & mantissa_mask<T>)),
                    static_cast<int>(e) - format<T>::bias - m_bits);
}

// Positive finite code values in code order (which is value order).
template <class T>
std::vector<double> const& positive_values() {
  static std::vector<double> const values = [] {
    std::vector<double> v;
    for (std::uint32_t c = 0; c <= max_finite_code<T>; ++c) v.push_back(reference_value<T>(c));
    return v;
  }();
  return values;
}

template <class T>
std::uint32_t even_of(std::uint32_t lo, std::uint32_t hi) {
  return (lo & 1u) == 0 ? lo : hi;
}

// Round-to-nearest-even of x through the two neighbours found in the value table, compared in
// double (|x - neighbour| is exact in double for every float x). IEEE-style formats overflow to
// Inf past the RNE edge; E4M3 saturates to its largest finite value (__NV_SATFINITE).
template <class T>
std::uint32_t neighbour_reference(float x) {
  if (std::isnan(x)) return format<T>::canonical_nan;
  std::uint32_t const sign = std::signbit(x) ? sign_bit<T> : 0;
  double const ax = std::fabs(static_cast<double>(x));
  std::vector<double> const& v = positive_values<T>();
  std::uint32_t lo, hi;
  double v_lo, v_hi;
  if (ax >= v.back()) {
    if (!format<T>::ieee_specials) return sign | max_finite_code<T>;
    lo = max_finite_code<T>;
    hi = lo + 1;  // the Inf code
    v_lo = v.back();
    v_hi = value_above_max_finite<T>();
    if (ax >= v_hi) return sign | hi;
  } else {
    auto const it = std::upper_bound(v.begin(), v.end(), ax);  // v[hi] > ax >= v[lo]
    hi = static_cast<std::uint32_t>(it - v.begin());
    lo = hi - 1;
    v_lo = v[lo];
    v_hi = v[hi];
  }
  double const d_lo = ax - v_lo, d_hi = v_hi - ax;
  std::uint32_t const pick = d_lo < d_hi ? lo : d_hi < d_lo ? hi : even_of<T>(lo, hi);
  return sign | pick;
}

// E4M3 by brute force: the nearest of all finite codes of x's sign, ties to the even code (whose
// mantissa LSB is the code's LSB). Scanning only finite codes is what makes it saturate.
std::uint32_t fp8_brute_force_reference(float x) {
  if (std::isnan(x)) return 0x7F;
  std::uint32_t const sign = std::signbit(x) ? 0x80 : 0;
  if (std::isinf(x)) return sign | 0x7E;
  double const ax = std::fabs(static_cast<double>(x));
  std::uint32_t best = 0;
  double best_distance = std::numeric_limits<double>::infinity();
  std::vector<double> const& values = positive_values<fp8_e4m3>();  // codes 0x00..0x7E
  for (std::uint32_t c = 0; c < values.size(); ++c) {
    double const d = std::fabs(ax - values[c]);
    if (d < best_distance || (d == best_distance && (c & 1u) == 0)) {
      best = c;
      best_distance = d;
    }
  }
  return sign | best;
}

// ---- Helpers ---------------------------------------------------------------------------------

std::uint32_t float_bits(float x) { return std::bit_cast<std::uint32_t>(x); }
float bits_float(std::uint32_t u) { return std::bit_cast<float>(u); }

template <class T>
std::uint32_t encode(float x) {
  return T(x).bits;
}
template <class T>
float decode(std::uint32_t c) {
  return T::from_bits(static_cast<typename format<T>::storage>(c));  // implicit, exact
}

using lightcore::test::run_seed;  // LIGHTCORE_TEST_SEED=<n> replays a run

// Collects the first mismatches for a readable failure message, counts all of them.
class mismatches {
 public:
  void add(std::string const& what) {
    if (count_++ < max_shown) shown_ << "\n  " << what;
  }
  std::size_t count() const { return count_; }
  std::string text() const { return shown_.str(); }

 private:
  static constexpr std::size_t max_shown = 10;
  std::size_t count_ = 0;
  std::ostringstream shown_;
};

std::string hex(std::uint32_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << std::uppercase << v;
  return os.str();
}

std::string describe(float x, std::uint32_t got, std::uint32_t want) {
  std::ostringstream os;
  os.precision(9);
  os << "x=" << x << " (" << hex(float_bits(x)) << "): got " << hex(got) << ", want " << hex(want);
  return os.str();
}

// Random floats that cover a format's whole range: sign, a power of two from a quarter of the
// smallest subnormal up to four times the largest binade, and a random 23-bit mantissa.
template <class T>
float random_in_range(std::mt19937_64& rng) {
  int const lowest_exponent = 1 - format<T>::bias - format<T>::mantissa_bits - 2;
  int const highest_exponent = static_cast<int>(all_ones_exponent<T>) - format<T>::bias + 2;
  std::uniform_int_distribution<int> exponent(lowest_exponent, highest_exponent);
  std::uint32_t const bits = static_cast<std::uint32_t>(rng());
  float const significand = 1.0f + static_cast<float>(bits & 0x7F'FFFFu) * 0x1p-23f;
  float const magnitude = std::ldexp(significand, exponent(rng));
  return (bits & 0x8000'0000u) != 0 ? -magnitude : magnitude;
}

// ---- Typed tests over the three formats ------------------------------------------------------

template <class T>
class NumericFormat : public ::testing::Test {};
using formats = ::testing::Types<bf16, fp16, fp8_e4m3>;
TYPED_TEST_SUITE(NumericFormat, formats);

TYPED_TEST(NumericFormat, DecodesEveryCodeExactly) {
  using T = TypeParam;
  mismatches bad;
  for (std::uint32_t c = 0; c < code_count<T>; ++c) {
    std::uint32_t const got = float_bits(decode<T>(c));
    std::uint32_t const want =
        is_nan_code<T>(c)
            ? format<T>::nan_to_float_bits(static_cast<typename format<T>::storage>(c))
            : float_bits(static_cast<float>(reference_value<T>(c)));
    if (got != want) bad.add("code " + hex(c) + ": got " + hex(got) + ", want " + hex(want));
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text();
}

TYPED_TEST(NumericFormat, EncodesEveryCodeValueBackToItsCode) {
  using T = TypeParam;
  mismatches bad;
  for (std::uint32_t c = 0; c < code_count<T>; ++c) {
    float const x = decode<T>(c);
    std::uint32_t const want = is_nan_code<T>(c) ? format<T>::canonical_nan : c;
    if (encode<T>(x) != want) bad.add(describe(x, encode<T>(x), want));
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text();
}

// Every midpoint between adjacent codes (including the one past the largest finite value) ties
// to the even code, and the floats just beside it go to the nearer code. Both signs.
TYPED_TEST(NumericFormat, RoundsEveryMidpointToEvenAndItsNeighboursToNearest) {
  using T = TypeParam;
  mismatches bad;
  std::size_t checked = 0;
  for (std::uint32_t lo = 0; lo <= max_finite_code<T>; ++lo) {
    bool const last = lo == max_finite_code<T>;
    double const v_lo = reference_value<T>(lo);
    double const v_hi = last ? value_above_max_finite<T>() : reference_value<T>(lo + 1);
    float const mid = static_cast<float>((v_lo + v_hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (v_lo + v_hi) / 2) << "midpoint not exact in float";
    // Past the largest finite value E4M3 saturates: the "upper" code is the largest finite one.
    std::uint32_t const hi = last && !format<T>::ieee_specials ? lo : lo + 1;
    for (std::uint32_t const sign : {0u, sign_bit<T>}) {
      float const s = sign != 0 ? -1.0f : 1.0f;
      float const m = s * mid;
      float const above = std::nextafter(m, s * std::numeric_limits<float>::infinity());
      float const below = std::nextafter(m, 0.0f);
      std::uint32_t const want_mid =
          sign | (last && !format<T>::ieee_specials ? lo : even_of<T>(lo, hi));
      if (encode<T>(m) != want_mid) bad.add(describe(m, encode<T>(m), want_mid));
      if (encode<T>(above) != (sign | hi)) bad.add(describe(above, encode<T>(above), sign | hi));
      if (encode<T>(below) != (sign | lo)) bad.add(describe(below, encode<T>(below), sign | lo));
      checked += 3;
    }
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text() << "\n(" << checked << " inputs checked)";
}

// Uniform over all 2^32 float bit patterns (so NaNs, Infs, float denormals and out-of-range
// values all appear), plus as many floats spread over the format's own range.
TYPED_TEST(NumericFormat, RandomFloatsMatchTheNeighbourReference) {
  using T = TypeParam;
  constexpr std::size_t n = std::size_t{1} << 21;  // per kind of input; 4M in all
  std::mt19937_64 rng(run_seed() ^ code_count<T>);
  mismatches bad;
  for (std::size_t i = 0; i < 2 * n; ++i) {
    float const x = i < n ? bits_float(static_cast<std::uint32_t>(rng())) : random_in_range<T>(rng);
    std::uint32_t const want = neighbour_reference<T>(x);
    if (encode<T>(x) != want) bad.add(describe(x, encode<T>(x), want));
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text();
}

// Numeric comparisons come from the implicit conversion to float: NaN != NaN, +0 == -0.
TYPED_TEST(NumericFormat, ComparesByValueNotByBits) {
  using T = TypeParam;
  T const nan = T::from_bits(format<T>::canonical_nan);
  T const pos_zero = T::from_bits(0);
  T const neg_zero = T::from_bits(static_cast<typename format<T>::storage>(sign_bit<T>));
  EXPECT_FALSE(nan == nan);
  EXPECT_TRUE(nan != nan);
  EXPECT_TRUE(pos_zero == neg_zero);
  EXPECT_NE(pos_zero.bits, neg_zero.bits);
  EXPECT_LT(T(-1.0f), T(0.5f));
  EXPECT_TRUE(std::isnan(static_cast<float>(std::numeric_limits<T>::quiet_NaN())));
  EXPECT_EQ(std::numeric_limits<T>::quiet_NaN().bits, format<T>::canonical_nan);
  EXPECT_EQ(std::numeric_limits<T>::max().bits, max_finite_code<T>);
  EXPECT_EQ(std::numeric_limits<T>::denorm_min().to_float(), reference_value<T>(1));
  EXPECT_EQ(std::numeric_limits<T>::min().to_float(),
            reference_value<T>(1u << format<T>::mantissa_bits));
  EXPECT_EQ(std::numeric_limits<T>::epsilon().to_float(),
            std::ldexp(1.0, -format<T>::mantissa_bits));
}

TYPED_TEST(NumericFormat, PrintsTheValue) {
  using T = TypeParam;
  std::ostringstream os;
  os << T(-1.5f) << ' ' << T::from_bits(0);
  EXPECT_EQ(os.str(), "-1.5 0");
}

// ---- Format-specific edge cases --------------------------------------------------------------

struct edge_case {
  float x;
  std::uint32_t want;
};

template <class T>
void expect_edge_cases(std::vector<edge_case> const& cases) {
  for (edge_case const& c : cases) {
    EXPECT_EQ(encode<T>(c.x), c.want) << describe(c.x, encode<T>(c.x), c.want);
  }
}

float const inf = std::numeric_limits<float>::infinity();
float const flt_max = std::numeric_limits<float>::max();
float const flt_min = std::numeric_limits<float>::min();
float const flt_denorm_min = std::numeric_limits<float>::denorm_min();

// NaNs of both signs, quiet and signalling, with and without payloads.
std::vector<float> const nans = {bits_float(0x7FC0'0000u), bits_float(0xFFC0'0000u),
                                 bits_float(0x7F80'0001u), bits_float(0xFF80'0001u),
                                 bits_float(0x7FFF'FFFFu), bits_float(0xFFFF'FFFFu),
                                 bits_float(0x7FA5'5555u)};

TEST(Fp8E4M3, SaturatesFiniteOverflowAndInfinityTo448) {
  expect_edge_cases<fp8_e4m3>({{448.0f, 0x7E},
                               {449.0f, 0x7E},
                               {464.0f, 0x7E},  // halfway to the (NaN) code above: even 448
                               {std::nextafter(464.0f, inf), 0x7E},
                               {480.0f, 0x7E},
                               {1e4f, 0x7E},
                               {flt_max, 0x7E},
                               {inf, 0x7E},
                               {-448.0f, 0xFE},
                               {-1e30f, 0xFE},
                               {-flt_max, 0xFE},
                               {-inf, 0xFE}});
}

TEST(Fp8E4M3, EveryNanBecomesPositive0x7F) {
  for (float const nan : nans) EXPECT_EQ(encode<fp8_e4m3>(nan), 0x7Fu) << hex(float_bits(nan));
  EXPECT_EQ(float_bits(fp8_e4m3::from_bits(0x7F)), 0x7FFF'FFFFu);
  EXPECT_EQ(float_bits(fp8_e4m3::from_bits(0xFF)), 0x7FFF'FFFFu);  // sign dropped, as CUDA does
}

TEST(Fp8E4M3, TinyValuesUnderflowToZeroOfTheirSign) {
  expect_edge_cases<fp8_e4m3>({{0.0f, 0x00},
                               {-0.0f, 0x80},
                               {0x1p-10f, 0x00},  // half the smallest subnormal: even zero
                               {-0x1p-10f, 0x80},
                               {std::nextafter(0x1p-10f, 1.0f), 0x01},
                               {std::nextafter(-0x1p-10f, -1.0f), 0x81},
                               {0x1p-11f, 0x00},
                               {1e-30f, 0x00},
                               {flt_min, 0x00},
                               {flt_denorm_min, 0x00},
                               {-flt_denorm_min, 0x80},
                               {3 * 0x1p-10f, 0x02},     // 1.5 subnormal units: even 2
                               {0x1p-6f, 0x08},          // smallest normal
                               {15 * 0x1p-10f, 0x08}});  // 7.5 units: rounds up into the normals
}

// The brute-force reference scans all codes; the neighbour reference (used by the typed test)
// shares nothing with it but the field decoding, so agreeing on 4M inputs checks both.
TEST(Fp8E4M3, RandomFloatsMatchTheBruteForceReference) {
  constexpr std::size_t n = std::size_t{1} << 21;
  std::mt19937_64 rng(run_seed() + 1);
  mismatches bad;
  for (std::size_t i = 0; i < 2 * n; ++i) {
    float const x =
        i < n ? bits_float(static_cast<std::uint32_t>(rng())) : random_in_range<fp8_e4m3>(rng);
    std::uint32_t const want = fp8_brute_force_reference(x);
    if (encode<fp8_e4m3>(x) != want) bad.add(describe(x, encode<fp8_e4m3>(x), want));
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text();
}

TEST(Bf16, SpecialValuesAndOverflow) {
  expect_edge_cases<bf16>({{inf, 0x7F80},
                           {-inf, 0xFF80},
                           {0.0f, 0x0000},
                           {-0.0f, 0x8000},
                           {bits_float(0x7F7F'7FFFu), 0x7F7F},  // just below the overflow tie
                           {bits_float(0x7F7F'8000u), 0x7F80},  // the tie: odd 0x7F7F goes up
                           {flt_max, 0x7F80},
                           {-flt_max, 0xFF80},
                           {flt_min, 0x0080},
                           {flt_denorm_min, 0x0000},  // denormals round, never flush
                           {-flt_denorm_min, 0x8000},
                           {bits_float(0x0000'8000u), 0x0000},  // tie: even 0
                           {bits_float(0x0001'8000u), 0x0002},  // tie: odd 1 goes up
                           {bits_float(0x0000'8001u), 0x0001},
                           {bits_float(0x007F'FFFFu), 0x0080},  // largest denormal
                           {bits_float(0x3F80'8000u), 0x3F80},  // 1 + half ulp: even stays
                           {bits_float(0x3F81'8000u), 0x3F82}});
  for (float const nan : nans) EXPECT_EQ(encode<bf16>(nan), 0x7FFFu) << hex(float_bits(nan));
  // Decoding keeps the payload and sign of a NaN (a plain shift, like CUDA's host path).
  EXPECT_EQ(float_bits(bf16::from_bits(0xFFC1)), 0xFFC1'0000u);
}

TEST(Fp16, SpecialValuesOverflowAndSubnormals) {
  expect_edge_cases<fp16>({{inf, 0x7C00},
                           {-inf, 0xFC00},
                           {0.0f, 0x0000},
                           {-0.0f, 0x8000},
                           {65504.0f, 0x7BFF},
                           {std::nextafter(65520.0f, 0.0f), 0x7BFF},
                           {65520.0f, 0x7C00},  // the tie past 65504: odd 0x7BFF goes to Inf
                           {-65520.0f, 0xFC00},
                           {1e5f, 0x7C00},
                           {flt_max, 0x7C00},
                           {0x1p-14f, 0x0400},  // smallest normal
                           {0x1p-24f, 0x0001},  // smallest subnormal
                           {0x1p-25f, 0x0000},  // tie: even 0
                           {-0x1p-25f, 0x8000},
                           {std::nextafter(0x1p-25f, 1.0f), 0x0001},
                           {3 * 0x1p-25f, 0x0002},  // tie between 1 and 2: even 2
                           {flt_min, 0x0000},
                           {flt_denorm_min, 0x0000},
                           {-flt_denorm_min, 0x8000},
                           {bits_float(0x3F80'1000u), 0x3C00},    // 1 + half ulp: even stays
                           {bits_float(0x3F80'3000u), 0x3C02}});  // 1 + 3 half ulps: up to even
  for (float const nan : nans) EXPECT_EQ(encode<fp16>(nan), 0x7FFFu) << hex(float_bits(nan));
  EXPECT_EQ(float_bits(fp16::from_bits(0xFE01)), 0x7FFF'FFFFu);  // sign and payload dropped
}

#if defined(__FLT16_MANT_DIG__)
// A third, independent reference for fp16: the compiler's IEEE binary16 conversion (libgcc or
// F16C, round to nearest even). Its NaNs keep sign and payload, so NaNs are checked above instead.
TEST(Fp16, RandomFloatsMatchTheCompilersFloat16) {
  constexpr std::size_t n = std::size_t{1} << 21;
  std::mt19937_64 rng(run_seed() + 2);
  mismatches bad;
  for (std::size_t i = 0; i < 2 * n; ++i) {
    float const x =
        i < n ? bits_float(static_cast<std::uint32_t>(rng())) : random_in_range<fp16>(rng);
    if (std::isnan(x)) continue;
    std::uint32_t const want = std::bit_cast<std::uint16_t>(static_cast<_Float16>(x));
    if (encode<fp16>(x) != want) bad.add(describe(x, encode<fp16>(x), want));
  }
  EXPECT_EQ(bad.count(), 0u) << bad.text();
  for (std::uint32_t c = 0; c < 0x10000; ++c) {
    if (is_nan_code<fp16>(c)) continue;
    float const want = std::bit_cast<_Float16>(static_cast<std::uint16_t>(c));
    ASSERT_EQ(float_bits(decode<fp16>(c)), float_bits(want)) << hex(c);
  }
}
#endif

// bf16, fp16 and fp8 convert to one another through float: exact widening, one rounding.
TEST(CrossType, ConvertsThroughFloatWithOneRounding) {
  for (std::uint32_t c = 0; c < 0x10000; ++c) {
    bf16 const b = bf16::from_bits(static_cast<std::uint16_t>(c));
    fp16 const h = fp16::from_bits(static_cast<std::uint16_t>(c));
    ASSERT_EQ(fp16(b).bits, encode<fp16>(b.to_float())) << hex(c);
    ASSERT_EQ(fp8_e4m3(b).bits, fp8_brute_force_reference(b.to_float())) << hex(c);
    ASSERT_EQ(bf16(h).bits, neighbour_reference<bf16>(h.to_float())) << hex(c);
    ASSERT_EQ(fp8_e4m3(h).bits, fp8_brute_force_reference(h.to_float())) << hex(c);
  }
  // Every E4M3 value is exact in bf16 and fp16.
  for (std::uint32_t c = 0; c < 0x100; ++c) {
    fp8_e4m3 const f = fp8_e4m3::from_bits(static_cast<std::uint8_t>(c));
    if (is_nan_code<fp8_e4m3>(c)) {
      EXPECT_EQ(bf16(f).bits, 0x7FFFu);
      EXPECT_EQ(fp16(f).bits, 0x7FFFu);
      continue;
    }
    EXPECT_EQ(float_bits(bf16(f)), float_bits(f)) << hex(c);
    EXPECT_EQ(float_bits(fp16(f)), float_bits(f)) << hex(c);
  }
}

}  // namespace
