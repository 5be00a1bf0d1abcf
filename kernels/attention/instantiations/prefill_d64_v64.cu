// attention: varlen causal prefill, qk dim 64, v dim 64 (one explicit instantiation per file;
// see prefill.cuh).
#include "kernels/attention/prefill.cuh"

namespace lightcore::kernels::detail {
template void launch_prefill<64, 64>(prefill_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
