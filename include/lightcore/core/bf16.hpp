// lightcore::bf16: bfloat16 storage (1 sign, 8 exponent, 7 mantissa bits) whose conversions are
// bit-identical to CUDA's __float2bfloat16_rn / __bfloat162float, on the host and on the device.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <type_traits>

#include "lightcore/core/macros.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

namespace lightcore {
namespace detail {

// The NaN that every float NaN converts to: positive, quiet, all mantissa bits set. cvt.rn.bf16.f32
// and CUDA's host fallback (__internal_float2bfloat16 in cuda_bf16.hpp) both drop sign and payload.
inline constexpr std::uint16_t bf16_canonical_nan_bits = 0x7FFF;

// Software conversions: exact on every input, usable in constant expressions and on both sides.
// The bf16 type uses them on the host; the GPU test runs them on the device against the intrinsics.

// float -> bf16 bits, round to nearest, ties to even. Overflow rounds to +-Inf exactly as RNE with
// an unbounded exponent implies; float denormals round like any other value (no flush to zero).
LC_HOST_DEVICE constexpr std::uint16_t float_to_bf16_bits_soft(float x) noexcept {
  std::uint32_t const u = __builtin_bit_cast(std::uint32_t, x);
  if ((u & 0x7FFF'FFFFu) > 0x7F80'0000u) return bf16_canonical_nan_bits;
  // Adding 0x7FFF plus the kept LSB carries into bit 16 exactly when the dropped half is above
  // 0x8000, or equal to it with an odd kept half. A carry out of the mantissa increments the
  // exponent, which is the right answer both at a binade edge and at the overflow to Inf.
  std::uint32_t const kept_lsb = (u >> 16) & 1u;
  return static_cast<std::uint16_t>((u + 0x7FFFu + kept_lsb) >> 16);
}

// bf16 bits -> float: bf16 is the top half of a float, so this is exact and keeps NaN sign and
// payload (as CUDA's host path and cvt.f32.bf16 on sm_90 both do).
LC_HOST_DEVICE constexpr float bf16_bits_to_float_soft(std::uint16_t bits) noexcept {
  return __builtin_bit_cast(float, static_cast<std::uint32_t>(bits) << 16);
}

// The conversions the type uses: CUDA's instructions on the device, the software path elsewhere
// (and in constant evaluation, which cannot run inline PTX).
LC_HOST_DEVICE constexpr std::uint16_t float_to_bf16_bits(float x) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#endif
  return float_to_bf16_bits_soft(x);
}

LC_HOST_DEVICE constexpr float bf16_bits_to_float(std::uint16_t bits) noexcept {
#if LC_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) return __bfloat162float(__ushort_as_bfloat16(bits));
#endif
  return bf16_bits_to_float_soft(bits);
}

}  // namespace detail

// A bfloat16 value held as its bits. Converting from float is explicit because it rounds;
// converting to float is implicit because it is exact, so arithmetic and comparisons on bf16
// happen in float (==, < are numeric: NaN != NaN, +0 == -0). `bits` compares the encoding.
// Other 16- and 8-bit types convert through float: bf16(some_fp16) rounds once, as CUDA does.
struct bf16 {
  std::uint16_t bits;

  bf16() = default;
  LC_HOST_DEVICE explicit constexpr bf16(float x) noexcept : bits(detail::float_to_bf16_bits(x)) {}

  LC_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    return bf16(from_bits_tag{}, b);
  }

  LC_HOST_DEVICE constexpr float to_float() const noexcept {
    return detail::bf16_bits_to_float(bits);
  }
  LC_HOST_DEVICE constexpr operator float() const noexcept { return to_float(); }

  // Bit patterns of the notable values (std::numeric_limits<bf16> below gives the same).
  LC_HOST_DEVICE static constexpr bf16 max_finite() noexcept { return from_bits(0x7F7F); }
  LC_HOST_DEVICE static constexpr bf16 lowest() noexcept { return from_bits(0xFF7F); }
  LC_HOST_DEVICE static constexpr bf16 min_normal() noexcept { return from_bits(0x0080); }
  LC_HOST_DEVICE static constexpr bf16 min_subnormal() noexcept { return from_bits(0x0001); }
  LC_HOST_DEVICE static constexpr bf16 epsilon() noexcept { return from_bits(0x3C00); }  // 2^-7
  LC_HOST_DEVICE static constexpr bf16 infinity() noexcept { return from_bits(0x7F80); }
  LC_HOST_DEVICE static constexpr bf16 quiet_nan() noexcept {
    return from_bits(detail::bf16_canonical_nan_bits);
  }

#if defined(__CUDACC__)
  // Bit-preserving interop with CUDA's type (NaN payloads included), explicit in both directions
  // so that overload resolution never picks CUDA's arithmetic by accident.
  LC_HOST_DEVICE explicit bf16(__nv_bfloat16 x) noexcept : bits(__bfloat16_as_ushort(x)) {}
  LC_HOST_DEVICE explicit operator __nv_bfloat16() const noexcept {
    return __ushort_as_bfloat16(bits);
  }
  LC_HOST_DEVICE __nv_bfloat16 to_cuda() const noexcept { return __ushort_as_bfloat16(bits); }
#endif

 private:
  struct from_bits_tag {};
  LC_HOST_DEVICE constexpr bf16(from_bits_tag, std::uint16_t b) noexcept : bits(b) {}
};

static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2);
static_assert(std::is_trivially_copyable_v<bf16> && std::is_standard_layout_v<bf16>);
static_assert(std::is_trivially_default_constructible_v<bf16>);

// Prints the value (as float), not the bits.
inline std::ostream& operator<<(std::ostream& os, bf16 x) { return os << x.to_float(); }

}  // namespace lightcore

template <>
struct std::numeric_limits<lightcore::bf16> {
  using bf16 = lightcore::bf16;
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
  static constexpr bool is_iec559 = false;
  static constexpr bool is_bounded = true;
  static constexpr bool is_modulo = false;
  static constexpr int digits = 8;
  static constexpr int digits10 = 2;
  static constexpr int max_digits10 = 4;
  static constexpr int radix = 2;
  static constexpr int min_exponent = -125;
  static constexpr int min_exponent10 = -37;
  static constexpr int max_exponent = 128;
  static constexpr int max_exponent10 = 38;
  static constexpr bool traps = false;
  static constexpr bool tinyness_before = false;

  LC_HOST_DEVICE static constexpr bf16 min() noexcept { return bf16::min_normal(); }
  LC_HOST_DEVICE static constexpr bf16 lowest() noexcept { return bf16::lowest(); }
  LC_HOST_DEVICE static constexpr bf16 max() noexcept { return bf16::max_finite(); }
  LC_HOST_DEVICE static constexpr bf16 epsilon() noexcept { return bf16::epsilon(); }
  LC_HOST_DEVICE static constexpr bf16 round_error() noexcept { return bf16::from_bits(0x3F00); }
  LC_HOST_DEVICE static constexpr bf16 infinity() noexcept { return bf16::infinity(); }
  LC_HOST_DEVICE static constexpr bf16 quiet_NaN() noexcept { return bf16::quiet_nan(); }
  LC_HOST_DEVICE static constexpr bf16 signaling_NaN() noexcept { return bf16::from_bits(0x7FA0); }
  LC_HOST_DEVICE static constexpr bf16 denorm_min() noexcept { return bf16::min_subnormal(); }
};
