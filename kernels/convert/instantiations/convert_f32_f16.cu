// convert: f32 -> f16 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<float, fp16>(convert_params<float, fp16> const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
