// DeepSeek-V3's and DeepSeek-R1's chat formats against their Hugging Face chat templates: every
// case of tests/data/text/chat_golden.json (tools/chat_golden.py renders the templates with
// jinja2 as transformers does) must come out byte for byte, in both flavours. Hand-written cases
// pin the rules themselves (system prompts gathered after the BOS, R1's reasoning stripping and
// generation prompt), bad roles and flavour names are rejected, and the prompts encode through
// DeepSeek-V3's real tokenizer when it is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "modules/text/chat_template.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using text::chat_message;
using text::deepseek_v3::chat_flavour;
using text::deepseek_v3::chat_prompt;

std::string const bos = "<｜begin▁of▁sentence｜>";
std::string const eos = "<｜end▁of▁sentence｜>";
std::string const user = "<｜User｜>";
std::string const assistant = "<｜Assistant｜>";

// ---- the golden conversations ---------------------------------------------------------------

// The fixture sits beside the tokenizer fixtures: tests/data/text next to tests/data/tokenizer.
std::filesystem::path golden_path() {
  return test::text_data_dir().parent_path() / "text" / "chat_golden.json";
}

nlohmann::json const& golden() {
  static nlohmann::json const doc = [] {
    auto const path = golden_path();
    if (!std::filesystem::exists(path)) return nlohmann::json();
    return nlohmann::json::parse(test::read_text_file(path));
  }();
  return doc;
}

std::vector<chat_message> messages_of(nlohmann::json const& c) {
  std::vector<chat_message> out;
  for (auto const& m : c.at("messages")) {
    out.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  }
  return out;
}

// Every case of one flavour's list renders exactly as the reference template did.
void expect_golden(char const* key, chat_flavour flavour) {
  ASSERT_FALSE(golden().is_null())
      << "missing fixture " << golden_path() << " (tools/chat_golden.py writes it)";
  auto const& cases = golden().at(key);
  ASSERT_GE(cases.size(), 30u) << "the fixture lost cases";
  for (auto const& c : cases) {
    auto const name = c.at("name").get<std::string>();
    auto const gen = c.at("add_generation_prompt").get<bool>();
    EXPECT_EQ(chat_prompt(messages_of(c), gen, flavour), c.at("expected").get<std::string>())
        << key << " case '" << name << "' (add_generation_prompt=" << gen << ")";
  }
}

TEST(ChatGolden, V3MatchesTheReferenceTemplate) { expect_golden("v3", chat_flavour::v3); }

TEST(ChatGolden, R1MatchesTheReferenceTemplate) { expect_golden("r1", chat_flavour::r1); }

// The two lists hold the same conversations, and the fixture really tells the flavours apart:
// the think cases differ (reasoning stripped) and every generation prompt differs.
TEST(ChatGolden, FlavoursCoverTheSameConversations) {
  ASSERT_FALSE(golden().is_null()) << "missing fixture " << golden_path();
  auto const& v3 = golden().at("v3");
  auto const& r1 = golden().at("r1");
  ASSERT_EQ(v3.size(), r1.size());
  std::set<std::string> names;
  int stripped = 0;
  for (std::size_t i = 0; i < v3.size(); ++i) {
    auto const name = v3[i].at("name").get<std::string>();
    EXPECT_TRUE(names.insert(name).second) << "duplicate case " << name;
    EXPECT_EQ(r1[i].at("name"), v3[i].at("name"));
    EXPECT_EQ(r1[i].at("messages"), v3[i].at("messages")) << name;
    auto const gen = v3[i].at("add_generation_prompt").get<bool>();
    auto const a = v3[i].at("expected").get<std::string>();
    auto const b = r1[i].at("expected").get<std::string>();
    if (gen) {
      EXPECT_NE(a, b) << name << ": R1's generation prompt opens <think>";
    }
    if (!gen && a != b) ++stripped;
  }
  EXPECT_GE(stripped, 2) << "no case without a generation prompt exercises R1's stripping";
}

// The default flavour is V3, so existing callers keep V3's format.
TEST(ChatGolden, DefaultFlavourIsV3) {
  ASSERT_FALSE(golden().is_null()) << "missing fixture " << golden_path();
  for (auto const& c : golden().at("v3")) {
    auto const m = messages_of(c);
    auto const gen = c.at("add_generation_prompt").get<bool>();
    EXPECT_EQ(chat_prompt(m, gen), chat_prompt(m, gen, chat_flavour::v3)) << c.at("name");
  }
}

// ---- the rules, by hand ---------------------------------------------------------------------

TEST(ChatTemplate, SingleUserTurn) {
  std::vector<chat_message> const m = {{"user", "Hi!"}};
  EXPECT_EQ(chat_prompt(m, false), bos + user + "Hi!");
  EXPECT_EQ(chat_prompt(m, true), bos + user + "Hi!" + assistant);
  EXPECT_EQ(chat_prompt(m, false, chat_flavour::r1), bos + user + "Hi!");
  EXPECT_EQ(chat_prompt(m, true, chat_flavour::r1), bos + user + "Hi!" + assistant + "<think>\n");
}

TEST(ChatTemplate, MultiTurnWithSystemPrompts) {
  std::vector<chat_message> const m = {{"system", "Be brief."},
                                       {"user", "2+2?"},
                                       {"assistant", "4"},
                                       {"system", "Answer in French."},
                                       {"user", "And 3+3?"}};
  EXPECT_EQ(chat_prompt(m, true), bos + "Be brief.\n\nAnswer in French." + user + "2+2?" +
                                      assistant + "4" + eos + user + "And 3+3?" + assistant);
}

TEST(ChatTemplate, EndsWithAnAssistantTurn) {
  std::vector<chat_message> const m = {{"user", "a"}, {"assistant", "b"}};
  EXPECT_EQ(chat_prompt(m, false), bos + user + "a" + assistant + "b" + eos);
  EXPECT_EQ(chat_prompt({}, true), bos + assistant);
  // Empty system content still counts as the first system prompt (no leading blank line after).
  std::vector<chat_message> const s = {{"system", ""}, {"system", "x"}};
  EXPECT_EQ(chat_prompt(s, false), bos + "\n\nx");
}

// R1 keeps only what follows the last "</think>" of each assistant turn (the last turn too);
// V3 keeps the turn verbatim; user and system text is never touched.
TEST(ChatTemplate, R1StripsReasoningFromAssistantTurns) {
  std::vector<chat_message> const m = {{"system", "<think>s</think>S"},
                                       {"user", "<think>u</think>U"},
                                       {"assistant", "<think>r1</think>\n\nA1"},
                                       {"user", "q"},
                                       {"assistant", "<think>a</think>b</think>A2"}};
  EXPECT_EQ(chat_prompt(m, false, chat_flavour::r1),
            bos + "<think>s</think>S" + user + "<think>u</think>U" + assistant + "\n\nA1" + eos +
                user + "q" + assistant + "A2" + eos);
  EXPECT_EQ(chat_prompt(m, false, chat_flavour::v3),
            bos + "<think>s</think>S" + user + "<think>u</think>U" + assistant +
                "<think>r1</think>\n\nA1" + eos + user + "q" + assistant +
                "<think>a</think>b</think>A2" + eos);

  using text::deepseek_v3::strip_reasoning;
  EXPECT_EQ(strip_reasoning("no tags"), "no tags");
  EXPECT_EQ(strip_reasoning("<think>unclosed"), "<think>unclosed");
  EXPECT_EQ(strip_reasoning("<think>x</think>"), "");
  EXPECT_EQ(strip_reasoning("x</think>y"), "y");
  EXPECT_EQ(strip_reasoning(""), "");
}

TEST(ChatTemplate, UnknownRoleIsRejected) {
  for (auto const flavour : {chat_flavour::v3, chat_flavour::r1}) {
    std::vector<chat_message> const m = {{"user", "q"}, {"tool", "42"}};
    try {
      (void)chat_prompt(m, true, flavour);
      FAIL() << "a tool message was accepted";
    } catch (error const& e) {
      EXPECT_NE(e.message().find("role 'tool' is not supported; allowed: system, user, assistant"),
                std::string::npos)
          << e.message();
    }
  }
  std::vector<chat_message> const empty_role = {{"", "x"}};
  EXPECT_THROW((void)chat_prompt(empty_role, false), error);
  std::vector<chat_message> const upper = {{"User", "x"}};  // roles are case-sensitive
  EXPECT_THROW((void)chat_prompt(upper, false, chat_flavour::r1), error);
}

TEST(ChatTemplate, FlavourNames) {
  using text::deepseek_v3::parse_chat_flavour;
  EXPECT_EQ(parse_chat_flavour("v3"), chat_flavour::v3);
  EXPECT_EQ(parse_chat_flavour("r1"), chat_flavour::r1);
  EXPECT_EQ(text::deepseek_v3::to_string(chat_flavour::r1), "r1");
  EXPECT_EQ(text::deepseek_v3::to_string(chat_flavour::v3), "v3");
  for (char const* bad : {"", "V3", "r2", "deepseek"}) {
    try {
      (void)parse_chat_flavour(bad);
      FAIL() << "flavour '" << bad << "' was accepted";
    } catch (error const& e) {
      EXPECT_NE(e.message().find("chat flavour '" + std::string(bad) +
                                 "' is not supported; allowed: v3, r1"),
                std::string::npos)
          << e.message();
    }
  }
}

// ---- through the real tokenizer -------------------------------------------------------------

// The prompt encodes with the special tokens as single ids (add_special_tokens = false: the BOS
// is in the text).
TEST(ChatTemplate, EncodesWithSpecialTokenIds) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  auto const& tok = *test::deepseek_tokenizer();
  std::vector<chat_message> const m = {{"user", "Hi"}};
  auto const x = tok.encode(chat_prompt(m, true));
  ASSERT_GE(x.size(), 4u);
  EXPECT_EQ(x.front(), 0);  // <｜begin▁of▁sentence｜>
  EXPECT_EQ(x[1], *tok.token_to_id(user));
  EXPECT_EQ(x.back(), *tok.token_to_id(assistant));
  EXPECT_EQ(tok.decode(x), chat_prompt(m, true));

  // R1's generation prompt: the assistant tag is one id, "<think>\n" follows it as text (as one
  // id where the tokenizer has "<think>" as an added token, as R1's does).
  auto const y = tok.encode(chat_prompt(m, true, chat_flavour::r1));
  auto const at = std::find(y.begin(), y.end(), *tok.token_to_id(assistant));
  ASSERT_NE(at, y.end());
  EXPECT_EQ(tok.decode({at + 1, y.end()}), "<think>\n");
  if (auto const think = tok.token_to_id("<think>")) {
    EXPECT_EQ(*(at + 1), *think);
  }
}

// Every golden prompt, both flavours: starts with the BOS id, holds one assistant-tag id per
// assistant turn plus the generation prompt when no message text spells the tag, and decodes
// back to itself.
TEST(ChatTemplate, GoldenPromptsRoundTripThroughTheTokenizer) {
  LC_REQUIRE_DEEPSEEK_TOKENIZER();
  ASSERT_FALSE(golden().is_null()) << "missing fixture " << golden_path();
  auto const& tok = *test::deepseek_tokenizer();
  auto const assistant_id = *tok.token_to_id(assistant);
  for (char const* key : {"v3", "r1"}) {
    for (auto const& c : golden().at(key)) {
      auto const text = c.at("expected").get<std::string>();
      auto const x = tok.encode(text);
      ASSERT_FALSE(x.empty());
      EXPECT_EQ(x.front(), 0) << key << " " << c.at("name");
      EXPECT_EQ(tok.decode(x), text) << key << " " << c.at("name");
      bool spelled = false;
      std::ptrdiff_t turns = c.at("add_generation_prompt").get<bool>() ? 1 : 0;
      for (auto const& m : c.at("messages")) {
        spelled |= m.at("content").get<std::string>().find(assistant) != std::string::npos;
        turns += m.at("role") == "assistant";
      }
      if (!spelled) {
        EXPECT_EQ(std::count(x.begin(), x.end(), assistant_id), turns)
            << key << " " << c.at("name");
      }
    }
  }
}

}  // namespace
}  // namespace lightcore
