// backend::cpu: host memory and immediate execution. Streams are empty (work runs when it is
// issued), events take a steady-clock timestamp. Every member is thread-safe.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::backend {

class cpu {
 public:
  static constexpr device_kind kind = device_kind::cpu;
  static constexpr std::size_t alignment = 256;  // bytes; matches cuda so layouts agree

  struct stream_type {
    void synchronize() const noexcept {}
  };

  class event_type {
   public:
    void record(stream_type const&) noexcept { t_ = std::chrono::steady_clock::now(); }
    void synchronize() const noexcept {}
    std::chrono::steady_clock::time_point time() const noexcept { return t_; }

   private:
    std::chrono::steady_clock::time_point t_{};
  };

  device where() const noexcept { return device::cpu(); }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    std::size_t const rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    LC_CHECK(p != nullptr, "host allocation of " << bytes << " bytes failed");
    return p;
  }

  void deallocate(void* p, std::size_t /*bytes*/) noexcept { std::free(p); }

  // Host memory for device copies: plain memory here (every copy is synchronous).
  void* allocate_host(std::size_t bytes) { return allocate(bytes); }
  void deallocate_host(void* p, std::size_t bytes) noexcept { deallocate(p, bytes); }

  void copy(void* dst, void const* src, std::size_t bytes, stream_type const&) const {
    if (bytes != 0) std::memmove(dst, src, bytes);
  }

  void fill(void* dst, std::size_t count, std::size_t elem_bytes, std::uint64_t pattern,
            stream_type const&) const {
    LC_CHECK(elem_bytes == 1 || elem_bytes == 2 || elem_bytes == 4 || elem_bytes == 8,
             "fill element size " << elem_bytes << " is not supported; allowed: 1, 2, 4, 8");
    if (elem_bytes == 1) {
      std::memset(dst, int(pattern & 0xff), count);
      return;
    }
    auto* out = static_cast<unsigned char*>(dst);
    for (std::size_t i = 0; i < count; ++i)
      std::memcpy(out + i * elem_bytes, &pattern, elem_bytes);  // little-endian: low bytes
  }

  stream_type make_stream() const noexcept { return {}; }
  event_type make_event() const noexcept { return {}; }
  void synchronize() const noexcept {}

  memory_info memory() const noexcept {
    auto const page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return {static_cast<std::size_t>(sysconf(_SC_AVPHYS_PAGES)) * page,
            static_cast<std::size_t>(sysconf(_SC_PHYS_PAGES)) * page};
  }

  static float elapsed_ms(event_type const& start, event_type const& end) noexcept {
    return std::chrono::duration<float, std::milli>(end.time() - start.time()).count();
  }
};

static_assert(Backend<cpu>);

}  // namespace lightcore::backend
