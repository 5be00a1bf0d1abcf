// UTF-8 repair (the maximal-subpart rule, piecewise equal to whole), validation, and the
// byte-level alphabet.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>

#include "common/seed.hpp"
#include "lightcore/core/error.hpp"
#include "modules/text/byte_level.hpp"
#include "modules/text/regex.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore {
namespace {

namespace utf8 = text::utf8;
std::string const fffd(utf8::replacement);

TEST(Utf8, ValidTextIsUnchanged) {
  for (std::string s : {"", "abc", "é", "中文", "😀", "\x7F", "\xEF\xBF\xBF", "\xF4\x8F\xBF\xBF"}) {
    EXPECT_TRUE(utf8::is_valid(s)) << s;
    EXPECT_EQ(utf8::to_valid(s), s);
  }
}

// Expected repairs worked out by the maximal-subpart rule (the one Python's
// bytes.decode("utf-8", "replace") and Rust's from_utf8_lossy follow).
TEST(Utf8, InvalidSequencesBecomeOneReplacementPerMaximalSubpart) {
  struct repair_case {
    std::string in;
    std::string want;
  };
  std::vector<repair_case> const cases = {
      {"\x80", fffd},                                   // lone continuation byte
      {"a\xFFz", "a" + fffd + "z"},                     // never-valid byte
      {"\xC0\xAF", fffd + fffd},                        // overlong lead C0: each byte alone
      {"\xE2\x82", fffd},                               // truncated 3-byte sequence: one
      {"\xE2\x82z", fffd + "z"},                        // cut short by an ASCII byte
      {"\xE0\x80\x80", fffd + fffd + fffd},             // overlong E0 80: E0 alone, then two
      {"\xED\xA0\x80", fffd + fffd + fffd},             // surrogate D800
      {"\xF0\x9F\x98", fffd},                           // truncated emoji
      {"\xF0\x9F\x98\x80\x80", "😀" + fffd},             // emoji then stray continuation
      {"\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},  // above U+10FFFF
      {"\xF5\x80", fffd + fffd},
      {"\xC3", fffd},
      {"\xC3\xA9\xC3", "é" + fffd},
  };
  for (auto const& c : cases) {
    EXPECT_FALSE(utf8::is_valid(c.in));
    EXPECT_EQ(utf8::to_valid(c.in), c.want) << "input bytes: " << ::testing::PrintToString(c.in);
  }
}

// Repairing a byte stream in random pieces (holding back incomplete tails) gives the same text as
// repairing it whole: what the incremental detokenizer relies on.
TEST(Utf8, PiecewiseRepairEqualsWholeRepair) {
  auto rng = test::test_rng();
  std::string const alphabet[] = {"a",        "é",        "中",           "😀",   "\x80", "\xFF",
                                  "\xE2\x82", "\xF0\x9F", "\xED\xA0\x80", "\xC0"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string s;
    int const n = std::uniform_int_distribution<int>(0, 12)(rng);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % std::size(alphabet)];
    std::string whole = utf8::to_valid(s);
    std::string pieces;
    std::string held;
    std::size_t i = 0;
    while (i < s.size()) {
      std::size_t const len = std::min<std::size_t>(s.size() - i, 1 + rng() % 4);
      held += s.substr(i, len);
      i += len;
      std::size_t const used = utf8::append_lossy(pieces, held, false);
      held.erase(0, used);
      ASSERT_LE(held.size(), 3u) << "held back more than an incomplete character";
    }
    utf8::append_lossy(pieces, held, true);
    ASSERT_EQ(pieces, whole) << "input bytes: " << ::testing::PrintToString(s);
    ASSERT_TRUE(utf8::is_valid(whole));
  }
}

TEST(Utf8, NextAndAppendRoundTrip) {
  for (char32_t cp :
       {char32_t(0x24), char32_t(0xE9), char32_t(0x20AC), char32_t(0x1F600), char32_t(0x10FFFF)}) {
    std::string s;
    utf8::append(s, cp);
    std::size_t i = 0;
    EXPECT_EQ(utf8::next(s, i), cp);
    EXPECT_EQ(i, s.size());
  }
}

TEST(ByteLevel, AlphabetIsABijectionWithGpt2sKnownPoints) {
  std::set<char32_t> seen;
  for (unsigned b = 0; b < 256; ++b) {
    char32_t const c = text::byte_level::byte_to_char[b];
    EXPECT_TRUE(seen.insert(c).second) << "byte " << b << " shares its code point";
    EXPECT_EQ(text::byte_level::char_to_byte[c], int(b));
  }
  EXPECT_EQ(text::byte_level::byte_to_char[' '], char32_t(0x120));   // 'Ġ'
  EXPECT_EQ(text::byte_level::byte_to_char['\n'], char32_t(0x10A));  // 'Ċ'
  EXPECT_EQ(text::byte_level::byte_to_char['A'], char32_t('A'));
  EXPECT_EQ(text::byte_level::byte_to_char[0xAD], char32_t(0x143));  // the last one
  EXPECT_EQ(text::byte_level::char_to_byte[0x20], -1);  // ' ' itself is not in the alphabet
  EXPECT_EQ(text::byte_level::char_to_byte[0xAD], -1);
}

// \s and \S take Oniguruma's (Unicode White_Space) meaning: U+180E and U+FEFF are not spaces.
TEST(Regex, WhiteSpaceFollowsOniguruma) {
  text::detail::regex const space("\\s+");
  text::detail::regex const not_space("[^\\s]");
  std::size_t b = 0;
  std::size_t e = 0;
  for (std::string s : {" ", "\t", "\n", "\xC2\xA0", "\xE3\x80\x80", "\xE2\x80\xA8"}) {
    EXPECT_TRUE(space.find(s, 0, b, e) && b == 0 && e == s.size()) << ::testing::PrintToString(s);
  }
  for (std::string s : {"\xE1\xA0\x8E", "\xEF\xBB\xBF", "x", "\xE2\x80\x8B"}) {  // 180E FEFF 200B
    EXPECT_FALSE(space.find(s, 0, b, e)) << ::testing::PrintToString(s);
    EXPECT_TRUE(not_space.find(s, 0, b, e)) << ::testing::PrintToString(s);
  }
  EXPECT_EQ(text::detail::oniguruma_compatible("a\\\\s[\\]s]"), "a\\\\s[\\]s]");
  EXPECT_THROW(text::detail::regex("(unclosed"), lightcore::error);
}

}  // namespace
}  // namespace lightcore
