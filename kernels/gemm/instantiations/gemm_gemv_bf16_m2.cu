// gemm, bf16 at small M: the kernels for up to 2 token(s), both B layouts (one explicit
// instantiation per file, see gemv_bf16.cuh).
#include "kernels/gemm/gemv_bf16.cuh"

namespace lightcore::kernels::detail {
template void launch_gemv_bf16<2>(gemv_bf16_params const&, gemv_bf16_geometry const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
