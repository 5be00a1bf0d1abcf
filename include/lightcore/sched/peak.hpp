// The peak-token estimate behind admission: the most KV slots a set of running requests will hold
// at once if each grows by its estimated remaining output and frees its slots when it ends.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

namespace lightcore::sched {

struct token_need {
  std::int64_t current = 0;    // tokens held (or to be held once prefilled) now
  std::int64_t remaining = 0;  // output tokens still expected
};

// With the requests sorted by `remaining`, largest first, request i ends after remaining_i more
// steps; at that moment requests 0..i are still alive and have each grown by remaining_i, while
// requests i+1.. have already ended and freed their slots. The peak is the largest such moment:
//   peak = max_i ( remaining_i * (i + 1) + sum_{j <= i} current_j ).
// Sorts `needs` in place (the caller's scratch); an empty set needs 0 slots.
inline std::int64_t peak_tokens(std::span<token_need> needs) {
  std::sort(needs.begin(), needs.end(),
            [](token_need const& a, token_need const& b) { return a.remaining > b.remaining; });
  std::int64_t peak = 0;
  std::int64_t held = 0;
  for (std::size_t i = 0; i < needs.size(); ++i) {
    held += needs[i].current;
    peak = std::max(peak, needs[i].remaining * static_cast<std::int64_t>(i + 1) + held);
  }
  return peak;
}

}  // namespace lightcore::sched
