// step_plan: what the scheduler decided for one step, which the engine carries out; token_result:
// what the engine reports back for each row that sampled a token.
#pragma once

#include <cstdint>
#include <vector>

namespace lightcore::sched {

// One prefill chunk: the KV of tokens [start, start + length) of the request's sequence (prompt,
// then generated tokens when a paused request is resumed) is computed in this step.
struct prefill_chunk {
  std::uint64_t id = 0;
  std::int64_t start = 0;   // tokens; first token of the chunk
  std::int64_t length = 0;  // tokens; > 0
  bool is_last = false;     // the chunk ends the sequence: its last row samples a token
  bool is_first = false;    // first chunk since admission or resumption: tokens [0, start) are
                            // prefix-cache hits the engine pins for the request before allocating
};

// The engine carries a plan out in this order, so that slots freed by the step can be reused by
// the same step (the scheduler counted them so):
//   1. free the KV of `release` (finished or aborted requests; they are forgotten by now);
//   2. free the KV of `paused` into the prefix cache (they come back through `resumed` later);
//   3. pin the prefix hits of the chunks with is_first;
//   4. allocate one slot per `decode` row and `length` slots per chunk, then run ONE forward over
//      the mixed batch, sample the rows that end a sequence, and call complete(plan, results).
struct step_plan {
  std::uint64_t step = 0;
  std::vector<prefill_chunk> prefill;  // in order: continuing chunks, then newly admitted
  std::vector<std::uint64_t> decode;   // one token each
  std::vector<std::uint64_t> paused;   // released under memory pressure, newest first
  std::vector<std::uint64_t> resumed;  // paused requests admitted again (their chunks are in
                                       // `prefill`, recomputing prompt + generated tokens)
  std::vector<std::uint64_t> release;  // finished or aborted since the last plan

  // Tokens of the forward pass (prefill chunk tokens plus one per decode row).
  std::int64_t forward_tokens() const noexcept {
    std::int64_t n = static_cast<std::int64_t>(decode.size());
    for (prefill_chunk const& c : prefill) n += c.length;
    return n;
  }
  // Rows that sample a token: decode rows and last chunks.
  std::int64_t sampled_rows() const noexcept {
    std::int64_t n = static_cast<std::int64_t>(decode.size());
    for (prefill_chunk const& c : prefill) n += c.is_last ? 1 : 0;
    return n;
  }
  bool has_forward() const noexcept { return !decode.empty() || !prefill.empty(); }
};

// The engine's report for one sampling row of a plan.
struct token_result {
  std::uint64_t id = 0;
  std::int32_t token = 0;  // the sampled id (the engine keeps the text; the scheduler counts it)
  bool finished = false;   // EOS or a stop condition hit; max_new_tokens is checked here too
};

}  // namespace lightcore::sched
