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
};

// An executor E runs steps on its device:
//   E::params_type            the per-request sampling record (trivially copyable)
//   e.run(rows, kv, req_to_token) -> step_output   one forward + one sampling launch; returns
//                             when the sampled ids are on the host (the step's one wait)
//   e.stream()                the stream the step's work is ordered on (the engine queues its
//                             req_to_token updates there, before the step)
template <class E>
concept executor = requires(E& e, std::vector<step_row<typename E::params_type>> const& rows,
                            std::vector<tensor_view> const& kv, tensor_view const& table) {
  { e.run(rows, kv, table) } -> std::same_as<step_output>;
  e.stream();
};

}  // namespace lightcore::engine
