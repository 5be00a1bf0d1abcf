// The engine's view for /metrics: a small shared-memory block that the engine process fills after
// every step (KV use, prefix cache, running and waiting requests, the last step's size) and the
// front end reads when it is scraped, plus each slot's admission time (request queue time).
//
// Fixed layout, relaxed atomics: every field is a gauge or a counter read on its own, so a
// reader may see values of two neighbouring steps side by side, never a torn value. The front
// end creates the region (mode 0600, named like the request table, "/lightcore.<pid>.stats")
// before it forks the engine, so the signal-cleanup registry removes it with the table.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <new>
#include <string>

#include "lightcore/core/error.hpp"
#include "lightcore/ipc/shm_region.hpp"

namespace lightcore::server {

// The published values; all written by the engine process only.
struct engine_stats_values {
  std::atomic<std::uint64_t> steps{0};                // steps run
  std::atomic<std::uint64_t> kv_capacity{0};          // KV pool slots (tokens)
  std::atomic<std::uint64_t> kv_used{0};              // slots held by requests or the cache
  std::atomic<std::uint64_t> cached_tokens{0};        // slots held by the prefix cache
  std::atomic<std::uint64_t> prefix_query_tokens{0};  // tokens looked up in the prefix cache
  std::atomic<std::uint64_t> prefix_hit_tokens{0};    // of those, found cached
  std::atomic<std::uint64_t> running{0};              // requests the scheduler runs
  std::atomic<std::uint64_t> waiting{0};              // requests queued for admission
  std::atomic<std::uint64_t> last_rows{0};            // rows of the last step that sampled
  std::atomic<std::uint64_t> last_forward_tokens{0};  // tokens through the last forward
  std::atomic<std::uint64_t> forward_tokens{0};       // tokens through every forward so far
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

class engine_stats_block {
 public:
  static constexpr ipc::region_layout layout{0x5354415453454c43ull, 1};  // "LCESTATS"

  // The front end: creates the region for a table of `slots` records.
  static engine_stats_block create(std::string const& name, std::uint32_t slots) {
    engine_stats_block b;
    b.slots_ = slots;
    b.region_ = ipc::shm_region::create(name, bytes_for(slots), layout, [&](void* p, std::size_t) {
      auto* base = static_cast<std::byte*>(p);
      new (base) header{slots};
      new (base + values_offset) engine_stats_values;
      auto* admitted = reinterpret_cast<std::atomic<std::uint64_t>*>(base + admitted_offset);
      for (std::uint32_t i = 0; i < slots; ++i) new (admitted + i) std::atomic<std::uint64_t>(0);
    });
    return b;
  }
  // The engine process: maps the front end's region.
  static engine_stats_block open(std::string const& name) {
    engine_stats_block b;
    b.region_ = ipc::shm_region::open(name, layout);
    LC_CHECK(b.region_.payload_bytes() >= sizeof(header),
             "engine stats \"" << name << "\" is too small");
    b.slots_ = static_cast<header const*>(b.region_.payload())->slots;
    LC_CHECK(
        b.region_.payload_bytes() >= bytes_for(b.slots_),
        "engine stats \"" << name << "\" holds fewer bytes than " << b.slots_ << " slots need");
    return b;
  }

  engine_stats_values& values() const {
    return *reinterpret_cast<engine_stats_values*>(base() + values_offset);
  }
  // Steady-clock nanoseconds at which slot i's request was admitted by the scheduler; 0 until
  // then. The front end zeroes it before submitting into the slot; the engine writes it once.
  std::atomic<std::uint64_t>& admitted_ns(std::uint32_t slot) const {
    LC_CHECK(slot < slots_, "engine stats: slot " << slot << " of " << slots_);
    return reinterpret_cast<std::atomic<std::uint64_t>*>(base() + admitted_offset)[slot];
  }
  std::uint32_t slots() const noexcept { return slots_; }
  std::string const& name() const noexcept { return region_.name(); }

  // steady_clock's now, in the unit admitted_ns holds (CLOCK_MONOTONIC: the same in both
  // processes).
  static std::uint64_t now_ns() {
    return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count());
  }

 private:
  struct header {
    std::uint32_t slots;
  };
  static constexpr std::size_t values_offset = 64;
  static constexpr std::size_t admitted_offset = values_offset + 128;
  static_assert(sizeof(engine_stats_values) <= admitted_offset - values_offset);
  static std::size_t bytes_for(std::uint32_t slots) {
    return admitted_offset + std::size_t(slots) * sizeof(std::uint64_t);
  }
  std::byte* base() const { return static_cast<std::byte*>(region_.payload()); }

  ipc::shm_region region_;
  std::uint32_t slots_ = 0;
};

}  // namespace lightcore::server
