// activation: the params that the CPU reference and the CUDA kernel share, and the per-element
// formula both apply, so that the two backends agree up to expf (CUDA) vs std::exp (host).
#pragma once

#include <cmath>
#include <cstdint>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// silu_and_mul over rows of a fused gate_up projection. Plain data: passed by value to the kernel.
template <class T>
struct silu_and_mul_params {
  T const* in = nullptr;        // [rows, 2 * cols]: gate in columns [0, cols), up in [cols, 2 cols)
  T* out = nullptr;             // [rows, cols]; must not overlap in
  std::int64_t rows = 0;        // tokens
  std::int64_t cols = 0;        // intermediate size I, a multiple of 8
  std::int64_t in_stride = 0;   // elements between rows of in (>= 2 * cols)
  std::int64_t out_stride = 0;  // elements between rows of out (>= cols)
};

// silu(g) * u with Hugging Face's rounding points: DeepseekV3MLP computes
// act_fn(gate_proj(x)) * up_proj(x) on bf16 tensors, so the silu output is a bf16 tensor before the
// multiply. We round there too: t = bf16(silu(float(g))), out = bf16(float(t) * float(u)), with
// silu(g) = g / (1 + exp(-g)) in fp32. On the device expf (max 2 ulp fp32 error) replaces
// std::exp, so the two backends may differ by one bf16 ulp where t lands on a rounding boundary.
template <class T>
LC_HOST_DEVICE inline T silu_and_mul_value(T gate, T up) noexcept {
  float const g = static_cast<float>(gate);
#if LC_DEVICE_PASS
  float const e = expf(-g);
#else
  float const e = std::exp(-g);
#endif
  T const t = T(g / (1.0f + e));
  return T(static_cast<float>(t) * static_cast<float>(up));
}

}  // namespace lightcore::kernels
