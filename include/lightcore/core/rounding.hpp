// fp32 arithmetic with one rounding per operation on the host and on the device alike: nvcc
// contracts a * b + c into one fused multiply-add on the device, which the host compiler (ISO
// C++ mode, no contraction) does not do, so kernels whose CPU reference must give the same bits
// spell out each rounding with these.
#pragma once

#include <cmath>

#include "lightcore/core/macros.hpp"

namespace lightcore {

// a * b rounded to fp32, never fused into a neighbouring add.
LC_HOST_DEVICE inline float mul_rn(float a, float b) noexcept {
#if LC_DEVICE_PASS
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// a + b rounded to fp32, never fused with a neighbouring product.
LC_HOST_DEVICE inline float add_rn(float a, float b) noexcept {
#if LC_DEVICE_PASS
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// a * b + c with a single rounding, on both sides.
LC_HOST_DEVICE inline float fma_rn(float a, float b, float c) noexcept {
#if LC_DEVICE_PASS
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

}  // namespace lightcore
