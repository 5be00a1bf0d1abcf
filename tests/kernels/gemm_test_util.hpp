// Helpers shared by the gemm tests (CPU and CUDA): weight-like random operands, DeepSeek-style FP8
// quantisation of weights (one scale per 128 x 128 block) and activations (per token per 128
// columns, k-major scales), and reference products in double precision.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/seed.hpp"
#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::test {

// n values normal(0, stddev), as bf16.
inline std::vector<bf16> random_normal_bf16(std::int64_t n, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = bf16(normal(rng));
  return v;
}

// An FP8 operand: codes and the fp32 scales that dequantise them.
struct fp8_operand {
  std::vector<fp8_e4m3> codes;
  std::vector<float> scales;
};

// A weight [n, k] quantised as DeepSeek's checkpoints are: one scale per 128 x 128 block,
// [ceil(n/128), ceil(k/128)], scale = amax / 448 (blocks differ in magnitude by up to 2^6, so a
// block-scale mix-up shows), stored with the row stride the GEMM reads
// (gemm_fp8_weight_scale_ld), the padding NaN.
inline fp8_operand random_fp8_weight(std::int64_t n, std::int64_t k, std::mt19937_64& rng) {
  constexpr std::int64_t blk = kernels::gemm_fp8_block_size;
  std::int64_t const nb = (n + blk - 1) / blk, kb = (k + blk - 1) / blk;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-9, -3);
  std::vector<float> magnitude(static_cast<std::size_t>(nb * kb));
  for (auto& m : magnitude) m = std::ldexp(1.0f, exponent(rng));
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < k; ++j)
      w[std::size_t(i * k + j)] = normal(rng) * magnitude[std::size_t((i / blk) * kb + j / blk)];
  fp8_operand out;
  out.codes.resize(w.size());
  std::int64_t const ld = kernels::gemm_fp8_weight_scale_ld(k);
  out.scales.assign(static_cast<std::size_t>(nb * ld), std::numeric_limits<float>::quiet_NaN());
  for (std::int64_t bi = 0; bi < nb; ++bi) {
    for (std::int64_t bj = 0; bj < kb; ++bj) {
      float amax = 0.0f;
      for (std::int64_t i = bi * blk; i < std::min(n, (bi + 1) * blk); ++i)
        for (std::int64_t j = bj * blk; j < std::min(k, (bj + 1) * blk); ++j)
          amax = std::max(amax, std::fabs(w[std::size_t(i * k + j)]));
      float const scale = std::max(amax, 1e-10f) / 448.0f;
      out.scales[std::size_t(bi * ld + bj)] = scale;
      for (std::int64_t i = bi * blk; i < std::min(n, (bi + 1) * blk); ++i)
        for (std::int64_t j = bj * blk; j < std::min(k, (bj + 1) * blk); ++j)
          out.codes[std::size_t(i * k + j)] = fp8_e4m3(w[std::size_t(i * k + j)] / scale);
    }
  }
  return out;
}

// Activations [m, k] quantised per token per 128 columns, scales k-major [k/128, m]; rows differ
// in magnitude (2^-4 .. 2^4).
inline fp8_operand random_fp8_activation(std::int64_t m, std::int64_t k, std::mt19937_64& rng) {
  constexpr std::int64_t blk = kernels::gemm_fp8_block_size;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-4, 4);
  fp8_operand out;
  out.codes.resize(std::size_t(m * k));
  out.scales.resize(std::size_t((k / blk) * m));
  std::vector<float> row(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < m; ++i) {
    float const magnitude = std::ldexp(1.0f, exponent(rng));
    for (auto& x : row) x = normal(rng) * magnitude;
    for (std::int64_t g = 0; g < k / blk; ++g) {
      float amax = 0.0f;
      for (std::int64_t j = g * blk; j < (g + 1) * blk; ++j)
        amax = std::max(amax, std::fabs(row[std::size_t(j)]));
      float const scale = std::max(amax, 1e-10f) / 448.0f;
      out.scales[std::size_t(g * m + i)] = scale;
      for (std::int64_t j = g * blk; j < (g + 1) * blk; ++j)
        out.codes[std::size_t(i * k + j)] = fp8_e4m3(row[std::size_t(j)] / scale);
    }
  }
  return out;
}

// Row i of (x dequantised) . (w dequantised)^T in double: [n] values.
inline std::vector<double> fp8_reference_row(fp8_operand const& x, fp8_operand const& w,
                                             std::int64_t m, std::int64_t n, std::int64_t k,
                                             std::int64_t i) {
  constexpr std::int64_t blk = kernels::gemm_fp8_block_size;
  std::int64_t const ld = kernels::gemm_fp8_weight_scale_ld(k);
  std::vector<double> xi(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j)
    xi[std::size_t(j)] = double(float(x.codes[std::size_t(i * k + j)])) *
                         double(x.scales[std::size_t((j / blk) * m + i)]);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::int64_t c = 0; c < n; ++c) {
    double sum = 0.0;
    for (std::int64_t j = 0; j < k; ++j)
      sum += xi[std::size_t(j)] * double(float(w.codes[std::size_t(c * k + j)])) *
             double(w.scales[std::size_t((c / blk) * ld + j / blk)]);
    out[std::size_t(c)] = sum;
  }
  return out;
}

// ||got - want|| / ||want|| over paired sequences; NaN in got gives NaN (and fails every bound).
template <class Got, class Want>
double relative_l2(Got const& got, Want const& want) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    double const d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace lightcore::test
