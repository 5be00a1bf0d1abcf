// moe: routing and alignment of a decode batch in one launch, for up to 256 experts, 8 per lane
// (DeepSeek-V2, V3/R1). One explicit instantiation per file; see route_align.cuh.
#include "kernels/moe/route_align.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_route_align<8>(moe_routing_params const&, moe_align_params const&,
                                        CUstream_st*);
}  // namespace lightcore::kernels::detail
