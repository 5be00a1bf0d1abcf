// Host memory for host-to-device copies that must not block the host: page-locked buffers (on
// CUDA; plain ones on the CPU backend) used in turn. A copy from pageable memory may make the
// host wait for the stream; one from page-locked memory is queued and returns, so the buffer it
// reads must stay untouched until the copy has run: a ring of `depth` buffers gives every copy
// depth - 1 later turns before its buffer is written again (3 for an engine with at most two
// steps in flight, each taking one buffer per ring).
//
//   memory::staging_ring<backend::cuda> ring(gpu);
//   std::byte* h = ring.next(bytes, stream);   // fill h, then
//   gpu.copy(device_dst, h, bytes, stream);
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::memory {

// One block from B::allocate_host, freed with the object. Move-only.
template <Backend B>
class host_buffer {
 public:
  host_buffer() = default;
  host_buffer(B& b, std::size_t bytes) : b_(&b), bytes_(bytes), p_(b.allocate_host(bytes)) {}
  host_buffer(host_buffer&& o) noexcept
      : b_(o.b_), bytes_(std::exchange(o.bytes_, 0)), p_(std::exchange(o.p_, nullptr)) {}
  host_buffer& operator=(host_buffer&& o) noexcept {
    std::swap(b_, o.b_);
    std::swap(bytes_, o.bytes_);
    std::swap(p_, o.p_);
    return *this;
  }
  host_buffer(host_buffer const&) = delete;
  host_buffer& operator=(host_buffer const&) = delete;
  ~host_buffer() {
    if (p_ != nullptr) b_->deallocate_host(p_, bytes_);
  }
  std::byte* data() const noexcept { return static_cast<std::byte*>(p_); }
  std::size_t size() const noexcept { return bytes_; }

 private:
  B* b_ = nullptr;
  std::size_t bytes_ = 0;
  void* p_ = nullptr;
};

template <Backend B>
class staging_ring {
 public:
  explicit staging_ring(B& backend, std::size_t depth = 3) : backend_(&backend), ring_(depth) {
    LC_CHECK(depth >= 2, "staging_ring: depth " << depth << "; allowed: >= 2");
  }

  // The next buffer, of at least `bytes`. Growing it waits for `stream` first (the stream every
  // copy from this ring is queued on), so that no queued copy reads a freed buffer.
  std::byte* next(std::size_t bytes, typename B::stream_type const& stream) {
    host_buffer<B>& b = ring_[turn_];
    turn_ = (turn_ + 1) % ring_.size();
    if (b.size() < bytes) {
      stream.synchronize();
      std::size_t grown = 4096;
      while (grown < bytes) grown *= 2;
      b = host_buffer<B>(*backend_, grown);
    }
    return b.data();
  }

 private:
  B* backend_;
  std::vector<host_buffer<B>> ring_;
  std::size_t turn_ = 0;
};

}  // namespace lightcore::memory
