// The contract between the engine (host-side control: scheduling, KV slots, the prefix cache,
// request bookkeeping) and an executor (the device work of one step: the forward pass over a mixed
// batch and the sampling of the rows that produce a token).
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include "lightcore/core/tensor_view.hpp"

namespace lightcore::engine {

// One request's part of a step. Params: the executor's per-request sampling record.
template <class Params>
struct step_row {
  std::span<std::int32_t const> tokens;   // new tokens: a prefill chunk, or the last sampled id
  std::int64_t cached = 0;                // tokens of the request already in the pool
  std::int32_t req_row = 0;               // its req_to_token row
  bool sample = false;                    // this row ends its sequence or decodes: draw a token
  bool prefill = false;                   // a prompt chunk (even of one token), not a decode row
  Params sampling{};                      // how it draws
  std::int32_t generated = 0;             // tokens generated so far (the draw's RNG counter)
  std::span<std::int32_t const> history;  // generated ids (repetition/presence/frequency)
  // Overlapped steps: >= 0 for a decode row whose token the previous launched step drew in its
  // row `pending` and the host does not know yet. tokens[0] is then a placeholder, and the
  // pending id also ends the history (it is not in `history`). -1 (default): none.
  std::int32_t pending = -1;
};

// What a step drew, for the rows with sample = true, in row order.
struct step_output {
  std::vector<std::int32_t> tokens;
  std::vector<float> logprobs;  // the chosen token's logprob; NaN where the row asked for none
  std::int32_t top_n = 0;       // alternatives per row in top_ids / top_logprobs
  std::vector<std::int32_t> top_ids;  // [rows, top_n], padded with -1
  std::vector<float> top_logprobs;    // [rows, top_n], padded with -inf
  // Seconds the executor's host spent on the step before it waited for the device (building the
  // batch's metadata, launching or replaying): its share of the framework's CPU time per step.
  double host_seconds = 0.0;
  // Device time of the step (its first queued operation to its last), and how long the device
  // sat idle between the previous step's end and this step's start (0 for the first, or where
  // the backend does not measure).
  double device_seconds = 0.0;
  double idle_before_seconds = 0.0;
};

// An executor E runs steps on its device:
//   E::params_type            the per-request sampling record (trivially copyable)
//   e.run(rows, kv, req_to_token) -> step_output   one forward + one sampling launch; returns
//                             when the sampled ids are on the host (the step's one wait)
//   e.stream()                the stream the step's work is ordered on (the engine queues its
//                             req_to_token updates there, before the step)
// An executor that also splits a step in two, so that the host prepares step t + 1 while the
// device runs step t:
//   e.launch(rows, kv, req_to_token)   queues the step and returns (at most two in flight;
//                                      rows may take pending ids from the previous launch)
//   e.collect() -> step_output         waits for the oldest launched step
// (run() is launch() then collect().)
template <class E>
concept executor = requires(E& e, std::vector<step_row<typename E::params_type>> const& rows,
                            std::vector<tensor_view> const& kv, tensor_view const& table) {
  { e.run(rows, kv, table) } -> std::same_as<step_output>;
  e.stream();
};

template <class E>
concept overlapping_executor = executor<E> &&
    requires(E& e, std::vector<step_row<typename E::params_type>> const& rows,
             std::vector<tensor_view> const& kv, tensor_view const& table) {
  e.launch(rows, kv, table);
  { e.collect() } -> std::same_as<step_output>;
};

}  // namespace lightcore::engine
