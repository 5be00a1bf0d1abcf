// index: the CPU reference (and the CPU backend's implementation) of copy_indexed and copy_rows,
// and the checks copy_rows shares with CUDA.
#include <cstdint>
#include <cstring>

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

void check_copy_rows(copy_rows_params const& p) {
  auto const aligned = [](void const* ptr) { return std::uintptr_t(ptr) % 16 == 0; };
  LC_CHECK(p.n >= 0 && p.n <= std::int64_t(INT32_MAX) && p.row_bytes > 0 && p.row_bytes % 16 == 0,
           "copy_rows: " << p.n << " rows of " << p.row_bytes
                         << " bytes; allowed: 0..2^31 - 1 rows of a positive multiple of 16 bytes");
  LC_CHECK(p.n == 0 || (p.dst != nullptr && p.src != nullptr && p.dst_slots != nullptr &&
                        p.src_slots != nullptr && aligned(p.dst) && aligned(p.src)),
           "copy_rows needs non-null, 16-byte aligned pools and slot vectors; got dst "
               << p.dst << ", src " << p.src);
}

void copy_rows_cpu(copy_rows_params const& p) {
  for (std::int64_t k = 0; k < p.n; ++k)
    LC_CHECK(0 <= p.dst_slots[k] && p.dst_slots[k] < p.dst_rows && 0 <= p.src_slots[k] &&
                 p.src_slots[k] < p.src_rows,
             "copy_rows: entry " << k << " copies row " << p.src_slots[k] << " to row "
                                 << p.dst_slots[k] << "; allowed: sources 0.." << p.src_rows - 1
                                 << ", targets 0.." << p.dst_rows - 1);
  auto* dst = static_cast<unsigned char*>(p.dst);
  auto const* src = static_cast<unsigned char const*>(p.src);
  for (std::int64_t k = 0; k < p.n; ++k)
    std::memcpy(dst + std::int64_t(p.dst_slots[k]) * p.row_bytes,
                src + std::int64_t(p.src_slots[k]) * p.row_bytes, std::size_t(p.row_bytes));
}

}  // namespace lightcore::kernels::detail
