// moe: alignment by one block of 32 warps. One explicit instantiation per file; see align.cuh.
#include "kernels/moe/align.cuh"

namespace lightcore::kernels::detail {
template void launch_moe_align<32>(moe_align_params const&, CUstream_st*);
}  // namespace lightcore::kernels::detail
