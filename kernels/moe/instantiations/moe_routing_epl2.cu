// moe: routing for up to 64 experts, 2 per lane (DeepSeek-V2-Lite). One explicit instantiation
// per file; see routing.cuh.
#include "kernels/moe/routing.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_routing<2>(moe_routing_params const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
