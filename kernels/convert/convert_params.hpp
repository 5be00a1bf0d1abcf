// convert: the params that the CPU reference and the CUDA kernel share, and the per-element cast
// both of them apply, so that the two backends agree by construction.
#pragma once

#include <cstdint>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/macros.hpp"

namespace lightcore::kernels {

// One elementwise cast dst[i] = Dst(src[i]) over n contiguous elements. Plain data: it is passed
// by value to the CUDA kernel.
template <class Src, class Dst>
struct convert_params {
  Src const* src = nullptr;  // [n], contiguous
  Dst* dst = nullptr;        // [n], contiguous; must not overlap src
  std::int64_t n = 0;        // elements
};

// Every cast goes through float: widening to float is exact for bf16, f16 and fp8_e4m3, so each
// result is rounded once (round to nearest even; fp8 saturates to +-448), which is what CUDA's own
// bf16 -> fp8 conversion does as well. The numeric types pick CUDA's instructions on the device
// and bit-identical software on the host.
template <class Dst, class Src>
LC_HOST_DEVICE constexpr Dst convert_value(Src x) noexcept {
  return Dst(static_cast<float>(x));
}

}  // namespace lightcore::kernels
