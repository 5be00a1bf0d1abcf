// Added tokens (tokenizer.json's "added_tokens"): strings such as <｜User｜> that are cut out of
// the text before pre-tokenisation and become one id each. Matching is leftmost-longest over all
// tokens, as Hugging Face's Aho-Corasick matcher does, with its flags: single_word (only between
// non-word characters), lstrip / rstrip (the token takes the white space on that side), and
// normalized (matched after the normalizer; with the identity normalizer this only changes the
// order: unnormalized tokens are cut first, then normalized ones from what is left).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lightcore::text {

using token_id = std::int32_t;

// One entry of tokenizer.json's "added_tokens".
struct added_token {
  token_id id = -1;
  std::string content;
  bool special = false;      // skipped by decode(..., skip_special_tokens = true)
  bool single_word = false;  // matches only where no word character touches it
  bool lstrip = false;       // takes the white space before it
  bool rstrip = false;       // takes the white space after it
  bool normalized = true;    // matched against normalised text (after unnormalized tokens)
};

namespace detail {

// A stretch of text: an added token (id >= 0) or plain text for the pre-tokenizer (id < 0).
struct text_segment {
  std::string_view text;
  token_id id;
};

class added_token_matcher {
 public:
  // tokens: those of one matching pass; their storage must outlive the matcher.
  explicit added_token_matcher(std::vector<added_token const*> tokens);
  ~added_token_matcher();
  added_token_matcher(added_token_matcher&&) noexcept;
  added_token_matcher& operator=(added_token_matcher&&) noexcept;

  // Splits text into plain and token segments, appended to out (covering all of text).
  void split(std::string_view text, std::vector<text_segment>& out) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct trie;
  // The token that matches longest at text[pos], or nullptr.
  added_token const* longest_at(std::string_view text, std::size_t pos) const;

  std::vector<added_token const*> tokens_;
  std::unique_ptr<trie> trie_;
};

}  // namespace detail
}  // namespace lightcore::text
