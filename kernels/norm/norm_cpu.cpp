// norm: the CPU reference, row by row: the optional residual add, the sum of squares (added up in
// double and rounded once, i.e. the fp32 mean of an exact sum), then the shared per-element
// arithmetic of norm_params.hpp.
#include <cstdint>

#include "kernels/norm/norm.hpp"

namespace lightcore::kernels::detail {

void rmsnorm_row_cpu(bf16 const* x, bf16* out, bf16 const* weight, std::int64_t hidden, float eps) {
  double sum_sq = 0.0;
  for (std::int64_t i = 0; i < hidden; ++i) sum_sq += double(float(x[i])) * float(x[i]);
  float const inv_rms = rms_inverse(float(sum_sq), hidden, eps);
  for (std::int64_t i = 0; i < hidden; ++i) out[i] = rmsnorm_value(float(x[i]), inv_rms, weight[i]);
}

void rmsnorm_cpu(rmsnorm_params<bf16> const& p) {
  for (std::int64_t row = 0; row < p.rows; ++row) {
    bf16 const* x = p.x + row * p.x_stride;
    bf16* const out = p.out + row * p.out_stride;
    if (p.residual != nullptr) {
      bf16* const r = p.residual + row * p.residual_stride;
      for (std::int64_t i = 0; i < p.hidden; ++i) r[i] = residual_add_value(r[i], x[i]);
      x = r;  // the norm reads the updated residual
    }
    rmsnorm_row_cpu(x, out, p.weight, p.hidden, p.eps);
  }
}

}  // namespace lightcore::kernels::detail
