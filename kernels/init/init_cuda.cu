// init: the CUDA dispatch, from the view's dtype to the launcher instantiated under
// instantiations/ (bf16, f32, fp8_e4m3: the dtypes of weights and their block scales).
#include <cuda_runtime_api.h>

#include "kernels/init/init.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {
namespace {

template <class T>
void launch(tensor_view const& out, init_spec const& spec, CUstream_st* stream) {
  int const ordinal = out.where().index;
  backend::device_guard const guard(ordinal);
  init_params<T> const p{out.data_as<T>(), out.numel(), init_key(spec.seed, spec.tensor_id),
                         spec.mean, spec.stddev};
  launch_fill_random(p, backend::multiprocessor_count(ordinal), stream);
}

}  // namespace

void fill_random_cuda(tensor_view const& out, init_spec const& spec, CUstream_st* stream) {
  switch (out.type()) {
    case dtype::bf16: launch<bf16>(out, spec, stream); break;
    case dtype::f32: launch<float>(out, spec, stream); break;
    case dtype::fp8_e4m3: launch<fp8_e4m3>(out, spec, stream); break;
    default: LC_THROW("fill_random on CUDA supports bf16, f32 and fp8_e4m3; got " << out.type());
  }
}

}  // namespace lightcore::kernels::detail
