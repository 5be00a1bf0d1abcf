// init: fp8_e4m3 (one explicit instantiation per file; see init.cuh).
#include "kernels/init/init.cuh"

namespace lightcore::kernels::detail {
template void launch_fill_random<fp8_e4m3>(init_params<fp8_e4m3> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
