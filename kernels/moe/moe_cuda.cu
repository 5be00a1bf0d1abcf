// moe: the CUDA dispatch, the one place where the expert count becomes a compile-time
// experts-per-lane bucket of the routing kernel; each launcher lives in its own file under
// instantiations/.
#include "kernels/moe/moe.hpp"
#include "lightcore/backend/cuda.hpp"

namespace lightcore::kernels::detail {
namespace {

// Warps of the alignment block: one chunk of rows each (see align.cuh).
constexpr int align_warps = 32;

}  // namespace

// E <= 64 (V2-Lite) -> 2 experts per lane; E <= 256 (V2, V3/R1) -> 8.
void moe_route_cuda(moe_routing_params const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  int const sms = backend::multiprocessor_count(ordinal);
  if (p.experts <= 64) return launch_moe_routing<2>(p, sms, stream);
  if (p.experts <= 256) return launch_moe_routing<8>(p, sms, stream);
  LC_THROW("moe_route on CUDA has kernels for up to 256 experts (buckets of 2 and 8 per lane); got "
           << p.experts);
}

void moe_align_cuda(moe_align_params const& p, int ordinal, CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  launch_moe_align<align_warps>(p, stream);
}

void moe_route_align_cuda(moe_routing_params const& rp, moe_align_params const& ap, int ordinal,
                          CUstream_st* stream) {
  backend::device_guard const guard(ordinal);
  if (rp.experts <= 64) return launch_moe_route_align<2>(rp, ap, stream);
  if (rp.experts <= 256) return launch_moe_route_align<8>(rp, ap, stream);
  LC_THROW(
      "moe_route_and_align on CUDA has kernels for up to 256 experts (buckets of 2 and 8 per "
      "lane); got "
      << rp.experts);
}

}  // namespace lightcore::kernels::detail
