// gemm, FP8 block-scaled at small M: the CUDA dispatch, from a gemm_problem to the kernel
// instantiated under instantiations/ for the token count rounded up to 8, 16, 32, 64 or 128.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/gemm/fp8_small_m_params.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

// Defined in fp8_small_m.cuh, instantiated once per token-tile count in instantiations/.
template <int TokenTiles>
void launch_gemm_fp8_small_m(fp8_small_m_params const& p, int ordinal, int num_sms,
                             CUstream_st* stream);

void gemm_fp8_small_m_cuda(gemm_problem const& p, int ordinal, CUstream_st* stream) {
  LC_CHECK(p.a_type == dtype::fp8_e4m3 && p.b_type == dtype::fp8_e4m3 && p.c_type == dtype::bf16 &&
               p.batch == 1 && p.layout == b_layout::n_by_k,
           "gemm_fp8_small_m takes one FP8 block-scaled product (x and w fp8_e4m3, w [N, K], C "
           "bf16, batch 1); got A "
               << p.a_type << ", B " << p.b_type << ", C " << p.c_type << ", batch " << p.batch);
  LC_CHECK(p.m > 0 && p.m <= gemm_fp8_small_m_max_m && p.m % gemm_fp8_m_multiple == 0,
           "gemm_fp8_small_m takes M a multiple of " << gemm_fp8_m_multiple << " up to "
                                                     << gemm_fp8_small_m_max_m
                                                     << " (larger M: cuBLASLt); got M = " << p.m);
  LC_CHECK(p.n > 0 && p.n % gemm_fp8_small_m_row_tile == 0,
           "gemm_fp8_small_m takes N a multiple of " << gemm_fp8_small_m_row_tile
                                                     << "; got N = " << p.n);
  LC_CHECK(p.k > 0 && p.k % gemm_fp8_block_size == 0,
           "gemm_fp8_small_m takes K a multiple of " << gemm_fp8_block_size << "; got K = " << p.k);
  LC_CHECK(gemm_fp8_small_m_supported(p),
           "gemm_fp8_small_m needs x, w, C and both scales 16-byte aligned, x and w row strides "
           "multiples of 16 and C's of 8 elements; got x "
               << p.a << " ld " << p.lda << ", w " << p.b << " ld " << p.ldb << ", C " << p.c
               << " ld " << p.ldc << ", scales " << p.a_scales << ", " << p.b_scales);
  backend::device_guard const guard(ordinal);
  fp8_small_m_params const params{static_cast<std::uint8_t const*>(p.a),
                                  p.a_scales,
                                  static_cast<std::uint8_t const*>(p.b),
                                  p.b_scales,
                                  static_cast<std::uint16_t*>(p.c),
                                  p.m,
                                  p.n,
                                  p.k,
                                  p.lda,
                                  p.ldb,
                                  p.ldc,
                                  gemm_fp8_weight_scale_ld(p.k)};
  int const sms = backend::multiprocessor_count(ordinal);
  std::int64_t const tiles = (p.m + 7) / 8;
  if (tiles <= 1)
    launch_gemm_fp8_small_m<1>(params, ordinal, sms, stream);
  else if (tiles <= 2)
    launch_gemm_fp8_small_m<2>(params, ordinal, sms, stream);
  else if (tiles <= 4)
    launch_gemm_fp8_small_m<4>(params, ordinal, sms, stream);
  else if (tiles <= 8)
    launch_gemm_fp8_small_m<8>(params, ordinal, sms, stream);
  else
    launch_gemm_fp8_small_m<16>(params, ordinal, sms, stream);
}

}  // namespace lightcore::kernels::detail
