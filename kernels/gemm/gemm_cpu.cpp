// gemm: the CPU backend. Operands are widened to fp32 (FP8 ones dequantised with their block
// scales) and multiplied with fp32 accumulation, the same arithmetic the GPU path uses; the
// result is rounded to C's type once. Every element is summed in an order that does not depend on
// M (kernels/common/cpu_matmul.hpp), so a row's result is the same in any batch.
#include <cstdint>
#include <vector>

#include "kernels/common/cpu_matmul.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {
namespace {

// rows x cols of a strided row-major matrix of element type T, widened to fp32 into dst
// (contiguous, cols per row).
template <class T>
void widen(void const* data, std::int64_t rows, std::int64_t cols, std::int64_t ld, float* dst) {
  auto const* p = static_cast<T const*>(data);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) dst[i * cols + j] = float(p[i * ld + j]);
}

// A[M, K] fp8 times its per-token-group scales [K/128, M].
std::vector<float> dequantise_activation(gemm_problem const& p) {
  std::vector<float> a(std::size_t(p.m * p.k));
  widen<fp8_e4m3>(p.a, p.m, p.k, p.lda, a.data());
  for (std::int64_t i = 0; i < p.m; ++i)
    for (std::int64_t j = 0; j < p.k; ++j)
      a[std::size_t(i * p.k + j)] *= p.a_scales[(j / gemm_fp8_block_size) * p.m + i];
  return a;
}

// Rows [j0, j1) of B[N, K] fp8 times its 128 x 128 block scales [ceil(N/128), ceil(K/128)].
void dequantise_weight_rows(gemm_problem const& p, std::int64_t j0, std::int64_t j1, float* dst) {
  auto const* b = static_cast<fp8_e4m3 const*>(p.b);
  std::int64_t const ld = gemm_fp8_weight_scale_ld(p.k);
  for (std::int64_t i = j0; i < j1; ++i)
    for (std::int64_t j = 0; j < p.k; ++j)
      dst[(i - j0) * p.k + j] =
          float(b[i * p.ldb + j]) *
          p.b_scales[(i / gemm_fp8_block_size) * ld + j / gemm_fp8_block_size];
}

template <class T>
void store(std::vector<float> const& product, gemm_problem const& p, void* c_data) {
  auto* c = static_cast<T*>(c_data);
  for (std::int64_t i = 0; i < p.m; ++i) {
    for (std::int64_t j = 0; j < p.n; ++j) {
      T& out = c[i * p.ldc + j];
      // beta = 0 never reads C, so a NaN left there does not leak into the result.
      float const old = p.beta == 0.0f ? 0.0f : p.beta * float(out);
      out = T(p.alpha * product[std::size_t(i * p.n + j)] + old);
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
  std::vector<float> product(std::size_t(p.m * p.n));
  for (std::int64_t batch = 0; batch < p.batch; ++batch) {
    if (p.a_type == dtype::fp8_e4m3) {
      std::vector<float> const a = dequantise_activation(p);
      matmul_nt_fixed_order(a.data(), p.k, p.m, p.n, p.k, product.data(), p.n,
                            [&](std::int64_t j0, std::int64_t j1, float* dst) {
                              dequantise_weight_rows(p, j0, j1, dst);
                            });
    } else {
      auto const* a = static_cast<bf16 const*>(p.a) + batch * p.stride_a;
      auto const* b = static_cast<bf16 const*>(p.b) + batch * p.stride_b;
      std::vector<float> ma(std::size_t(p.m * p.k));
      widen<bf16>(a, p.m, p.k, p.lda, ma.data());
      matmul_nt_fixed_order(ma.data(), p.k, p.m, p.n, p.k, product.data(), p.n,
                            [&](std::int64_t j0, std::int64_t j1, float* dst) {
                              if (p.layout == b_layout::n_by_k) {
                                widen<bf16>(b + j0 * p.ldb, j1 - j0, p.k, p.ldb, dst);
                              } else {  // B [K, N]: row j of B^T is column j of B
                                for (std::int64_t j = j0; j < j1; ++j)
                                  for (std::int64_t kk = 0; kk < p.k; ++kk)
                                    dst[(j - j0) * p.k + kk] = float(b[kk * p.ldb + j]);
                              }
                            });
    }
    void* c = static_cast<std::byte*>(p.c) + batch * p.stride_c * c_size;
    if (p.c_type == dtype::f32)
      store<float>(product, p, c);
    else
      store<bf16>(product, p, c);
  }
}

}  // namespace lightcore::kernels::detail
