// UTF-8 for the text stack: validation, lossy repair and code-point iteration.
// Repair follows the Unicode "maximal subpart" practice (the one Rust's String::from_utf8_lossy
// and Python's bytes.decode(errors="replace") implement): each maximal prefix of a would-be valid
// sequence that cannot be completed becomes one U+FFFD, so that repairing a stream piece by piece
// gives the same text as repairing it whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lightcore::text::utf8 {

inline constexpr char32_t replacement_char = 0xFFFD;
inline constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD encoded

// The length of the sequence a lead byte announces (1..4), or 0 for a byte that cannot lead.
constexpr int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow `lead` as the second byte: the ranges that exclude overlong forms,
// surrogates (ED A0..BF) and code points above U+10FFFF.
constexpr bool valid_second(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

// Length of the valid sequence starting at s[i] (1..4); 0 when the bytes there are invalid, in
// which case *bad_len is the maximal subpart to replace (>= 1); -1 when the bytes are a valid
// but incomplete prefix cut off by the end of s.
inline int check_at(std::string_view s, std::size_t i, std::size_t* bad_len) {
  auto const lead = static_cast<unsigned char>(s[i]);
  int const n = sequence_length(lead);
  if (n == 1) return 1;
  if (n == 0) {
    *bad_len = 1;
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (i + std::size_t(k) >= s.size()) return -1;
    auto const b = static_cast<unsigned char>(s[i + std::size_t(k)]);
    bool const ok = k == 1 ? valid_second(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad_len = std::size_t(k);
      return 0;
    }
  }
  return n;
}

// Whether s is entirely valid UTF-8.
inline bool is_valid(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t bad = 0;
    int const n = check_at(s, i, &bad);
    if (n <= 0) return false;
    i += std::size_t(n);
  }
  return true;
}

// Appends s to out with every invalid sequence replaced by U+FFFD. With final == false, a
// trailing incomplete (but so far valid) sequence is left out: the return value is the number of
// bytes of s consumed, so the caller keeps the rest for the next piece. With final == true all of
// s is consumed and an incomplete tail becomes one U+FFFD.
inline std::size_t append_lossy(std::string& out, std::string_view s, bool final) {
  std::size_t i = 0;
  std::size_t run = 0;  // start of the current run of valid bytes, copied in one go
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t bad = 0;
    int const n = check_at(s, i, &bad);
    if (n > 0) {
      i += std::size_t(n);
      continue;
    }
    out.append(s.data() + run, i - run);
    if (n < 0) {  // incomplete tail
      if (!final) return i;
      out.append(replacement);
      return s.size();
    }
    out.append(replacement);
    i += bad;
    run = i;
  }
  out.append(s.data() + run, i - run);
  return s.size();
}

// s with invalid sequences replaced by U+FFFD (s itself when it is valid).
inline std::string to_valid(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_lossy(out, s, true);
  return out;
}

// Decodes the code point at s[i] of a valid UTF-8 string and advances i past it.
inline char32_t next(std::string_view s, std::size_t& i) {
  auto const b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int const n = sequence_length(b0);
  char32_t cp = b0 & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += std::size_t(n);
  return cp;
}

// Appends the UTF-8 encoding of code point cp (cp <= U+10FFFF, not a surrogate).
inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

}  // namespace lightcore::text::utf8
