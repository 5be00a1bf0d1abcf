// mla: absorbed decode, tiles of 16 heads (H = 16: DeepSeek-R1 at TP8, V2-Lite), page size 1
// (one explicit instantiation per file; see mla_decode.cuh).
#include "kernels/mla/mla_decode.cuh"

namespace lightcore::kernels::detail {
template void launch_mla_decode_stream<kv_layout<1>>(mla_decode_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
