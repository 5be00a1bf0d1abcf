// Helpers shared by the convert tests (CPU and CUDA): the run's seed, random inputs for every dtype
// convert reads, and a bit-exact comparison that names the first differing elements.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>

#include "common/seed.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::test {

// A float drawn to exercise every cast: mostly magnitudes from 2^-30 to 2^20 (fp8 and f16
// subnormals, rounding ties by chance, fp8 saturation above 448, f16 overflow above 65504), some
// arbitrary bit patterns (any NaN payload, float denormals, huge values) and some named edges.
inline float random_float(std::mt19937_64& rng) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();
  constexpr float max = std::numeric_limits<float>::max();
  constexpr float denorm_min = std::numeric_limits<float>::denorm_min();
  static constexpr float edges[] = {
      0.0f,   -0.0f,   inf,      -inf,     nan,     -nan,     max,      denorm_min, 448.0f,
      464.0f, -480.0f, 65504.0f, 65520.0f, 0x1p-9f, 0x1p-10f, 0x1p-24f, 0x1p-25f,   1.0f + 0x1p-8f};
  std::uint64_t const r = rng();
  switch (r % 8) {
    case 0: return std::bit_cast<float>(std::uint32_t(r >> 32));
    case 1: return edges[(r >> 8) % std::size(edges)];
    default: {
      std::uniform_int_distribution<int> exponent(-30, 20);
      std::uniform_real_distribution<float> fraction(1.0f, 2.0f);
      float const magnitude = std::ldexp(fraction(rng), exponent(rng));
      return (r & 0x100) ? -magnitude : magnitude;
    }
  }
}

// n random elements of type t at data: floats from random_float, other types as uniformly random
// encodings (every bf16/f16/fp8 NaN, infinity and subnormal included).
inline void fill_random(dtype t, void* data, std::size_t n, std::mt19937_64& rng) {
  if (t == dtype::f32) {
    auto* p = static_cast<float*>(data);
    for (std::size_t i = 0; i < n; ++i) p[i] = random_float(rng);
    return;
  }
  auto* p = static_cast<unsigned char*>(data);
  for (std::size_t i = 0; i < n * size_of(t); ++i) p[i] = static_cast<unsigned char>(rng());
}

inline std::uint64_t element_bits(void const* data, std::size_t i, std::size_t elem_size) {
  std::uint64_t b = 0;
  std::memcpy(&b, static_cast<unsigned char const*>(data) + i * elem_size, elem_size);
  return b;
}

// Empty when got and want hold the same bits; else how many of the n elements differ and the
// first few, with the source bits that produced them.
inline std::string bit_mismatches(void const* got, void const* want, std::size_t n, dtype dst,
                                  void const* src, dtype src_type) {
  std::size_t const es = size_of(dst);
  if (n == 0 || std::memcmp(got, want, n * es) == 0) return {};
  std::ostringstream os;
  std::size_t count = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t const g = element_bits(got, i, es), w = element_bits(want, i, es);
    if (g == w) continue;
    if (++count <= 8) {
      os << "\n  [" << i << "] " << src_type << " 0x" << std::hex
         << element_bits(src, i, size_of(src_type)) << " -> " << dst << " got 0x" << g
         << ", want 0x" << w << std::dec;
    }
  }
  return std::to_string(count) + " of " + std::to_string(n) + " elements differ:" + os.str();
}

// Runs f, which must throw lightcore::error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<char const*> parts) {
  try {
    f();
    ADD_FAILURE() << "expected lightcore::error, nothing was thrown";
  } catch (lightcore::error const& e) {
    std::string const what = e.what();
    for (char const* part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << "message lacks \"" << part << "\": " << what;
  }
}

}  // namespace lightcore::test
