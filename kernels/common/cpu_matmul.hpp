// The CPU references' matrix product: out[i, j] = sum_k a[i, k] * b[j, k] in fp32, where every
// element is summed in the same order whatever the row count is, so a row's result does not
// depend on which other rows share the call. That makes the CPU backend batch-invariant: a
// request gives the same bits alone, batched with others, or with its prompt split into chunks,
// and the engine's tests can ask for exact equality. (A BLAS blocks its sums by the matrix sizes,
// so its rounding moves with the batch.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace lightcore::kernels::detail {

// Partial sums of one dot product: k is walked in steps of dot_lanes, lane l summing the
// products at k = l (mod dot_lanes); the lanes are added in a fixed tree at the end. The lane
// loop has a fixed trip count, which compilers vectorise without reassociating anything.
inline constexpr int dot_lanes = 8;

inline float dot_fixed_order(float const* x, float const* y, std::int64_t k) {
  float acc[dot_lanes] = {};
  std::int64_t i = 0;
  for (; i + dot_lanes <= k; i += dot_lanes)
    for (int l = 0; l < dot_lanes; ++l) acc[l] += x[i + l] * y[i + l];
  for (int l = 0; i + l < k; ++l) acc[l] += x[i + l] * y[i + l];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Rows of b per block: about 256 KiB of fp32, at least one row.
inline std::int64_t matmul_block_rows(std::int64_t k) {
  return std::max<std::int64_t>(1, (std::int64_t(1) << 16) / std::max<std::int64_t>(k, 1));
}

// out[i, j] = dot(a row i, b row j) for a [m, k] fp32 (row stride lda) and out [m, n] fp32 (row
// stride ldo), where b's rows come in blocks from load_b(j0, j1, dst): it writes rows [j0, j1)
// of b widened to fp32 into dst ([j1 - j0, k], contiguous). Each block stays in cache while
// every row of a passes over it, and b is never widened whole.
template <class LoadB>
void matmul_nt_fixed_order(float const* a, std::int64_t lda, std::int64_t m, std::int64_t n,
                           std::int64_t k, float* out, std::int64_t ldo, LoadB&& load_b) {
  std::int64_t const block = matmul_block_rows(k);
  std::vector<float> scratch(std::size_t(std::min(block, n) * k));
  for (std::int64_t j0 = 0; j0 < n; j0 += block) {
    std::int64_t const j1 = std::min(n, j0 + block);
    load_b(j0, j1, scratch.data());
    for (std::int64_t i = 0; i < m; ++i) {
      float const* ai = a + i * lda;
      float* oi = out + i * ldo;
      for (std::int64_t j = j0; j < j1; ++j)
        oi[j] = dot_fixed_order(ai, scratch.data() + (j - j0) * k, k);
    }
  }
}

}  // namespace lightcore::kernels::detail
