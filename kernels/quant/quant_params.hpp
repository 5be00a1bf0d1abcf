// quant: the params that the CPU reference and the CUDA kernel share, and the per-group formulas
// both apply (IEEE fp32 division on both sides, so the two agree bit for bit).
#pragma once

#include <cmath>
#include <cstdint>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// DeepSeek-V3's activation quantisation: one scale per 128 consecutive columns of a row.
inline constexpr std::int64_t quant_group_size = 128;
// The largest finite fp8_e4m3 magnitude: a group's amax maps to it.
inline constexpr float quant_fp8_max = 448.0f;
// The smallest amax a scale is computed from (as in SGLang/vLLM's per_token_group_quant_fp8, eps
// 1e-10). An all-zero group gets scale 1e-10 / 448 ~ 2.2e-13, a normal fp32 (so no flush to zero
// and no 0/0), its codes are +-0 and it dequantises to exactly 0. A group whose amax is below
// 1e-10 keeps its values, scaled to magnitudes below 448.
inline constexpr float quant_amax_floor = 1e-10f;

// How the [rows, cols / 128] scales are stored.
enum class scale_layout : std::uint8_t {
  row_major,  // [rows][cols / 128]: scale(m, g) at m * ld + g
  k_major,    // [cols / 128][rows], rows contiguous: scale(m, g) at g * ld + m; what cuBLASLt's
              // VEC128_32F wants for the activation (B operand) of DeepSeek's FP8 GEMM
};

// q[m, :] = fp8(x[m, :] * (1 / scale(m, g))) group by group. Plain data: passed by value to the
// kernel.
template <class In, class Out>
struct quant_params {
  In const* x = nullptr;      // [rows, cols], row stride x_stride
  Out* q = nullptr;           // [rows, cols], row stride q_stride
  float* scales = nullptr;    // scale(m, g) at m * scale_row_stride + g * scale_group_stride
  std::int64_t rows = 0;      // tokens
  std::int64_t cols = 0;      // K, a multiple of quant_group_size
  std::int64_t x_stride = 0;  // elements between rows of x
  std::int64_t q_stride = 0;  // elements between rows of q
  std::int64_t scale_row_stride = 0;    // elements between the scales of consecutive rows
  std::int64_t scale_group_stride = 0;  // elements between the scales of consecutive groups
  bool rows_fastest = false;  // visit groups row-index-fastest (k_major: coalesced scale stores)
};

// max(a, |v|) that ignores NaN in v: fmax returns the other operand when one is NaN (IEEE
// maxNum), on the host and on the device, where it is one instruction with the |.| folded in.
LC_HOST_DEVICE inline float quant_amax(float a, float v) noexcept { return fmaxf(a, fabsf(v)); }

LC_HOST_DEVICE inline float quant_group_scale(float amax) noexcept {
  return (amax > quant_amax_floor ? amax : quant_amax_floor) / quant_fp8_max;
}

// The reciprocal each element of a group is multiplied by. One IEEE division per group instead of
// one per element: the per-element division made the kernel issue-bound (0.56-0.61 of the HBM
// copy on an H100). Both backends multiply by the same correctly rounded reciprocal, so they stay
// bit-identical; x * (1 / scale) may differ from x / scale by an fp32 ulp, which moves the fp8
// code only at a rounding boundary (the multiply-by-reciprocal form is what peers use too).
LC_HOST_DEVICE inline float quant_inverse_scale(float scale) noexcept { return 1.0f / scale; }

// A NaN element gives the fp8 NaN code; an infinite one makes its group's scale infinite (and its
// reciprocal 0, so the group's finite elements become 0 and the infinite one NaN).
template <class Out>
LC_HOST_DEVICE inline Out quant_value(float x, float inverse_scale) noexcept {
  return Out(x * inverse_scale);
}

}  // namespace lightcore::kernels
