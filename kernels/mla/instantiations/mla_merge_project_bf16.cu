// mla: the merge of the decode's KV splits with the output projection W_UV folded in (one explicit
// instantiation per file; see mla_decode.cuh).
#include "kernels/mla/mla_decode.cuh"

namespace lightcore::kernels::detail {
template void launch_mla_merge_project<bf16>(mla_decode_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
