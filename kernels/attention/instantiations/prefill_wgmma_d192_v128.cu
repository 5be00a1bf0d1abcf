// attention: varlen causal prefill on wgmma, qk dim 192, v dim 128 (DeepSeek MLA after
// decompression; one explicit instantiation per file; see prefill_wgmma.cuh).
#include "kernels/attention/prefill_wgmma.cuh"

namespace lightcore::kernels::detail {
template void launch_prefill_wgmma<192, 128>(prefill_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
