// A compiled PCRE2 pattern for the text stack: UTF-8 with Unicode properties (PCRE2_UTF |
// PCRE2_UCP), JIT-compiled where the platform allows. Patterns are taken from tokenizer.json, which
// Hugging Face runs with Oniguruma; the one construct whose meaning differs between the two, \s
// and \S, is rewritten to Oniguruma's set (Unicode White_Space; PCRE2 would add U+180E).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

struct pcre2_real_code_8;  // pcre2_code_8, declared here so that no PCRE2 header is needed

namespace lightcore::text::detail {

class regex {
 public:
  // Throws lightcore::error naming the pattern, PCRE2's message and the offset it points at.
  explicit regex(std::string_view pattern);
  ~regex();
  regex(regex const&) = delete;
  regex& operator=(regex const&) = delete;

  // The first match in subject at or after `from` (subject must be valid UTF-8; lookbehinds see
  // the bytes before `from`). Returns false when there is none. Thread-safe.
  bool find(std::string_view subject, std::size_t from, std::size_t& begin, std::size_t& end) const;

  std::string const& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
};

// The pattern with \s and \S replaced by Oniguruma's (= Unicode White_Space) meaning; other text
// is copied unchanged. Exposed for tests.
std::string oniguruma_compatible(std::string_view pattern);

// A pattern that matches `literal` exactly.
std::string escape_literal(std::string_view literal);

// Unicode White_Space, the set that Hugging Face's added-token lstrip/rstrip strip.
constexpr bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Whether code point c is a "word" character as Hugging Face's single_word check sees it (Rust
// regex's \w: Alphabetic, marks, decimal digits, connector punctuation, joiners).
bool is_word_char(char32_t c);

}  // namespace lightcore::text::detail
