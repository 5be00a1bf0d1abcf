// convert: f32 -> bf16 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<float, bf16>(convert_params<float, bf16> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
