// mla: absorbed decode on warpgroup MMA, tiles of 64 heads (H = 64, 128: DeepSeek-R1 at TP1 or
// with DP attention), page size 1 (one explicit instantiation per file; see mla_decode_wgmma.cuh).
#include "kernels/mla/mla_decode_wgmma.cuh"

namespace lightcore::kernels::detail {
template void launch_mla_decode_wgmma<kv_layout<1>>(mla_decode_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
