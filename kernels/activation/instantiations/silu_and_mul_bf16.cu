// activation: silu_and_mul on bf16 (one explicit instantiation per file; see activation.cuh).
#include "kernels/activation/activation.cuh"

namespace lightcore::kernels::detail {
template void launch_silu_and_mul<bf16>(silu_and_mul_params<bf16> const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
