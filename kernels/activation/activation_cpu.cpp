// activation: the CPU reference, a plain loop over silu_and_mul_value (the same per-element
// formula the CUDA kernel applies).
#include "kernels/activation/activation.hpp"

namespace lightcore::kernels::detail {

void silu_and_mul_cpu(tensor_view const& in, tensor_view const& out) {
  LC_CHECK(in.type() == dtype::bf16,
           "silu_and_mul on the CPU supports bf16 only; got " << in.type());
  auto const x = in.as<bf16, 2>();
  auto const y = out.as<bf16, 2>();
  std::int64_t const cols = out.size(1);
  for (std::int64_t r = 0; r < out.size(0); ++r)
    for (std::int64_t c = 0; c < cols; ++c) y(r, c) = silu_and_mul_value(x(r, c), x(r, cols + c));
}

}  // namespace lightcore::kernels::detail
