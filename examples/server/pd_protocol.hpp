// The JSON shapes of prefill/decode separation that travel between the router and the prefill
// and decode instances' control endpoints (docs/pd.md, "Server roles"), besides the KV transfer
// messages of lightcore/pd/messages.hpp: a request's parameters, a sampled token, an instance's
// load. Header-only; both ends are the same program.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/io/json_fields.hpp"
#include "wire.hpp"

namespace lightcore::server {

// The role of one lightcore_server process.
enum class server_role : std::uint8_t { single, prefill, decode, router };

inline constexpr std::string_view name_of(server_role r) noexcept {
  switch (r) {
    case server_role::single: return "single";
    case server_role::prefill: return "prefill";
    case server_role::decode: return "decode";
    case server_role::router: return "pd-router";
  }
  return "?";
}

// The role named `name`; throws, listing the names, for another.
inline server_role role_from_name(std::string_view name) {
  for (auto r :
       {server_role::single, server_role::prefill, server_role::decode, server_role::router})
    if (name_of(r) == name) return r;
  LC_THROW("unknown role '" << name << "'; allowed: single, prefill, decode, pd-router");
}

// A request's sampling parameters, budget and stop ids, field by field (not as bytes, so that
// the JSON stays readable and checked).
inline nlohmann::json params_to_json(wire_params const& p) {
  auto const& s = p.sampling;
  return {{"temperature", s.temperature},
          {"top_k", s.top_k},
          {"top_p", s.top_p},
          {"min_p", s.min_p},
          {"repetition_penalty", s.repetition_penalty},
          {"presence_penalty", s.presence_penalty},
          {"frequency_penalty", s.frequency_penalty},
          {"num_logprobs", s.num_logprobs},
          {"seed", s.seed},
          {"max_new_tokens", p.max_new_tokens},
          {"stop_ids", std::vector<std::int32_t>(p.stop_ids, p.stop_ids + p.stop_count)}};
}

// Throws lightcore::error naming the field for a missing or mistyped one.
inline wire_params params_from_json(nlohmann::json const& j) {
  io::json_fields const f(j, "params");
  wire_params p;
  auto& s = p.sampling;
  s.temperature = float(f.number("temperature"));
  s.top_k = std::int32_t(f.integer("top_k"));
  s.top_p = float(f.number("top_p"));
  s.min_p = float(f.number("min_p"));
  s.repetition_penalty = float(f.number("repetition_penalty"));
  s.presence_penalty = float(f.number("presence_penalty"));
  s.frequency_penalty = float(f.number("frequency_penalty"));
  s.num_logprobs = std::int32_t(f.integer("num_logprobs"));
  LC_CHECK(j.contains("seed") && j.at("seed").is_number_unsigned(),
           "params.seed must be an unsigned 64-bit integer");
  s.seed = j.at("seed").get<std::uint64_t>();
  std::int64_t const max_new = f.integer("max_new_tokens");
  LC_CHECK(max_new >= 1 && max_new <= INT32_MAX,
           "params.max_new_tokens = " << max_new << "; allowed: 1.." << INT32_MAX);
  p.max_new_tokens = std::int32_t(max_new);
  LC_CHECK(j.contains("stop_ids") && j.at("stop_ids").is_array(),
           "params.stop_ids must be an array of token ids");
  auto const ids = j.at("stop_ids").get<std::vector<std::int32_t>>();
  LC_CHECK(
      ids.size() <= std::size_t(max_stop_token_ids),
      "params.stop_ids holds " << ids.size() << " ids; allowed: at most " << max_stop_token_ids);
  p.stop_count = std::int32_t(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) p.stop_ids[i] = ids[i];
  return p;
}

// A token array field: non-empty, ids >= 0.
inline std::vector<std::int32_t> tokens_from_json(nlohmann::json const& j, char const* key) {
  LC_CHECK(j.contains(key) && j.at(key).is_array() && !j.at(key).empty(),
           "'" << key << "' must be a non-empty array of token ids");
  auto ids = j.at(key).get<std::vector<std::int32_t>>();
  for (std::int32_t const t : ids) LC_CHECK(t >= 0, "'" << key << "' holds the token id " << t);
  return ids;
}

// One sampled token, as the prefill instance answers and the decode instance streams it.
struct pd_token {
  std::int32_t token = 0;
  float logprob = 0.0f;
  std::int64_t index = 0;             // position in the request's output
  std::string finished = "none";      // none, stop, length, abort
  std::vector<std::int32_t> top_ids;  // alternatives (may be empty)
  std::vector<float> top_logprobs;
};

inline nlohmann::json to_json(pd_token const& t) {
  nlohmann::json j = {{"token", t.token},
                      {"index", t.index},
                      {"finished", t.finished},
                      {"top_ids", t.top_ids},
                      {"top_logprobs", t.top_logprobs}};
  // NaN (no logprob asked for) has no JSON form: left out.
  if (t.logprob == t.logprob) j["logprob"] = t.logprob;
  return j;
}

inline pd_token token_from_json(nlohmann::json const& j) {
  io::json_fields const f(j, "token event");
  pd_token t;
  t.token = std::int32_t(f.integer("token"));
  t.index = f.integer("index");
  t.finished = f.string("finished");
  t.logprob =
      j.contains("logprob") && j.at("logprob").is_number() ? j.at("logprob").get<float>() : 0.0f;
  if (j.contains("top_ids")) t.top_ids = j.at("top_ids").get<std::vector<std::int32_t>>();
  if (j.contains("top_logprobs")) t.top_logprobs = j.at("top_logprobs").get<std::vector<float>>();
  LC_CHECK(t.top_ids.size() == t.top_logprobs.size(),
           "token event: " << t.top_ids.size() << " top_ids but " << t.top_logprobs.size()
                           << " top_logprobs");
  return t;
}

// What an instance reports of its load (GET /pd/load); the router picks by it.
struct pd_load {
  // Prompt tokens waiting: on a prefill instance not yet prefilled, on a decode instance not
  // yet decoding.
  std::int64_t queued_tokens = 0;
  std::int64_t waiting = 0;      // requests waiting for admission
  std::int64_t running = 0;      // requests the scheduler runs
  std::int64_t kv_free = 0;      // KV slots free or evictable from the prefix cache
  std::int64_t kv_capacity = 0;  // KV slots in all
  std::int64_t transfers = 0;    // KV transfers under way
  // Prefill: transfers begun before their prompt's forward and sent layer by layer, since start.
  std::int64_t streamed = 0;
  // Prefill: of the transfers that ended, since start: the bytes moved, the seconds from each
  // one's begin to its end, and the seconds by which each end came after the prompt's first
  // token (0 for one that ended first): what P+D adds before decoding can start.
  std::int64_t transfer_bytes = 0;
  double transfer_seconds = 0.0, transfer_after_token_seconds = 0.0;
  std::int64_t transfers_ended = 0;
};

inline nlohmann::json to_json(pd_load const& l) {
  return {{"queued_tokens", l.queued_tokens},
          {"waiting", l.waiting},
          {"running", l.running},
          {"kv_free", l.kv_free},
          {"kv_capacity", l.kv_capacity},
          {"transfers", l.transfers},
          {"streamed", l.streamed},
          {"transfers_ended", l.transfers_ended},
          {"transfer_bytes", l.transfer_bytes},
          {"transfer_seconds", l.transfer_seconds},
          {"transfer_after_token_seconds", l.transfer_after_token_seconds}};
}

inline pd_load load_from_json(nlohmann::json const& j) {
  io::json_fields const f(j, "load");
  return {f.integer("queued_tokens"), f.integer("waiting"),     f.integer("running"),
          f.integer("kv_free"),       f.integer("kv_capacity"), f.integer("transfers", 0),
          f.integer("streamed", 0)};
}

}  // namespace lightcore::server
