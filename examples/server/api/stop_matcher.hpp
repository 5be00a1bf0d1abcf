// Stop strings matched on streamed text: fed the text pieces as the detokenizer completes them,
// it gives out only text that can no longer be the start of a stop string, so that a stop split
// across pieces (or tokens) is still found and never shown. The stop string itself is cut off.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lightcore::server {

class stop_matcher {
 public:
  struct result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was found; text is everything before it
  };

  // Empty stop strings are ignored (they would match everywhere).
  explicit stop_matcher(std::vector<std::string> stops = {});

  // Appends piece; returns the text that no stop string can begin in any more. After a stop,
  // every later feed returns nothing.
  result feed(std::string_view piece);
  // The end of the stream: the held-back tail (it did not become a stop). Then empty.
  std::string finish();

  bool stopped() const { return matched_.has_value(); }
  // The stop string that ended the text, once stopped.
  std::optional<std::string> const& matched() const { return matched_; }
  // Bytes held back now: the longest tail that is a proper prefix of some stop string.
  std::size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  std::optional<std::string> matched_;
};

}  // namespace lightcore::server
