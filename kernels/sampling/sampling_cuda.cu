// sampling: the CUDA dispatch, from the checked params to the launcher instantiated under
// instantiations/ (f32 logits only, what the lm head writes).
#include <cuda_runtime_api.h>

#include "kernels/sampling/sampling.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

void sample_cuda(sampling_params const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  launch_sampling<float>(p, stream);
}

}  // namespace lightcore::kernels::detail
