// attention: varlen causal prefill, qk dim 192, v dim 128 (DeepSeek MLA after decompression; one
// explicit instantiation per file; see prefill.cuh).
#include "kernels/attention/prefill.cuh"

namespace lightcore::kernels::detail {
template void launch_prefill<192, 128>(prefill_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
