// moe experts: the wgmma grouped GEMM down, FP8 block-scaled weights, block_m 64, 128-row items
// (one explicit instantiation per file; see grouped_gemm_wgmma_persistent.cuh).
#include "kernels/moe/grouped_gemm_wgmma_persistent.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_grouped_gemm_wgmma_fp8<moe_gemm_stage::down>(
    moe_grouped_gemm_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
