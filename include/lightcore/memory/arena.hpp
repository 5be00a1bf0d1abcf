// arena<B>: the block allocator under cache_tensor_manager. It owns a list of chunks (backend
// allocations) and hands out aligned blocks from them, best fit, coalescing freed neighbours.
// The same sequence of allocate/release calls from an empty arena always yields the same
// addresses, which is what lets layer i+1 land exactly on layer i's dead buffers and lets every
// captured graph lay its buffers over the same pool.
// Not thread-safe: one arena belongs to one host thread at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::memory {

struct arena_stats {
  std::size_t live_bytes = 0;      // bytes in blocks handed out and not released
  std::size_t peak_bytes = 0;      // high-water mark of live_bytes since the last reset_peak()
  std::size_t reserved_bytes = 0;  // bytes held from the backend (sum of chunks)
  std::size_t chunks = 0;
};

template <Backend B>
class arena {
 public:
  // growth_bytes: the smallest chunk taken from the backend when no free block fits.
  arena(B& backend, std::size_t growth_bytes) : backend_(&backend), growth_(growth_bytes) {}
  arena(arena const&) = delete;
  arena& operator=(arena const&) = delete;
  ~arena() { release_chunks(); }

  // A block of `bytes` (a multiple of B::alignment), grown from the backend if nothing fits.
  std::byte* allocate(std::size_t bytes) {
    LC_CHECK(bytes % B::alignment == 0,
             "arena block of " << bytes << " bytes is not a multiple of " << B::alignment);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->size >= bytes && (best == free_.end() || it->size < best->size)) best = it;
    if (best == free_.end()) best = grow(bytes);
    std::byte* const p = best->begin;
    if (best->size == bytes) {
      free_.erase(best);
    } else {
      best->begin += bytes;
      best->size -= bytes;
    }
    stats_.live_bytes += bytes;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.live_bytes);
    return p;
  }

  // Returns a block; neighbours in the same chunk merge so that the arena can return to one
  // free block per chunk once everything is released.
  void release(std::byte* p, std::size_t bytes) noexcept {
    std::uint32_t const c = chunk_of(p);
    auto it = std::lower_bound(free_.begin(), free_.end(), p,
                               [](range const& r, std::byte* q) { return r.begin < q; });
    it = free_.insert(it, range{p, bytes, c});
    if (auto next = it + 1;
        next != free_.end() && next->chunk == c && it->begin + it->size == next->begin) {
      it->size += next->size;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = it - 1;
      if (prev->chunk == c && prev->begin + prev->size == it->begin) {
        prev->size += it->size;
        free_.erase(it);
      }
    }
    stats_.live_bytes -= bytes;
  }

  // Forgets every block handed out: each chunk becomes one free block again. Memory handed out
  // before stays valid (it is not returned to the backend) but will be handed out again.
  void reset() noexcept {
    free_.clear();
    for (std::uint32_t i = 0; i < chunks_.size(); ++i)
      free_.push_back(range{chunks_[i].base, chunks_[i].size, i});
    std::sort(free_.begin(), free_.end(),
              [](range const& a, range const& b) { return a.begin < b.begin; });
    stats_.live_bytes = 0;
  }

  // Returns every chunk to the backend and takes one chunk of `bytes` instead (none if 0), so
  // that a warm-up's scattered growth becomes one block. Only allowed while nothing is live.
  void consolidate(std::size_t bytes) {
    LC_CHECK(stats_.live_bytes == 0,
             "arena consolidate with " << stats_.live_bytes << " bytes still live");
    release_chunks();
    if (bytes > 0) add_chunk(bytes);
  }

  void reset_peak() noexcept { stats_.peak_bytes = stats_.live_bytes; }
  arena_stats stats() const noexcept { return stats_; }
  bool owns(void const* p) const noexcept {
    for (chunk const& c : chunks_)
      if (p >= c.base && p < c.base + c.size) return true;
    return false;
  }

 private:
  struct chunk {
    std::byte* base;
    std::size_t size;
  };
  struct range {
    std::byte* begin;
    std::size_t size;
    std::uint32_t chunk;
  };

  typename std::vector<range>::iterator grow(std::size_t bytes) {
    add_chunk(std::max(bytes, growth_));
    chunk const& c = chunks_.back();
    auto it = std::lower_bound(free_.begin(), free_.end(), c.base,
                               [](range const& r, std::byte* q) { return r.begin < q; });
    return it;  // add_chunk inserted the new chunk's free block here
  }

  void add_chunk(std::size_t bytes) {
    auto* base = static_cast<std::byte*>(backend_->allocate(bytes));
    chunks_.push_back(chunk{base, bytes});
    auto const id = static_cast<std::uint32_t>(chunks_.size() - 1);
    auto it = std::lower_bound(free_.begin(), free_.end(), base,
                               [](range const& r, std::byte* q) { return r.begin < q; });
    free_.insert(it, range{base, bytes, id});
    stats_.reserved_bytes += bytes;
    stats_.chunks = chunks_.size();
  }

  std::uint32_t chunk_of(std::byte const* p) const noexcept {
    for (std::uint32_t i = 0; i < chunks_.size(); ++i)
      if (p >= chunks_[i].base && p < chunks_[i].base + chunks_[i].size) return i;
    return ~std::uint32_t{0};
  }

  void release_chunks() noexcept {
    for (chunk const& c : chunks_) backend_->deallocate(c.base, c.size);
    chunks_.clear();
    free_.clear();
    stats_ = arena_stats{};
  }

  B* backend_;
  std::size_t growth_;
  std::vector<chunk> chunks_;
  std::vector<range> free_;  // sorted by address
  arena_stats stats_;
};

}  // namespace lightcore::memory
