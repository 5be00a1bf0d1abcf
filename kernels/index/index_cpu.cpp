// index: the CPU reference (and the CPU backend's implementation) of copy_indexed.
#include "kernels/index/index.hpp"

namespace lightcore::kernels::detail {

void copy_indexed_cpu(tensor_view const& dst, tensor_view const& dst_index, tensor_view const& src,
                      tensor_view const& src_index) {
  auto* out = dst.data_as<std::int32_t>();
  auto const* to = dst_index.data_as<std::int32_t>();
  auto const* in = src.data_as<std::int32_t>();
  auto const* from = src_index.data() == nullptr ? nullptr : src_index.data_as<std::int32_t>();
  std::int64_t const n = dst_index.size(0), n_dst = dst.size(0), n_src = src.size(0);
  for (std::int64_t k = 0; k < n; ++k) {
    std::int64_t const s = from == nullptr ? k : from[k];
    LC_CHECK(0 <= to[k] && to[k] < n_dst && 0 <= s && s < n_src,
             "copy_indexed: entry " << k << " copies source " << s << " to " << to[k]
                                    << "; allowed: sources 0.." << n_src - 1 << ", targets 0.."
                                    << n_dst - 1);
    out[to[k]] = in[s];
  }
}

}  // namespace lightcore::kernels::detail
