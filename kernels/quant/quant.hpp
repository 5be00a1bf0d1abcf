// quant: per-token-group FP8 quantisation of activations, the input side of DeepSeek-V3's
// block-scaled FP8 GEMMs. Each row of x [M, K] bf16 is cut into groups of 128 columns; a group's
// scale is amax(|x|) / 448 (fp32) and its codes q = fp8_e4m3(x * (1 / scale)), saturating;
// x ~ q * scale.
// The scales go row-major [M][K/128] or k-major [K/128][M] (the layout cuBLASLt's VEC128_32F
// mode needs for the activation operand); a padded leading dimension comes from the view's stride.
#pragma once

#include <climits>
#include <cstdint>
#include <ostream>
#include <utility>

#include "kernels/quant/quant_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

inline std::ostream& operator<<(std::ostream& os, scale_layout l) {
  return os << (l == scale_layout::row_major ? "row_major" : "k_major");
}

namespace detail {

void quantize_per_token_group_cpu(tensor_view const& x, tensor_view const& q,
                                  tensor_view const& scales, scale_layout layout);
#if defined(LIGHTCORE_WITH_CUDA)
void quantize_per_token_group_cuda(tensor_view const& x, tensor_view const& q,
                                   tensor_view const& scales, scale_layout layout,
                                   CUstream_st* stream);

// Defined in quant.cuh, instantiated once per (In, Out) in instantiations/.
template <class In, class Out>
void launch_quantize_per_token_group(quant_params<In, Out> const& p, int num_sms,
                                     CUstream_st* stream);
#endif

// The bytes [first, last) that a rank-2 view with non-negative strides spans.
inline std::pair<std::uintptr_t, std::uintptr_t> quant_byte_span(tensor_view const& v) {
  auto const first = reinterpret_cast<std::uintptr_t>(v.data());
  std::int64_t const last = (v.size(0) - 1) * v.stride(0) + (v.size(1) - 1) * v.stride(1) + 1;
  return {first, first + std::uintptr_t(last) * v.element_size()};
}

inline bool quant_disjoint(tensor_view const& a, tensor_view const& b) {
  auto const [a0, a1] = quant_byte_span(a);
  auto const [b0, b1] = quant_byte_span(b);
  return a1 <= b0 || b1 <= a0;
}

// The (row, group) strides of the scale view: its shape is [M, K/128] (row_major) or [K/128, M]
// (k_major); the inner dimension is contiguous, the outer one may be padded. A dimension of
// extent 1 may have any stride.
inline std::pair<std::int64_t, std::int64_t> quant_scale_strides(tensor_view const& s,
                                                                 scale_layout layout) {
  std::int64_t const outer = s.size(0) == 1 ? s.size(1) : s.stride(0);
  std::int64_t const inner = s.size(1) == 1 ? 1 : s.stride(1);
  LC_CHECK(inner == 1 && outer >= s.size(1), "quantize_per_token_group needs a "
                                                 << layout
                                                 << " scale view whose last dimension is "
                                                    "contiguous and whose leading dimension is at "
                                                    "least its extent (padding allowed); got "
                                                 << s);
  return layout == scale_layout::row_major ? std::pair{outer, inner} : std::pair{inner, outer};
}

inline void check_quant_args(device where, tensor_view const& x, tensor_view const& q,
                             tensor_view const& s, scale_layout layout) {
  LC_CHECK(x.type() == dtype::bf16 && q.type() == dtype::fp8_e4m3 && s.type() == dtype::f32,
           "quantize_per_token_group supports x bf16, q fp8_e4m3, scales f32; got x "
               << x.type() << ", q " << q.type() << ", scales " << s.type());
  LC_CHECK(layout == scale_layout::row_major || layout == scale_layout::k_major,
           "quantize_per_token_group: unknown scale layout " << int(layout)
                                                             << "; allowed: row_major, k_major");
  LC_CHECK(x.rank() == 2 && q.rank() == 2 && s.rank() == 2 && x.shape() == q.shape(),
           "quantize_per_token_group needs x and q [M, K] and rank-2 scales; got x "
               << x.shape() << ", q " << q.shape() << ", scales " << s.shape());
  std::int64_t const rows = x.size(0), cols = x.size(1), groups = cols / quant_group_size;
  LC_CHECK(rows <= INT32_MAX && groups <= INT32_MAX,
           "quantize_per_token_group supports M and K / 128 up to "
               << INT32_MAX << "; got M = " << rows << ", K = " << cols);
  LC_CHECK(cols % quant_group_size == 0, "quantize_per_token_group needs K to be a multiple of "
                                             << quant_group_size << "; got K = " << cols);
  dims const want = layout == scale_layout::row_major ? dims{rows, groups} : dims{groups, rows};
  LC_CHECK(s.shape() == want, "quantize_per_token_group with " << layout << " scales needs them "
                                                               << want << " for x " << x.shape()
                                                               << "; got " << s.shape());
  LC_CHECK(x.where() == where && q.where() == where && s.where() == where,
           "quantize_per_token_group on " << where << " needs every view there; x is on "
                                          << x.where() << ", q on " << q.where() << ", scales on "
                                          << s.where());
  if (rows == 0 || cols == 0) return;
  quant_scale_strides(s, layout);
  // x moves in 16-byte vectors (8 bf16), q in 8-byte ones (8 fp8).
  LC_CHECK(x.stride(1) == 1 && q.stride(1) == 1 &&
               (rows == 1 || (x.stride(0) % 8 == 0 && x.stride(0) >= cols && q.stride(0) % 8 == 0 &&
                              q.stride(0) >= cols)),
           "quantize_per_token_group needs x and q with unit column stride and non-overlapping "
           "rows whose strides are multiples of 8 elements; got x "
               << x << ", q " << q);
  LC_CHECK(x.data() != nullptr && q.data() != nullptr && s.data() != nullptr,
           "quantize_per_token_group got a null pointer (x " << x.data() << ", q " << q.data()
                                                             << ", scales " << s.data() << ")");
  LC_CHECK(reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(q.data()) % 8 == 0 &&
               reinterpret_cast<std::uintptr_t>(s.data()) % 4 == 0,
           "quantize_per_token_group needs x 16-byte, q 8-byte, scales 4-byte aligned; got x at "
               << x.data() << ", q at " << q.data() << ", scales at " << s.data());
  LC_CHECK(quant_disjoint(x, q) && quant_disjoint(x, s) && quant_disjoint(q, s),
           "quantize_per_token_group needs disjoint x, q and scales; got x at "
               << x.data() << ", q at " << q.data() << ", scales at " << s.data());
}

}  // namespace detail

// q = fp8(x * (1 / scale)) per group of 128 columns, scales stored in `layout`. x: [M, K] bf16, q:
// [M, K] fp8_e4m3, scales: [M, K/128] (row_major) or [K/128, M] (k_major) f32 with a contiguous
// last dimension and any leading stride (to pad M for TMA alignment, slice a larger buffer). K a
// multiple of 128; all on the backend's device; disjoint. Ordered on `stream`.
template <Backend B>
void quantize_per_token_group(B& backend, tensor_view const& x, tensor_view const& q,
                              tensor_view const& scales, scale_layout layout,
                              [[maybe_unused]] typename B::stream_type const& stream) {
  detail::check_quant_args(backend.where(), x, q, scales, layout);
  if (x.numel() == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::quantize_per_token_group_cpu(x, q, scales, layout);
  } else {
    static_assert(B::kind == device_kind::cuda, "quantize_per_token_group: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::quantize_per_token_group_cuda(x, q, scales, layout, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "quantize_per_token_group on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
