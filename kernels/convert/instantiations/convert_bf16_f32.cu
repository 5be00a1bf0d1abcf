// convert: bf16 -> f32 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<bf16, float>(convert_params<bf16, float> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
