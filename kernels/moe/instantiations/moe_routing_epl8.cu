// moe: routing for up to 256 experts, 8 per lane (DeepSeek-V2, V3, R1). One explicit
// instantiation per file; see routing.cuh.
#include "kernels/moe/routing.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_routing<8>(moe_routing_params const&, int, CUstream_st*);
}  // namespace lightcore::kernels::detail
