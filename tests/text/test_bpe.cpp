// BPE on the hand-written tokenizer of tests/data/tokenizer/tiny: merges applied by rank (not
// greedily by length), ties leftmost, both merge formats, unknown characters (dropped, unk,
// fuse_unk, byte fallback), ignore_merges, and the merge loop against the O(n^2) definition.
//
// The tiny vocabulary: a-z (0-25), 'Ġ' (space, 26), 'Ċ' (newline, 27), 0-9 (28-37), . , ! ' < > /
// (38-44), 'Ã' '©' (the bytes of é, 45 46), then merges, by rank: Ġ t (47), h e (48), Ġt he (49),
// l l (50), e ll (51), h ell (52), hell o (53), Ġ w (54), o r (55), Ġw or (56), l d (57),
// Ġwor ld (58), Ã © (59), a a (60), aa aa (61), 1 2 (62), 12 3 (63), Ġ Ġ (64).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/seed.hpp"
#include "lightcore/core/error.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using test::ids;
using text::tokenizer;

TEST(Bpe, MergesByRankNotByLength) {
  auto const tok = test::tiny_tokenizer();
  // "h e" (rank 1) is merged before "l l" (rank 3), which leaves no "e ll" pair: "hello" is
  // never formed, although it is in the vocabulary.
  EXPECT_EQ(tok.encode("hello"), (ids{48, 50, 14}));
  EXPECT_EQ(tok.encode(" world"), (ids{58}));
  EXPECT_EQ(tok.encode("hello world"), (ids{48, 50, 14, 58}));
  EXPECT_EQ(tok.encode("the"), (ids{19, 48}));
  EXPECT_EQ(tok.encode(" the"), (ids{49}));
  EXPECT_EQ(tok.encode("café"), (ids{2, 0, 5, 59}));
}

TEST(Bpe, EqualRanksMergeLeftmostFirst) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("aaa"), (ids{60, 0}));
  EXPECT_EQ(tok.encode("aaaaa"), (ids{61, 0}));
  EXPECT_EQ(tok.encode("aaaaaaa"), (ids{61, 60, 0}));
  EXPECT_EQ(tok.encode("   "), (ids{64, 26}));  // a white-space run: one piece
}

TEST(Bpe, DigitsAreCutInThrees) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("1234"), (ids{63, 32}));
  EXPECT_EQ(tok.encode("123123"), (ids{63, 63}));
  EXPECT_EQ(tok.encode("a12"), (ids{0, 62}));
}

TEST(Bpe, CharactersOutsideTheVocabularyAreDroppedWithoutUnk) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("a中b"), (ids{0, 1}));  // 中's three bytes have no tokens
  EXPECT_EQ(tok.encode("中"), ids{});
}

TEST(Bpe, BothMergeFormatsGiveTheSameIds) {
  auto j = test::tiny_json();
  auto pairs = nlohmann::json::array();
  for (auto const& m : j["model"]["merges"]) {
    auto const s = m.get<std::string>();
    auto const sp = s.find(' ');
    pairs.push_back({s.substr(0, sp), s.substr(sp + 1)});
  }
  j["model"]["merges"] = pairs;
  auto const as_pairs = tokenizer::from_json(j.dump());
  auto const as_strings = test::tiny_tokenizer();
  for (std::string s : {"hello world", " the aaaaaaa 1234 café", "\n\n  x"}) {
    EXPECT_EQ(as_pairs.encode(s), as_strings.encode(s)) << s;
  }
}

TEST(Bpe, UnkTokenReplacesUnknownCharactersAndFuseUnkJoinsThem) {
  auto j = test::tiny_json();
  j["model"]["vocab"]["<unk>"] = 65;
  j["model"]["unk_token"] = "<unk>";
  // 中 (3 bytes, 3 unknown byte-level characters) between known letters.
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("a中b"), (ids{0, 65, 65, 65, 1}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("a中b"), (ids{0, 65, 1}));
}

// byte_fallback: an unknown character becomes the "<0xAB>" tokens of its UTF-8 bytes, here the
// bytes of the byte-level characters (ä = U+00E4 is C3 A4), when all of them exist.
TEST(Bpe, ByteFallbackUsesByteTokensWhenAllExist) {
  auto j = test::tiny_json();
  j["model"]["byte_fallback"] = true;
  j["model"]["vocab"]["<0xC3>"] = 70;
  j["model"]["vocab"]["<0xA4>"] = 71;
  j["model"]["vocab"]["<0xC2>"] = 72;
  j["model"]["vocab"]["<0xB8>"] = 73;
  j["model"]["vocab"]["<unk>"] = 65;
  j["model"]["unk_token"] = "<unk>";
  auto const tok = tokenizer::from_json(j.dump());
  // 中 = E4 B8 AD shows as ä (C3 A4), ¸ (C2 B8), Ń (C5 83): the first two have byte tokens, the
  // third has no <0xC5> token and becomes unk.
  EXPECT_EQ(tok.encode("中"), (ids{70, 71, 72, 73, 65}));
  EXPECT_EQ(tok.encode("b中a"), (ids{1, 70, 71, 72, 73, 65, 0}));
  EXPECT_EQ(tok.encode("ab"), (ids{0, 1}));  // known characters never fall back
}

TEST(Bpe, IgnoreMergesTakesAWordThatIsInTheVocabularyWhole) {
  auto j = test::tiny_json();
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("hello"), (ids{53}));
  EXPECT_EQ(test::tiny_tokenizer().encode("hello"), (ids{48, 50, 14}));
}

// Random words over the tiny alphabet, one piece each (no pre-tokenizer split), against the
// definition; the word cache is exercised by repeats.
TEST(Bpe, MatchesTheDefinitionOnRandomWords) {
  auto j = test::tiny_json();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  j["added_tokens"] = nlohmann::json::array();
  auto const tok = tokenizer::from_json(j.dump());
  test::reference_bpe const ref(j["model"]);
  auto rng = test::test_rng();
  std::string const letters = "aaaahhelllowrdt 123é";
  for (int trial = 0; trial < 3000; ++trial) {
    std::string w;
    int const n = std::uniform_int_distribution<int>(1, 40)(rng);
    for (int i = 0; i < n; ++i) {
      std::size_t const k = rng() % (letters.size() - 1);
      w += letters[k] == '\xC3' ? std::string("é") : std::string(1, letters[k]);
    }
    ASSERT_EQ(tok.encode(w), ref.encode_word(w)) << "word '" << w << "'";
  }
}

}  // namespace
}  // namespace lightcore
