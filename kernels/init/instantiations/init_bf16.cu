// init: bf16 (one explicit instantiation per file; see init.cuh).
#include "kernels/init/init.cuh"

namespace lightcore::kernels::detail {
template void launch_fill_random<bf16>(init_params<bf16> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
