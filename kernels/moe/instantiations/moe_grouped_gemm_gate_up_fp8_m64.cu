// moe experts: the grouped GEMM gate_up, fp8 weights, block_m 64 (one explicit instantiation per
// file; see grouped_gemm.cuh).
#include "kernels/moe/grouped_gemm.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_grouped_gemm<moe_gemm_stage::gate_up, true, 64, false>(
    moe_grouped_gemm_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
