// convert: the CPU reference, a plain loop over convert_value (the same per-element cast the CUDA
// kernel applies).
#include "kernels/convert/convert.hpp"

namespace lightcore::kernels::detail {
namespace {

template <class Src, class Dst>
void convert_reference(convert_params<Src, Dst> const& p) {
  for (std::int64_t i = 0; i < p.n; ++i) p.dst[i] = convert_value<Dst>(p.src[i]);
}

}  // namespace

void convert_cpu(tensor_view const& src, tensor_view const& dst) {
  dispatch_convert_pair(src.type(), dst.type(), [&]<class Src, class Dst>() {
    convert_reference(
        convert_params<Src, Dst>{src.data_as<Src>(), dst.data_as<Dst>(), src.numel()});
  });
}

}  // namespace lightcore::kernels::detail
