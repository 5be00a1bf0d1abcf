// init: f32 (one explicit instantiation per file; see init.cuh).
#include "kernels/init/init.cuh"

namespace lightcore::kernels::detail {
template void launch_fill_random<float>(init_params<float> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
