// convert: elementwise dtype casts between contiguous tensors of one shape (checkpoint weights in
// bf16 or fp8 to the dtype a module computes in, test inputs, dequantised views). Both backends
// round as CUDA does (to nearest even; fp8_e4m3 saturates to +-448, NaN stays NaN), so the CPU
// reference and the CUDA kernel give bit-identical results.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>

#include "kernels/convert/convert_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

struct convert_pair {
  dtype src;
  dtype dst;
  friend constexpr bool operator==(convert_pair, convert_pair) = default;
};

// The casts that convert() supports: what model loading (bf16 and fp8 checkpoints) and the tests
// need. Adding one is a line here plus, for CUDA, one file instantiations/convert_<src>_<dst>.cu
// (listed in kernels/families.cmake); a missing file is a link error naming the pair.
inline constexpr std::array convert_pairs = {
    convert_pair{dtype::f32, dtype::bf16},      convert_pair{dtype::bf16, dtype::f32},
    convert_pair{dtype::f32, dtype::f16},       convert_pair{dtype::f16, dtype::f32},
    convert_pair{dtype::f32, dtype::fp8_e4m3},  convert_pair{dtype::fp8_e4m3, dtype::f32},
    convert_pair{dtype::bf16, dtype::fp8_e4m3}, convert_pair{dtype::fp8_e4m3, dtype::bf16},
};

constexpr bool is_convert_supported(dtype src, dtype dst) noexcept {
  for (convert_pair const p : convert_pairs)
    if (p == convert_pair{src, dst}) return true;
  return false;
}

// "f32->bf16, bf16->f32, ...": the table, for error messages.
inline std::string supported_convert_pairs() {
  std::ostringstream os;
  for (std::size_t i = 0; i < convert_pairs.size(); ++i)
    os << (i ? ", " : "") << convert_pairs[i].src << "->" << convert_pairs[i].dst;
  return os.str();
}

namespace detail {
template <std::size_t I, class F>
bool try_convert_pair(convert_pair pair, F& f) {
  constexpr convert_pair p = convert_pairs[I];
  if (pair != p) return false;
  f.template operator()<type_of_t<p.src>, type_of_t<p.dst>>();
  return true;
}

template <class F, std::size_t... I>
bool try_convert_pairs(convert_pair pair, F& f, std::index_sequence<I...>) {
  return (try_convert_pair<I>(pair, f) || ...);
}
}  // namespace detail

// Calls f.template operator()<Src, Dst>() with the C++ element types of the pair (src, dst).
// Each backend calls this once: it is where a runtime pair becomes a compile-time one.
template <class F>
void dispatch_convert_pair(dtype src, dtype dst, F&& f) {
  bool const found = detail::try_convert_pairs(convert_pair{src, dst}, f,
                                               std::make_index_sequence<convert_pairs.size()>{});
  LC_CHECK(found, "convert from " << src << " to " << dst
                                  << " is not supported; supported: " << supported_convert_pairs());
}

namespace detail {

// The backends' entry points; the arguments are checked by convert() below.
void convert_cpu(tensor_view const& src, tensor_view const& dst);
#if defined(LIGHTCORE_WITH_CUDA)
void convert_cuda(tensor_view const& src, tensor_view const& dst, CUstream_st* stream);

// One pair's launch, defined in convert.cuh and instantiated once per pair in instantiations/.
// The dispatch (convert_cuda.cu) sees only this declaration, so it cannot instantiate a kernel.
template <class Src, class Dst>
void launch_convert(convert_params<Src, Dst> const& p, int num_sms, CUstream_st* stream);
#endif

inline void check_convert_args(device where, tensor_view const& src, tensor_view const& dst) {
  LC_CHECK(is_convert_supported(src.type(), dst.type()),
           "convert from " << src.type() << " to " << dst.type()
                           << " is not supported; supported: " << supported_convert_pairs());
  LC_CHECK(src.shape() == dst.shape(), "convert needs equal shapes; source is "
                                           << src.shape() << ", destination " << dst.shape());
  LC_CHECK(src.is_contiguous() && dst.is_contiguous(),
           "convert needs contiguous (row-major) views; got source "
               << src << (src.is_contiguous() ? "" : " (not contiguous)") << " and destination "
               << dst << (dst.is_contiguous() ? "" : " (not contiguous)"));
  LC_CHECK(src.where() == where && dst.where() == where,
           "convert on " << where << " needs both views there; source is on " << src.where()
                         << ", destination on " << dst.where());
  if (src.numel() == 0) return;
  LC_CHECK(src.data() != nullptr && dst.data() != nullptr,
           "convert of " << src.numel() << " elements got a null pointer (source " << src.data()
                         << ", destination " << dst.data() << ")");
  auto const s = reinterpret_cast<std::uintptr_t>(src.data());
  auto const d = reinterpret_cast<std::uintptr_t>(dst.data());
  LC_CHECK(s + src.nbytes() <= d || d + dst.nbytes() <= s,
           "convert needs disjoint source and destination; got "
               << src << " at " << src.data() << " and " << dst << " at " << dst.data());
}

}  // namespace detail

// dst = src cast element by element to dst's dtype. Both views: the backend's device, equal
// shapes, contiguous, disjoint; (src.type(), dst.type()) one of convert_pairs. Ordered on `stream`
// (the CPU backend runs it before returning).
template <Backend B>
void convert(B& backend, tensor_view const& src, tensor_view const& dst,
             [[maybe_unused]] typename B::stream_type const& stream) {
  detail::check_convert_args(backend.where(), src, dst);
  if (src.numel() == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::convert_cpu(src, dst);  // host work runs when issued: no stream to order on
  } else {
    static_assert(B::kind == device_kind::cuda, "convert: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::convert_cuda(src, dst, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "convert on backend::cuda needs lightcore built with CUDA (LIGHTCORE_WITH_CUDA)");
#endif
  }
}

}  // namespace lightcore::kernels
