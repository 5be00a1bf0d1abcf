// convert: fp8_e4m3 -> f32 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<fp8_e4m3, float>(convert_params<fp8_e4m3, float> const&, int,
                                              CUstream_st*);
}  // namespace lightcore::kernels::detail
