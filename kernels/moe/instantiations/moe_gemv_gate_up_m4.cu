// moe experts: the weight-streaming gate_up kernel for bf16 decode, 4 rows read per block (one
// explicit instantiation per file; see moe_gemv.cuh).
#include "kernels/moe/moe_gemv.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_gemv<moe_gemm_stage::gate_up, 4>(moe_grouped_gemm_params const&,
                                                          CUstream_st*);
}  // namespace lightcore::kernels::detail
