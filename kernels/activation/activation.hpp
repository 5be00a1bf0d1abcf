// activation: silu_and_mul, the gated activation of DeepSeek's MLPs and experts. The fused
// gate_up projection writes [tokens, 2 * I] (gate | up along the last dimension); this computes
// out[t, i] = silu(gate[t, i]) * up[t, i] into [tokens, I], rounding as Hugging Face does (see
// silu_and_mul_value). I is 18432 / 2048 for R1's dense / MoE layers, 10944 / 1408 for V2-Lite.
#pragma once

#include <cstdint>
#include <utility>

#include "kernels/activation/activation_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// Elements per 16-byte access: I and the row strides must be multiples of it.
inline constexpr std::int64_t silu_and_mul_vector_elems = 8;

namespace detail {

void silu_and_mul_cpu(tensor_view const& in, tensor_view const& out);
#if defined(LIGHTCORE_WITH_CUDA)
void silu_and_mul_cuda(tensor_view const& in, tensor_view const& out, CUstream_st* stream);

// Defined in activation.cuh, instantiated once per dtype in instantiations/.
template <class T>
void launch_silu_and_mul(silu_and_mul_params<T> const& p, CUstream_st* stream);
#endif

// The bytes [first, last) that a rank-2 view's elements span.
inline std::pair<std::uintptr_t, std::uintptr_t> activation_byte_span(tensor_view const& v) {
  auto const first = reinterpret_cast<std::uintptr_t>(v.data());
  auto const elems = (v.size(0) - 1) * v.stride(0) + v.size(1);
  return {first, first + std::uintptr_t(elems) * v.element_size()};
}

inline void check_silu_and_mul_args(device where, tensor_view const& in, tensor_view const& out) {
  LC_CHECK(in.type() == dtype::bf16 && out.type() == dtype::bf16,
           "silu_and_mul supports bf16 only; got input " << in.type() << ", output " << out.type());
  LC_CHECK(in.rank() == 2 && out.rank() == 2,
           "silu_and_mul needs input [tokens, 2 * I] and output [tokens, I]; got input shape "
               << in.shape() << ", output shape " << out.shape());
  std::int64_t const rows = out.size(0), cols = out.size(1);
  LC_CHECK(in.size(0) == rows && in.size(1) == 2 * cols,
           "silu_and_mul needs input [tokens, 2 * I] for output [tokens, I] = "
               << out.shape() << ", i.e. input [" << rows << ", " << 2 * cols << "]; got "
               << in.shape());
  LC_CHECK(cols % silu_and_mul_vector_elems == 0,
           "silu_and_mul needs I (output columns) to be a multiple of " << silu_and_mul_vector_elems
                                                                        << "; got I = " << cols);
  LC_CHECK(in.where() == where && out.where() == where,
           "silu_and_mul on " << where << " needs both views there; input is on " << in.where()
                              << ", output on " << out.where());
  if (rows == 0 || cols == 0) return;
  LC_CHECK(in.stride(1) == 1 && out.stride(1) == 1,
           "silu_and_mul needs unit column stride; got input " << in << ", output " << out);
  LC_CHECK(
      rows == 1 || (in.stride(0) % silu_and_mul_vector_elems == 0 && in.stride(0) >= 2 * cols &&
                    out.stride(0) % silu_and_mul_vector_elems == 0 && out.stride(0) >= cols),
      "silu_and_mul needs row strides that are multiples of "
          << silu_and_mul_vector_elems << " elements (16 bytes) and rows that do not overlap; "
          << "got input " << in << ", output " << out);
  LC_CHECK(in.data() != nullptr && out.data() != nullptr, "silu_and_mul got a null pointer (input "
                                                              << in.data() << ", output "
                                                              << out.data() << ")");
  LC_CHECK(reinterpret_cast<std::uintptr_t>(in.data()) % 16 == 0 &&
               reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0,
           "silu_and_mul needs 16-byte aligned data; got input at " << in.data() << ", output at "
                                                                    << out.data());
  auto const [i0, i1] = activation_byte_span(in);
  auto const [o0, o1] = activation_byte_span(out);
  LC_CHECK(i1 <= o0 || o1 <= i0, "silu_and_mul needs disjoint input and output; got "
                                     << in << " at " << in.data() << " and " << out << " at "
                                     << out.data());
}

}  // namespace detail

// out = silu(in[:, :I]) * in[:, I:]. in: [tokens, 2 * I] bf16, out: [tokens, I] bf16, both on
// the backend's device, unit column stride, row strides and data 16-byte aligned, disjoint;
// I a multiple of 8. Ordered on `stream` (the CPU backend runs it before returning).
template <Backend B>
void silu_and_mul(B& backend, tensor_view const& in, tensor_view const& out,
                  [[maybe_unused]] typename B::stream_type const& stream) {
  detail::check_silu_and_mul_args(backend.where(), in, out);
  if (out.numel() == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::silu_and_mul_cpu(in, out);
  } else {
    static_assert(B::kind == device_kind::cuda, "silu_and_mul: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::silu_and_mul_cuda(in, out, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "silu_and_mul on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
