// DeepSeek-V3's real tokenizer (skipped, saying why, when scripts/setup.sh has not fetched it):
// the golden ids of Hugging Face `tokenizers` (tests/data/tokenizer/golden.jsonl, written by
// tools/tokenizer_golden.py; skipped while it is missing), the merge loop against the O(n^2)
// definition on the real merges, round trips, and the file's facts (sizes, BOS, specials).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <string>

#include "common/seed.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using test::ids;
using text::token_id;

std::filesystem::path golden_path() {
  if (char const* env = std::getenv("LIGHTCORE_TOKENIZER_GOLDEN")) return env;
  return test::text_data_dir() / "golden.jsonl";
}

TEST(DeepSeekTokenizer, FileFacts) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto const& tok = *test::deepseek_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 128815u);  // 128000 BPE tokens; added tokens up to 128814
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_EQ(tok.token_to_id("<｜User｜>"), 128803);
  EXPECT_FALSE(tok.is_special(128803));  // the chat tags are added but not special
  EXPECT_EQ(tok.encode("", true), ids{0});
  EXPECT_EQ(tok.encode("Hello", true).front(), 0);
  EXPECT_EQ(tok.encode("Hello", true).size(), tok.encode("Hello").size() + 1);
}

TEST(DeepSeekTokenizer, MatchesHuggingFaceGolden) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto const path = golden_path();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "golden fixture missing: " << path
                 << " (write it with tools/tokenizer_golden.py where Hugging Face `tokenizers` "
                    "is installed)";
  }
  auto const& tok = *test::deepseek_tokenizer();
  std::ifstream in(path);
  std::string line;
  int checked = 0;
  int with_specials = 0;
  int failures = 0;
  while (std::getline(in, line)) {
    auto const j = nlohmann::json::parse(line);
    if (j.contains("meta")) continue;
    auto const text = j.at("text").get<std::string>();
    auto const want = j.at("ids").get<ids>();
    auto const got = tok.encode(text);
    ++checked;
    bool ok = got == want;
    EXPECT_EQ(got, want) << "encode of " << j.at("text").dump();
    if (j.contains("ids_special")) {
      ++with_specials;
      auto const want_s = j["ids_special"].get<ids>();
      ok = ok && tok.encode(text, true) == want_s;
      EXPECT_EQ(tok.encode(text, true), want_s) << "encode with specials of " << j["text"].dump();
    }
    auto const decoded = j.value("decoded", text);
    auto const decoded_skip = j.value("decoded_skip", decoded);
    ok = ok && tok.decode(want) == decoded && tok.decode(want, true) == decoded_skip;
    EXPECT_EQ(tok.decode(want), decoded) << "decode of the ids of " << j["text"].dump();
    EXPECT_EQ(tok.decode(want, true), decoded_skip) << "decode (skip) of " << j["text"].dump();
    if (!ok && ++failures >= 20) FAIL() << "stopping after 20 failing strings";
  }
  EXPECT_GT(checked, 1000) << "the golden file holds too few strings";
  EXPECT_GT(with_specials, 100);
}

// Random strings as one piece each (pre-tokenizer reduced to ByteLevel), against the definition
// on the real 127741 merges: long runs of one letter, CJK, emoji bytes.
TEST(DeepSeekTokenizer, MergeLoopMatchesTheDefinition) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto j = nlohmann::json::parse(test::read_text_file(test::deepseek_dir() / "tokenizer.json"));
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  j["added_tokens"] = nlohmann::json::array();
  auto const tok = text::tokenizer::from_json(j.dump());
  test::reference_bpe const ref(j["model"]);
  auto rng = test::test_rng();
  std::string const pieces[] = {"a", "e", "t",  "in",  " ", "the", "中", "文",
                                "😀", "1", "\n", "ing", "é", "ß",   "."};
  for (int trial = 0; trial < 400; ++trial) {
    std::string w;
    int const n = std::uniform_int_distribution<int>(1, 50)(rng);
    for (int i = 0; i < n; ++i) w += pieces[rng() % std::size(pieces)];
    ASSERT_EQ(tok.encode(w), ref.encode_word(w)) << "word " << ::testing::PrintToString(w);
  }
}

TEST(DeepSeekTokenizer, DecodeInvertsEncode) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto const& tok = *test::deepseek_tokenizer();
  auto rng = test::test_rng();
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    int const n = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < n; ++i) {
      // Random code points from the BMP and beyond (no surrogates), and some specials.
      if (rng() % 20 == 0) {
        s += "<｜Assistant｜>";
        continue;
      }
      char32_t cp = char32_t(rng() % 0x30000);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      text::utf8::append(s, cp);
    }
    ASSERT_EQ(tok.decode(tok.encode(s)), s) << ::testing::PrintToString(s);
  }
}

}  // namespace
}  // namespace lightcore
