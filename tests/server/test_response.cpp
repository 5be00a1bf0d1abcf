// Reply shapes: OpenAI completion and chat objects with usage, finish reasons and logprobs, SSE
// framing of streamed chunks (chat's role chunk, usage chunk, [DONE]), LightLLM's generate
// shapes, /v1/models and error bodies.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "examples/server/api/response.hpp"
#include "lightcore/core/error.hpp"
#include "server_test_util.hpp"

namespace lightcore {
namespace {

using nlohmann::json;
using server::finish_reason;
using server::generation_output;
using server::generation_request;
using server::response_meta;
using server::token_logprob;

generation_request request_of(server::request_kind kind) {
  generation_request r;
  r.kind = kind;
  r.model = "tiny";
  r.prompt_text = "Say:";
  return r;
}

// Splits an SSE stream into its events' data, checking the framing on the way.
std::vector<std::string> sse_data(std::string const& s, std::string_view prefix = "data: ") {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at < s.size()) {
    auto const end = s.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << "unterminated event in: " << s;
    if (end == std::string::npos) break;
    auto const event = s.substr(at, end - at);
    EXPECT_EQ(event.rfind(prefix, 0), 0u) << event;
    EXPECT_EQ(event.find('\n'), std::string::npos) << "one line per event: " << event;
    out.push_back(event.substr(prefix.size()));
    at = end + 2;
  }
  return out;
}

TEST(Response, IdsAndTimes) {
  auto const a = server::make_id("cmpl-");
  auto const b = server::make_id("cmpl-");
  EXPECT_EQ(a.size(), 5u + 24u);
  EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
  EXPECT_NE(a, b);
  EXPECT_GT(server::unix_time_now(), 1700000000);
  auto const meta = server::make_response_meta(request_of(server::request_kind::chat));
  EXPECT_EQ(meta.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(meta.model, "tiny");
}

TEST(Response, CompletionWithEchoAndLogprobs) {
  auto req = request_of(server::request_kind::completion);
  req.echo = true;
  req.logprobs = true;
  req.top_logprobs = 1;
  generation_output out;
  out.text = "hi";
  out.token_ids = {'h', 'i'};
  out.logprobs = {{'h', "h", -0.5f, {{"h", -0.5f}}}, {'i', "i", -1.0f, {{"i", -1.0f}}}};
  out.reason = finish_reason::length;
  out.prompt_tokens = 5;
  out.completion_tokens = 2;
  auto const j = server::completion_response(req, {"cmpl-x", 100, "tiny"}, out);
  EXPECT_EQ(j["id"], "cmpl-x");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 100);
  EXPECT_EQ(j["model"], "tiny");
  ASSERT_EQ(j["choices"].size(), 1u);
  auto const& c = j["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["text"], "Say:hi");
  EXPECT_EQ(c["finish_reason"], "length");
  EXPECT_EQ(c["logprobs"]["tokens"], json::array({"h", "i"}));
  EXPECT_EQ(c["logprobs"]["token_logprobs"], json::array({-0.5, -1.0}));
  EXPECT_EQ(c["logprobs"]["text_offset"], json::array({4, 5}));  // after the echoed prompt
  EXPECT_EQ(c["logprobs"]["top_logprobs"][1], json({{"i", -1.0}}));
  EXPECT_EQ(j["usage"],
            json({{"prompt_tokens", 5}, {"completion_tokens", 2}, {"total_tokens", 7}}));
  // Without logprobs the field is null.
  auto plain = request_of(server::request_kind::completion);
  EXPECT_TRUE(
      server::completion_response(plain, {"i", 1, "m"}, out)["choices"][0]["logprobs"].is_null());
}

TEST(Response, ChatWithLogprobs) {
  auto req = request_of(server::request_kind::chat);
  req.logprobs = true;
  req.top_logprobs = 2;
  auto const& tok = test::fake_tokenizer();
  std::vector<text::token_id> const top_ids = {'y', 'n'};
  std::vector<float> const top_lps = {-0.1f, -2.5f};
  generation_output out;
  out.text = "y";
  out.logprobs = {server::make_token_logprob(tok, 'y', -0.1f, top_ids, top_lps)};
  out.reason = finish_reason::stop;
  out.prompt_tokens = 3;
  out.completion_tokens = 1;
  auto const j = server::chat_response(req, {"chatcmpl-x", 7, "tiny"}, out);
  EXPECT_EQ(j["object"], "chat.completion");
  auto const& c = j["choices"][0];
  EXPECT_EQ(c["message"], json({{"role", "assistant"}, {"content", "y"}}));
  EXPECT_EQ(c["finish_reason"], "stop");
  auto const& lp = c["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 1u);
  EXPECT_EQ(lp[0]["token"], "y");
  EXPECT_FLOAT_EQ(lp[0]["logprob"].get<float>(), -0.1f);
  EXPECT_EQ(lp[0]["bytes"], json::array({int('y')}));
  ASSERT_EQ(lp[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(lp[0]["top_logprobs"][1]["token"], "n");
  EXPECT_EQ(j["usage"]["total_tokens"], 4);
}

TEST(Response, PartialUtf8TokensDumpWithReplacement) {
  // The first byte of "é" alone is not valid UTF-8: the dump replaces it instead of failing,
  // and "bytes" keeps the raw value.
  auto req = request_of(server::request_kind::chat);
  req.logprobs = true;
  generation_output out;
  out.logprobs = {{0xC3, "\xC3", -1.0f, {}}};
  auto const j = server::chat_response(req, {"x", 1, "m"}, out);
  std::string s;
  ASSERT_NO_THROW(s = server::dump(j));
  EXPECT_NE(s.find("\xEF\xBF\xBD"), std::string::npos);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["bytes"], json::array({0xC3}));
}

TEST(Response, FinishReasonNames) {
  EXPECT_EQ(server::to_string(finish_reason::stop), "stop");
  EXPECT_EQ(server::to_string(finish_reason::length), "length");
  EXPECT_EQ(server::to_string(finish_reason::abort), "abort");
  EXPECT_EQ(server::to_string(finish_reason::error), "error");
}

TEST(Sse, ChatStreamFraming) {
  auto req = request_of(server::request_kind::chat);
  req.stream = true;
  req.include_usage = true;
  server::stream_writer w(req, {"chatcmpl-s", 9, "tiny"});
  std::string all = w.begin();
  all += w.delta("Hel");
  all += w.delta("");  // nothing to say: no chunk
  all += w.delta("lo");
  all += w.finish(finish_reason::stop, 4, 2);
  auto const events = sse_data(all);
  ASSERT_EQ(events.size(), 6u) << all;
  EXPECT_EQ(events.back(), "[DONE]");
  std::vector<json> chunks;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) chunks.push_back(json::parse(events[i]));
  for (auto const& c : chunks) {
    EXPECT_EQ(c["id"], "chatcmpl-s");
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["created"], 9);
    EXPECT_TRUE(c.contains("usage"));
  }
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(chunks[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chunks[1]["choices"][0]["delta"], json({{"content", "Hel"}}));
  EXPECT_EQ(chunks[2]["choices"][0]["delta"], json({{"content", "lo"}}));
  EXPECT_TRUE(chunks[2]["usage"].is_null());
  EXPECT_EQ(chunks[3]["choices"][0]["delta"], json::object());
  EXPECT_EQ(chunks[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(chunks[4]["choices"].empty());
  EXPECT_EQ(chunks[4]["usage"],
            json({{"prompt_tokens", 4}, {"completion_tokens", 2}, {"total_tokens", 6}}));
}

TEST(Sse, CompletionStreamWithEchoAndLogprobs) {
  auto req = request_of(server::request_kind::completion);
  req.stream = true;
  req.echo = true;
  req.logprobs = true;
  server::stream_writer w(req, {"cmpl-s", 1, "tiny"});
  std::vector<token_logprob> const lps = {{'o', "o", -0.25f, {}}, {'k', "k", -0.5f, {}}};
  std::string all = w.begin();
  all += w.delta("ok", lps);
  all += w.finish(finish_reason::length, 3, 2);
  auto const events = sse_data(all);
  ASSERT_EQ(events.size(), 4u) << all;  // echo, "ok", finish, [DONE]; no usage chunk
  auto const echo = json::parse(events[0]);
  EXPECT_EQ(echo["object"], "text_completion");
  EXPECT_EQ(echo["choices"][0]["text"], "Say:");
  EXPECT_FALSE(echo.contains("usage"));
  auto const ok = json::parse(events[1]);
  EXPECT_EQ(ok["choices"][0]["text"], "ok");
  EXPECT_EQ(ok["choices"][0]["logprobs"]["text_offset"], json::array({4, 5}));
  EXPECT_EQ(json::parse(events[2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events[3], "[DONE]");
}

TEST(Sse, ErrorMidStream) {
  server::stream_writer w(request_of(server::request_kind::completion), {"c", 1, "m"});
  auto const events = sse_data(w.error({500, "engine failed", "", "server_error", ""}));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(json::parse(events[0])["error"]["message"], "engine failed");
  EXPECT_EQ(events[1], "[DONE]");
  EXPECT_EQ(server::sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(server::sse_done(), "data: [DONE]\n\n");
}

TEST(Generate, LightLlmShapes) {
  auto req = request_of(server::request_kind::generate);
  generation_output out;
  out.text = "abc";
  out.reason = finish_reason::length;
  out.prompt_tokens = 4;
  out.completion_tokens = 3;
  auto const j = server::generate_response(req, out);
  EXPECT_EQ(j["generated_text"], json::array({"abc"}));
  EXPECT_EQ(j["count_output_tokens"], 3);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["prompt_tokens"], 4);
  EXPECT_FALSE(j.contains("tokens"));
  req.logprobs = true;
  out.logprobs = {{'a', "a", -1.0f, {}}};
  EXPECT_EQ(server::generate_response(req, out)["tokens"][0],
            json({{"id", int('a')}, {"text", "a"}, {"logprob", -1.0}}));

  auto const mid =
      sse_data(server::generate_stream_event(97, "a", -0.5f, false, 1, 4, {}), "data:");
  ASSERT_EQ(mid.size(), 1u);
  auto const m = json::parse(mid[0]);
  EXPECT_EQ(m["token"]["id"], 97);
  EXPECT_EQ(m["token"]["text"], "a");
  EXPECT_EQ(m["token"]["count_output_tokens"], 1);
  EXPECT_FALSE(m["finished"].get<bool>());
  EXPECT_TRUE(m["finish_reason"].is_null());
  EXPECT_TRUE(m["generated_text"].is_null());
  auto const last = json::parse(sse_data(
      server::generate_stream_event(98, "b", -0.1f, false, 2, 4, finish_reason::stop), "data:")[0]);
  EXPECT_TRUE(last["finished"].get<bool>());
  EXPECT_EQ(last["finish_reason"], "stop");
}

TEST(Response, ModelsAndErrors) {
  auto const m = server::models_response("tiny", 5);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "tiny");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(m["data"][0]["created"], 5);

  server::api_error e;
  e.status = 400;
  e.message = "'temperature' must be a finite number in [0, 2]; got 3";
  e.param = "temperature";
  auto const b = server::error_body(e);
  EXPECT_EQ(b["error"]["message"], e.message);
  EXPECT_EQ(b["error"]["type"], "invalid_request_error");
  EXPECT_EQ(b["error"]["param"], "temperature");
  EXPECT_TRUE(b["error"]["code"].is_null());
  e.param.clear();
  EXPECT_TRUE(server::error_body(e)["error"]["param"].is_null());
}

TEST(Response, SeveralChoicesSumTheirUsage) {
  auto req = request_of(server::request_kind::completion);
  req.n = 2;
  generation_output a, b;
  a.text = "one";
  a.prompt_tokens = b.prompt_tokens = 4;
  a.completion_tokens = 3;
  a.reason = finish_reason::length;
  b.text = "two";
  b.completion_tokens = 5;
  b.reason = finish_reason::stop;
  std::vector<generation_output> const outs = {a, b};
  auto const j = server::completion_response(req, {"cmpl-n", 1, "tiny"}, outs);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["text"], "two");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  auto const c = server::chat_response(request_of(server::request_kind::chat),
                                       {"chatcmpl-n", 1, "tiny"}, outs);
  EXPECT_EQ(c["choices"][0]["message"]["content"], "one");
  EXPECT_EQ(c["usage"]["total_tokens"], 12);

  // Streamed: every chunk names its choice; the usage chunk sums them.
  req.stream = true;
  req.include_usage = true;
  server::stream_writer w(req, {"cmpl-s", 2, "tiny"});
  std::string all = w.begin() + w.delta("x", {}, 1) + w.delta("y", {}, 0) +
                    w.finish_choice(1, finish_reason::length) +
                    w.finish_choice(0, finish_reason::stop) + w.end(4, 8);
  auto const events = sse_data(all);
  ASSERT_EQ(events.size(), 6u) << all;
  EXPECT_EQ(json::parse(events[0])["choices"][0]["index"], 1);
  EXPECT_EQ(json::parse(events[1])["choices"][0]["index"], 0);
  EXPECT_EQ(json::parse(events[2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(json::parse(events[4])["usage"]["completion_tokens"], 8);
  EXPECT_THROW(w.delta("z", {}, 2), error) << "choice 2 of a reply with 2";
}

TEST(Generate, FinalStreamEventCarriesTheEnd) {
  std::string const e = server::generate_stream_final_event("tail", finish_reason::length, 7, 3);
  ASSERT_EQ(e.rfind("data:", 0), 0u);
  auto const j = json::parse(e.substr(5));
  EXPECT_EQ(j["finished"], true);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["count_output_tokens"], 7);
  EXPECT_EQ(j["prompt_tokens"], 3);
  EXPECT_EQ(j["generated_text"], "tail");
  EXPECT_TRUE(j["token"].is_null());
}

}  // namespace
}  // namespace lightcore
