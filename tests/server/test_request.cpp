// /v1/completions, /generate and raw-body parsing: fields land where the engine reads them,
// defaults apply, and every bad field gives the right status with a message naming the field and
// what is allowed.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "examples/server/api/request.hpp"
#include "server_test_util.hpp"

namespace lightcore {
namespace {

using nlohmann::json;
using server::api_config;
using server::generation_request;
using server::parse_completion_request;
using server::parse_generate_request;
using test::fake_bos;
using test::fake_tokenizer;
using test::is_error;

api_config small_config() {
  api_config c;
  c.served_model_name = "tiny";
  c.max_model_len = 64;
  c.max_prompt_tokens = 40;
  c.max_new_tokens = 50;
  return c;
}

server::api_result<generation_request> completion(json const& body) {
  return parse_completion_request(body, fake_tokenizer(), small_config());
}

TEST(CompletionRequest, DefaultsForAMinimalBody) {
  auto const r = completion({{"prompt", "abc"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto const& q = r.value();
  EXPECT_EQ(q.kind, server::request_kind::completion);
  EXPECT_EQ(q.model, "tiny");
  EXPECT_EQ(q.prompt_ids, (std::vector<text::token_id>{fake_bos, 'a', 'b', 'c'}));
  EXPECT_EQ(q.prompt_text, "abc");
  EXPECT_EQ(q.max_new_tokens, 16);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 1.0f);
  EXPECT_EQ(q.sampling.top_k, 0);
  EXPECT_EQ(q.sampling.num_logprobs, -1);
  EXPECT_FALSE(q.seed_given);
  EXPECT_FALSE(q.stream);
  EXPECT_FALSE(q.include_usage);
  EXPECT_FALSE(q.logprobs);
  EXPECT_FALSE(q.echo);
  EXPECT_FALSE(q.ignore_eos);
  EXPECT_TRUE(q.stop.empty());
}

TEST(CompletionRequest, EveryFieldLandsInPlace) {
  json const body = {{"model", "tiny"},
                     {"prompt", "hi"},
                     {"max_tokens", 7},
                     {"temperature", 0.5},
                     {"top_p", 0.9},
                     {"top_k", 40},
                     {"min_p", 0.05},
                     {"presence_penalty", 0.25},
                     {"frequency_penalty", -0.5},
                     {"repetition_penalty", 1.1},
                     {"seed", 1234},
                     {"stop", json::array({"\n\n", "END"})},
                     {"stop_token_ids", json::array({257})},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}},
                     {"logprobs", 3},
                     {"echo", true},
                     {"n", 1},
                     {"ignore_eos", true},
                     {"user", "someone"}};  // unknown fields are ignored
  auto const r = completion(body);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto const& q = r.value();
  EXPECT_EQ(q.max_new_tokens, 7);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 0.9f);
  EXPECT_EQ(q.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(q.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(q.sampling.presence_penalty, 0.25f);
  EXPECT_FLOAT_EQ(q.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(q.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(q.sampling.seed, 1234u);
  EXPECT_TRUE(q.seed_given);
  EXPECT_EQ(q.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(q.stop_token_ids, (std::vector<text::token_id>{257}));
  EXPECT_TRUE(q.stream);
  EXPECT_TRUE(q.include_usage);
  EXPECT_TRUE(q.logprobs);
  EXPECT_EQ(q.top_logprobs, 3);
  EXPECT_EQ(q.sampling.num_logprobs, 3);
  EXPECT_TRUE(q.echo);
  EXPECT_TRUE(q.ignore_eos);
}

TEST(CompletionRequest, PromptForms) {
  // Token ids are taken as they are (no BOS added), and decoded for echo.
  auto const ids = completion({{"prompt", json::array({104, 105})}});
  ASSERT_TRUE(ids.ok()) << ids.error().message;
  EXPECT_EQ(ids.value().prompt_ids, (std::vector<text::token_id>{104, 105}));
  EXPECT_EQ(ids.value().prompt_text, "hi");
  auto const one_string = completion({{"prompt", json::array({"ab"})}});
  ASSERT_TRUE(one_string.ok());
  EXPECT_EQ(one_string.value().prompt_ids.size(), 3u);
  auto const one_ids = completion({{"prompt", json::array({json::array({1, 2})})}});
  ASSERT_TRUE(one_ids.ok());
  EXPECT_EQ(one_ids.value().prompt_ids, (std::vector<text::token_id>{1, 2}));
  // A single stop string, top_k -1 meaning off, integral floats, negative seeds.
  auto const misc = completion(
      {{"prompt", "x"}, {"stop", "###"}, {"top_k", -1}, {"max_tokens", 5.0}, {"seed", -1}});
  ASSERT_TRUE(misc.ok()) << misc.error().message;
  EXPECT_EQ(misc.value().stop, (std::vector<std::string>{"###"}));
  EXPECT_EQ(misc.value().sampling.top_k, 0);
  EXPECT_EQ(misc.value().max_new_tokens, 5);
  EXPECT_EQ(misc.value().sampling.seed, std::numeric_limits<std::uint64_t>::max());
  // Nulls read as "not set".
  auto const nulls = completion({{"prompt", "x"}, {"temperature", nullptr}, {"stop", nullptr}});
  ASSERT_TRUE(nulls.ok());
  EXPECT_FLOAT_EQ(nulls.value().sampling.temperature, 1.0f);
}

TEST(CompletionRequest, UnseededRequestsGetDifferentSeeds) {
  auto const a = completion({{"prompt", "x"}});
  auto const b = completion({{"prompt", "x"}});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a.value().sampling.seed, b.value().sampling.seed);
}

struct bad_case {
  json body;
  int status;
  std::string param;
  std::vector<std::string> fragments;
};

void expect_all(std::vector<bad_case> const& cases,
                std::function<server::api_result<generation_request>(json const&)> const& parse) {
  for (auto const& c : cases) {
    auto const r = parse(c.body);
    std::vector<std::string_view> frags(c.fragments.begin(), c.fragments.end());
    ::testing::AssertionResult ok = ::testing::AssertionSuccess();
    if (r.ok()) {
      ok = ::testing::AssertionFailure() << "accepted";
    } else if (r.error().status != c.status || r.error().param != c.param) {
      ok = ::testing::AssertionFailure() << "status " << r.error().status << " param '"
                                         << r.error().param << "': " << r.error().message;
    } else {
      for (auto const f : frags) {
        if (r.error().message.find(f) == std::string::npos) {
          ok = ::testing::AssertionFailure()
               << "message lacks '" << f << "': " << r.error().message;
        }
      }
    }
    EXPECT_TRUE(ok) << "body: " << c.body.dump();
  }
}

TEST(CompletionRequest, BadFieldsAreRejectedWithTheirName) {
  json const p = "hello";
  expect_all(
      {
          {json::array({1}), 400, "", {"must be a JSON object", "an array"}},
          {json::object(), 400, "prompt", {"'prompt' is required"}},
          {{{"prompt", ""}}, 400, "prompt", {"empty"}},
          {{{"prompt", json::array()}}, 400, "prompt", {"empty"}},
          {{{"prompt", 5}}, 400, "prompt", {"string or an array of token ids", "an integer"}},
          {{{"prompt", json::array({"a", "b"})}}, 400, "prompt", {"holds 2 prompts"}},
          {{{"prompt", json::array({1, -2})}}, 400, "prompt", {"prompt[1]", "[0, 260)", "-2"}},
          {{{"prompt", json::array({1, 260})}}, 400, "prompt", {"[0, 260)"}},
          {{{"prompt", json::array({1, "x"})}}, 400, "prompt", {"prompt[1]"}},
          {{{"prompt", p}, {"model", "gpt-4"}}, 404, "model", {"'gpt-4' does not exist", "tiny"}},
          {{{"prompt", p}, {"model", 3}}, 400, "model", {"must be a string"}},
          {{{"prompt", p}, {"max_tokens", 0}}, 400, "max_tokens", {"integer in [1, "}},
          {{{"prompt", p}, {"max_tokens", -5}}, 400, "max_tokens", {"-5"}},
          {{{"prompt", p}, {"max_tokens", 2.5}}, 400, "max_tokens", {"integer"}},
          {{{"prompt", p}, {"max_tokens", "16"}}, 400, "max_tokens", {"a string"}},
          {{{"prompt", p}, {"max_tokens", 51}}, 400, "max_tokens", {"too large", "at most 50"}},
          {{{"prompt", p}, {"max_tokens", 1e300}}, 400, "max_tokens", {"integer"}},
          {{{"prompt", p}, {"temperature", -0.1}}, 400, "temperature", {"[0, 2]", "-0.1"}},
          {{{"prompt", p}, {"temperature", 2.5}}, 400, "temperature", {"[0, 2]"}},
          {{{"prompt", p}, {"temperature", "hot"}}, 400, "temperature", {"a string"}},
          {{{"prompt", p}, {"temperature", true}}, 400, "temperature", {"a boolean"}},
          {{{"prompt", p}, {"top_p", 0}}, 400, "top_p", {"(0, 1]"}},
          {{{"prompt", p}, {"top_p", 1.5}}, 400, "top_p", {"(0, 1]"}},
          {{{"prompt", p}, {"top_k", -2}}, 400, "top_k", {"[-1, "}},
          {{{"prompt", p}, {"top_k", 0.5}}, 400, "top_k", {"integer"}},
          {{{"prompt", p}, {"min_p", 1.5}}, 400, "min_p", {"[0, 1]"}},
          {{{"prompt", p}, {"presence_penalty", 3}}, 400, "presence_penalty", {"[-2, 2]"}},
          {{{"prompt", p}, {"frequency_penalty", -3}}, 400, "frequency_penalty", {"[-2, 2]"}},
          {{{"prompt", p}, {"repetition_penalty", 0}}, 400, "repetition_penalty", {"(0, 2]"}},
          {{{"prompt", p}, {"seed", "x"}}, 400, "seed", {"integer"}},
          {{{"prompt", p}, {"seed", 0.5}}, 400, "seed", {"integer"}},
          {{{"prompt", p}, {"stop", json::array({"a", "b", "c", "d", "e"})}},
           400,
           "stop",
           {"5 entries", "at most 4"}},
          {{{"prompt", p}, {"stop", json::array({"a", 1})}}, 400, "stop[1]", {"string"}},
          {{{"prompt", p}, {"stop", ""}}, 400, "stop", {"empty"}},
          {{{"prompt", p}, {"stop_token_ids", json::array({999})}}, 400, "stop_token_ids", {}},
          {{{"prompt", p}, {"stream", "yes"}}, 400, "stream", {"boolean"}},
          {{{"prompt", p}, {"stream_options", {{"include_usage", true}}}},
           400,
           "stream_options",
           {"only allowed when 'stream' is true"}},
          {{{"prompt", p}, {"stream", true}, {"stream_options", 1}}, 400, "stream_options", {}},
          {{{"prompt", p}, {"stream", true}, {"stream_options", {{"include_usage", 1}}}},
           400,
           "stream_options.include_usage",
           {"boolean"}},
          {{{"prompt", p}, {"logprobs", 21}}, 400, "logprobs", {"[0, 20]"}},
          {{{"prompt", p}, {"logprobs", true}}, 400, "logprobs", {"a boolean"}},
          {{{"prompt", p}, {"echo", 1}}, 400, "echo", {"boolean"}},
          {{{"prompt", p}, {"n", 17}}, 400, "n", {"1..16"}},
          {{{"prompt", p}, {"n", 2}, {"best_of", 3}}, 400, "best_of", {"best_of = n"}},
          {{{"prompt", p}, {"best_of", 3}}, 400, "best_of", {"best_of = n (1)"}},
          {{{"prompt", p}, {"suffix", "x"}}, 400, "suffix", {"not supported"}},
          {{{"prompt", p}, {"ignore_eos", "true"}}, 400, "ignore_eos", {"boolean"}},
      },
      completion);
}

TEST(CompletionRequest, LengthLimits) {
  // 41 tokens with the BOS: over max_prompt_tokens = 40.
  auto const long_prompt = completion({{"prompt", std::string(40, 'a')}});
  EXPECT_TRUE(is_error(long_prompt, 413, "prompt", {"41 tokens", "at most 40"}));
  EXPECT_EQ(long_prompt.error().code, "prompt_too_long");
  // 31 prompt tokens + 40 > 64.
  auto const over = completion({{"prompt", std::string(30, 'a')}, {"max_tokens", 40}});
  EXPECT_TRUE(is_error(over, 400, "max_tokens", {"64 tokens", "31 tokens", "at most 33"}));
  EXPECT_EQ(over.error().code, "context_length_exceeded");
  auto const fits = completion({{"prompt", std::string(30, 'a')}, {"max_tokens", 33}});
  EXPECT_TRUE(fits.ok());
  // The default max_tokens (16) is cut to what the context leaves.
  auto c = small_config();
  c.max_prompt_tokens = 64;
  auto const full =
      parse_completion_request(json{{"prompt", std::string(63, 'a')}}, fake_tokenizer(), c);
  EXPECT_TRUE(is_error(full, 400, "prompt", {"no room"}));
  auto const near =
      parse_completion_request(json{{"prompt", std::string(60, 'a')}}, fake_tokenizer(), c);
  ASSERT_TRUE(near.ok());
  EXPECT_EQ(near.value().max_new_tokens, 3);
}

server::api_result<generation_request> generate(json const& body, bool stream = false) {
  return parse_generate_request(body, fake_tokenizer(), small_config(), stream);
}

TEST(GenerateRequest, LightLlmShape) {
  auto const plain = generate({{"inputs", "abc"}});
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_EQ(plain.value().kind, server::request_kind::generate);
  EXPECT_EQ(plain.value().prompt_ids, (std::vector<text::token_id>{fake_bos, 'a', 'b', 'c'}));
  EXPECT_EQ(plain.value().max_new_tokens, 16);
  EXPECT_FLOAT_EQ(plain.value().sampling.temperature, 0.0f);  // do_sample defaults to false
  EXPECT_FALSE(plain.value().stream);

  json const body = {{"inputs", "abc"},
                     {"parameters",
                      {{"max_new_tokens", 9},
                       {"do_sample", true},
                       {"temperature", 0.7},
                       {"top_p", 0.8},
                       {"top_k", 5},
                       {"seed", 42},
                       {"stop_sequences", json::array({"x", "y"})},
                       {"ignore_eos", true},
                       {"repetition_penalty", 1.2}}}};
  auto const full = generate(body, true);
  ASSERT_TRUE(full.ok()) << full.error().message;
  auto const& q = full.value();
  EXPECT_TRUE(q.stream);
  EXPECT_EQ(q.max_new_tokens, 9);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 0.8f);
  EXPECT_EQ(q.sampling.top_k, 5);
  EXPECT_EQ(q.sampling.seed, 42u);
  EXPECT_EQ(q.stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(q.ignore_eos);
  EXPECT_FLOAT_EQ(q.sampling.repetition_penalty, 1.2f);
}

TEST(GenerateRequest, BadFields) {
  expect_all(
      {
          {json::object(), 400, "inputs", {"'inputs' is required"}},
          {{{"inputs", ""}}, 400, "inputs", {"empty"}},
          {{{"inputs", 7}}, 400, "inputs", {"string"}},
          {{{"inputs", "a"}, {"parameters", 1}}, 400, "parameters", {"object"}},
          {{{"inputs", std::string(45, 'a')}}, 413, "inputs", {"46 tokens", "at most 40"}},
          {{{"inputs", "a"}, {"parameters", {{"max_new_tokens", 0}}}},
           400,
           "parameters.max_new_tokens",
           {"[1, "}},
          {{{"inputs", "a"}, {"parameters", {{"do_sample", "no"}}}},
           400,
           "parameters.do_sample",
           {"boolean"}},
          {{{"inputs", "a"}, {"parameters", {{"temperature", -1}}}},
           400,
           "parameters.temperature",
           {"[0, 2]"}},
          {{{"inputs", "a"}, {"parameters", {{"stop_sequences", json::array({1})}}}},
           400,
           "parameters.stop_sequences[0]",
           {"string"}},
          {{{"inputs", "a"}, {"parameters", {{"best_of", 2}}}}, 400, "parameters.best_of", {}},
      },
      [](json const& b) { return generate(b); });
}

TEST(RequestBody, InvalidJsonGivesItsPosition) {
  api_config const c = small_config();
  auto const r = server::parse_completion_body(R"({"prompt": "a",})", fake_tokenizer(), c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().status, 400);
  EXPECT_EQ(r.error().code, "invalid_json");
  EXPECT_NE(r.error().message.find("byte 16"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("column 16"), std::string::npos) << r.error().message;
  // NaN and Infinity are not JSON.
  EXPECT_FALSE(server::parse_json_body(R"({"temperature": NaN})", c).ok());
  EXPECT_FALSE(server::parse_json_body("", c).ok());
  auto const good = server::parse_chat_body(R"({"messages":[{"role":"user","content":"hi"}]})",
                                            fake_tokenizer(), c);
  EXPECT_TRUE(good.ok()) << good.error().message;
  auto const gen = server::parse_generate_body(R"({"inputs":"hi"})", fake_tokenizer(), c, true);
  ASSERT_TRUE(gen.ok());
  EXPECT_TRUE(gen.value().stream);
}

TEST(RequestBody, TooLargeIs413) {
  api_config c = small_config();
  c.max_body_bytes = 10;
  auto const r = server::parse_json_body(R"({"prompt": "abcdef"})", c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().status, 413);
  EXPECT_NE(r.error().message.find("at most 10"), std::string::npos) << r.error().message;
}

TEST(Request, SeveralChoicesUpToTheLimit) {
  server::api_config config;
  auto const ok = server::parse_completion_request(
      nlohmann::json{{"prompt", "hi"}, {"n", 3}, {"best_of", 3}}, fake_tokenizer(), config);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok.value().n, 3);
  config.max_n = 2;
  EXPECT_TRUE(
      is_error(server::parse_chat_request(
                   nlohmann::json{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"n", 3}},
                   fake_tokenizer(), config),
               400, "n", {"too large", "1..2"}));
  EXPECT_TRUE(is_error(server::parse_completion_request(nlohmann::json{{"prompt", "hi"}, {"n", 0}},
                                                        fake_tokenizer(), config),
                       400, "n", {}));
}

TEST(Request, TokenizeAndDetokenize) {
  server::api_config config;
  config.max_model_len = 8;
  auto const ids = server::parse_tokenize_body(R"({"prompt": "abc"})", fake_tokenizer(), config);
  ASSERT_TRUE(ids.ok()) << ids.error().message;
  EXPECT_EQ(ids.value(), (std::vector<text::token_id>{fake_bos, 'a', 'b', 'c'}));
  auto const bare = server::parse_tokenize_body(R"({"prompt": "abc", "add_special_tokens": false})",
                                                fake_tokenizer(), config);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare.value().size(), 3u);
  auto const chat = server::parse_tokenize_body(
      R"({"messages": [{"role": "user", "content": "x"}]})", fake_tokenizer(), config);
  ASSERT_TRUE(chat.ok()) << chat.error().message;
  EXPECT_EQ(chat.value().front(), fake_bos);
  auto const text =
      server::parse_detokenize_body(R"({"tokens": [97, 98, 99]})", fake_tokenizer(), config);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text.value(), "abc");

  EXPECT_TRUE(is_error(server::parse_tokenize_body(R"({})", fake_tokenizer(), config), 400,
                       "prompt", {"exactly one"}));
  EXPECT_TRUE(is_error(server::parse_tokenize_body(R"({"prompt": 5})", fake_tokenizer(), config),
                       400, "prompt", {"string"}));
  EXPECT_TRUE(
      is_error(server::parse_tokenize_body(R"({"prompt": "0123456789"})", fake_tokenizer(), config),
               413, "prompt", {"at most 8"}));
  EXPECT_TRUE(
      is_error(server::parse_detokenize_body(R"({"tokens": "x"})", fake_tokenizer(), config), 400,
               "tokens", {"array"}));
  EXPECT_TRUE(
      is_error(server::parse_detokenize_body(R"({"tokens": [1, 99999]})", fake_tokenizer(), config),
               400, "tokens", {}));
  EXPECT_TRUE(
      is_error(server::parse_detokenize_body("[", fake_tokenizer(), config), 400, "", {"JSON"}));
}

}  // namespace
}  // namespace lightcore
