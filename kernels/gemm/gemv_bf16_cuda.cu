// gemm, bf16 at small M: the CUDA dispatch, from a gemm_problem to the kernels instantiated under
// instantiations/ for the token count rounded up to 1, 2 or 4.
#include <cstdint>

#include "kernels/gemm/gemm.hpp"
#include "kernels/gemm/gemv_bf16_params.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

// Defined in gemv_bf16.cuh, instantiated once per token bucket in instantiations/.
template <int MPad>
void launch_gemv_bf16(gemv_bf16_params const& p, gemv_bf16_geometry const& g, CUstream_st* stream);

void gemm_gemv_bf16_cuda(gemm_problem const& p, gemv_bf16_geometry const& g, CUstream_st* stream) {
  LC_CHECK(gemm_gemv_bf16_supported(p),
           "gemm_gemv_bf16 takes A and B bf16, C bf16 or f32, M 1.."
               << gemm_gemv_bf16_max_m << " (k_by_n 1.." << gemm_gemv_bf16_kn_max_m
               << "), K a multiple of " << gemm_gemv_bf16_vector << " (and N, for k_by_n), A and B "
               << "16-byte aligned with row and batch strides multiples of "
               << gemm_gemv_bf16_vector << " elements, batch <= 65535; got M " << p.m << ", N "
               << p.n << ", K " << p.k << ", batch " << p.batch << ", A " << p.a_type << " " << p.a
               << " ld " << p.lda << " stride " << p.stride_a << ", B " << p.b_type << " "
               << p.layout << " " << p.b << " ld " << p.ldb << " stride " << p.stride_b << ", C "
               << p.c_type);
  gemv_bf16_params params;
  params.a = static_cast<std::uint16_t const*>(p.a);
  params.b = static_cast<std::uint16_t const*>(p.b);
  params.c = p.c;
  params.batch = p.batch;
  params.m = p.m;
  params.n = p.n;
  params.k = p.k;
  params.lda = p.lda;
  params.ldb = p.ldb;
  params.ldc = p.ldc;
  // A batch of one has no batch stride to follow (check_gemm_args may leave any value there).
  params.stride_a = p.batch > 1 ? p.stride_a : 0;
  params.stride_b = p.batch > 1 ? p.stride_b : 0;
  params.stride_c = p.batch > 1 ? p.stride_c : 0;
  params.alpha = p.alpha;
  params.beta = p.beta;
  params.c_f32 = p.c_type == dtype::f32;
  params.k_by_n = p.layout == b_layout::k_by_n;
  params.b_constant = p.b_constant;
  if (p.m <= 1)
    launch_gemv_bf16<1>(params, g, stream);
  else if (p.m <= 2)
    launch_gemv_bf16<2>(params, g, stream);
  else
    launch_gemv_bf16<4>(params, g, stream);
}

}  // namespace lightcore::kernels::detail
