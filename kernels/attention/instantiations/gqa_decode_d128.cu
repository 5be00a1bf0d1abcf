// attention: GQA paged decode (and its merge), head dim 128, page size 1 (one explicit
// instantiation per file; see gqa_decode.cuh).
#include "kernels/attention/gqa_decode.cuh"

namespace lightcore::kernels::detail {
template void launch_gqa_decode<128, kv_layout<1>>(gqa_decode_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
