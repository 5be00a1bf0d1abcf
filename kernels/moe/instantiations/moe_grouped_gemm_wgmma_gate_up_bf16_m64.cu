// moe experts: the wgmma grouped GEMM gate_up, bf16 weights, block_m 64, 128-row CTA tiles (one
// explicit instantiation per file; see grouped_gemm_wgmma.cuh).
#include "kernels/moe/grouped_gemm_wgmma.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_grouped_gemm_wgmma<moe_gemm_stage::gate_up, 64, 128>(
    moe_grouped_gemm_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
