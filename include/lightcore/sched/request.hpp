// The scheduler's view of one generation request: its lifecycle state and token counts. Token ids
// live with the engine; the scheduler only needs counts to decide what runs in each step.
#pragma once

#include <cstdint>
#include <string_view>

namespace lightcore::sched {

// Lifecycle, ordered so that "has reached state X" is a comparison:
//   waiting < paused < prefilling < decoding < finished < aborted.
// paused sits between waiting and prefilling: it is queued like a waiting request, but it has
// produced output already and holds no KV (it was released into the prefix cache). aborted sorts
// last so that `is_done(s)` (finished or aborted) is one comparison.
enum class request_state : std::uint8_t {
  waiting,     // queued, never admitted
  paused,      // was running, KV released under memory pressure; queued for resumption first
  prefilling,  // admitted; computing the KV of prompt (+ generated tokens when resumed) in chunks
  decoding,    // one new token per step
  finished,    // hit EOS/stop or max_new_tokens; its KV is released with the next plan
  aborted,     // cancelled by the client; its KV is released with the next plan
};

constexpr bool is_queued(request_state s) noexcept { return s <= request_state::paused; }
constexpr bool is_running(request_state s) noexcept {
  return s == request_state::prefilling || s == request_state::decoding;
}
constexpr bool is_done(request_state s) noexcept { return s >= request_state::finished; }

constexpr std::string_view to_string(request_state s) noexcept {
  switch (s) {
    case request_state::waiting: return "waiting";
    case request_state::paused: return "paused";
    case request_state::prefilling: return "prefilling";
    case request_state::decoding: return "decoding";
    case request_state::finished: return "finished";
    case request_state::aborted: return "aborted";
  }
  return "unknown";
}

// Token counts of one request. Invariants the scheduler keeps:
//   0 <= cached <= computed <= total_len(),  0 <= generated <= max_new_tokens,
//   decoding: computed == total_len() - 1 (the newest token's KV is computed by the next step),
//   queued (waiting or paused): computed == cached == 0.
struct request {
  std::uint64_t id = 0;             // unique among live requests; chosen by the caller
  std::int64_t prompt_tokens = 0;   // tokens; > 0
  std::int64_t max_new_tokens = 0;  // tokens; > 0; generation stops here at the latest
  std::int64_t generated = 0;       // tokens sampled so far
  std::int64_t computed = 0;        // tokens whose KV is in the pool (cached ones included)
  std::int64_t cached = 0;          // tokens of the prefix found in the prefix cache at admission
  std::uint64_t arrival = 0;        // admission order key, assigned by the scheduler's add()
  request_state state = request_state::waiting;
  bool keeps_kv = false;  // its KV outlives it when it finishes (handed to another owner), so its
                          // release frees nothing the scheduler may count on

  // Tokens the request holds or will hold once its KV is complete: prompt and output so far.
  constexpr std::int64_t total_len() const noexcept { return prompt_tokens + generated; }
  // Tokens still to prefill before the next sampled token (whole prompt when fresh, prompt +
  // generated when resumed after a pause).
  constexpr std::int64_t to_compute() const noexcept { return total_len() - computed; }
  // Worst-case output tokens still to come.
  constexpr std::int64_t max_remaining() const noexcept { return max_new_tokens - generated; }
};

}  // namespace lightcore::sched
