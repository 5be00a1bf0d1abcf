// lightcore::fp8_e4m3: OCP FP8 E4M3 ("E4M3FN") storage whose conversions are bit-identical to
// CUDA's __nv_fp8_e4m3 (float -> fp8 with __NV_SATFINITE), on the host and on the device.
//
// Format: 1 sign, 4 exponent (bias 7), 3 mantissa bits. No infinities; S.1111.111 is NaN, so the
// largest finite magnitude is S.1111.110 = 448 and the smallest subnormal is 2^-9.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <type_traits>

#include "lightcore/core/macros.hpp"

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

namespace lightcore {
namespace detail {

// The code every float NaN converts to: positive NaN. CUDA's host path replaces a NaN input by
// 0x7FFFFFFF before converting (__nv_cvt_float_to_fp8 in cuda_fp8.hpp), so the sign is dropped;
// cvt.rn.satfinite.e4m3x2.f32 does the same on sm_90 (test_numeric_cuda.cu checks it).
inline constexpr std::uint8_t fp8_e4m3_canonical_nan_bits = 0x7F;
// The float that both fp8 NaN codes (0x7F, 0xFF) convert to: CUDA widens fp8 -> fp16 -> float,
// and each step writes a positive all-ones-mantissa NaN (__nv_cvt_fp8_to_halfraw,
// __internal_halfraw_to_float in cuda_fp8.hpp; the sm_90 instructions agree).
inline constexpr std::uint32_t fp8_e4m3_nan_to_float_bits = 0x7FFF'FFFFu;
inline constexpr std::uint8_t fp8_e4m3_max_finite_bits = 0x7E;  // 448

// Software conversions: exact on every input, usable in constant expressions and on both sides.
// The fp8 type uses them on the host; the GPU test runs them on the device against the intrinsics.

// float -> fp8 E4M3 bits: round to nearest, ties to even, then saturate. Finite values beyond 448
// and +-Inf give +-448 (__NV_SATFINITE); NaN gives 0x7F; magnitudes up to 2^-10 (half the smallest
// subnormal, a tie that goes to the even zero) give a zero of the input's sign.
LC_HOST_DEVICE constexpr std::uint8_t float_to_fp8_e4m3_bits_soft(float x) noexcept {
  std::uint32_t const u = __builtin_bit_cast(std::uint32_t, x);
  std::uint32_t const sign = (u >> 24) & 0x80u;
  std::uint32_t a = u & 0x7FFF'FFFFu;
  if (a > 0x7F80'0000u) return fp8_e4m3_canonical_nan_bits;
  // Every magnitude from 448 up rounds (448 < |x| <= 464) or saturates (|x| > 464) to 448; the
  // tie at 464 goes to 448 as well, since 448's mantissa 110 is even.
  if (a >= 0x43E0'0000u) return static_cast<std::uint8_t>(sign | fp8_e4m3_max_finite_bits);
  if (a >= 0x3C80'0000u) {  // fp8 normal range, |x| >= 2^-6
    // Rebias the exponent (127 -> 7) in place, then round the 23-bit mantissa to 3 bits; a carry
    // out of the mantissa bumps the exponent, which is the correct result (and stays below NaN,
    // since |x| < 448 here).
    a -= (127u - 7u) << 23;
    a += 0x7'FFFFu + ((a >> 20) & 1u);
    return static_cast<std::uint8_t>(sign | (a >> 20));
  }
  if (a <= 0x3A80'0000u) return static_cast<std::uint8_t>(sign);  // |x| <= 2^-10
  // Subnormal result: count in units of 2^-9. With e the biased float exponent, the value is
  // significand * 2^(e - 150), so the count is significand >> (141 - e); shift lies in [21, 24].
  std::uint32_t const significand = (a & 0x007F'FFFFu) | 0x0080'0000u;
  std::uint32_t const shift = 141u - (a >> 23);
  std::uint32_t const kept = significand >> shift;
  std::uint32_t const dropped = significand & ((1u << shift) - 1u);
  std::uint32_t const half = 1u << (shift - 1u);
  bool const round_up = dropped > half || (dropped == half && (kept & 1u) != 0);
  // A round-up from the largest subnormal gives 0x08, the smallest normal: also correct.
  return static_cast<std::uint8_t>(sign | (kept + (round_up ? 1u : 0u)));
}

// fp8 E4M3 bits -> float, exact; both NaN codes give fp8_e4m3_nan_to_float_bits.
LC_HOST_DEVICE constexpr float fp8_e4m3_bits_to_float_soft(std::uint8_t bits) noexcept {
  std::uint32_t const sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
  std::uint32_t const exponent = (bits >> 3) & 0x0Fu;
  std::uint32_t const mantissa = bits & 0x07u;
  if ((bits & 0x7Fu) == 0x7Fu) return __builtin_bit_cast(float, fp8_e4m3_nan_to_float_bits);
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-9 is exact in float (a normal float for mantissa != 0).
    float const magnitude = static_cast<float>(mantissa) * 0x1p-9f;
    return __builtin_bit_cast(float, sign | __builtin_bit_cast(std::uint32_t, magnitude));
  }
  return __builtin_bit_cast(float, sign | ((exponent + 127u - 7u) << 23) | (mantissa << 20));
}

// The conversions the type uses: CUDA's instructions on the device, the software path elsewhere
// (and in constant evaluation, which cannot run inline PTX). On sm_89 and newer CUDA lowers these
// to cvt.rn.satfinite.e4m3x2.f32 and cvt.rn.f16x2.e4m3x2 + cvt.f32.f16.
LC_HOST_DEVICE constexpr std::uint8_t float_to_fp8_e4m3_bits(float x) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
  }
#endif
  return float_to_fp8_e4m3_bits_soft(x);
}

LC_HOST_DEVICE constexpr float fp8_e4m3_bits_to_float(std::uint8_t bits) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    __nv_fp8_e4m3 v{};
    v.__x = bits;
    return static_cast<float>(v);
  }
#endif
  return fp8_e4m3_bits_to_float_soft(bits);
}

}  // namespace detail

// An FP8 E4M3 value held as its bits. Converting from float is explicit because it rounds and
// saturates; converting to float is implicit because it is exact, so arithmetic and comparisons
// on fp8_e4m3 happen in float (==, < are numeric: NaN != NaN, +0 == -0). `bits` compares the
// encoding. bf16 and fp16 convert through float: fp8_e4m3(some_bf16) rounds once, as CUDA does.
struct fp8_e4m3 {
  std::uint8_t bits;

  fp8_e4m3() = default;
  LC_HOST_DEVICE explicit constexpr fp8_e4m3(float x) noexcept
      : bits(detail::float_to_fp8_e4m3_bits(x)) {}

  LC_HOST_DEVICE static constexpr fp8_e4m3 from_bits(std::uint8_t b) noexcept {
    return fp8_e4m3(from_bits_tag{}, b);
  }

  LC_HOST_DEVICE constexpr float to_float() const noexcept {
    return detail::fp8_e4m3_bits_to_float(bits);
  }
  LC_HOST_DEVICE constexpr operator float() const noexcept { return to_float(); }

  // Bit patterns of the notable values (std::numeric_limits<fp8_e4m3> below gives the same).
  LC_HOST_DEVICE static constexpr fp8_e4m3 max_finite() noexcept {
    return from_bits(detail::fp8_e4m3_max_finite_bits);
  }
  LC_HOST_DEVICE static constexpr fp8_e4m3 lowest() noexcept { return from_bits(0xFE); }  // -448
  LC_HOST_DEVICE static constexpr fp8_e4m3 min_normal() noexcept { return from_bits(0x08); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 min_subnormal() noexcept { return from_bits(0x01); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 epsilon() noexcept { return from_bits(0x20); }  // 2^-3
  LC_HOST_DEVICE static constexpr fp8_e4m3 quiet_nan() noexcept {
    return from_bits(detail::fp8_e4m3_canonical_nan_bits);
  }

#if defined(__CUDACC__)
  // Bit-preserving interop with CUDA's type, explicit in both directions so that overload
  // resolution never picks CUDA's conversions by accident.
  LC_HOST_DEVICE explicit fp8_e4m3(__nv_fp8_e4m3 x) noexcept : bits(x.__x) {}
  LC_HOST_DEVICE explicit operator __nv_fp8_e4m3() const noexcept { return to_cuda(); }
  LC_HOST_DEVICE __nv_fp8_e4m3 to_cuda() const noexcept {
    __nv_fp8_e4m3 r{};
    r.__x = bits;
    return r;
  }
#endif

 private:
  struct from_bits_tag {};
  LC_HOST_DEVICE constexpr fp8_e4m3(from_bits_tag, std::uint8_t b) noexcept : bits(b) {}
};

static_assert(sizeof(fp8_e4m3) == 1 && alignof(fp8_e4m3) == 1);
static_assert(std::is_trivially_copyable_v<fp8_e4m3> && std::is_standard_layout_v<fp8_e4m3>);
static_assert(std::is_trivially_default_constructible_v<fp8_e4m3>);

// Prints the value (as float), not the bits.
inline std::ostream& operator<<(std::ostream& os, fp8_e4m3 x) { return os << x.to_float(); }

}  // namespace lightcore

template <>
struct std::numeric_limits<lightcore::fp8_e4m3> {
  using fp8_e4m3 = lightcore::fp8_e4m3;
  static constexpr bool is_specialized = true;
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr bool is_exact = false;
  static constexpr bool has_infinity = false;
  static constexpr bool has_quiet_NaN = true;
  static constexpr bool has_signaling_NaN = false;
  static constexpr std::float_denorm_style has_denorm = std::denorm_present;
  static constexpr bool has_denorm_loss = false;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr bool is_iec559 = false;
  static constexpr bool is_bounded = true;
  static constexpr bool is_modulo = false;
  static constexpr int digits = 4;
  static constexpr int digits10 = 0;
  static constexpr int max_digits10 = 3;
  static constexpr int radix = 2;
  static constexpr int min_exponent = -5;
  static constexpr int min_exponent10 = -1;
  static constexpr int max_exponent = 9;
  static constexpr int max_exponent10 = 2;
  static constexpr bool traps = false;
  static constexpr bool tinyness_before = false;

  LC_HOST_DEVICE static constexpr fp8_e4m3 min() noexcept { return fp8_e4m3::min_normal(); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 lowest() noexcept { return fp8_e4m3::lowest(); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 max() noexcept { return fp8_e4m3::max_finite(); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 epsilon() noexcept { return fp8_e4m3::epsilon(); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 round_error() noexcept {
    return fp8_e4m3::from_bits(0x30);  // 0.5
  }
  // No infinity and no signalling NaN in E4M3: as for other types without them, these return
  // a value that must not be relied on (zero, and the one NaN).
  LC_HOST_DEVICE static constexpr fp8_e4m3 infinity() noexcept { return fp8_e4m3::from_bits(0); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 quiet_NaN() noexcept { return fp8_e4m3::quiet_nan(); }
  LC_HOST_DEVICE static constexpr fp8_e4m3 signaling_NaN() noexcept {
    return fp8_e4m3::quiet_nan();
  }
  LC_HOST_DEVICE static constexpr fp8_e4m3 denorm_min() noexcept {
    return fp8_e4m3::min_subnormal();
  }
};
