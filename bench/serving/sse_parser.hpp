// Incremental parser of Server-Sent Events (text/event-stream): bytes arrive in arbitrary pieces
// (an event, a line, even a CR LF pair may be split across TCP reads) and whole events come out.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace lightcore::loadgen {

// One dispatched event: its `event:` name (empty when none was given) and its `data:` lines
// joined with '\n', as the SSE specification defines.
struct sse_event {
  std::string name;
  std::string data;
};

// Follows the WHATWG event-stream rules that matter for LLM streaming: lines end in LF, CR LF or
// CR; a blank line dispatches the event being built; lines starting with ':' are comments
// (keep-alives); "field: value" strips one space after the colon; a line without a colon is a
// field with an empty value; unknown fields (id, retry, ...) are ignored. An event with no data
// line is not dispatched. Bytes after the last blank line are held until more arrive.
class sse_parser {
 public:
  // Feeds the next piece of the stream; calls on_event(sse_event&&) for every completed event.
  template <class OnEvent>
  void feed(std::string_view bytes, OnEvent&& on_event) {
    for (char const c : bytes) {
      if (skip_lf_) {
        skip_lf_ = false;
        if (c == '\n') continue;  // second half of a CR LF split across two pieces
      }
      if (c == '\r' || c == '\n') {
        skip_lf_ = c == '\r';
        end_line(on_event);
      } else {
        line_.push_back(c);
      }
    }
  }

  // True when bytes of an unfinished event are held: at the end of a stream that means the
  // stream was cut in the middle of an event.
  bool has_partial_event() const { return !line_.empty() || has_data_ || !name_.empty(); }

  // Forgets everything held, ready for a new stream.
  void reset() { *this = sse_parser{}; }

 private:
  template <class OnEvent>
  void end_line(OnEvent& on_event) {
    if (line_.empty()) {
      if (has_data_) on_event(sse_event{std::exchange(name_, {}), std::exchange(data_, {})});
      name_.clear();
      data_.clear();
      has_data_ = false;
      return;
    }
    std::string_view const line = line_;
    if (line.front() != ':') {
      std::size_t const colon = line.find(':');
      std::string_view const field = line.substr(0, colon);
      std::string_view value;
      if (colon != std::string_view::npos) {
        value = line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      if (field == "data") {
        if (has_data_) data_.push_back('\n');
        data_.append(value);
        has_data_ = true;
      } else if (field == "event") {
        name_.assign(value);
      }
    }
    line_.clear();
  }

  std::string line_;       // the line being read
  std::string name_;       // event name of the event being built
  std::string data_;       // its data lines so far
  bool has_data_ = false;  // a data line was seen (an empty "data:" still counts)
  bool skip_lf_ = false;   // the last byte was CR: a following LF belongs to the same line end
};

}  // namespace lightcore::loadgen
