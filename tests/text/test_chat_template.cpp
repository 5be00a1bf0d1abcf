// DeepSeek-V3's chat format against what its chat_template (tokenizer_config.json) renders for
// the same messages, worked out by hand from the template: system prompts gathered after the BOS
// wherever they stand and joined by a blank line, user and assistant turns, the generation
// prompt, and an unknown role rejected.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "modules/text/chat_template.hpp"
#include "text_test_util.hpp"

namespace lightcore {
namespace {

using text::chat_message;
using text::deepseek_v3::chat_prompt;

std::string const bos = "<｜begin▁of▁sentence｜>";
std::string const eos = "<｜end▁of▁sentence｜>";
std::string const user = "<｜User｜>";
std::string const assistant = "<｜Assistant｜>";

TEST(ChatTemplate, SingleUserTurn) {
  std::vector<chat_message> const m = {{"user", "Hi!"}};
  EXPECT_EQ(chat_prompt(m, false), bos + user + "Hi!");
  EXPECT_EQ(chat_prompt(m, true), bos + user + "Hi!" + assistant);
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

TEST(ChatTemplate, UnknownRoleIsRejected) {
  std::vector<chat_message> const m = {{"tool", "42"}};
  try {
    (void)chat_prompt(m, true);
    FAIL() << "a tool message was accepted";
  } catch (error const& e) {
    EXPECT_NE(e.message().find("role 'tool' is not supported; allowed: system, user, assistant"),
              std::string::npos)
        << e.message();
  }
}

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
}

}  // namespace
}  // namespace lightcore
