// activation: the CUDA dispatch, from the views' runtime dtype to the launcher instantiated under
// instantiations/ (bf16 only, the dtype DeepSeek's activations use).
#include "kernels/activation/activation.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

void silu_and_mul_cuda(tensor_view const& in, tensor_view const& out, CUstream_st* stream) {
  backend::device_guard const guard(out.where().index);
  LC_CHECK(in.type() == dtype::bf16, "silu_and_mul on CUDA supports bf16 only; got " << in.type());
  std::int64_t const rows = out.size(0);
  launch_silu_and_mul(
      silu_and_mul_params<bf16>{in.data_as<bf16>(), out.data_as<bf16>(), rows, out.size(1),
                                rows == 1 ? 2 * out.size(1) : in.stride(0),
                                rows == 1 ? out.size(1) : out.stride(0)},
      stream);
}

}  // namespace lightcore::kernels::detail
