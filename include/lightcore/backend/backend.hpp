// The Backend concept: what lightcore needs from a device to own memory and order work on it.
// backend::cpu (cpu.hpp) and backend::cuda (cuda.hpp) satisfy it; kernels and the
// cache_tensor_manager are templates over a Backend, so the hot path has no virtual calls.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "lightcore/core/device.hpp"

namespace lightcore {

// Free and total bytes of a backend's memory.
struct memory_info {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};

// A Backend B provides
//   B::stream_type   move-only; an ordered queue of work; .synchronize() waits for it
//   B::event_type    move-only; .record(stream), .synchronize(), elapsed_ms(start, end)
//   allocate(bytes)              -> void*; aligned to at least B::alignment; throws on failure
//   deallocate(ptr, bytes)       noexcept
//   allocate_host(bytes), deallocate_host(ptr, bytes)   host memory that copies to and from the
//                                device may run asynchronously with (page-locked on CUDA)
//   copy(dst, src, bytes, s)     ordered on s; either side may be host memory
//   fill(dst, count, elem_bytes, pattern, s)  count elements of elem_bytes (1, 2, 4 or 8)
//                                             set to the low elem_bytes bytes of pattern
//   make_stream(), make_event(), synchronize() (all work on the device), memory()
template <class B>
concept Backend = requires(B& b, B const& cb, void* dst, void const* src, std::size_t n,
                           std::uint64_t pattern, typename B::stream_type& s,
                           typename B::event_type& e) {
  { B::kind } -> std::convertible_to<device_kind>;
  { B::alignment } -> std::convertible_to<std::size_t>;
  { cb.where() } -> std::same_as<device>;
  { b.allocate(n) } -> std::same_as<void*>;
  { b.deallocate(dst, n) }
  noexcept;
  { b.allocate_host(n) } -> std::same_as<void*>;
  { b.deallocate_host(dst, n) }
  noexcept;
  {b.copy(dst, src, n, s)};
  {b.fill(dst, n, n, pattern, s)};
  { b.make_stream() } -> std::same_as<typename B::stream_type>;
  { b.make_event() } -> std::same_as<typename B::event_type>;
  {b.synchronize()};
  { b.memory() } -> std::same_as<memory_info>;
  {s.synchronize()};
  {e.record(s)};
  {e.synchronize()};
  { B::elapsed_ms(e, e) } -> std::convertible_to<float>;
};

}  // namespace lightcore
