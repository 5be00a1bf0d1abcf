// index: indexed copies between device arrays.
//   copy_indexed: int32 values, for the engine's small device-side updates: a step's input ids
//   taken from the previous step's sampled ids before the host knows them (overlapped
//   scheduling), and req_to_token entries scattered in one launch.
//
//     dst[dst_index[k]] = src[src_index[k]]   for k < n   (src_index empty: src[k])
//
//   copy_rows: whole rows between two row pools by slot, for moving a prompt's KV rows between
//   scattered slots of two pools (PD separation) in one launch per layer:
//
//     dst[dst_slots[k], :] = src[src_slots[k], :]   for k < n
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

// One copy_rows launch: raw pointers, so that a transport holding imported (CUDA IPC) pool
// pointers can call it without views.
struct copy_rows_params {
  void* dst = nullptr;  // [dst_rows, row_bytes] rows row_bytes apart
  std::int64_t dst_rows = 0;
  std::int32_t const* dst_slots = nullptr;  // [n] on the device (CUDA) or host (CPU)
  void const* src = nullptr;                // [src_rows, row_bytes]
  std::int64_t src_rows = 0;
  std::int32_t const* src_slots = nullptr;  // [n]
  std::int64_t n = 0;
  std::int64_t row_bytes = 0;  // a multiple of 16; pools 16-byte aligned
};

namespace detail {

// Throws when a pointer is misaligned or the row size is not a multiple of 16.
void check_copy_rows(copy_rows_params const& p);
// Throws, naming the bad slot (checked before anything is written).
void copy_rows_cpu(copy_rows_params const& p);
#if defined(LIGHTCORE_WITH_CUDA)
// Skips an entry whose slot is outside its pool (the GPU cannot report it). Ordered on stream.
void copy_rows_cuda(copy_rows_params const& p, CUstream_st* stream);
#endif

}  // namespace detail

#if defined(LIGHTCORE_WITH_CUDA)
// copy_rows on CUDA from raw pointers (the slot lists on the device), with the row-copier
// signature that pd::cuda_ipc_transport takes for scattered slots.
inline void copy_rows_on_stream(void* dst, std::int64_t dst_rows, std::int32_t const* dst_slots,
                                void const* src, std::int64_t src_rows,
                                std::int32_t const* src_slots, std::int64_t n,
                                std::int64_t row_bytes, CUstream_st* stream) {
  detail::copy_rows_cuda({dst, dst_rows, dst_slots, src, src_rows, src_slots, n, row_bytes},
                         stream);
}
#endif

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

// Copies rows by slot: dst[dst_slots[k]] = src[src_slots[k]] for k < n. dst and src are 2-D pools
// of one dtype and width with contiguous, 16-byte aligned rows whose size is a multiple of 16
// bytes; the slot vectors are contiguous i32 [n] on the backend's device. A slot outside its pool
// is an error on the CPU and skipped on CUDA. Ordered on `stream`.
template <Backend B>
void copy_rows(B& /*backend*/, tensor_view const& dst, tensor_view const& dst_slots,
               tensor_view const& src, tensor_view const& src_slots,
               typename B::stream_type const& stream) {
  LC_CHECK(dst.rank() == 2 && src.rank() == 2 && dst.type() == src.type() &&
               dst.size(1) == src.size(1) && dst.stride(1) == 1 && src.stride(1) == 1 &&
               (dst.size(0) <= 1 || dst.stride(0) == dst.size(1)) &&
               (src.size(0) <= 1 || src.stride(0) == src.size(1)),
           "copy_rows needs dst and src as contiguous [rows, width] pools of one dtype and width; "
           "got dst "
               << dst << ", src " << src);
  for (tensor_view const* v : {&dst_slots, &src_slots})
    LC_CHECK(v->type() == dtype::i32 && v->rank() == 1 && (v->size(0) <= 1 || v->stride(0) == 1) &&
                 v->size(0) == dst_slots.size(0),
             "copy_rows needs dst_slots and src_slots as contiguous i32 [n] vectors of one length; "
             "got "
                 << dst_slots << " and " << src_slots);
  for (tensor_view const* v : {&dst, &dst_slots, &src, &src_slots})
    LC_CHECK(v->where() == dst.where(),
             "copy_rows needs every view on " << dst.where() << "; got " << *v);
  copy_rows_params p;
  p.dst = dst.data();
  p.dst_rows = dst.size(0);
  p.dst_slots = static_cast<std::int32_t const*>(dst_slots.data());
  p.src = src.data();
  p.src_rows = src.size(0);
  p.src_slots = static_cast<std::int32_t const*>(src_slots.data());
  p.n = dst_slots.size(0);
  p.row_bytes = dst.size(1) * std::int64_t(size_of(dst.type()));
  if (p.n == 0) return;
  detail::check_copy_rows(p);
  if constexpr (B::kind == device_kind::cpu) {
    (void)stream;
    detail::copy_rows_cpu(p);
  } else {
#if defined(LIGHTCORE_WITH_CUDA)
    detail::copy_rows_cuda(p, stream.get());
#endif
  }
}

}  // namespace lightcore::kernels
