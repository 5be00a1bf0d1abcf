// The incremental detokenizer: characters split across tokens are held back until complete,
// impossible bytes come out as U+FFFD at once, special tokens are skipped on request, and the
// streamed text always equals decode() of the same ids (random id streams, DeepSeek-V3's
// vocabulary when present).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/seed.hpp"
#include "modules/text/detokenizer.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using test::ids;
using text::detokenizer;
using text::token_id;

std::string const fffd(text::utf8::replacement);

// A tokenizer whose tokens are single bytes of multi-byte characters: 'Ã' (C3) and '©' (A9) of é,
// plus added special tokens.
TEST(Detokenizer, HoldsBackAPartialCharacterUntilItCompletes) {
  detokenizer d(test::tiny_tokenizer());
  EXPECT_EQ(d.push(2), "c");
  EXPECT_EQ(d.push(0), "a");
  EXPECT_EQ(d.push(5), "f");
  EXPECT_EQ(d.push(45), "");  // C3: the first byte of é
  EXPECT_EQ(d.pending_bytes(), 1u);
  EXPECT_EQ(d.push(46), "é");  // A9 completes it
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(d.flush(), "");
}

TEST(Detokenizer, BytesThatCannotCompleteComeOutAsReplacementAtOnce) {
  detokenizer d(test::tiny_tokenizer());
  EXPECT_EQ(d.push(45), "");
  EXPECT_EQ(d.push(0), fffd + "a");  // C3 followed by 'a': C3 can never complete
  EXPECT_EQ(d.push(46), fffd);       // a lone continuation byte
  EXPECT_EQ(d.push(45), "");
  EXPECT_EQ(d.flush(), fffd);  // the stream ends inside a character
  EXPECT_EQ(d.push(1), "b");   // flush leaves it empty and reusable
}

TEST(Detokenizer, SkipsSpecialTokensOnlyWhenAsked) {
  auto const tok = test::tiny_tokenizer();
  detokenizer skip(tok, true);
  detokenizer keep(tok, false);
  ids const x = tok.encode("<s>hello<|u</s>");
  std::string a;
  std::string b;
  for (auto id : x) {
    a += skip.push(id);
    b += keep.push(id);
  }
  EXPECT_EQ(a + skip.flush(), "hello<|u");  // <|u is an added token but not special
  EXPECT_EQ(b + keep.flush(), "<s>hello<|u</s>");
  // A special token between the two bytes of é does not break the character when skipped.
  EXPECT_EQ(skip.push(ids{45, 100, 46}), "é");
  EXPECT_EQ(keep.push(ids{45, 100, 46}), fffd + "<s>" + fffd);
}

// For random id streams (bytes of é in any order, specials, unknown ids), pushed one at a time
// or in batches, everything streamed plus flush() equals decode() of all the ids, and nothing
// beyond an incomplete character is ever held back.
TEST(Detokenizer, StreamEqualsDecodeOnRandomIds) {
  auto rng = test::test_rng();
  auto const tok = test::tiny_tokenizer();
  for (int s = 0; s < 3000; ++s) {
    bool const skip = (rng() & 1) != 0;
    detokenizer d(tok, skip);
    ids x;
    std::string streamed;
    int const n = std::uniform_int_distribution<int>(0, 30)(rng);
    std::size_t pushed = 0;
    for (int i = 0; i < n; ++i) {
      // Mostly the bytes of é and plain letters, sometimes specials and unknown ids.
      token_id const pool[] = {45, 46, 45, 46, 0, 26, 100, 103, 102, 80, 200};
      x.push_back(pool[rng() % std::size(pool)]);
      if (rng() % 3 == 0) continue;  // pushed together with the next ones
      streamed += d.push(std::span<token_id const>(x).subspan(pushed));
      pushed = x.size();
      ASSERT_LE(d.pending_bytes(), 3u);
    }
    streamed += d.push(std::span<token_id const>(x).subspan(pushed));
    streamed += d.flush();
    ASSERT_EQ(streamed, tok.decode(x, skip)) << ::testing::PrintToString(x);
  }
}

TEST(Detokenizer, StreamEqualsDecodeWithDeepSeekVocabulary) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto const& tok = *test::deepseek_tokenizer();
  auto rng = test::test_rng();
  // Real text (emoji and CJK split over byte tokens) and random ids.
  std::string const text =
      "Hello 世界! 👨‍👩‍👧‍👦 émoji 🏳️‍🌈 "
      "<｜User｜>ok<｜end▁of▁sentence｜>";
  for (bool skip : {false, true}) {
    detokenizer d(tok, skip);
    std::string streamed;
    ids const x = tok.encode(text);
    for (auto id : x) streamed += d.push(id);
    streamed += d.flush();
    EXPECT_EQ(streamed, tok.decode(x, skip));
  }
  for (int s = 0; s < 500; ++s) {
    bool const skip = (rng() & 1) != 0;
    detokenizer d(tok, skip);
    ids x;
    std::string streamed;
    for (int i = 0; i < 40; ++i) {
      x.push_back(token_id(rng() % (tok.vocab_size() + 100)));
      streamed += d.push(x.back());
    }
    streamed += d.flush();
    ASSERT_EQ(streamed, tok.decode(x, skip));
  }
}

}  // namespace
}  // namespace lightcore
