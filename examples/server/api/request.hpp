// What the HTTP front end hands the engine (generation_request), and the parsers that turn the
// JSON bodies of /v1/completions, /v1/chat/completions, /generate and /generate_stream into one.
//
// A parser either returns the request or an api_error that says which field was wrong, what it
// held and what is allowed; it never throws for bad input (only for a broken tokenizer). All
// sampling ranges of kernels::sampling_request are checked here: on the device nobody checks
// them. Unknown fields are ignored, as OpenAI-compatible servers do (clients send extras such as
// "user"); known fields that lightcore cannot honour (best_of > 1, suffix) are refused. n > 1 is
// accepted up to api_config::max_n: the front end runs each choice as its own request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "kernels/sampling/sampling_params.hpp"
#include "modules/text/chat_template.hpp"
#include "modules/text/tokenizer.hpp"

namespace lightcore::server {

// Which endpoint a request came from: it decides the response shapes.
enum class request_kind : std::uint8_t { completion, chat, generate };

std::string_view to_string(request_kind kind);

// A 4xx reply: the HTTP status, and the body's error fields (OpenAI's shape).
struct api_error {
  int status = 400;
  std::string message;  // what was wrong and what is allowed
  std::string param;    // the offending field ("messages[1].role"), or empty
  std::string type = "invalid_request_error";
  std::string code;  // a machine-readable code, or empty (JSON null)
};

// Either a value or an api_error (std::expected is C++23).
template <class T>
class api_result {
 public:
  api_result(T value) : v_(std::move(value)) {}          // NOLINT: implicit on purpose
  api_result(api_error error) : v_(std::move(error)) {}  // NOLINT: implicit on purpose
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  T const& value() const { return std::get<0>(v_); }
  api_error const& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, api_error> v_;
};

// The server's limits and names, from its command line.
struct api_config {
  std::string served_model_name = "deepseek-v3";  // "model" must be this or absent
  std::int64_t max_model_len = 16384;             // tokens: prompt + generated, at most
  std::int64_t max_prompt_tokens = 16383;         // tokens: longer prompts get 413
  std::int64_t max_new_tokens = 8192;             // tokens: the largest max_tokens accepted
  std::int32_t default_max_tokens = 16;           // tokens: /v1/completions and /generate default
  std::size_t max_body_bytes = 8u << 20;          // bytes: larger bodies get 413 (default 8 MiB)
  std::int32_t max_n = 16;                        // choices per request ("n"), at most
  // The chat format of /v1/chat/completions and /tokenize's messages; default v3 (r1: reasoning
  // stripped from assistant turns, <think> after the generation prompt).
  text::deepseek_v3::chat_flavour chat_flavour = text::deepseek_v3::chat_flavour::v3;
};

// One generation, as the engine consumes it.
struct generation_request {
  request_kind kind = request_kind::completion;
  std::string model;  // the name replies carry (the served name)
  std::vector<text::token_id> prompt_ids;
  std::string prompt_text;             // the prompt as text (echo; decoded for id prompts)
  kernels::sampling_request sampling;  // num_logprobs = top_logprobs, or -1 without logprobs
  bool seed_given = false;             // false: sampling.seed was drawn at random
  std::int32_t max_new_tokens = 16;    // tokens, >= 1
  std::vector<std::string> stop;       // stop strings, matched on the text (stop_matcher)
  std::vector<text::token_id> stop_token_ids;  // matched on ids, besides EOS
  bool ignore_eos = false;                     // keep generating past EOS (benchmarks)
  bool stream = false;                         // SSE reply
  bool include_usage = false;                  // stream_options.include_usage: a final usage chunk
  bool logprobs = false;                       // return the chosen tokens' logprobs
  std::int32_t top_logprobs = 0;               // [0, 20] alternatives per position, when logprobs
  bool echo = false;                           // /v1/completions: reply text starts with the prompt
  bool skip_special_tokens = true;             // leave special tokens out of the reply text
  std::int32_t n = 1;  // choices: each is its own engine request (seed + index when seeded)
};

// POST /v1/completions. prompt: a string, an array of token ids, or an array holding one of them.
api_result<generation_request> parse_completion_request(nlohmann::json const& body,
                                                        text::tokenizer const& tok,
                                                        api_config const& config);
// POST /v1/chat/completions; messages rendered by DeepSeek-V3's chat format with the generation
// prompt. max_completion_tokens (or the older max_tokens) defaults to what the context leaves.
api_result<generation_request> parse_chat_request(nlohmann::json const& body,
                                                  text::tokenizer const& tok,
                                                  api_config const& config);
// POST /generate (stream = false) and /generate_stream (stream = true), LightLLM's shape:
// {"inputs": str, "parameters": {max_new_tokens, do_sample, temperature, ...}}.
api_result<generation_request> parse_generate_request(nlohmann::json const& body,
                                                      text::tokenizer const& tok,
                                                      api_config const& config, bool stream);

// The same from the raw body text: too large gives 413, invalid JSON 400 with the byte position.
api_result<nlohmann::json> parse_json_body(std::string_view body, api_config const& config);
api_result<generation_request> parse_completion_body(std::string_view body,
                                                     text::tokenizer const& tok,
                                                     api_config const& config);
api_result<generation_request> parse_chat_body(std::string_view body, text::tokenizer const& tok,
                                               api_config const& config);
api_result<generation_request> parse_generate_body(std::string_view body,
                                                   text::tokenizer const& tok,
                                                   api_config const& config, bool stream);

// POST /tokenize: {"prompt": str, "add_special_tokens": bool (default true)} or {"messages":
// [...], "add_generation_prompt": bool (default true)} (the chat format); the token ids.
api_result<std::vector<text::token_id>> parse_tokenize_body(std::string_view body,
                                                            text::tokenizer const& tok,
                                                            api_config const& config);
// POST /detokenize: {"tokens": [ids]} (each in [0, vocab), at most max_model_len); the text.
api_result<std::string> parse_detokenize_body(std::string_view body, text::tokenizer const& tok,
                                              api_config const& config);

}  // namespace lightcore::server
