#include "examples/server/api/stop_matcher.hpp"

#include <algorithm>
#include <utility>

namespace lightcore::server {

stop_matcher::stop_matcher(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

stop_matcher::result stop_matcher::feed(std::string_view piece) {
  result r;
  if (matched_) return r;
  held_.append(piece);
  // The earliest occurrence of any stop wins: text before it is all the reply has. Everything
  // emitted earlier held no stop start (see below), so a match can only begin inside held_.
  std::size_t best = std::string::npos;
  std::string const* which = nullptr;
  for (auto const& s : stops_) {
    auto const at = held_.find(s);
    if (at != std::string::npos && (best == std::string::npos || at < best)) {
      best = at;
      which = &s;
    }
  }
  if (which != nullptr) {
    r.text = held_.substr(0, best);
    r.stopped = true;
    matched_ = *which;
    held_.clear();
    return r;
  }
  // Hold back the longest tail that is a proper prefix of some stop: only it may still grow into
  // a stop. Stops are valid UTF-8, so the tail starts at a character boundary of valid text.
  std::size_t keep = 0;
  for (auto const& s : stops_) {
    auto const longest = std::min(s.size() - 1, held_.size());
    for (std::size_t n = longest; n > keep; --n) {
      if (std::string_view(held_).substr(held_.size() - n) == std::string_view(s).substr(0, n)) {
        keep = n;
        break;
      }
    }
  }
  r.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

std::string stop_matcher::finish() { return std::exchange(held_, {}); }

}  // namespace lightcore::server
