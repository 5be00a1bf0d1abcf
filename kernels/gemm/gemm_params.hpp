// gemm: the problem description the host API builds from tensor views and both backends execute.
// Row-major throughout: C[M, N] = alpha * A[M, K] . op(B) + beta * C, batched with element strides.
#pragma once

#include <cstdint>

#include "lightcore/core/dtype.hpp"

namespace lightcore::kernels {

// How B is stored.
enum class b_layout : std::uint8_t {
  n_by_k,  // [N, K] row-major: an nn.Linear weight (out_features, in_features); C = A . B^T
  k_by_n,  // [K, N] row-major; C = A . B
};

// The FP8 block scaling DeepSeek-V3 ships: weights one fp32 scale per 128 x 128 block, activations
// one per token per 128 columns.
inline constexpr std::int64_t gemm_fp8_block_size = 128;

// cuBLASLt's block-scaled FP8 kernels (cuBLASLt 13.1, Hopper) take only M a multiple of 4 (the
// activation scales are read as rows of M floats in 16-byte units; M = 1, 2, 3, 5, 17, 129 are
// refused): activations for an FP8 GEMM are allocated with M rounded up to this, and the rows past
// the real tokens are computed and ignored.
inline constexpr std::int64_t gemm_fp8_m_multiple = 4;

// The row stride, in floats, of a weight's block scales [ceil(N/128), K/128]: cuBLASLt reads them
// with the K-blocks padded to a multiple of 4 (measured: an unpadded stride gives NaN whenever
// K/128 is not a multiple of 4, as at R1's TP8 down projections, K = 2304 and 256). DeepSeek's
// checkpoints store them unpadded; the loader re-strides them.
constexpr std::int64_t gemm_fp8_weight_scale_ld(std::int64_t k) {
  std::int64_t const k_blocks = (k + gemm_fp8_block_size - 1) / gemm_fp8_block_size;
  return (k_blocks + 3) / 4 * 4;
}

// The workspace a GEMM is given (bytes). cuBLASLt's guidance for Hopper is 32 MiB; less restricts
// the algorithms it may pick (split-K needs room), more is never used.
inline constexpr std::int64_t gemm_workspace_bytes = std::int64_t(32) << 20;

// Caller-facing options of gemm(); every field has its default.
struct gemm_options {
  float alpha = 1.0f;                  // C = alpha * A . op(B) + beta * C
  float beta = 0.0f;                   // 0: C is only written (its old contents may be NaN)
  b_layout layout = b_layout::n_by_k;  // how B is stored
  // B is a weight: no kernel writes it while the calls queued before this one may still run. The
  // weight-streaming kernels (M <= 4) then load their first trip of it before waiting on the
  // kernel before them (programmatic dependent launch), which hides its latency at decode. Left
  // false, B is only prefetched into L2 before that wait, which is safe for any B.
  bool b_constant = false;
};

// The options of a product by a weight (B constant during the step), as the model layers use.
constexpr gemm_options gemm_weight_options() {
  gemm_options o;
  o.b_constant = true;
  return o;
}

// One (batched) GEMM, resolved from views: pointers, extents and strides in elements.
// Element (i, j) of batch b of a matrix X sits at x + b * stride_x + i * ldx + j.
struct gemm_problem {
  std::int64_t batch = 1, m = 0, n = 0, k = 0;
  dtype a_type = dtype::bf16, b_type = dtype::bf16, c_type = dtype::bf16;
  b_layout layout = b_layout::n_by_k;
  void const* a = nullptr;  // [batch][M, K]
  std::int64_t lda = 0, stride_a = 0;
  void const* b = nullptr;  // [batch][N, K] (n_by_k) or [batch][K, N] (k_by_n)
  std::int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;  // [batch][M, N]
  std::int64_t ldc = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;
  bool b_constant = false;  // gemm_options::b_constant
  // FP8 block scaling only (batch 1, layout n_by_k, alpha 1, beta 0):
  float const* a_scales = nullptr;  // [K/128, M] contiguous: scale of A(i, 128g..) at g * M + i
  float const* b_scales = nullptr;  // [ceil(N/128), K/128], row stride gemm_fp8_weight_scale_ld(K)
};

}  // namespace lightcore::kernels
