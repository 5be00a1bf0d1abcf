// convert: the CUDA dispatch, from a runtime (src, dst) dtype pair to the pair's launcher, which
// lives in its own file under instantiations/.
#include <cuda_runtime_api.h>

#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {
void convert_cuda(tensor_view const& src, tensor_view const& dst, CUstream_st* stream) {
  int const ordinal = dst.where().index;
  backend::device_guard const guard(ordinal);
  int const num_sms = backend::multiprocessor_count(ordinal);
  dispatch_convert_pair(src.type(), dst.type(), [&]<class Src, class Dst>() {
    launch_convert(convert_params<Src, Dst>{src.data_as<Src>(), dst.data_as<Dst>(), src.numel()},
                   num_sms, stream);
  });
}

}  // namespace lightcore::kernels::detail
