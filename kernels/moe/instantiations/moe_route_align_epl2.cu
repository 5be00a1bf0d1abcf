// moe: routing and alignment of a decode batch in one launch, for up to 64 experts, 2 per lane
// (DeepSeek-V2-Lite). One explicit instantiation per file; see route_align.cuh.
#include "kernels/moe/route_align.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_route_align<2>(moe_routing_params const&, moe_align_params const&,
                                        CUstream_st*);
}  // namespace lightcore::kernels::detail
