// rope: the CUDA dispatch. There is one variant (bf16 rows of 64, DeepSeek-V3/R1's rope part;
// head counts are runtime values), launched from instantiations/rope_bf16_d64.cu; here the
// arguments the kernel relies on beyond apply_rope's checks are verified and the device selected.
#include <cstdint>

#include "kernels/rope/rope.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {

void apply_rope_cuda(rope_params const& p, int ordinal, CUstream_st* stream) {
  // The kernel reads a float4 each of cos and sin per lane: rows of 64 floats keep that aligned
  // once the cache itself starts at a 16-byte boundary.
  LC_CHECK(reinterpret_cast<std::uintptr_t>(p.cos_sin) % 16 == 0,
           "apply_rope on CUDA needs the cos/sin cache 16-byte aligned; got address "
               << static_cast<void const*>(p.cos_sin));
  backend::device_guard const guard(ordinal);
  launch_rope(p, stream);
}

}  // namespace lightcore::kernels::detail
