// rope: bf16 q/k rope parts of 64 dims (the only variant the models use; see rope.cuh).
#include "kernels/rope/rope.cuh"

namespace lightcore::kernels::detail {
void launch_rope(rope_params const& p, CUstream_st* stream) { launch_rope_impl(p, stream); }
}  // namespace lightcore::kernels::detail
