// Helpers shared by the quant tests (CPU and CUDA): activation-like random inputs and the
// per-token-group quantisation written independently in double precision.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/quant/quant_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::test {

// [rows, cols] bf16 activations: each row normal with its own magnitude 2^[-12, 8] (tokens differ
// in scale), one group in 16 all zeros, one element in 512 an outlier 100x larger.
inline std::vector<bf16> random_activations(std::int64_t rows, std::int64_t cols,
                                            std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-12, 8), pick(0, 511);
  std::vector<bf16> v(std::size_t(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    float const magnitude = std::ldexp(1.0f, exponent(rng));
    for (std::int64_t c = 0; c < cols; ++c) {
      float x = normal(rng) * magnitude;
      if (pick(rng) == 0) x *= 100.0f;
      v[std::size_t(r * cols + c)] = bf16(x);
    }
    for (std::int64_t g = 0; g < cols; g += kernels::quant_group_size)
      if (pick(rng) % 16 == 0)
        std::fill_n(v.begin() + r * cols + g, kernels::quant_group_size, bf16(0.0f));
  }
  return v;
}

// The definition in double: scale = max(amax, 1e-10) / 448, inverse = 1 / scale and
// q = x * inverse, each rounded once to fp32 (an fp32 quotient or product computed in double and
// rounded to fp32 is the correctly rounded fp32 result, since 53 >= 2 * 24 + 2), then q to fp8
// (round to nearest even, saturating).
// q: [rows, cols]; scales: [rows, cols / 128] row-major.
inline void quantize_double(std::vector<bf16> const& x, std::int64_t rows, std::int64_t cols,
                            std::vector<fp8_e4m3>& q, std::vector<float>& scales) {
  std::int64_t const g_size = kernels::quant_group_size, groups = cols / g_size;
  q.resize(std::size_t(rows * cols));
  scales.resize(std::size_t(rows * groups));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      double amax = 0.0;
      for (std::int64_t k = g * g_size; k < (g + 1) * g_size; ++k)
        amax = std::max(amax, std::fabs(double(float(x[std::size_t(r * cols + k)]))));
      auto const scale =
          float(std::max(amax, double(kernels::quant_amax_floor)) / double(kernels::quant_fp8_max));
      scales[std::size_t(r * groups + g)] = scale;
      auto const inverse = float(1.0 / double(scale));
      for (std::int64_t k = g * g_size; k < (g + 1) * g_size; ++k) {
        auto const v = double(float(x[std::size_t(r * cols + k)]));
        q[std::size_t(r * cols + k)] = fp8_e4m3(float(v * double(inverse)));
      }
    }
  }
}

}  // namespace lightcore::test
