// convert: f32 -> fp8_e4m3 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<float, fp8_e4m3>(convert_params<float, fp8_e4m3> const&, int,
                                              CUstream_st*);
}  // namespace lightcore::kernels::detail
