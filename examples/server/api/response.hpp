// The bodies the server replies with: OpenAI completion and chat completion objects (whole and as
// SSE chunks), LightLLM's /generate and /generate_stream shapes, /v1/models, and error bodies.
// JSON is dumped with invalid UTF-8 replaced by U+FFFD: a token's bytes may end inside a
// character, and a reply must never fail for it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "examples/server/api/request.hpp"
#include "modules/text/tokenizer.hpp"

namespace lightcore::server {

// Why a generation ended: a stop string / stop id / EOS, max_new_tokens, a cancel (client gone,
// server shutting down), or an engine failure.
enum class finish_reason : std::uint8_t { stop, length, abort, error };

std::string_view to_string(finish_reason reason);

// One alternative at a position: its token's bytes and logprob.
struct top_logprob {
  std::string token;
  float logprob = 0.0f;
};

// The chosen token at one position, with the alternatives asked for (top_logprobs).
struct token_logprob {
  text::token_id id = 0;
  std::string token;  // the token's bytes (may be part of a UTF-8 character)
  float logprob = 0.0f;
  std::vector<top_logprob> top;
};

// The entry for id with its logprob and alternatives (top_ids[i] with top_logprobs[i]).
token_logprob make_token_logprob(text::tokenizer const& tok, text::token_id id, float logprob,
                                 std::span<text::token_id const> top_ids = {},
                                 std::span<float const> top_logprobs = {});

// What a finished generation produced, as the front end gathered it.
struct generation_output {
  std::string text;                       // the reply text (stop string already cut off)
  std::vector<text::token_id> token_ids;  // the generated ids
  std::vector<token_logprob> logprobs;    // one per generated id, when the request asked
  finish_reason reason = finish_reason::stop;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
};

// The id, creation time and model name a reply (and each of its chunks) carries.
struct response_meta {
  std::string id;        // "cmpl-...", "chatcmpl-..." or "gen-..."
  std::int64_t created;  // seconds since the Unix epoch
  std::string model;
};

// prefix followed by 24 random letters and digits.
std::string make_id(std::string_view prefix);
std::int64_t unix_time_now();
// An id of the request's kind, the current time and the request's model name.
response_meta make_response_meta(generation_request const& req);

// Compact JSON text; invalid UTF-8 inside strings becomes U+FFFD.
std::string dump(nlohmann::json const& j);

nlohmann::json usage_json(std::int64_t prompt_tokens, std::int64_t completion_tokens);
// {"error": {"message", "type", "param", "code"}}; empty param / code are null.
nlohmann::json error_body(api_error const& e);
// GET /v1/models: the one served model.
nlohmann::json models_response(std::string_view model_name, std::int64_t created);

// Whole (non-streamed) replies: one choice per output (index i for outs[i], n > 1); usage counts
// the prompt once and sums the completions.
nlohmann::json completion_response(generation_request const& req, response_meta const& meta,
                                   std::span<generation_output const> outs);
nlohmann::json chat_response(generation_request const& req, response_meta const& meta,
                             std::span<generation_output const> outs);
nlohmann::json completion_response(generation_request const& req, response_meta const& meta,
                                   generation_output const& out);
nlohmann::json chat_response(generation_request const& req, response_meta const& meta,
                             generation_output const& out);
// LightLLM: {"generated_text": [text], "count_output_tokens", "finish_reason", "prompt_tokens"},
// plus "tokens": [{"id", "text", "logprob"}] when return_details was asked.
nlohmann::json generate_response(generation_request const& req, generation_output const& out);

// Server-sent events. OpenAI streams end with "data: [DONE]".
std::string sse_event(nlohmann::json const& j);  // "data: <json>\n\n"
std::string sse_done();                          // "data: [DONE]\n\n"

// The chunks of one streamed OpenAI reply (completion or chat), in order:
//   begin()  — chat: a chunk per choice whose delta carries the role; completion with echo: the
//              prompt, per choice;
//   delta()  — each piece of text of choice `index` (empty pieces give no chunk unless they
//              carry logprobs);
//   finish_choice() — the chunk with choice `index`'s finish_reason;
//   end()    — the usage chunk when include_usage (completion_tokens summed over the choices),
//              and [DONE].
// finish() is finish_choice(0, ...) + end() for one choice.
class stream_writer {
 public:
  stream_writer(generation_request const& req, response_meta meta);

  std::string begin();
  std::string delta(std::string_view text, std::span<token_logprob const> logprobs = {},
                    std::size_t index = 0);
  std::string finish_choice(std::size_t index, finish_reason reason);
  std::string end(std::int64_t prompt_tokens, std::int64_t completion_tokens);
  std::string finish(finish_reason reason, std::int64_t prompt_tokens,
                     std::int64_t completion_tokens);
  // An error after the stream began: an error event and [DONE].
  std::string error(api_error const& e);

 private:
  nlohmann::json chunk(nlohmann::json choice) const;

  request_kind kind_;
  bool include_usage_;
  bool echo_;
  bool logprobs_;
  std::string prompt_text_;
  response_meta meta_;
  std::vector<std::size_t> text_offset_;  // per choice: logprobs' text_offset of the next token
};

// One /generate_stream event (LightLLM: "data:<json>\n\n", no [DONE]): the token just generated
// and its text; finished events carry the finish reason.
std::string generate_stream_event(text::token_id id, std::string_view text, float logprob,
                                  bool special, std::int64_t count_output_tokens,
                                  std::int64_t prompt_tokens,
                                  std::optional<finish_reason> finished);
// The finishing /generate_stream event when no token comes with it (the request ended after its
// last token was sent, or a stop string cut it): "finished": true, the finish reason, the counts,
// the held-back text (may be empty) and "token": null.
std::string generate_stream_final_event(std::string_view text, finish_reason reason,
                                        std::int64_t count_output_tokens,
                                        std::int64_t prompt_tokens);

}  // namespace lightcore::server
