// gemm, FP8 block-scaled at small M: the kernel for up to 32 tokens (4 tile(s) of 8; one
// explicit instantiation per file, see fp8_small_m.cuh).
#include "kernels/gemm/fp8_small_m.cuh"

namespace lightcore::kernels::detail {
template void launch_gemm_fp8_small_m<4>(fp8_small_m_params const&, int, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
