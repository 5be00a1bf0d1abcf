// slot_ring: a bounded multi-producer single-consumer queue of uint32 slot indexes in shared
// memory, the only thing that crosses between front end and engine besides wake-ups.
//
// Cells carry sequence numbers (the bounded-queue scheme of D. Vyukov): a producer claims a
// position with one CAS on `tail`, writes the value and publishes the cell by storing its
// sequence (release); the consumer reads a cell once its sequence says "full" (acquire) and
// hands it back to producers one lap later. push never blocks (false when full); pop spins a
// few rounds and then sleeps on an event_counter with a timeout, so an idle consumer costs no
// CPU. Values from one producer come out in the order it pushed them.
// A producer that dies between its CAS and its publish leaves its cell unpublished and stalls
// the consumer at that position; producers are server processes whose death ends the instance.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>

#include "lightcore/core/error.hpp"
#include "lightcore/ipc/futex.hpp"

namespace lightcore::ipc {

class slot_ring {
 public:
  static constexpr std::uint32_t max_capacity = 1u << 24;
  static constexpr int spin_rounds = 64;  // pops tried before sleeping: bounded, about 1 us

  struct alignas(64) header {
    std::uint32_t capacity = 0;                      // cells, a power of two
    std::uint32_t magic = 0;                         // ring_magic once initialised
    alignas(64) std::atomic<std::uint64_t> tail{0};  // next position producers claim
    alignas(64) std::atomic<std::uint64_t> head{0};  // next position the consumer reads
    alignas(64) event_counter pushed;  // bumped by every push; the consumer sleeps on it
  };
  struct cell {
    std::atomic<std::uint64_t> sequence{0};  // == pos: free for pos; == pos + 1: holds pos
    std::uint32_t value = 0;
    std::uint32_t reserved = 0;
  };
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

  slot_ring() = default;  // empty: attach or init before use

  // Bytes a ring of `capacity` cells takes (header + cells), a multiple of 64.
  static std::size_t bytes_for(std::uint32_t capacity) {
    check_capacity(capacity);
    std::size_t const bytes = sizeof(header) + std::size_t(capacity) * sizeof(cell);
    return (bytes + 63) / 64 * 64;
  }

  // Initialises a ring in `memory` (bytes_for(capacity) bytes, 64-byte aligned); call once,
  // in the creating process, before anyone attaches.
  static slot_ring init(void* memory, std::uint32_t capacity) {
    check_capacity(capacity);
    LC_CHECK(reinterpret_cast<std::uintptr_t>(memory) % 64 == 0,
             "slot_ring: memory at " << memory << " is not 64-byte aligned");
    auto* h = new (memory) header;
    h->capacity = capacity;
    auto* cells = reinterpret_cast<cell*>(h + 1);
    for (std::uint32_t i = 0; i < capacity; ++i) {
      new (&cells[i]) cell;
      cells[i].sequence.store(i, std::memory_order_relaxed);
    }
    h->magic = ring_magic;
    return slot_ring(h);
  }

  // A view of a ring another process initialised.
  static slot_ring attach(void* memory) {
    auto* h = static_cast<header*>(memory);
    LC_CHECK(h->magic == ring_magic, "slot_ring: no initialised ring at " << memory);
    check_capacity(h->capacity);
    return slot_ring(h);
  }

  std::uint32_t capacity() const noexcept { return h_->capacity; }

  // Appends `value`; false when the ring is full. Lock-free, any number of producers.
  bool push(std::uint32_t value) {
    std::uint64_t pos = h_->tail.load(std::memory_order_relaxed);
    for (;;) {
      cell& c = cells()[pos & mask()];
      std::uint64_t const seq = c.sequence.load(std::memory_order_acquire);
      auto const diff = static_cast<std::int64_t>(seq - pos);
      if (diff == 0) {
        if (h_->tail.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          c.value = value;
          c.sequence.store(pos + 1, std::memory_order_release);
          h_->pushed.notify_all();
          return true;
        }
      } else if (diff < 0) {
        return false;  // the cell still holds the value of one lap ago
      } else {
        pos = h_->tail.load(std::memory_order_relaxed);
      }
    }
  }

  // Takes the oldest value if one is published. Single consumer only.
  std::optional<std::uint32_t> try_pop() {
    std::uint64_t const pos = h_->head.load(std::memory_order_relaxed);
    cell& c = cells()[pos & mask()];
    if (c.sequence.load(std::memory_order_acquire) != pos + 1) return std::nullopt;
    std::uint32_t const value = c.value;
    c.sequence.store(pos + capacity(), std::memory_order_release);
    h_->head.store(pos + 1, std::memory_order_relaxed);
    return value;
  }

  // Takes the oldest value, sleeping up to `timeout` for one; nullopt on timeout.
  std::optional<std::uint32_t> pop(std::chrono::nanoseconds timeout = no_timeout) {
    return pop_or(timeout, [] { return false; });
  }

  // As pop(), but also gives up (nullopt) as soon as interrupted() holds: the consumer can sleep
  // on the ring and on work that reaches it another way. Whoever makes interrupted() hold calls
  // wake() after, or the consumer notices only at its timeout.
  template <class Interrupt>
  std::optional<std::uint32_t> pop_or(std::chrono::nanoseconds timeout, Interrupt&& interrupted) {
    for (int i = 0; i < spin_rounds; ++i) {
      if (auto v = try_pop()) return v;
    }
    std::optional<std::uint32_t> v;
    h_->pushed.wait_for([&] { return (v = try_pop()).has_value() || interrupted(); }, timeout);
    return v;
  }

  // Wakes a consumer sleeping in pop_or() to check its interrupt again; pushes nothing.
  void wake() { h_->pushed.notify_all(); }

  // Values pushed and not yet popped (a snapshot; exact only when nobody pushes or pops).
  std::uint32_t size() const noexcept {
    return static_cast<std::uint32_t>(h_->tail.load(std::memory_order_acquire) -
                                      h_->head.load(std::memory_order_acquire));
  }

 private:
  static constexpr std::uint32_t ring_magic = 0x474e4952;  // "RING"

  explicit slot_ring(header* h) : h_(h) {}

  static void check_capacity(std::uint32_t capacity) {
    LC_CHECK(capacity >= 2 && capacity <= max_capacity && (capacity & (capacity - 1)) == 0,
             "slot_ring: capacity " << capacity << " is not allowed; allowed: a power of two in 2.."
                                    << max_capacity);
  }
  cell* cells() const noexcept { return reinterpret_cast<cell*>(h_ + 1); }
  std::uint64_t mask() const noexcept { return h_->capacity - 1; }

  header* h_ = nullptr;
};

}  // namespace lightcore::ipc
