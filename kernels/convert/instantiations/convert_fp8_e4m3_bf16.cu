// convert: fp8_e4m3 -> bf16 (one explicit instantiation per file; see convert.cuh).
#include "kernels/convert/convert.cuh"

namespace lightcore::kernels::detail {
template void launch_convert<fp8_e4m3, bf16>(convert_params<fp8_e4m3, bf16> const&, int,
                                             CUstream_st*);
}  // namespace lightcore::kernels::detail
