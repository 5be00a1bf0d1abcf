#include "examples/server/api/request.hpp"

#include <limits>
#include <random>

#include "examples/server/api/request_fields.hpp"
#include "lightcore/core/error.hpp"
#include "modules/text/chat_template.hpp"

namespace lightcore::server {

using detail::fail;
using detail::field_reader;
using detail::range;

std::string_view to_string(request_kind kind) {
  switch (kind) {
    case request_kind::completion: return "completion";
    case request_kind::chat: return "chat";
    case request_kind::generate: return "generate";
  }
  return "unknown";
}

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
// OpenAI's documented ranges; the sampler itself accepts wider ones, but a value outside these is
// far more often a client bug than an intent.
constexpr std::size_t max_stop_strings = 4;
range const temperature_range{0.0, 2.0};
range const top_p_range{0.0, 1.0, true, false};
range const min_p_range{0.0, 1.0};
range const penalty_range{-2.0, 2.0};
range const repetition_range{0.0, 2.0, true, false};

std::uint64_t random_seed() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  return gen();
}

void require_object(nlohmann::json const& body, std::string_view endpoint) {
  if (!body.is_object()) {
    fail(400, "",
         "the body of " + std::string(endpoint) + " must be a JSON object; got " +
             detail::json_type(body));
  }
}

void check_model(field_reader const& f, api_config const& config, generation_request& req) {
  req.model = config.served_model_name;
  if (auto const m = f.string("model"); m && *m != config.served_model_name) {
    fail(404, "model",
         "The model '" + *m + "' does not exist; this server serves '" + config.served_model_name +
             "'",
         "model_not_found");
  }
}

void check_n(field_reader const& f, api_config const& config, generation_request& req) {
  if (auto const n = f.integer("n", 1, std::numeric_limits<std::int32_t>::max())) {
    if (*n > config.max_n) {
      fail(400, "n",
           "'n' = " + std::to_string(*n) + " is too large; allowed: 1.." +
               std::to_string(config.max_n) + " choices per request");
    }
    req.n = std::int32_t(*n);
  }
  // best_of = n means "return every candidate", which is what n does; more is not supported.
  if (auto const b = f.integer("best_of", 1, std::numeric_limits<std::int32_t>::max());
      b && *b != req.n) {
    fail(400, "best_of",
         "'best_of' = " + std::to_string(*b) + " is not supported; allowed: best_of = n (" +
             std::to_string(req.n) + ")");
  }
}

// temperature, top_p, top_k, min_p, the three penalties and seed: the same names in all APIs.
void read_sampling(field_reader const& f, generation_request& req) {
  auto& s = req.sampling;
  if (auto v = f.number("temperature", temperature_range)) s.temperature = float(*v);
  if (auto v = f.number("top_p", top_p_range)) s.top_p = float(*v);
  // -1 is how vLLM and LightLLM spell "off"; lightcore's sampler spells it 0.
  if (auto v = f.integer("top_k", -1, std::numeric_limits<std::int32_t>::max())) {
    s.top_k = *v <= 0 ? 0 : std::int32_t(*v);
  }
  if (auto v = f.number("min_p", min_p_range)) s.min_p = float(*v);
  if (auto v = f.number("presence_penalty", penalty_range)) s.presence_penalty = float(*v);
  if (auto v = f.number("frequency_penalty", penalty_range)) s.frequency_penalty = float(*v);
  if (auto v = f.number("repetition_penalty", repetition_range)) {
    s.repetition_penalty = float(*v);
  }
  if (auto v = f.seed("seed")) {
    s.seed = *v;
    req.seed_given = true;
  } else {
    s.seed = random_seed();
  }
}

void read_stop(field_reader const& f, std::string_view name, text::tokenizer const& tok,
               generation_request& req) {
  req.stop = f.strings(name, max_stop_strings);
  req.stop_token_ids = f.token_ids("stop_token_ids", tok.vocab_size());
  if (auto v = f.boolean("ignore_eos")) req.ignore_eos = *v;
  if (auto v = f.boolean("skip_special_tokens")) req.skip_special_tokens = *v;
}

void read_stream(field_reader const& f, generation_request& req) {
  if (auto v = f.boolean("stream")) req.stream = *v;
  if (auto const* opts = f.find("stream_options")) {
    if (!opts->is_object()) {
      fail(400, "stream_options",
           "'stream_options' must be an object such as {\"include_usage\": true}; got " +
               detail::json_type(*opts));
    }
    if (!req.stream) {
      fail(400, "stream_options", "'stream_options' is only allowed when 'stream' is true");
    }
    field_reader const o(*opts, "stream_options.");
    if (auto v = o.boolean("include_usage")) req.include_usage = *v;
  }
}

// The prompt's length against the limits, then max_tokens (nullopt: the default, or for chat
// what the context leaves).
void check_lengths(generation_request& req, api_config const& config,
                   std::string const& prompt_param, std::optional<std::int64_t> max_tokens,
                   std::string const& max_param, std::optional<std::int64_t> default_max) {
  auto const p = std::int64_t(req.prompt_ids.size());
  if (p == 0) fail(400, prompt_param, "the prompt is empty; at least one token is needed");
  if (p > config.max_prompt_tokens) {
    fail(413, prompt_param,
         "the prompt has " + std::to_string(p) + " tokens; at most " +
             std::to_string(config.max_prompt_tokens) + " are allowed",
         "prompt_too_long");
  }
  auto const room = config.max_model_len - p;
  if (max_tokens) {
    if (*max_tokens > config.max_new_tokens) {
      fail(400, max_param,
           "'" + max_param + "' = " + std::to_string(*max_tokens) + " is too large; at most " +
               std::to_string(config.max_new_tokens) + " is allowed");
    }
    if (*max_tokens > room) {
      fail(400, max_param,
           "this model's maximum context length is " + std::to_string(config.max_model_len) +
               " tokens; the prompt has " + std::to_string(p) + " tokens and '" + max_param +
               "' asks for " + std::to_string(*max_tokens) + ": at most " +
               std::to_string(std::max<std::int64_t>(room, 0)) + " may be asked",
           "context_length_exceeded");
    }
    req.max_new_tokens = std::int32_t(*max_tokens);
    return;
  }
  auto const want = default_max ? *default_max : config.max_new_tokens;
  auto const n = std::min(want, room);
  if (n < 1) {
    fail(400, prompt_param,
         "the prompt has " + std::to_string(p) + " tokens and leaves no room in the context of " +
             std::to_string(config.max_model_len) + " tokens",
         "context_length_exceeded");
  }
  req.max_new_tokens = std::int32_t(n);
}

std::optional<std::int64_t> read_max_tokens(field_reader const& f, std::string_view name) {
  return f.integer(name, 1, std::numeric_limits<std::int32_t>::max());
}

// prompt: "text" | [ids] | ["text"] | [[ids]].
void read_prompt(field_reader const& f, text::tokenizer const& tok, generation_request& req) {
  auto const* p = f.find("prompt");
  if (p == nullptr) {
    fail(400, "prompt", "'prompt' is required: a string or an array of token ids");
  }
  nlohmann::json const* one = p;
  if (p->is_array() && !p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
    if (p->size() != 1) {
      fail(400, "prompt",
           "'prompt' holds " + std::to_string(p->size()) +
               " prompts; one request takes one prompt (send one request each)");
    }
    one = &(*p)[0];
  }
  if (one->is_string()) {
    req.prompt_text = one->get<std::string>();
    if (req.prompt_text.empty()) fail(400, "prompt", "'prompt' is empty; give some text");
    req.prompt_ids = tok.encode(req.prompt_text, /*add_special_tokens=*/true);
  } else if (one->is_array()) {
    req.prompt_ids = detail::read_token_ids(*one, "prompt", tok.vocab_size());
    req.prompt_text = tok.decode(req.prompt_ids);
  } else {
    fail(400, "prompt",
         "'prompt' must be a string or an array of token ids; got " + detail::json_type(*p) + " " +
             detail::show(*p));
  }
}

std::string content_text(nlohmann::json const& content, std::string const& param, bool nullable) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null() && nullable) return {};
  if (!content.is_array()) {
    fail(400, param,
         "'" + param +
             "' must be a string or an array of {\"type\": \"text\", \"text\": ...} "
             "parts; got " +
             detail::json_type(content));
  }
  std::string out;
  for (std::size_t i = 0; i < content.size(); ++i) {
    auto const where = param + "[" + std::to_string(i) + "]";
    auto const& part = content[i];
    if (!part.is_object()) {
      fail(400, where, "'" + where + "' must be an object; got " + detail::json_type(part));
    }
    field_reader const pf(part, where + ".");
    auto const type = pf.string("type");
    if (!type || *type != "text") {
      fail(400, where + ".type",
           "'" + where + ".type' is " + (type ? "'" + *type + "'" : std::string("missing")) +
               "; only text parts are supported (type 'text')");
    }
    auto const t = pf.string("text");
    if (!t) fail(400, where + ".text", "'" + where + ".text' is required");
    out += *t;
  }
  return out;
}

std::vector<text::chat_message> read_messages(field_reader const& f) {
  auto const* m = f.find("messages");
  if (m == nullptr || !m->is_array() || m->empty()) {
    fail(400, "messages",
         "'messages' must be a non-empty array of {\"role\", \"content\"} objects; got " +
             (m == nullptr ? std::string("nothing")
                           : detail::json_type(*m) + " " + detail::show(*m)));
  }
  std::vector<text::chat_message> out;
  for (std::size_t i = 0; i < m->size(); ++i) {
    auto const where = "messages[" + std::to_string(i) + "]";
    auto const& msg = (*m)[i];
    if (!msg.is_object()) {
      fail(400, where, "'" + where + "' must be an object; got " + detail::json_type(msg));
    }
    field_reader const mf(msg, where + ".");
    auto role = mf.string("role");
    if (!role) fail(400, where + ".role", "'" + where + ".role' is required");
    if (*role != "system" && *role != "user" && *role != "assistant") {
      fail(400, where + ".role",
           "'" + where + ".role' is '" + *role +
               "', which is not supported; allowed: system, user, assistant");
    }
    auto const c = msg.find("content");
    if (c == msg.end() || (c->is_null() && *role != "assistant")) {
      fail(400, where + ".content", "'" + where + ".content' is required");
    }
    auto content = content_text(*c, where + ".content", *role == "assistant");
    out.push_back({std::move(*role), std::move(content)});
  }
  return out;
}

template <class Parse>
api_result<generation_request> guarded(Parse&& parse) {
  try {
    return parse();
  } catch (detail::api_failure& f) {
    return std::move(f.error);
  }
}

}  // namespace

api_result<generation_request> parse_completion_request(nlohmann::json const& body,
                                                        text::tokenizer const& tok,
                                                        api_config const& config) {
  return guarded([&]() -> generation_request {
    require_object(body, "/v1/completions");
    field_reader const f(body, "");
    generation_request req;
    req.kind = request_kind::completion;
    check_model(f, config, req);
    check_n(f, config, req);
    if (auto const s = f.string("suffix"); s && !s->empty()) {
      fail(400, "suffix", "'suffix' is not supported; leave it out");
    }
    read_prompt(f, tok, req);
    auto const max_tokens = read_max_tokens(f, "max_tokens");
    read_sampling(f, req);
    read_stop(f, "stop", tok, req);
    read_stream(f, req);
    if (auto v = f.integer("logprobs", 0, kernels::sampling_max_logprobs)) {
      req.logprobs = true;
      req.top_logprobs = std::int32_t(*v);
    }
    if (auto v = f.boolean("echo")) req.echo = *v;
    check_lengths(req, config, "prompt", max_tokens, "max_tokens", config.default_max_tokens);
    req.sampling.num_logprobs = req.logprobs ? req.top_logprobs : -1;
    return req;
  });
}

api_result<generation_request> parse_chat_request(nlohmann::json const& body,
                                                  text::tokenizer const& tok,
                                                  api_config const& config) {
  return guarded([&]() -> generation_request {
    require_object(body, "/v1/chat/completions");
    field_reader const f(body, "");
    generation_request req;
    req.kind = request_kind::chat;
    check_model(f, config, req);
    check_n(f, config, req);
    auto const messages = read_messages(f);
    req.prompt_text = text::deepseek_v3::chat_prompt(messages, /*add_generation_prompt=*/true,
                                                     config.chat_flavour);
    // The rendered prompt already starts with the BOS.
    req.prompt_ids = tok.encode(req.prompt_text, /*add_special_tokens=*/false);
    auto max_tokens = read_max_tokens(f, "max_completion_tokens");
    std::string max_param = "max_completion_tokens";
    if (!max_tokens) {
      max_tokens = read_max_tokens(f, "max_tokens");
      max_param = "max_tokens";
    }
    read_sampling(f, req);
    read_stop(f, "stop", tok, req);
    read_stream(f, req);
    if (auto v = f.boolean("logprobs")) req.logprobs = *v;
    if (auto v = f.integer("top_logprobs", 0, kernels::sampling_max_logprobs)) {
      if (!req.logprobs) {
        fail(400, "top_logprobs", "'top_logprobs' is only allowed when 'logprobs' is true");
      }
      req.top_logprobs = std::int32_t(*v);
    }
    check_lengths(req, config, "messages", max_tokens, max_param, std::nullopt);
    req.sampling.num_logprobs = req.logprobs ? req.top_logprobs : -1;
    return req;
  });
}

api_result<generation_request> parse_generate_request(nlohmann::json const& body,
                                                      text::tokenizer const& tok,
                                                      api_config const& config, bool stream) {
  return guarded([&]() -> generation_request {
    require_object(body, stream ? "/generate_stream" : "/generate");
    field_reader const top(body, "");
    generation_request req;
    req.kind = request_kind::generate;
    req.model = config.served_model_name;
    req.stream = stream;
    auto const inputs = top.string("inputs");
    if (!inputs) fail(400, "inputs", "'inputs' is required: the prompt text");
    if (inputs->empty()) fail(400, "inputs", "'inputs' is empty; give some text");
    req.prompt_text = *inputs;
    req.prompt_ids = tok.encode(*inputs, /*add_special_tokens=*/true);

    static nlohmann::json const no_parameters = nlohmann::json::object();
    auto const* params = top.find("parameters");
    if (params != nullptr && !params->is_object()) {
      fail(400, "parameters", "'parameters' must be an object; got " + detail::json_type(*params));
    }
    field_reader const f(params != nullptr ? *params : no_parameters, "parameters.");
    if (auto b = f.integer("best_of", 1, std::numeric_limits<std::int32_t>::max()); b && *b != 1) {
      fail(400, "parameters.best_of", "'parameters.best_of' must be 1; got " + std::to_string(*b));
    }
    auto const max_tokens = read_max_tokens(f, "max_new_tokens");
    read_sampling(f, req);
    // LightLLM samples only with do_sample = true; otherwise it decodes greedily.
    bool const do_sample = f.boolean("do_sample").value_or(false);
    if (!do_sample) req.sampling.temperature = 0.0f;
    read_stop(f, "stop_sequences", tok, req);
    if (auto v = f.boolean("return_details")) req.logprobs = *v;
    check_lengths(req, config, "inputs", max_tokens, "parameters.max_new_tokens",
                  config.default_max_tokens);
    req.sampling.num_logprobs = req.logprobs ? 0 : -1;
    return req;
  });
}

api_result<nlohmann::json> parse_json_body(std::string_view body, api_config const& config) {
  if (body.size() > config.max_body_bytes) {
    return api_error{413,
                     "the request body has " + std::to_string(body.size()) + " bytes; at most " +
                         std::to_string(config.max_body_bytes) + " are allowed",
                     "", "invalid_request_error", "body_too_large"};
  }
  try {
    return nlohmann::json::parse(body);
  } catch (nlohmann::json::parse_error const& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 7: ...";
    // the part after the bracket is what a client needs.
    std::string what = e.what();
    if (auto const b = what.find("] "); b != std::string::npos) what = what.substr(b + 2);
    return api_error{400,
                     "the body is not valid JSON (byte " + std::to_string(e.byte) + "): " + what,
                     "", "invalid_request_error", "invalid_json"};
  } catch (nlohmann::json::exception const& e) {
    return api_error{400, std::string("the body is not valid JSON: ") + e.what(), "",
                     "invalid_request_error", "invalid_json"};
  }
}

namespace {
template <class Parse>
api_result<generation_request> from_text(std::string_view body, api_config const& config,
                                         Parse&& parse) {
  auto json = parse_json_body(body, config);
  if (!json) return json.error();
  return parse(json.value());
}
}  // namespace

api_result<generation_request> parse_completion_body(std::string_view body,
                                                     text::tokenizer const& tok,
                                                     api_config const& config) {
  return from_text(body, config, [&](nlohmann::json const& j) {
    return parse_completion_request(j, tok, config);
  });
}

api_result<generation_request> parse_chat_body(std::string_view body, text::tokenizer const& tok,
                                               api_config const& config) {
  return from_text(body, config,
                   [&](nlohmann::json const& j) { return parse_chat_request(j, tok, config); });
}

api_result<generation_request> parse_generate_body(std::string_view body,
                                                   text::tokenizer const& tok,
                                                   api_config const& config, bool stream) {
  return from_text(body, config, [&](nlohmann::json const& j) {
    return parse_generate_request(j, tok, config, stream);
  });
}

api_result<std::vector<text::token_id>> parse_tokenize_body(std::string_view body,
                                                            text::tokenizer const& tok,
                                                            api_config const& config) {
  auto json = parse_json_body(body, config);
  if (!json) return json.error();
  try {
    nlohmann::json const& j = json.value();
    require_object(j, "/tokenize");
    field_reader const f(j, "");
    bool const has_prompt = f.find("prompt") != nullptr;
    bool const has_messages = f.find("messages") != nullptr;
    if (has_prompt == has_messages) {
      fail(400, has_prompt ? "messages" : "prompt",
           "give exactly one of 'prompt' (a string) and 'messages' (chat messages)");
    }
    std::vector<text::token_id> ids;
    if (has_prompt) {
      auto const prompt = f.string("prompt");
      if (!prompt) fail(400, "prompt", "'prompt' must be a string");
      ids = tok.encode(*prompt, f.boolean("add_special_tokens").value_or(true));
    } else {
      auto const messages = read_messages(f);
      bool const gen = f.boolean("add_generation_prompt").value_or(true);
      // The rendered prompt already starts with the BOS.
      ids = tok.encode(text::deepseek_v3::chat_prompt(messages, gen, config.chat_flavour), false);
    }
    if (std::int64_t(ids.size()) > config.max_model_len) {
      fail(413, has_prompt ? "prompt" : "messages",
           "the text has " + std::to_string(ids.size()) + " tokens; at most " +
               std::to_string(config.max_model_len) + " are allowed",
           "prompt_too_long");
    }
    return ids;
  } catch (detail::api_failure& e) {
    return std::move(e.error);
  }
}

api_result<std::string> parse_detokenize_body(std::string_view body, text::tokenizer const& tok,
                                              api_config const& config) {
  auto json = parse_json_body(body, config);
  if (!json) return json.error();
  try {
    nlohmann::json const& j = json.value();
    require_object(j, "/detokenize");
    auto const it = j.find("tokens");
    if (it == j.end() || !it->is_array()) {
      fail(400, "tokens", "'tokens' is required: an array of token ids");
    }
    if (std::int64_t(it->size()) > config.max_model_len) {
      fail(413, "tokens",
           "'tokens' holds " + std::to_string(it->size()) + " ids; at most " +
               std::to_string(config.max_model_len) + " are allowed");
    }
    return tok.decode(detail::read_token_ids(*it, "tokens", tok.vocab_size()));
  } catch (detail::api_failure& e) {
    return std::move(e.error);
  }
}

}  // namespace lightcore::server
