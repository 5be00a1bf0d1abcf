// GPT-2's byte-level alphabet: every byte is shown as one printable code point, so that a BPE
// vocabulary of strings covers arbitrary bytes. Printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC,
// U+00AE..U+00FF) stand for themselves; the other 68 bytes, in order, take U+0100, U+0101, ...
// (so the space 0x20 shows as U+0120 'Ġ' and '\n' as U+010A 'Ċ').
#pragma once

#include <array>
#include <cstdint>

namespace lightcore::text::byte_level {

inline constexpr char32_t code_point_limit = 0x144;  // every mapped code point is below this

constexpr bool shows_itself(unsigned b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

// byte -> the code point that shows it.
constexpr std::array<char32_t, 256> make_byte_to_char() {
  std::array<char32_t, 256> t{};
  char32_t next = 0x100;
  for (unsigned b = 0; b < 256; ++b) t[b] = shows_itself(b) ? char32_t(b) : next++;
  return t;
}
inline constexpr std::array<char32_t, 256> byte_to_char = make_byte_to_char();

// code point (< code_point_limit) -> byte, or -1 for code points outside the alphabet.
constexpr std::array<std::int16_t, code_point_limit> make_char_to_byte() {
  std::array<std::int16_t, code_point_limit> t{};
  for (auto& v : t) v = -1;
  for (unsigned b = 0; b < 256; ++b) t[byte_to_char[b]] = std::int16_t(b);
  return t;
}
inline constexpr std::array<std::int16_t, code_point_limit> char_to_byte = make_char_to_byte();

}  // namespace lightcore::text::byte_level
