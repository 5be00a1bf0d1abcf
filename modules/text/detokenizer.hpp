// Incremental detokenizer for streaming output: fed the generated ids one at a time, it returns
// only the text that has become complete. Byte-level tokens may end inside a multi-byte
// character (an emoji is often two or three tokens), so the bytes of an unfinished character are
// held back until the tokens that complete it arrive; bytes that can never form a character are
// given out as U+FFFD at once. The concatenation of everything push() returns plus flush() is
// exactly tokenizer::decode() of all the ids (same skip_special_tokens).
#pragma once

#include <span>
#include <string>

#include "modules/text/tokenizer.hpp"

namespace lightcore::text {

class detokenizer {
 public:
  explicit detokenizer(tokenizer tok, bool skip_special_tokens = true)
      : tok_(std::move(tok)), skip_special_(skip_special_tokens) {}

  // The text completed by id (often empty while a character is unfinished).
  std::string push(token_id id);
  // The text completed by ids, in order.
  std::string push(std::span<token_id const> ids);
  // The end of the stream: held bytes become U+FFFD. The detokenizer is then empty and reusable.
  std::string flush();
  // Forgets held bytes without returning them (a new stream).
  void reset() { pending_.clear(); }

  // Bytes held back: at most 3, the start of a character not yet complete.
  std::size_t pending_bytes() const { return pending_.size(); }
  bool skip_special_tokens() const { return skip_special_; }

 private:
  std::string take();

  tokenizer tok_;
  bool skip_special_;
  std::string pending_;  // bytes not yet returned
};

}  // namespace lightcore::text
