// init: the CPU reference, element by element with the shared formulas of init_params.hpp.
#include "kernels/init/init.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {
namespace {

template <class T>
void fill(tensor_view const& out, init_spec const& spec) {
  T* const p = out.data_as<T>();
  std::uint64_t const key = init_key(spec.seed, spec.tensor_id);
  for (std::int64_t i = 0; i < out.numel(); ++i)
    p[i] = T(init_value(key, std::uint64_t(i), spec.mean, spec.stddev));
}

}  // namespace

void fill_random_cpu(tensor_view const& out, init_spec const& spec) {
  switch (out.type()) {
    case dtype::bf16: fill<bf16>(out, spec); break;
    case dtype::f32: fill<float>(out, spec); break;
    case dtype::fp8_e4m3: fill<fp8_e4m3>(out, spec); break;
    default: LC_THROW("fill_random: no CPU path for " << out.type());
  }
}

}  // namespace lightcore::kernels::detail
