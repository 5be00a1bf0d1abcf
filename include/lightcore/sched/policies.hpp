// Compile-time policies of the scheduler: admission (how much output to expect from a request),
// ordering (what to do when the head of the queue does not fit) and chunking (the per-step token
// budget). Each is a small struct; the concepts below say what a custom one must provide.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>

#include "lightcore/core/error.hpp"
#include "lightcore/sched/request.hpp"

namespace lightcore::sched {

namespace admit {

enum class estimate : std::uint8_t {
  conservative,  // every request may run to max_new_tokens: admitted work never needs a pause
  optimistic,    // requests end near the mean output length seen so far: more admitted, and
                 // the newest are paused when that bet loses
};

// Admission by the peak-token estimate (see peak.hpp): a request is admitted only if the running
// set plus the candidate peaks within the pool's capacity. Mode says how `remaining` is guessed:
//   conservative: max_new_tokens - generated;
//   optimistic:   E - generated, clamped to [1, max_new_tokens - generated], where E is the mean
//                 output length of the requests finished so far (rounded up), or the initial
//                 guess until one has finished.
template <estimate Mode>
class peak_estimate {
  static_assert(Mode == estimate::conservative || Mode == estimate::optimistic,
                "admit::peak_estimate: Mode must be estimate::conservative or "
                "estimate::optimistic");

 public:
  static constexpr estimate mode = Mode;

  // initial_output_tokens: tokens; the optimistic guess of E before any request has finished
  // (default 256); unused by the conservative mode.
  explicit peak_estimate(std::int64_t initial_output_tokens = 256)
      : initial_(initial_output_tokens) {
    LC_CHECK(initial_output_tokens >= 1, "admit::peak_estimate: initial_output_tokens is "
                                             << initial_output_tokens << "; allowed: >= 1");
  }

  // Output tokens still expected from r; always in [1, r.max_remaining()] for a live request.
  std::int64_t remaining(request const& r) const noexcept {
    std::int64_t const most = std::max<std::int64_t>(r.max_remaining(), 1);
    if constexpr (Mode == estimate::conservative) {
      return most;
    } else {
      return std::clamp<std::int64_t>(output_estimate() - r.generated, 1, most);
    }
  }

  // A request finished normally (aborted ones say nothing about output lengths).
  void record_finished(request const& r) noexcept {
    finished_outputs_ += r.generated;
    ++finished_count_;
  }

  // E: the expected output length of a request (tokens).
  std::int64_t output_estimate() const noexcept {
    if (finished_count_ == 0) return initial_;
    return (finished_outputs_ + finished_count_ - 1) / finished_count_;
  }

 private:
  std::int64_t initial_;
  std::int64_t finished_outputs_ = 0;
  std::int64_t finished_count_ = 0;
};

using conservative = peak_estimate<estimate::conservative>;
using optimistic = peak_estimate<estimate::optimistic>;

}  // namespace admit

namespace order {

enum class on_blocked : std::uint8_t {
  wait,  // strict FCFS: nothing behind a request that does not fit is admitted
  skip,  // later, smaller requests may go ahead of a waiting head that does not fit memory;
         // a paused request is never skipped, so pressure cannot starve it
};

// First come, first served over the queue: paused requests first (oldest arrival first), then
// waiting ones by arrival.
template <on_blocked Blocked = on_blocked::wait>
struct fcfs {
  static_assert(Blocked == on_blocked::wait || Blocked == on_blocked::skip,
                "order::fcfs: Blocked must be on_blocked::wait or on_blocked::skip");
  static constexpr bool skip_head = Blocked == on_blocked::skip;
};

using strict_fcfs = fcfs<on_blocked::wait>;
using fcfs_skip_head = fcfs<on_blocked::skip>;

}  // namespace order

namespace chunk {

// Chunked prefill with a fixed forward-pass budget of N tokens per step (decode rows included);
// a prompt longer than what is left of the budget continues in later steps.
template <std::int64_t N>
struct fixed {
  static_assert(N > 0, "chunk::fixed<N>: the per-step token budget N must be positive");
  static constexpr std::int64_t tokens_per_step = N;
};

}  // namespace chunk

template <class A>
concept admission_policy = requires(A& a, A const& ca, request const& r) {
  { ca.remaining(r) } -> std::same_as<std::int64_t>;
  a.record_finished(r);
};

template <class O>
concept order_policy = requires {
  { O::skip_head } -> std::convertible_to<bool>;
};

template <class C>
concept chunk_policy = requires {
  { C::tokens_per_step } -> std::convertible_to<std::int64_t>;
};

}  // namespace lightcore::sched
