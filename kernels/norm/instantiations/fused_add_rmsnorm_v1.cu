// norm: fused_add_rmsnorm, 1 vector(s) of 8 bf16 per thread (one explicit instantiation per
// file; see norm.cuh).
#include "kernels/norm/norm.cuh"

namespace lightcore::kernels::detail {
template void launch_rmsnorm<1, true>(rmsnorm_params<bf16> const&, rmsnorm_launch const&,
                                      CUstream_st*);
}  // namespace lightcore::kernels::detail
