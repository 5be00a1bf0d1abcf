// sampling: the arithmetic that the CPU reference and the CUDA kernel must compute bit for bit, so
// that both choose the same token from the same inputs: a Philox4x32-10 counter-based generator,
// the uniform and the exponential-race key drawn from it, exp and log written with IEEE operations
// only (the libraries' expf/logf differ between host and device by an ulp or two), and the
// order-preserving integer key of a float that the threshold searches sort by.
//
// Every multiply and add goes through mul_rn/add_rn or an explicit fma_rn
// (lightcore/core/rounding.hpp), so that the host and the device round alike.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "lightcore/core/macros.hpp"
#include "lightcore/core/rounding.hpp"

namespace lightcore::kernels::sampling_math {

using ::lightcore::add_rn;
using ::lightcore::fma_rn;
using ::lightcore::mul_rn;

// Round to the nearest integer, ties to even (the default rounding mode on both sides).
LC_HOST_DEVICE inline float round_even(float x) noexcept {
#if LC_DEVICE_PASS
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

LC_HOST_DEVICE inline std::uint32_t float_bits(float x) noexcept {
#if LC_DEVICE_PASS
  return __float_as_uint(x);
#else
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

LC_HOST_DEVICE inline float bits_float(std::uint32_t u) noexcept {
#if LC_DEVICE_PASS
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// An unsigned key with key(a) < key(b) exactly when a < b for non-NaN floats, and key(-0) ==
// key(+0) (x + 0 turns -0 into +0), so that comparing keys is comparing floats: negative values
// have every bit flipped, non-negative ones only the sign bit.
LC_HOST_DEVICE inline std::uint32_t order_key(float x) noexcept {
  std::uint32_t const u = float_bits(add_rn(x, 0.0f));
  return (u & 0x8000'0000u) ? ~u : (u | 0x8000'0000u);
}

LC_HOST_DEVICE inline float key_value(std::uint32_t key) noexcept {
  return bits_float((key & 0x8000'0000u) ? (key & 0x7FFF'FFFFu) : ~key);
}

// e^x for x <= 0 (the softmax weight exp(z - z_max)), within ~2 ulp: x = n ln2 + r (Cody-Waite,
// |r| <= ln2 / 2), a degree-6 Taylor polynomial for e^r, times 2^n. Returns 0 below -87 (where
// 2^n would leave the normal range), i.e. weights below 1.6e-38 of the largest count as 0.
LC_HOST_DEVICE inline float exp_nonpositive(float x) noexcept {
  if (!(x >= -87.0f)) return 0.0f;  // also -inf
  float const n = round_even(mul_rn(x, 1.44269504088896341f));
  float r = fma_rn(-n, 0.693145751953125f, x);  // ln2's leading 16 bits: n * hi is exact
  r = fma_rn(-n, 1.42860682030941723e-6f, r);   // ln2 - hi
  float p = 1.0f / 720.0f;
  p = fma_rn(p, r, 1.0f / 120.0f);
  p = fma_rn(p, r, 1.0f / 24.0f);
  p = fma_rn(p, r, 1.0f / 6.0f);
  p = fma_rn(p, r, 0.5f);
  p = fma_rn(p, r, 1.0f);
  p = fma_rn(p, r, 1.0f);
  // n in [-126, 0]: 2^n is a normal float built from its exponent field.
  return mul_rn(p, bits_float(std::uint32_t(int(n) + 127) << 23));
}

// ln x for a positive normal finite x, within ~2 ulp: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, from the odd series to s^9 (the next
// term is below 2^-28 relative).
LC_HOST_DEVICE inline float log_positive(float x) noexcept {
  std::uint32_t const u = float_bits(x);
  int e = int(u >> 23) - 127;
  std::uint32_t mant = (u & 0x007F'FFFFu) | 0x3F80'0000u;  // m in [1, 2)
  if (mant > 0x3FB5'04F3u) {                               // m > sqrt(2): use m / 2, e + 1
    mant -= 0x0080'0000u;
    e += 1;
  }
  float const f = add_rn(bits_float(mant), -1.0f);  // exact (Sterbenz)
  float const s = f / add_rn(2.0f, f);
  float const s2 = mul_rn(s, s);
  float q = 1.0f / 9.0f;
  q = fma_rn(q, s2, 1.0f / 7.0f);
  q = fma_rn(q, s2, 1.0f / 5.0f);
  q = fma_rn(q, s2, 1.0f / 3.0f);
  q = mul_rn(q, s2);
  float const two_s = mul_rn(2.0f, s);
  float const ln_m = fma_rn(two_s, q, two_s);
  float const fe = float(e);
  return fma_rn(fe, 0.693145751953125f, fma_rn(fe, 1.42860682030941723e-6f, ln_m));
}

// Philox4x32-10 (Salmon et al., SC'11): four 32-bit outputs from a 128-bit counter and a 64-bit
// key, ten rounds of two 32x32 -> 64-bit multiplies.
struct philox_out {
  std::uint32_t v[4];
};

LC_HOST_DEVICE inline std::uint32_t mul_hi32(std::uint32_t a, std::uint32_t b) noexcept {
#if LC_DEVICE_PASS
  return __umulhi(a, b);
#else
  return std::uint32_t((std::uint64_t(a) * b) >> 32);
#endif
}

LC_HOST_DEVICE inline philox_out philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                               std::uint32_t c3, std::uint32_t k0,
                                               std::uint32_t k1) noexcept {
  constexpr std::uint32_t m0 = 0xD251'1F53u, m1 = 0xCD9E'8D57u;
  constexpr std::uint32_t w0 = 0x9E37'79B9u, w1 = 0xBB67'AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    std::uint32_t const hi0 = mul_hi32(m0, c0), lo0 = m0 * c0;
    std::uint32_t const hi1 = mul_hi32(m1, c2), lo1 = m1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += w0;
    k1 += w1;
  }
  return {{c0, c1, c2, c3}};
}

// Token i of a request draws word i % 4 of Philox(counter = (i / 4, position, 0, 0), key = seed):
// one generator call serves four neighbouring tokens, and the draw depends on nothing but (seed,
// position, token), never on the batch or on the order of any reduction.
LC_HOST_DEVICE inline philox_out sampling_random_words(std::uint64_t seed, std::int32_t position,
                                                       std::int64_t token_group) noexcept {
  return philox4x32_10(std::uint32_t(token_group), std::uint32_t(position), 0u, 0u,
                       std::uint32_t(seed), std::uint32_t(seed >> 32));
}

// A uniform in (0, 1) from 32 random bits: (2 * (bits >> 9) + 1) * 2^-24, the 2^23 odd multiples
// of 2^-24, each exact in a float, never 0 or 1.
LC_HOST_DEVICE inline float uniform_open(std::uint32_t bits) noexcept {
  return float(((bits >> 9) << 1) | 1u) * 5.9604644775390625e-8f;
}

// The exponential race: a token's key is (z - z_max) - ln(E) with E = -ln(u) ~ Exp(1); the token
// with the largest key is distributed as softmax(z) over the tokens raced (Gumbel-max: -ln E is a
// standard Gumbel variable). d = z - z_max is passed in, computed by the caller once per token.
LC_HOST_DEVICE inline float race_key(float d, float u) noexcept {
  float const e = -log_positive(u);  // in [6e-8, 16.7]: positive and normal
  return add_rn(d, -log_positive(e));
}

}  // namespace lightcore::kernels::sampling_math
