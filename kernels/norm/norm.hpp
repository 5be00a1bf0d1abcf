// norm: RMSNorm and the fused residual-add + RMSNorm of DeepSeek-V3/R1 (and V2-Lite), rounding as
// Hugging Face's DeepseekV3RMSNorm does (see norm_params.hpp). Hidden sizes in use: 7168 / 2048
// (hidden), 1536 (q_lora), 512 (kv_lora, a [tokens, 512] slice of the [tokens, 576] kv_a output,
// hence row strides that may exceed the hidden size).
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "kernels/norm/norm_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// Elements per 16-byte access: the hidden size and the row strides must be multiples of it.
inline constexpr std::int64_t norm_vector_elems = 8;
// The widest row the CUDA kernel holds in registers (4 vectors per thread, 512 threads); both
// backends accept the same shapes.
inline constexpr std::int64_t norm_max_hidden = 16384;

namespace detail {

void rmsnorm_cpu(rmsnorm_params<bf16> const& p);
// One row of RMSNorm (out may not alias x): the CPU reference's per-row step, also used by other
// families' CPU references.
void rmsnorm_row_cpu(bf16 const* x, bf16* out, bf16 const* weight, std::int64_t hidden, float eps);
#if defined(LIGHTCORE_WITH_CUDA)
void rmsnorm_cuda(rmsnorm_params<bf16> const& p, int ordinal, CUstream_st* stream);

// Launch geometry, chosen from the hidden size in norm_cuda.cu: a row is spread over
// threads_per_row threads (a multiple of 32), rows_per_block rows per block.
struct rmsnorm_launch {
  int threads_per_row = 0;
  int rows_per_block = 0;
  // Programmatic dependent launch: the blocks may be scheduled while the previous kernel on the
  // stream finishes (the kernel waits for it before reading); hides the gap between short kernels.
  bool overlap_previous = true;
};

// Defined in norm.cuh, instantiated once per (vectors per thread, fused) in instantiations/.
template <int VectorsPerThread, bool Fused>
void launch_rmsnorm(rmsnorm_params<bf16> const& p, rmsnorm_launch const& geometry,
                    CUstream_st* stream);
#endif

// The bytes [first, last) that a rank-2 view with unit column stride spans.
inline std::pair<std::uintptr_t, std::uintptr_t> norm_byte_span(tensor_view const& v) {
  auto const first = reinterpret_cast<std::uintptr_t>(v.data());
  auto const elems = (v.size(0) - 1) * v.stride(0) + v.size(1);
  return {first, first + std::uintptr_t(elems) * v.element_size()};
}

inline bool norm_disjoint(tensor_view const& a, tensor_view const& b) {
  auto const [a0, a1] = norm_byte_span(a);
  auto const [b0, b1] = norm_byte_span(b);
  return a1 <= b0 || b1 <= a0;
}

// A [rows, hidden] operand `name` of `what`: bf16, rank 2, shape `shape`, on `where`, unit column
// stride, 16-byte aligned rows.
inline void check_norm_rows(char const* what, char const* name, device where, tensor_view const& v,
                            dims const& shape) {
  LC_CHECK(v.type() == dtype::bf16,
           what << " supports bf16 only; got " << name << " of dtype " << v.type());
  LC_CHECK(v.rank() == 2 && v.shape() == shape, what << " needs " << name << " of shape " << shape
                                                     << " ([rows, hidden]); got " << v.shape());
  LC_CHECK(v.where() == where,
           what << " on " << where << " needs " << name << " there; it is on " << v.where());
  if (v.numel() == 0) return;
  LC_CHECK(v.stride(1) == 1,
           what << " needs a contiguous last dimension; got " << name << ' ' << v);
  LC_CHECK(v.size(0) == 1 || (v.stride(0) % norm_vector_elems == 0 && v.stride(0) >= v.size(1)),
           what << " needs row strides that are multiples of " << norm_vector_elems
                << " elements (16 bytes) and rows that do not overlap; got " << name << ' ' << v);
  LC_CHECK(v.data() != nullptr, what << " got a null pointer for " << name);
  LC_CHECK(reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0,
           what << " needs 16-byte aligned data; got " << name << " at " << v.data());
}

// Checks the operands and returns the params. residual is null for the plain norm.
inline rmsnorm_params<bf16> make_rmsnorm_params(char const* what, device where,
                                                tensor_view const* residual, tensor_view const& x,
                                                tensor_view const& weight, tensor_view const& out,
                                                float eps) {
  LC_CHECK(x.rank() == 2, what << " needs x of shape [rows, hidden]; got " << x.shape());
  std::int64_t const rows = x.size(0), hidden = x.size(1);
  LC_CHECK(hidden > 0 && hidden % norm_vector_elems == 0 && hidden <= norm_max_hidden,
           what << " needs the hidden size H to be a positive multiple of " << norm_vector_elems
                << " up to " << norm_max_hidden << "; got H = " << hidden);
  LC_CHECK(std::isfinite(eps) && eps >= 0.0f,
           what << " needs a finite eps >= 0; got eps = " << eps);
  dims const shape{rows, hidden};
  check_norm_rows(what, "x", where, x, shape);
  check_norm_rows(what, "out", where, out, shape);
  if (residual != nullptr) check_norm_rows(what, "residual", where, *residual, shape);
  LC_CHECK(weight.type() == dtype::bf16,
           what << " supports bf16 only; got weight of dtype " << weight.type());
  LC_CHECK(weight.rank() == 1 && weight.size(0) == hidden,
           what << " needs weight of shape [" << hidden << "] (the hidden size); got "
                << weight.shape());
  LC_CHECK(weight.where() == where,
           what << " on " << where << " needs weight there; it is on " << weight.where());
  LC_CHECK(weight.stride(0) == 1, what << " needs a contiguous weight; got " << weight);
  LC_CHECK(weight.data() != nullptr && reinterpret_cast<std::uintptr_t>(weight.data()) % 16 == 0,
           what << " needs non-null, 16-byte aligned weight; got it at " << weight.data());

  rmsnorm_params<bf16> p;
  p.rows = rows;
  p.hidden = hidden;
  p.eps = eps;
  p.weight = weight.data_as<bf16>();
  if (rows == 0) return p;
  // out may be x itself (each row is read whole before any of it is written), else disjoint.
  bool const in_place = out.data() == x.data() && out.stride(0) == x.stride(0);
  LC_CHECK(in_place || norm_disjoint(out, x),
           what << " needs out to be x itself or disjoint from it; got x " << x << " at "
                << x.data() << ", out " << out << " at " << out.data());
  tensor_view const weight_2d = weight.reshape({1, hidden});
  LC_CHECK(norm_disjoint(out, weight_2d), what << " needs out disjoint from weight");
  if (residual != nullptr) {
    LC_CHECK(norm_disjoint(*residual, x) && norm_disjoint(*residual, out) &&
                 norm_disjoint(*residual, weight_2d),
             what << " needs residual disjoint from x, out and weight; got residual " << *residual
                  << " at " << residual->data() << ", x at " << x.data() << ", out at "
                  << out.data());
    p.residual = residual->data_as<bf16>();
    p.residual_stride = residual->stride(0);
  }
  p.x = x.data_as<bf16>();
  p.x_stride = x.stride(0);
  p.out = out.data_as<bf16>();
  p.out_stride = out.stride(0);
  return p;
}

template <Backend B>
void run_rmsnorm([[maybe_unused]] B& backend, rmsnorm_params<bf16> const& p,
                 [[maybe_unused]] typename B::stream_type const& stream) {
  if (p.rows == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    rmsnorm_cpu(p);  // host work runs when issued: no stream to order on
  } else {
    static_assert(B::kind == device_kind::cuda, "rmsnorm: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    rmsnorm_cuda(p, backend.where().index, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "rmsnorm on backend::cuda needs lightcore built with CUDA (LIGHTCORE_WITH_CUDA)");
#endif
  }
}

}  // namespace detail

// out = weight * bf16(x * rsqrt(mean(x^2) + eps)), per row, in fp32 with the reference's rounding
// points. x, out: [rows, H] bf16 with unit column stride and row strides (in elements) that are
// multiples of 8; out is x itself or disjoint from it. weight: [H] bf16, contiguous. H a multiple
// of 8 up to norm_max_hidden; all data 16-byte aligned and on the backend's device. Ordered on
// `stream` (the CPU backend runs it before returning).
template <Backend B>
void rmsnorm(B& backend, tensor_view const& x, tensor_view const& weight, tensor_view const& out,
             float eps, typename B::stream_type const& stream) {
  detail::run_rmsnorm(
      backend,
      detail::make_rmsnorm_params("rmsnorm", backend.where(), nullptr, x, weight, out, eps),
      stream);
}

// The residual stream's step: residual = bf16(residual + x) (in place), then
// out = rmsnorm(residual) as above, in one pass over the rows. residual: [rows, H] bf16 like x,
// disjoint from x, out and weight; the other operands as for rmsnorm.
template <Backend B>
void fused_add_rmsnorm(B& backend, tensor_view const& residual, tensor_view const& x,
                       tensor_view const& weight, tensor_view const& out, float eps,
                       typename B::stream_type const& stream) {
  detail::run_rmsnorm(backend,
                      detail::make_rmsnorm_params("fused_add_rmsnorm", backend.where(), &residual,
                                                  x, weight, out, eps),
                      stream);
}

}  // namespace lightcore::kernels
