// The per-request record the front end writes into the shared-memory request table and the
// engine process reads: sampling parameters, the token budget and the stop ids. Plain data with
// a fixed layout (both processes are the same build; the table checks the size).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/sampling/sampling_params.hpp"

namespace lightcore::server {

inline constexpr int max_stop_token_ids = 16;  // EOS ids and the request's stop_token_ids

struct wire_params {
  kernels::sampling_request sampling;              // validated by the front end's parsers
  std::int32_t max_new_tokens = 16;                // tokens, >= 1
  std::int32_t stop_count = 0;                     // entries of stop_ids in use
  std::int32_t stop_ids[max_stop_token_ids] = {};  // ending ids (EOS unless ignore_eos)
};
static_assert(std::is_trivially_copyable_v<wire_params>);

}  // namespace lightcore::server
