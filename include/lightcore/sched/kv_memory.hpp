// kv_memory: what the scheduler asks of the token-level KV pool. The engine implements it over
// its pool and radix prefix cache; tests implement it with a counting fake.
#pragma once

#include <concepts>
#include <cstdint>

#include "lightcore/sched/request.hpp"

namespace lightcore::sched {

// available_tokens(): slots an allocation may take now: free slots plus slots of the prefix
//                     cache that nobody references (evictable).
// prefix_hit(r):      tokens of r's prompt (+ generated tokens, for a paused request) whose KV the
//                     prefix cache holds; asked at admission and resumption. The scheduler
//                     treats them as computed and skips them in the prefill.
// capacity():         total token slots of the pool.
template <class M>
concept kv_memory = requires(M const& m, request const& r) {
  { m.available_tokens() } -> std::convertible_to<std::int64_t>;
  { m.prefix_hit(r) } -> std::convertible_to<std::int64_t>;
  { m.capacity() } -> std::convertible_to<std::int64_t>;
};

}  // namespace lightcore::sched
