// moe experts: the grouped GEMM down, bf16 weights, block_m 64, the decode variant (one explicit
// instantiation per file; see grouped_gemm.cuh).
#include "kernels/moe/grouped_gemm.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_grouped_gemm<moe_gemm_stage::down, false, 64, true>(
    moe_grouped_gemm_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
