// lightcore::fp16: IEEE binary16 storage (1 sign, 5 exponent, 10 mantissa bits) whose conversions
// are bit-identical to CUDA's __float2half_rn / __half2float, on the host and on the device.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <type_traits>

#include "lightcore/core/macros.hpp"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace lightcore {
namespace detail {

// The NaN that every float NaN converts to: positive, quiet, all mantissa bits set; sign and
// payload are dropped (__internal_float2half in cuda_fp16.hpp, CUDA's host fallback;
// cvt.rn.f16.f32 on sm_90 agrees).
inline constexpr std::uint16_t fp16_canonical_nan_bits = 0x7FFF;
// The float that every fp16 NaN converts to, likewise positive with all mantissa bits set
// (__internal_half2float in cuda_fp16.hpp; cvt.f32.f16 on sm_90 agrees).
inline constexpr std::uint32_t fp16_nan_to_float_bits = 0x7FFF'FFFFu;

// Software conversions: exact on every input, usable in constant expressions and on both sides.
// The fp16 type uses them on the host; the GPU test runs them on the device against the intrinsics.

// float -> fp16 bits, round to nearest, ties to even, with gradual underflow to fp16 subnormals.
// |x| >= 65520 (max finite 65504 plus half an ulp, a tie that goes to the even Inf) gives +-Inf.
LC_HOST_DEVICE constexpr std::uint16_t float_to_fp16_bits_soft(float x) noexcept {
  std::uint32_t const u = __builtin_bit_cast(std::uint32_t, x);
  std::uint32_t const sign = (u >> 16) & 0x8000u;
  std::uint32_t a = u & 0x7FFF'FFFFu;
  if (a > 0x7F80'0000u) return fp16_canonical_nan_bits;
  if (a >= 0x477F'F000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // 65520 and up
  if (a >= 0x3880'0000u) {  // fp16 normal range, |x| >= 2^-14
    // Rebias the exponent (127 -> 15) in place, then round the 23-bit mantissa to 10 bits; a carry
    // out of the mantissa bumps the exponent, which is the correct result.
    a -= (127u - 15u) << 23;
    a += 0x0FFFu + ((a >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | (a >> 13));
  }
  if (a <= 0x3300'0000u) return static_cast<std::uint16_t>(sign);  // |x| <= 2^-25: ties to even 0
  // Subnormal result: count in units of 2^-24. With e the biased float exponent, the value is
  // significand * 2^(e - 150), so the count is significand >> (126 - e); shift lies in [14, 24].
  std::uint32_t const significand = (a & 0x007F'FFFFu) | 0x0080'0000u;
  std::uint32_t const shift = 126u - (a >> 23);
  std::uint32_t const kept = significand >> shift;
  std::uint32_t const dropped = significand & ((1u << shift) - 1u);
  std::uint32_t const half = 1u << (shift - 1u);
  bool const round_up = dropped > half || (dropped == half && (kept & 1u) != 0);
  // A round-up from the largest subnormal gives 0x400, the smallest normal: also correct.
  return static_cast<std::uint16_t>(sign | (kept + (round_up ? 1u : 0u)));
}

// fp16 bits -> float, exact. Every NaN becomes fp16_nan_to_float_bits, dropping sign and payload,
// as __half2float does.
LC_HOST_DEVICE constexpr float fp16_bits_to_float_soft(std::uint16_t bits) noexcept {
  std::uint32_t const sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  std::uint32_t const exponent = (bits >> 10) & 0x1Fu;
  std::uint32_t const mantissa = bits & 0x03FFu;
  if (exponent == 0x1Fu) {
    return __builtin_bit_cast(float,
                              mantissa != 0 ? fp16_nan_to_float_bits : (sign | 0x7F80'0000u));
  }
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float (a normal float for mantissa != 0).
    float const magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return __builtin_bit_cast(float, sign | __builtin_bit_cast(std::uint32_t, magnitude));
  }
  return __builtin_bit_cast(float, sign | ((exponent + 127u - 15u) << 23) | (mantissa << 13));
}

// The conversions the type uses: CUDA's instructions on the device, the software path elsewhere
// (and in constant evaluation, which cannot run inline PTX).
LC_HOST_DEVICE constexpr std::uint16_t float_to_fp16_bits(float x) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) return __half_as_ushort(__float2half_rn(x));
#endif
  return float_to_fp16_bits_soft(x);
}

LC_HOST_DEVICE constexpr float fp16_bits_to_float(std::uint16_t bits) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) return __half2float(__ushort_as_half(bits));
#endif
  return fp16_bits_to_float_soft(bits);
}

}  // namespace detail

// An IEEE half value held as its bits. Converting from float is explicit because it rounds;
// converting to float is implicit because it is exact, so arithmetic and comparisons on fp16
// happen in float (==, < are numeric: NaN != NaN, +0 == -0). `bits` compares the encoding.
// Other 16- and 8-bit types convert through float: fp16(some_bf16) rounds once, as CUDA does.
struct fp16 {
  std::uint16_t bits;

  fp16() = default;
  LC_HOST_DEVICE explicit constexpr fp16(float x) noexcept : bits(detail::float_to_fp16_bits(x)) {}

  LC_HOST_DEVICE static constexpr fp16 from_bits(std::uint16_t b) noexcept {
    return fp16(from_bits_tag{}, b);
  }

  LC_HOST_DEVICE constexpr float to_float() const noexcept {
    return detail::fp16_bits_to_float(bits);
  }
  LC_HOST_DEVICE constexpr operator float() const noexcept { return to_float(); }

  // Bit patterns of the notable values (std::numeric_limits<fp16> below gives the same).
  LC_HOST_DEVICE static constexpr fp16 max_finite() noexcept { return from_bits(0x7BFF); }  // 65504
  LC_HOST_DEVICE static constexpr fp16 lowest() noexcept { return from_bits(0xFBFF); }
  LC_HOST_DEVICE static constexpr fp16 min_normal() noexcept { return from_bits(0x0400); }  // 2^-14
  LC_HOST_DEVICE static constexpr fp16 min_subnormal() noexcept { return from_bits(0x0001); }
  LC_HOST_DEVICE static constexpr fp16 epsilon() noexcept { return from_bits(0x1400); }  // 2^-10
  LC_HOST_DEVICE static constexpr fp16 infinity() noexcept { return from_bits(0x7C00); }
  LC_HOST_DEVICE static constexpr fp16 quiet_nan() noexcept {
    return from_bits(detail::fp16_canonical_nan_bits);
  }

#if defined(__CUDACC__)
  // Bit-preserving interop with CUDA's type (NaN payloads included), explicit in both directions
  // so that overload resolution never picks CUDA's arithmetic by accident.
  LC_HOST_DEVICE explicit fp16(__half x) noexcept : bits(__half_as_ushort(x)) {}
  LC_HOST_DEVICE explicit operator __half() const noexcept { return __ushort_as_half(bits); }
  LC_HOST_DEVICE __half to_cuda() const noexcept { return __ushort_as_half(bits); }
#endif

 private:
  struct from_bits_tag {};
  LC_HOST_DEVICE constexpr fp16(from_bits_tag, std::uint16_t b) noexcept : bits(b) {}
};

static_assert(sizeof(fp16) == 2 && alignof(fp16) == 2);
static_assert(std::is_trivially_copyable_v<fp16> && std::is_standard_layout_v<fp16>);
static_assert(std::is_trivially_default_constructible_v<fp16>);

// Prints the value (as float), not the bits.
inline std::ostream& operator<<(std::ostream& os, fp16 x) { return os << x.to_float(); }

}  // namespace lightcore

template <>
struct std::numeric_limits<lightcore::fp16> {
  using fp16 = lightcore::fp16;
  static constexpr bool is_specialized = true;
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr bool is_exact = false;
  static constexpr bool has_infinity = true;
  static constexpr bool has_quiet_NaN = true;
  static constexpr bool has_signaling_NaN = true;
  static constexpr std::float_denorm_style has_denorm = std::denorm_present;
  static constexpr bool has_denorm_loss = false;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr bool is_iec559 = true;
  static constexpr bool is_bounded = true;
  static constexpr bool is_modulo = false;
  static constexpr int digits = 11;
  static constexpr int digits10 = 3;
  static constexpr int max_digits10 = 5;
  static constexpr int radix = 2;
  static constexpr int min_exponent = -13;
  static constexpr int min_exponent10 = -4;
  static constexpr int max_exponent = 16;
  static constexpr int max_exponent10 = 4;
  static constexpr bool traps = false;
  static constexpr bool tinyness_before = false;

  LC_HOST_DEVICE static constexpr fp16 min() noexcept { return fp16::min_normal(); }
  LC_HOST_DEVICE static constexpr fp16 lowest() noexcept { return fp16::lowest(); }
  LC_HOST_DEVICE static constexpr fp16 max() noexcept { return fp16::max_finite(); }
  LC_HOST_DEVICE static constexpr fp16 epsilon() noexcept { return fp16::epsilon(); }
  LC_HOST_DEVICE static constexpr fp16 round_error() noexcept { return fp16::from_bits(0x3800); }
  LC_HOST_DEVICE static constexpr fp16 infinity() noexcept { return fp16::infinity(); }
  LC_HOST_DEVICE static constexpr fp16 quiet_NaN() noexcept { return fp16::quiet_nan(); }
  LC_HOST_DEVICE static constexpr fp16 signaling_NaN() noexcept { return fp16::from_bits(0x7D00); }
  LC_HOST_DEVICE static constexpr fp16 denorm_min() noexcept { return fp16::min_subnormal(); }
};
