#include "examples/server/api/response.hpp"

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "lightcore/core/error.hpp"

namespace lightcore::server {

using nlohmann::json;

std::string_view to_string(finish_reason reason) {
  switch (reason) {
    case finish_reason::stop: return "stop";
    case finish_reason::length: return "length";
    case finish_reason::abort: return "abort";
    case finish_reason::error: return "error";
  }
  return "error";
}

token_logprob make_token_logprob(text::tokenizer const& tok, text::token_id id, float logprob,
                                 std::span<text::token_id const> top_ids,
                                 std::span<float const> top_logprobs) {
  token_logprob t;
  t.id = id;
  t.token = std::string(tok.token_bytes(id));
  t.logprob = logprob;
  auto const n = std::min(top_ids.size(), top_logprobs.size());
  t.top.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    t.top.push_back({std::string(tok.token_bytes(top_ids[i])), top_logprobs[i]});
  }
  return t;
}

std::string make_id(std::string_view prefix) {
  static constexpr std::string_view alphabet =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  thread_local std::mt19937_64 gen{std::random_device{}()};
  std::uniform_int_distribution<std::size_t> pick(0, alphabet.size() - 1);
  std::string id(prefix);
  for (int i = 0; i < 24; ++i) id += alphabet[pick(gen)];
  return id;
}

std::int64_t unix_time_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

response_meta make_response_meta(generation_request const& req) {
  std::string_view const prefix = req.kind == request_kind::completion ? "cmpl-"
                                  : req.kind == request_kind::chat     ? "chatcmpl-"
                                                                       : "gen-";
  return {make_id(prefix), unix_time_now(), req.model};
}

std::string dump(json const& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json usage_json(std::int64_t prompt_tokens, std::int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json error_body(api_error const& e) {
  auto const or_null = [](std::string const& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", or_null(e.param)},
            {"code", or_null(e.code)}}}};
}

json models_response(std::string_view model_name, std::int64_t created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", model_name},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "lightcore"}}})}};
}

namespace {

// The byte values of a token, as chat logprobs' "bytes" gives them.
json bytes_of(std::string_view s) {
  auto a = json::array();
  for (char const c : s) a.push_back(int(static_cast<unsigned char>(c)));
  return a;
}

// The legacy completions shape: parallel arrays plus text offsets into the choice's text.
json completion_logprobs(std::span<token_logprob const> lps, std::size_t& offset, bool with_top) {
  json tokens = json::array(), token_lps = json::array(), offsets = json::array();
  json tops = json::array();
  for (auto const& t : lps) {
    tokens.push_back(t.token);
    token_lps.push_back(t.logprob);
    offsets.push_back(offset);
    offset += t.token.size();
    json top = json::object();
    for (auto const& alt : t.top) top[alt.token] = alt.logprob;
    tops.push_back(std::move(top));
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_lps)},
          {"top_logprobs", with_top ? std::move(tops) : json(nullptr)},
          {"text_offset", std::move(offsets)}};
}

json chat_logprobs(std::span<token_logprob const> lps) {
  json content = json::array();
  for (auto const& t : lps) {
    json top = json::array();
    for (auto const& alt : t.top) {
      top.push_back(
          {{"token", alt.token}, {"logprob", alt.logprob}, {"bytes", bytes_of(alt.token)}});
    }
    content.push_back({{"token", t.token},
                       {"logprob", t.logprob},
                       {"bytes", bytes_of(t.token)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

}  // namespace

json completion_response(generation_request const& req, response_meta const& meta,
                         std::span<generation_output const> outs) {
  json choices = json::array();
  std::int64_t completion = 0;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    generation_output const& out = outs[i];
    std::size_t offset = req.echo ? req.prompt_text.size() : 0;
    choices.push_back(
        {{"index", i},
         {"text", req.echo ? req.prompt_text + out.text : out.text},
         {"logprobs", req.logprobs ? completion_logprobs(out.logprobs, offset, req.top_logprobs > 0)
                                   : json(nullptr)},
         {"finish_reason", to_string(out.reason)}});
    completion += out.completion_tokens;
  }
  return {{"id", meta.id},
          {"object", "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", std::move(choices)},
          {"usage", usage_json(outs.empty() ? 0 : outs[0].prompt_tokens, completion)}};
}

json chat_response(generation_request const& req, response_meta const& meta,
                   std::span<generation_output const> outs) {
  json choices = json::array();
  std::int64_t completion = 0;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    generation_output const& out = outs[i];
    choices.push_back({{"index", i},
                       {"message", {{"role", "assistant"}, {"content", out.text}}},
                       {"logprobs", req.logprobs ? chat_logprobs(out.logprobs) : json(nullptr)},
                       {"finish_reason", to_string(out.reason)}});
    completion += out.completion_tokens;
  }
  return {{"id", meta.id},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", std::move(choices)},
          {"usage", usage_json(outs.empty() ? 0 : outs[0].prompt_tokens, completion)}};
}

json completion_response(generation_request const& req, response_meta const& meta,
                         generation_output const& out) {
  return completion_response(req, meta, std::span<generation_output const>(&out, 1));
}

json chat_response(generation_request const& req, response_meta const& meta,
                   generation_output const& out) {
  return chat_response(req, meta, std::span<generation_output const>(&out, 1));
}

json generate_response(generation_request const& req, generation_output const& out) {
  json j = {{"generated_text", json::array({out.text})},
            {"count_output_tokens", out.completion_tokens},
            {"finish_reason", to_string(out.reason)},
            {"prompt_tokens", out.prompt_tokens}};
  if (req.logprobs) {
    json tokens = json::array();
    for (auto const& t : out.logprobs) {
      tokens.push_back({{"id", t.id}, {"text", t.token}, {"logprob", t.logprob}});
    }
    j["tokens"] = std::move(tokens);
  }
  return j;
}

std::string sse_event(json const& j) { return "data: " + dump(j) + "\n\n"; }
std::string sse_done() { return "data: [DONE]\n\n"; }

stream_writer::stream_writer(generation_request const& req, response_meta meta)
    : kind_(req.kind),
      include_usage_(req.include_usage),
      echo_(req.echo),
      logprobs_(req.logprobs),
      prompt_text_(req.kind == request_kind::completion && req.echo ? req.prompt_text : ""),
      meta_(std::move(meta)),
      text_offset_(std::size_t(std::max(req.n, 1)), 0) {}

json stream_writer::chunk(json choice) const {
  json j = {{"id", meta_.id},
            {"object", kind_ == request_kind::chat ? "chat.completion.chunk" : "text_completion"},
            {"created", meta_.created},
            {"model", meta_.model},
            {"choices", json::array({std::move(choice)})}};
  // With include_usage every chunk carries "usage": null until the last one (OpenAI's shape).
  if (include_usage_) j["usage"] = nullptr;
  return j;
}

std::string stream_writer::begin() {
  std::string out;
  for (std::size_t i = 0; i < text_offset_.size(); ++i) {
    if (kind_ == request_kind::chat) {
      out += sse_event(chunk({{"index", i},
                              {"delta", {{"role", "assistant"}, {"content", ""}}},
                              {"logprobs", nullptr},
                              {"finish_reason", nullptr}}));
    } else if (echo_ && !prompt_text_.empty()) {
      text_offset_[i] = prompt_text_.size();
      out += sse_event(chunk({{"index", i},
                              {"text", prompt_text_},
                              {"logprobs", nullptr},
                              {"finish_reason", nullptr}}));
    }
  }
  return out;
}

std::string stream_writer::delta(std::string_view text, std::span<token_logprob const> logprobs,
                                 std::size_t index) {
  if (text.empty() && logprobs.empty()) return {};
  LC_CHECK(index < text_offset_.size(),
           "stream_writer: choice " << index << " of a reply with " << text_offset_.size());
  json lp = nullptr;
  if (logprobs_ && !logprobs.empty()) {
    bool const with_top = !logprobs.front().top.empty();
    lp = kind_ == request_kind::chat ? chat_logprobs(logprobs)
                                     : completion_logprobs(logprobs, text_offset_[index], with_top);
  }
  if (kind_ == request_kind::chat) {
    return sse_event(chunk({{"index", index},
                            {"delta", {{"content", text}}},
                            {"logprobs", std::move(lp)},
                            {"finish_reason", nullptr}}));
  }
  return sse_event(chunk(
      {{"index", index}, {"text", text}, {"logprobs", std::move(lp)}, {"finish_reason", nullptr}}));
}

std::string stream_writer::finish_choice(std::size_t index, finish_reason reason) {
  json choice = kind_ == request_kind::chat
                    ? json{{"index", index}, {"delta", json::object()}, {"logprobs", nullptr}}
                    : json{{"index", index}, {"text", ""}, {"logprobs", nullptr}};
  choice["finish_reason"] = to_string(reason);
  return sse_event(chunk(std::move(choice)));
}

std::string stream_writer::end(std::int64_t prompt_tokens, std::int64_t completion_tokens) {
  std::string out;
  if (include_usage_) {
    auto last = chunk(nullptr);
    last["choices"] = json::array();
    last["usage"] = usage_json(prompt_tokens, completion_tokens);
    out += sse_event(last);
  }
  return out + sse_done();
}

std::string stream_writer::finish(finish_reason reason, std::int64_t prompt_tokens,
                                  std::int64_t completion_tokens) {
  return finish_choice(0, reason) + end(prompt_tokens, completion_tokens);
}

std::string stream_writer::error(api_error const& e) {
  return sse_event(error_body(e)) + sse_done();
}

std::string generate_stream_event(text::token_id id, std::string_view text, float logprob,
                                  bool special, std::int64_t count_output_tokens,
                                  std::int64_t prompt_tokens,
                                  std::optional<finish_reason> finished) {
  json j = {{"token",
             {{"id", id},
              {"text", text},
              {"logprob", logprob},
              {"special", special},
              {"count_output_tokens", count_output_tokens},
              {"prompt_tokens", prompt_tokens}}},
            {"generated_text", nullptr},
            {"finished", finished.has_value()},
            {"finish_reason", finished ? json(to_string(*finished)) : json(nullptr)},
            {"details", nullptr}};
  return "data:" + dump(j) + "\n\n";
}

std::string generate_stream_final_event(std::string_view text, finish_reason reason,
                                        std::int64_t count_output_tokens,
                                        std::int64_t prompt_tokens) {
  json j = {{"token", nullptr},
            {"generated_text", text},
            {"finished", true},
            {"finish_reason", to_string(reason)},
            {"count_output_tokens", count_output_tokens},
            {"prompt_tokens", prompt_tokens},
            {"details", nullptr}};
  return "data:" + dump(j) + "\n\n";
}

}  // namespace lightcore::server
