// quant: the CUDA dispatch, from the views to the launcher instantiated under instantiations/
// (bf16 -> fp8_e4m3 only, what DeepSeek's FP8 GEMMs take).
#include <cuda_runtime_api.h>

#include "kernels/quant/quant.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {
void quantize_per_token_group_cuda(tensor_view const& x, tensor_view const& q,
                                   tensor_view const& scales, scale_layout layout,
                                   CUstream_st* stream) {
  int const ordinal = q.where().index;
  backend::device_guard const guard(ordinal);
  auto const [row_stride, group_stride] = quant_scale_strides(scales, layout);
  std::int64_t const rows = x.size(0), cols = x.size(1);
  quant_params<bf16, fp8_e4m3> const p{x.data_as<bf16>(),
                                       q.data_as<fp8_e4m3>(),
                                       scales.data_as<float>(),
                                       rows,
                                       cols,
                                       rows == 1 ? cols : x.stride(0),
                                       rows == 1 ? cols : q.stride(0),
                                       row_stride,
                                       group_stride,
                                       layout == scale_layout::k_major};
  launch_quantize_per_token_group(p, backend::multiprocessor_count(ordinal), stream);
}

}  // namespace lightcore::kernels::detail
