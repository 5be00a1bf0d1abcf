// norm: the params that the CPU reference and the CUDA kernel share, and the per-row and
// per-element arithmetic both of them apply, so that the two backends differ only in the order in
// which the fp32 sum of squares is added up.
#pragma once

#include <cmath>
#include <cstdint>

#include "lightcore/core/bf16.hpp"
#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// One RMSNorm over `rows` rows of `hidden` elements, optionally preceded by the residual add.
// Strides in elements; the last dimension of every tensor is contiguous. Plain data: it is passed
// by value to the CUDA kernel.
template <class T>
struct rmsnorm_params {
  T const* x = nullptr;       // [rows, hidden], row stride x_stride
  T* residual = nullptr;      // [rows, hidden], row stride residual_stride; in/out; null: no add
  T const* weight = nullptr;  // [hidden], contiguous
  T* out = nullptr;           // [rows, hidden], row stride out_stride; may be x itself
  std::int64_t x_stride = 0;
  std::int64_t residual_stride = 0;
  std::int64_t out_stride = 0;
  std::int64_t rows = 0;
  std::int64_t hidden = 0;
  float eps = 0.0f;  // added to the mean square; DeepSeek's rms_norm_eps is 1e-6
};

// 1 / sqrt(sum_sq / hidden + eps) in fp32, as Hugging Face's DeepseekV3RMSNorm computes it:
//   variance = hidden_states.pow(2).mean(-1, keepdim=True)        (fp32)
//   hidden_states * torch.rsqrt(variance + self.variance_epsilon)
// The reciprocal square root is correctly rounded on both sides (__frsqrt_rn on the device; on
// the host the double result rounded to float, off only in rare double-rounding ties), so that it
// adds next to no difference of its own.
LC_HOST_DEVICE inline float rms_inverse(float sum_sq, std::int64_t hidden, float eps) noexcept {
  float const variance = sum_sq / float(hidden);
#if LC_DEVICE_PASS
  return __frsqrt_rn(variance + eps);
#else
  return float(1.0 / std::sqrt(double(variance + eps)));
#endif
}

// One output element: the normalised value is rounded to bf16 before it is scaled, as the
// reference does (`return self.weight * hidden_states.to(input_dtype)`: a bf16 * bf16 product,
// computed in fp32 and rounded once). The product of two bf16 values is exact in fp32.
LC_HOST_DEVICE inline bf16 rmsnorm_value(float x, float inv_rms, bf16 weight) noexcept {
  bf16 const normed(x * inv_rms);
  return bf16(float(weight) * float(normed));
}

// The fused residual add: r_new = bf16(float(r) + float(x)), what `residual = residual + x` gives
// on bf16 tensors; the norm then reads r_new (rounded), not the fp32 sum.
LC_HOST_DEVICE inline bf16 residual_add_value(bf16 r, bf16 x) noexcept {
  return bf16(float(r) + float(x));
}

}  // namespace lightcore::kernels
