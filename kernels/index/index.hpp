// index: indexed copies of int32 values between device arrays, for the engine's small device-side
// updates: a step's input ids taken from the previous step's sampled ids before the host knows
// them (overlapped scheduling), and req_to_token entries scattered in one launch.
//
//   dst[dst_index[k]] = src[src_index[k]]   for k < n   (src_index empty: src[k])
//
// Every view is 1-D, contiguous, int32 and on the backend's device; dst_index and src_index (when
// given) have n entries, src at least n when src_index is empty. The geometry does not depend on
// the values (the launch is one fixed grid), so it can be captured in a CUDA graph.
#pragma once

#include <cstdint>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;

namespace lightcore::kernels {

namespace detail {

// Throws, naming the bad index: the CPU checks every index; the GPU cannot report, so there an
// out-of-range index is skipped (its entry is not written).
void copy_indexed_cpu(tensor_view const& dst, tensor_view const& dst_index, tensor_view const& src,
                      tensor_view const& src_index);
#if defined(LIGHTCORE_WITH_CUDA)
void copy_indexed_cuda(tensor_view const& dst, tensor_view const& dst_index, tensor_view const& src,
                       tensor_view const& src_index, CUstream_st* stream);
#endif

inline void check_copy_indexed(device where, tensor_view const& dst, tensor_view const& dst_index,
                               tensor_view const& src, tensor_view const& src_index) {
  bool const gather = src_index.data() != nullptr;
  for (tensor_view const* v : {&dst, &dst_index, &src, &src_index}) {
    if (v == &src_index && !gather) continue;
    LC_CHECK(v->type() == dtype::i32 && v->rank() == 1 && (v->size(0) <= 1 || v->stride(0) == 1),
             "copy_indexed needs contiguous 1-D i32 views; got " << *v);
    LC_CHECK(v->where() == where,
             "copy_indexed on " << where << " needs every view there; got " << *v);
  }
  std::int64_t const n = dst_index.size(0);
  LC_CHECK(!gather || src_index.size(0) == n,
           "copy_indexed: dst_index has " << n << " entries but src_index " << src_index.size(0));
  LC_CHECK(gather || src.size(0) >= n,
           "copy_indexed: " << n << " entries from a source of " << src.size(0)
                            << " values; without src_index the source needs at least n");
  LC_CHECK(n <= std::int64_t(INT32_MAX), "copy_indexed: " << n << " entries; at most 2^31 - 1");
}

}  // namespace detail

template <Backend B>
void copy_indexed(B& /*backend*/, tensor_view const& dst, tensor_view const& dst_index,
                  tensor_view const& src, tensor_view const& src_index,
                  typename B::stream_type const& stream) {
  detail::check_copy_indexed(dst.where(), dst, dst_index, src, src_index);
  if (dst_index.size(0) == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    (void)stream;
    detail::copy_indexed_cpu(dst, dst_index, src, src_index);
  } else {
#if defined(LIGHTCORE_WITH_CUDA)
    detail::copy_indexed_cuda(dst, dst_index, src, src_index, stream.get());
#endif
  }
}

}  // namespace lightcore::kernels
