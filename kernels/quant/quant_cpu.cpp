// quant: the CPU reference, group by group with the shared formulas of quant_params.hpp.
#include "kernels/quant/quant.hpp"

namespace lightcore::kernels::detail {

void quantize_per_token_group_cpu(tensor_view const& x, tensor_view const& q,
                                  tensor_view const& scales, scale_layout layout) {
  auto const in = x.as<bf16, 2>();
  auto const out = q.as<fp8_e4m3, 2>();
  auto const [row_stride, group_stride] = quant_scale_strides(scales, layout);
  float* const s = scales.data_as<float>();
  for (std::int64_t m = 0; m < x.size(0); ++m) {
    for (std::int64_t k0 = 0; k0 < x.size(1); k0 += quant_group_size) {
      float amax = 0.0f;
      for (std::int64_t k = k0; k < k0 + quant_group_size; ++k) amax = quant_amax(amax, in(m, k));
      float const scale = quant_group_scale(amax);
      float const inverse = quant_inverse_scale(scale);
      for (std::int64_t k = k0; k < k0 + quant_group_size; ++k)
        out(m, k) = quant_value<fp8_e4m3>(in(m, k), inverse);
      s[m * row_stride + (k0 / quant_group_size) * group_stride] = scale;
    }
  }
}

}  // namespace lightcore::kernels::detail
