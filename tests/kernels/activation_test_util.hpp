// Helpers shared by the activation tests (CPU and CUDA): random bf16 activations and the distance
// between two bf16 values in units in the last place.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "lightcore/core/bf16.hpp"

namespace lightcore::test {

// bf16 values uniform in [-range, range] (rounded), so that silu meets its whole curve: the
// negative tail, the minimum near -1.28, the linear regime. Never all zeros.
inline std::vector<bf16> random_bf16(std::size_t n, float range, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<bf16> v(n);
  for (auto& x : v) x = bf16(dist(rng));
  return v;
}

// Distance between two finite bf16 values counted in representable values (+0 and -0 are one).
inline std::int64_t bf16_ulp_distance(bf16 a, bf16 b) {
  auto const ordered = [](bf16 x) {
    std::int64_t const mag = x.bits & 0x7FFF;
    return (x.bits & 0x8000) ? -mag : mag;
  };
  return std::llabs(ordered(a) - ordered(b));
}

}  // namespace lightcore::test
