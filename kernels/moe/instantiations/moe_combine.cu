// moe experts: the combine of the routed rows back to token order (see combine.cuh).
#include "kernels/moe/combine.cuh"

namespace lightcore::kernels::detail {
void launch_moe_combine(moe_combine_params const& p, int num_sms, CUstream_st* stream) {
  launch_moe_combine_impl(p, num_sms, stream);
}
}  // namespace lightcore::kernels::detail
