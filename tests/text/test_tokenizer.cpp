// The tokenizer around BPE, on the tiny fixture: added tokens (leftmost-longest, the
// unnormalized-first order, lstrip / rstrip / single_word), special tokens at encode and decode,
// the BOS from the post-processor or tokenizer_config.json, lookups, the invalid-UTF-8 policy,
// Split behaviours, and clear errors for files it does not support.
//
// Added tokens of the fixture: <s> 100 and </s> 101 (special), <|user|> 102 (normalized),
// <mask> 103 (special, lstrip + rstrip), [sw] 104 (single_word), <|u 105.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/core/error.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using test::ids;
using text::tokenizer;

// The error message of f(), or "" when it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (error const& e) {
    return e.message();
  }
  return "";
}

TEST(AddedTokens, AreCutOutBeforePreTokenisation) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("<s>hello</s>"), (ids{100, 48, 50, 14, 101}));
  EXPECT_EQ(tok.encode("the<s><s>the"), (ids{19, 48, 100, 100, 19, 48}));
  EXPECT_EQ(tok.encode("<s"), (ids{42, 18}));  // an incomplete token is plain text
}

// <|u (unnormalized) is cut from the raw text before <|user|> (normalized) is looked for in what
// is left, as Hugging Face does: the longer token never gets a chance here.
TEST(AddedTokens, UnnormalizedTokensAreCutFirst) {
  auto const tok = test::tiny_tokenizer();
  // "ser|>": '|' has no token and is dropped.
  EXPECT_EQ(tok.encode("<|user|>"), (ids{105, 18, 4, 17, 43}));
  auto j = test::tiny_json();
  j["added_tokens"][5]["normalized"] = true;  // now both are matched in one pass: longest wins
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("<|user|>"), (ids{102}));
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("<|us"), (ids{105, 18}));
}

TEST(AddedTokens, LstripAndRstripTakeTheWhiteSpaceAround) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("a <mask> b"), (ids{0, 103, 1}));
  EXPECT_EQ(tok.encode("a \t\n<mask>\n b"), (ids{0, 103, 1}));
  EXPECT_EQ(tok.encode("<mask><mask>"), (ids{103, 103}));
  auto j = test::tiny_json();
  j["added_tokens"][3]["lstrip"] = false;
  j["added_tokens"][3]["rstrip"] = false;
  EXPECT_EQ(tokenizer::from_json(j.dump()).encode("a <mask> b"), (ids{0, 26, 103, 26, 1}));
}

TEST(AddedTokens, SingleWordMatchesOnlyBetweenNonWordCharacters) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("x [sw] y"), (ids{23, 26, 104, 26, 24}));
  EXPECT_EQ(tok.encode("[sw]"), (ids{104}));
  EXPECT_EQ(tok.encode("[sw],"), (ids{104, 39}));
  // A letter (or é, a non-ASCII letter) touching it: plain text ('[' and ']' have no tokens).
  EXPECT_EQ(tok.encode("x[sw] y"), (ids{23, 18, 22, 26, 24}));
  EXPECT_EQ(tok.encode("[sw]é"), (ids{18, 22, 59}));
}

TEST(Decode, JoinsBytesAndSkipsSpecialTokensOnRequest) {
  auto const tok = test::tiny_tokenizer();
  ids const x = tok.encode("<s>hello world</s> <mask> café [sw]");
  EXPECT_EQ(tok.decode(x), "<s>hello world</s><mask>café [sw]");  // <mask> took the spaces
  EXPECT_EQ(tok.decode(x, true), "hello worldcafé [sw]");         // [sw] is not special
  EXPECT_EQ(tok.decode(ids{45}), "\xEF\xBF\xBD");                 // half of é alone: U+FFFD
  EXPECT_EQ(tok.decode(ids{45, 46}), "é");
  EXPECT_EQ(tok.decode(ids{0, 9999, -1, 80, 1}), "ab");  // ids without a token are skipped
}

TEST(Decode, RoundTripsTextInTheAlphabet) {
  auto const tok = test::tiny_tokenizer();
  for (std::string s : {"hello world", "  the  aaaaaaa\n\n123,456!", "café.'/<>", "<s>x</s>"}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
  }
}

TEST(Lookups, IdsTokensAndSizes) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.token_to_id("Ġworld"), 58);
  EXPECT_EQ(tok.token_to_id("<mask>"), 103);
  EXPECT_EQ(tok.token_to_id("nope"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(49), "Ġthe");
  EXPECT_EQ(tok.id_to_token(101), "</s>");
  EXPECT_EQ(tok.id_to_token(80), std::nullopt);  // a gap between the vocabulary and added ids
  EXPECT_EQ(tok.id_to_token(106), std::nullopt);
  EXPECT_EQ(tok.vocab_size(), 106u);
  EXPECT_TRUE(tok.is_special(100));
  EXPECT_FALSE(tok.is_special(102));
  EXPECT_FALSE(tok.is_special(0));
  EXPECT_EQ(tok.token_bytes(54), " w");
  EXPECT_EQ(tok.added_tokens().size(), 6u);
}

TEST(SpecialTokens, PostProcessorTemplateAddsTheBos) {
  auto const tok = test::tiny_tokenizer();
  EXPECT_EQ(tok.encode("hello", true), (ids{100, 48, 50, 14}));
  EXPECT_EQ(tok.encode("", true), (ids{100}));
  EXPECT_EQ(tok.encode("", false), ids{});
  EXPECT_EQ(tok.bos_id(), std::nullopt);  // no tokenizer_config.json
}

TEST(SpecialTokens, TokenizerConfigDecidesWhenItSaysSo) {
  auto const file = test::tiny_json().dump();
  std::string const config =
      R"({"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>",
          "eos_token": {"__type": "AddedToken", "content": "</s>"}})";
  auto const tok = tokenizer::from_json(file, config);
  EXPECT_EQ(tok.encode("the", true), (ids{19, 48, 101}));
  EXPECT_EQ(tok.bos_id(), 100);
  EXPECT_EQ(tok.eos_id(), 101);
  // Without add_*_token keys the post-processor still decides.
  auto const plain = tokenizer::from_json(file, R"({"bos_token": "<s>"})");
  EXPECT_EQ(plain.encode("the", true), (ids{100, 19, 48}));
}

// Policy: invalid UTF-8 is repaired (each maximal invalid subpart becomes U+FFFD) before
// encoding, so the ids are those of the repaired text.
TEST(InvalidUtf8, IsEncodedAsTheRepairedText) {
  auto const tok = test::tiny_tokenizer();
  std::string const fffd(text::utf8::replacement);
  EXPECT_EQ(tok.encode("a\xFF"
                       "b"),
            tok.encode("a" + fffd + "b"));
  EXPECT_EQ(tok.encode("caf\xC3"), tok.encode("caf" + fffd));
  EXPECT_EQ(tok.encode("\xE2\x82<s>"), tok.encode(fffd + "<s>"));
  // The repair itself is tested in test_utf8.cpp; here: it is applied before the added-token cut.
  EXPECT_EQ(tok.encode("\x80<s>\x80").at(0), 100);
}

TEST(PreTokenizer, SplitBehaviours) {
  // A Split on a one-letter String pattern, then ByteLevel. Which merges happen shows where the
  // pieces end: "he" (rank 1), "ll" (3) and "e ll" (4) only form inside one piece.
  auto with = [](std::string const& pattern, std::string const& behavior, bool invert) {
    auto j = test::tiny_json();
    j["pre_tokenizer"]["pretokenizers"] = nlohmann::json::array(
        {{{"type", "Split"},
          {"pattern", {{"String", pattern}}},
          {"behavior", behavior},
          {"invert", invert}},
         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}});
    return tokenizer::from_json(j.dump());
  };
  EXPECT_EQ(with("l", "Isolated", false).encode("hello"), (ids{48, 11, 11, 14}));
  EXPECT_EQ(with("l", "Contiguous", false).encode("hello"), (ids{48, 50, 14}));
  EXPECT_EQ(with("l", "Removed", false).encode("hello"), (ids{48, 14}));
  EXPECT_EQ(with("l", "Removed", true).encode("hello"), (ids{11, 11}));
  EXPECT_EQ(with("e", "Isolated", false).encode("hello"), (ids{7, 4, 50, 14}));
  EXPECT_EQ(with("e", "MergedWithPrevious", false).encode("hello"), (ids{48, 50, 14}));
  EXPECT_EQ(with("e", "MergedWithNext", false).encode("hello"), (ids{7, 51, 14}));

  // ByteLevel's own options: a prefix space, then GPT-2's pattern.
  auto j = test::tiny_json();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto const gpt2 = tokenizer::from_json(j.dump());
  EXPECT_EQ(gpt2.encode("the"), (ids{49}));  // " the"
  EXPECT_EQ(gpt2.encode("hello world"), (ids{26, 48, 50, 14, 58}));
}

TEST(BadFiles, AreRejectedWithAClearError) {
  auto expect_error = [](nlohmann::json const& j, std::string const& needle) {
    std::string const msg = error_of([&] { (void)tokenizer::from_json(j.dump()); });
    EXPECT_NE(msg.find(needle), std::string::npos)
        << "wanted an error containing '" << needle << "', got '" << msg << "'";
  };
  auto base = test::tiny_json();
  EXPECT_NE(error_of([] { (void)tokenizer::from_json("{not json"); }).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              (void)tokenizer::from_file("/nonexistent/tokenizer.json");
            }).find("cannot open"),
            std::string::npos);

  auto j = base;
  j["model"]["type"] = "WordPiece";
  expect_error(j, "model type 'WordPiece' is not supported; allowed: BPE");
  j = base;
  j["model"].erase("vocab");
  expect_error(j, "model.vocab must be an object");
  j = base;
  j["model"]["merges"][0] = "Ġt";
  expect_error(j, "must be two tokens separated by one space");
  j = base;
  j["model"]["merges"][0] = nlohmann::json::array({"a"});
  expect_error(j, "must be \"a b\" or [\"a\", \"b\"]");
  j = base;
  j["model"]["merges"].push_back("q z");
  expect_error(j, "which is not in model.vocab");
  j = base;
  j["model"]["merges"].push_back("Ω a");
  expect_error(j, "names a token that is not in model.vocab");
  j = base;
  j["model"]["vocab"]["dup"] = 3;
  expect_error(j, "gives the id 3 to both");
  j = base;
  j["model"]["dropout"] = 0.1;
  expect_error(j, "dropout 0.1 is not supported");
  j = base;
  j["model"]["unk_token"] = "<unk>";
  expect_error(j, "unk_token '<unk>' is not in model.vocab");
  j = base;
  j["model"]["continuing_subword_prefix"] = "##";
  expect_error(j, "continuing_subword_prefix \"##\" is not supported");
  j = base;
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error(j, "normalizer 'NFKC' is not supported");
  j = base;
  j["decoder"] = {{"type", "Metaspace"}};
  expect_error(j, "decoder Metaspace is not supported; allowed: ByteLevel");
  j = base;
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(j, "pre_tokenizer type 'Whitespace' is not supported");
  j = base;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_error(j, "does not compile with PCRE2");
  j = base;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_error(j, "Split behavior Sideways is not supported");
  j = base;
  j["pre_tokenizer"]["pretokenizers"].erase(2);
  expect_error(j, "no ByteLevel step");
  j = base;
  j["post_processor"] = {{"type", "Magic"}};
  expect_error(j, "post_processor 'Magic' is not supported");
  j = base;
  j["truncation"] = {{"max_length", 8}};
  expect_error(j, "truncation is set");
  j = base;
  j["added_tokens"][0].erase("content");
  expect_error(j, "needs an \"id\" >= 0 and a \"content\" string");
  j = base;
  j["added_tokens"][1]["content"] = "<s>";
  expect_error(j, "has two ids, 100 and 101");

  j = base;
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = 7;
  expect_error(j, "has a malformed field");

  std::string const bad_config = R"({"add_bos_token": true})";
  EXPECT_NE(error_of([&] {
              (void)tokenizer::from_json(base.dump(), bad_config);
            }).find("add_bos_token is true but bos_token is not set"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              (void)tokenizer::from_json(base.dump(), R"({"bos_token": "<x>"})");
            }).find("bos '<x>' is not a token"),
            std::string::npos);
}

// One tokenizer shared by threads (the word cache and the regex state are shared or per thread):
// every thread gets the ids a single thread gets.
TEST(Tokenizer, ConcurrentEncodesAgree) {
  auto const tok = test::tiny_tokenizer();
  auto rng = test::test_rng();
  std::string const pieces[] = {"hello", " world", " the", "aaa", "123", "café", "<s>", "\n", " "};
  std::vector<std::string> texts(400);
  for (auto& t : texts) {
    for (int i = 0; i < 12; ++i) t += pieces[rng() % std::size(pieces)];
  }
  std::vector<ids> want;
  for (auto const& t : texts) want.push_back(tok.encode(t));
  tok.clear_cache();
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 5; ++round) {
        for (std::size_t i = 0; i < texts.size(); ++i) {
          std::size_t const at = (i * 7 + std::size_t(k) * 101) % texts.size();
          wrong[std::size_t(k)] += tok.encode(texts[at]) != want[at];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace lightcore
