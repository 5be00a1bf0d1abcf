// mla: the fused latent norm, rope and KV write into a token pool of page size 1 (one explicit
// instantiation per file; see mla_kv_prepare.cuh).
#include "kernels/mla/mla_kv_prepare.cuh"

namespace lightcore::kernels::detail {
template void launch_mla_kv_prepare<kv_layout<1>>(mla_kv_prepare_params const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
