// quant: bf16 -> fp8_e4m3 with fp32 group scales (one explicit instantiation per file; see
// quant.cuh).
#include "kernels/quant/quant.cuh"

namespace lightcore::kernels::detail {
template void launch_quantize_per_token_group<bf16, fp8_e4m3>(quant_params<bf16, fp8_e4m3> const&,
                                                              int, CUstream_st*);
}  // namespace lightcore::kernels::detail
