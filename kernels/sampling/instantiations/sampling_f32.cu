// sampling: f32 logits, what the lm head writes (one explicit instantiation per file; see
// sampling.cuh).
#include "kernels/sampling/sampling.cuh"

namespace lightcore::kernels::detail {
template void launch_sampling<float>(sampling_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
