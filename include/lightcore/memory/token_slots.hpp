// token_slots: the host-side allocator of KV pool slot ids [0, capacity), one slot per token.
// The engine's CPU thread decides every slot id and uploads it with the step's batch metadata, so
// allocation never waits on the device.
//
// Free ids live on a stack: try_alloc and free cost O(n) for n ids and never allocate memory. A
// bitmap of the ids in use catches double frees and ids from elsewhere before they corrupt the
// stack (two requests sharing one slot would silently overwrite each other's KV).
//
// Not thread-safe: it belongs to the thread that schedules.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::memory {

class token_slots {
 public:
  explicit token_slots(std::int64_t capacity) : capacity_(capacity) {
    LC_CHECK(capacity >= 0 && capacity <= std::int64_t{INT32_MAX},
             "token_slots capacity " << capacity << " is out of range; allowed: 0.." << INT32_MAX
                                     << " (slot ids are int32)");
    free_.reserve(std::size_t(capacity));
    in_use_.assign(std::size_t((capacity + 63) / 64), 0);
    reset();
  }

  // Appends n fresh ids to `out` and returns true, or returns false and changes nothing (neither
  // this allocator nor `out`) when fewer than n ids are free. Ids come out in ascending order
  // from a fresh allocator, which keeps a new request's KV rows contiguous.
  bool try_alloc(std::int64_t n, std::vector<std::int32_t>& out) {
    LC_CHECK(n >= 0, "token_slots::try_alloc of " << n << " slots; the count must be >= 0");
    if (n > std::int64_t(free_.size())) return false;
    // Geometric growth: a request that takes one slot per decode step must not reallocate (and
    // copy) its whole slot list every step, as an exact reserve would.
    std::size_t const need = out.size() + std::size_t(n);
    if (out.capacity() < need) out.reserve(std::max(need, 2 * out.capacity()));
    for (std::int64_t i = 0; i < n; ++i) {
      std::int32_t const id = free_.back();
      free_.pop_back();
      set_bit(id);
      out.push_back(id);
    }
    return true;
  }

  // Returns ids to the pool. Every id must be in range and allocated, and appear once; otherwise
  // this throws and the allocator is left as it was before the call.
  void free(std::span<std::int32_t const> ids) {
    std::size_t done = 0;
    for (; done < ids.size(); ++done) {
      std::int32_t const id = ids[done];
      if (id < 0 || id >= capacity_ || !test_bit(id)) break;
      clear_bit(id);
      free_.push_back(id);
    }
    if (done == ids.size()) return;
    // Undo the ids already returned, so a failed call changes nothing.
    for (std::size_t k = 0; k < done; ++k) {
      free_.pop_back();
      set_bit(ids[k]);
    }
    std::int32_t const bad = ids[done];
    LC_CHECK(bad >= 0 && bad < capacity_,
             "token_slots::free of slot " << bad << " (position " << done << " of " << ids.size()
                                          << "): out of range; allowed: 0.." << capacity_ - 1);
    LC_THROW("token_slots::free of slot "
             << bad << " (position " << done << " of " << ids.size()
             << "): the slot is not allocated (double free, or a duplicate id in the list)");
  }

  // Marks every slot free again (for example after the KV pool was dropped as a whole).
  void reset() {
    free_.clear();
    // Stack order: the next id popped is the lowest.
    for (std::int64_t id = capacity_ - 1; id >= 0; --id) free_.push_back(std::int32_t(id));
    std::fill(in_use_.begin(), in_use_.end(), std::uint64_t{0});
  }

  bool is_allocated(std::int32_t id) const noexcept {
    return id >= 0 && id < capacity_ && test_bit(id);
  }
  std::int64_t capacity() const noexcept { return capacity_; }
  std::int64_t used() const noexcept { return capacity_ - std::int64_t(free_.size()); }
  std::int64_t available() const noexcept { return std::int64_t(free_.size()); }

 private:
  bool test_bit(std::int32_t id) const noexcept { return (in_use_[id >> 6] >> (id & 63)) & 1u; }
  void set_bit(std::int32_t id) noexcept { in_use_[id >> 6] |= std::uint64_t{1} << (id & 63); }
  void clear_bit(std::int32_t id) noexcept { in_use_[id >> 6] &= ~(std::uint64_t{1} << (id & 63)); }

  std::int64_t capacity_;
  std::vector<std::int32_t> free_;     // stack of free ids; the back is handed out next
  std::vector<std::uint64_t> in_use_;  // one bit per id
};

}  // namespace lightcore::memory
