// gemm: the CPU backend. Operands are widened to fp32 (FP8 ones dequantised with their block
// scales) and multiplied by Eigen with fp32 accumulation, the same arithmetic the GPU path uses;
// the result is rounded to C's type once.
#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "kernels/gemm/gemm.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {
namespace {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// rows x cols of a strided row-major matrix of element type T, widened to fp32.
template <class T>
matrix widen(void const* data, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  auto const* p = static_cast<T const*>(data);
  matrix out(rows, cols);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) out(i, j) = float(p[i * ld + j]);
  return out;
}

// A[M, K] fp8 times its per-token-group scales [K/128, M].
matrix dequantise_activation(gemm_problem const& p) {
  matrix a = widen<fp8_e4m3>(p.a, p.m, p.k, p.lda);
  for (std::int64_t i = 0; i < p.m; ++i)
    for (std::int64_t j = 0; j < p.k; ++j)
      a(i, j) *= p.a_scales[(j / gemm_fp8_block_size) * p.m + i];
  return a;
}

// B[N, K] fp8 times its 128 x 128 block scales [ceil(N/128), ceil(K/128)].
matrix dequantise_weight(gemm_problem const& p) {
  matrix b = widen<fp8_e4m3>(p.b, p.n, p.k, p.ldb);
  std::int64_t const ld = gemm_fp8_weight_scale_ld(p.k);
  for (std::int64_t i = 0; i < p.n; ++i)
    for (std::int64_t j = 0; j < p.k; ++j)
      b(i, j) *= p.b_scales[(i / gemm_fp8_block_size) * ld + j / gemm_fp8_block_size];
  return b;
}

template <class T>
void store(matrix const& product, gemm_problem const& p, void* c_data) {
  auto* c = static_cast<T*>(c_data);
  for (std::int64_t i = 0; i < p.m; ++i) {
    for (std::int64_t j = 0; j < p.n; ++j) {
      T& out = c[i * p.ldc + j];
      // beta = 0 never reads C, so a NaN left there does not leak into the result.
      float const old = p.beta == 0.0f ? 0.0f : p.beta * float(out);
      out = T(p.alpha * product(i, j) + old);
    }
  }
}

}  // namespace

void gemm_state_deleter::operator()([[maybe_unused]] gemm_state* s) const noexcept {
#if defined(LIGHTCORE_WITH_CUDA)
  destroy_gemm_state(s);
#endif
}

void gemm_cpu(gemm_problem const& p) {
  std::int64_t const c_size = std::int64_t(size_of(p.c_type));
  for (std::int64_t batch = 0; batch < p.batch; ++batch) {
    matrix product;
    if (p.a_type == dtype::fp8_e4m3) {
      product = dequantise_activation(p) * dequantise_weight(p).transpose();
    } else {
      auto const* a = static_cast<bf16 const*>(p.a) + batch * p.stride_a;
      auto const* b = static_cast<bf16 const*>(p.b) + batch * p.stride_b;
      matrix const ma = widen<bf16>(a, p.m, p.k, p.lda);
      if (p.layout == b_layout::n_by_k)
        product = ma * widen<bf16>(b, p.n, p.k, p.ldb).transpose();
      else
        product = ma * widen<bf16>(b, p.k, p.n, p.ldb);
    }
    void* c = static_cast<std::byte*>(p.c) + batch * p.stride_c * c_size;
    if (p.c_type == dtype::f32)
      store<float>(product, p, c);
    else
      store<bf16>(product, p, c);
  }
}

}  // namespace lightcore::kernels::detail
