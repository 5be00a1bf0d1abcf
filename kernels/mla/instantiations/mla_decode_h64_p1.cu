// mla: absorbed decode, tiles of 64 heads (H = 128: DeepSeek-R1 at TP1 or with DP attention),
// page size 1 (one explicit instantiation per file; see mla_decode.cuh).
#include "kernels/mla/mla_decode.cuh"

namespace lightcore::kernels::detail {
template void launch_mla_decode<64, kv_layout<1>>(mla_decode_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
