// The control messages of the KV transfer protocol between a prefill and a decode instance, and
// their JSON form (docs/pd.md specifies every field). The KV bytes never travel in these: they
// go through a kv_transport; the messages say what to allocate, what landed and what ended.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/io/json_fields.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

using json = nlohmann::json;

// Version of the message format; a message of another version is refused.
inline constexpr std::int64_t protocol_version = 1;

// prefill -> decode: reserve destination slots for a prompt's KV.
struct allocate_request {
  std::uint64_t request_id = 0;      // the router's request id (logs, deduplication)
  std::vector<std::int32_t> tokens;  // the whole prompt; the decode side matches its prefix
  kv_layout layout;                  // the prefill pool's layout; must equal the decode pool's
  std::int64_t timeout_ms = 60'000;  // ms from the first landed layer to done; default 60000; >= 1
  // ms the decode side holds the slots before the first layer lands (the prompt may wait in the
  // prefill instance's queue); default 600000; >= 1
  std::int64_t start_timeout_ms = 600'000;
};

// decode -> prefill: the destination slots, or a refusal with its reason.
struct allocate_response {
  std::uint64_t request_id = 0;
  bool accepted = false;
  transfer_id id = 0;                   // valid when accepted
  std::int64_t prefix_hit = 0;          // leading prompt tokens the decode side has cached
  std::vector<std::int32_t> dst_slots;  // [tokens - prefix_hit] slots for the missing suffix
  std::int64_t free_slots = 0;          // decode pool slots free after this allocation (load)
  failure reason = failure::none;       // when refused
  std::string message;                  // when refused
};

// prefill -> decode: every row of one layer has landed at the destination.
struct layer_landed {
  transfer_id id = 0;
  std::int32_t layer = 0;
};

// prefill -> decode: every layer has landed; the prefill side writes no more.
struct transfer_done {
  transfer_id id = 0;
  std::int32_t layers = 0;  // layers moved (all of them)
  std::int64_t tokens = 0;  // rows moved per layer
};

// Either way: the transfer ended without landing. From the prefill side it also promises that
// no copy is in flight any more, so the decode side may free the destination slots at once.
// `ack` marks the prefill side's answer to the decode side's own abort.
struct transfer_abort {
  transfer_id id = 0;
  failure reason = failure::cancelled;
  side origin = side::prefill;
  std::string message;
  bool ack = false;
};

using message =
    std::variant<allocate_request, allocate_response, layer_landed, transfer_done, transfer_abort>;

namespace detail {

inline json layout_to_json(kv_layout const& l) {
  return {{"layers", l.layers}, {"width", l.width}, {"dtype", std::string(name_of(l.type))}};
}

inline dtype dtype_from_name(io::json_fields const& f, std::string_view key) {
  std::string const name = f.string(key);
  for (auto t :
       {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3, dtype::i32, dtype::i64, dtype::u8})
    if (name_of(t) == name) return t;
  LC_THROW(f.field(key) << " = '" << name
                        << "' is not an element type; allowed: f32, bf16, f16, fp8_e4m3, i32, "
                           "i64, u8");
}

template <class Int>
Int bounded(io::json_fields const& f, std::string_view key, std::int64_t lo, std::int64_t hi) {
  std::int64_t const v = f.integer(key);
  LC_CHECK(v >= lo && v <= hi,
           f.field(key) << " = " << v << " is out of range; allowed: " << lo << ".." << hi);
  return static_cast<Int>(v);
}

inline std::uint64_t id_field(io::json_fields const& f, std::string_view key) {
  json const* v = f.find(key);
  LC_CHECK(v != nullptr && !v->is_null(), f.field(key) << " is missing; it is required");
  if (!v->is_number_unsigned()) f.type_error(key, *v, "an unsigned integer");
  return v->get<std::uint64_t>();
}

inline std::vector<std::int32_t> int32_array(io::json_fields const& f, std::string_view key) {
  json const* v = f.find(key);
  LC_CHECK(v != nullptr && !v->is_null(), f.field(key) << " is missing; it is required");
  if (!v->is_array()) f.type_error(key, *v, "an array of int32");
  std::vector<std::int32_t> out;
  out.reserve(v->size());
  for (std::size_t i = 0; i < v->size(); ++i) {
    json const& e = (*v)[i];
    auto const x = e.is_number_integer() ? io::detail::json_to_int64(e) : std::nullopt;
    LC_CHECK(x && *x >= 0 && *x <= std::numeric_limits<std::int32_t>::max(),
             f.field(key) << "[" << i << "] = " << io::detail::json_excerpt(e)
                          << " is not allowed; allowed: integers 0.." << INT32_MAX);
    out.push_back(std::int32_t(*x));
  }
  return out;
}

inline side side_from_name(io::json_fields const& f, std::string_view key) {
  std::string const s = f.string(key);
  if (s == "prefill") return side::prefill;
  if (s == "decode") return side::decode;
  LC_THROW(f.field(key) << " = '" << s << "' is not a side; allowed: prefill, decode");
}

inline json envelope(char const* type) { return {{"type", type}, {"version", protocol_version}}; }

}  // namespace detail

// The JSON object of a message: {"type": ..., "version": 1, ...fields}.
inline json to_json(message const& m) {
  return std::visit(
      [](auto const& x) -> json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, allocate_request>) {
          json j = detail::envelope("allocate");
          j["request_id"] = x.request_id;
          j["tokens"] = x.tokens;
          j["layout"] = detail::layout_to_json(x.layout);
          j["timeout_ms"] = x.timeout_ms;
          j["start_timeout_ms"] = x.start_timeout_ms;
          return j;
        } else if constexpr (std::is_same_v<T, allocate_response>) {
          json j = detail::envelope("allocate_result");
          j["request_id"] = x.request_id;
          j["accepted"] = x.accepted;
          j["free_slots"] = x.free_slots;
          if (x.accepted) {
            j["transfer_id"] = x.id;
            j["prefix_hit"] = x.prefix_hit;
            j["dst_slots"] = x.dst_slots;
          } else {
            j["reason"] = std::string(name_of(x.reason));
            j["message"] = x.message;
          }
          return j;
        } else if constexpr (std::is_same_v<T, layer_landed>) {
          json j = detail::envelope("layer");
          j["transfer_id"] = x.id;
          j["layer"] = x.layer;
          return j;
        } else if constexpr (std::is_same_v<T, transfer_done>) {
          json j = detail::envelope("done");
          j["transfer_id"] = x.id;
          j["layers"] = x.layers;
          j["tokens"] = x.tokens;
          return j;
        } else {
          json j = detail::envelope("abort");
          j["transfer_id"] = x.id;
          j["reason"] = std::string(name_of(x.reason));
          j["origin"] = std::string(name_of(x.origin));
          j["message"] = x.message;
          j["ack"] = x.ack;
          return j;
        }
      },
      m);
}

// Parses and validates a message; throws lightcore::error naming the field, the value found and
// what is allowed. Structural checks only: whether the ids exist is the receiving side's call.
inline message parse_message(json const& j) {
  io::json_fields const f(j, "pd message");
  std::string const type = f.string("type");
  std::int64_t const version = f.integer("version");
  LC_CHECK(version == protocol_version, "pd message of version " << version << " (type '" << type
                                                                 << "'); this side speaks version "
                                                                 << protocol_version);
  constexpr std::int64_t i32_max = std::numeric_limits<std::int32_t>::max();
  if (type == "allocate") {
    allocate_request r;
    r.request_id = detail::id_field(f, "request_id");
    r.tokens = detail::int32_array(f, "tokens");
    LC_CHECK(!r.tokens.empty(), f.field("tokens") << " is empty; a prompt has at least one token");
    json const* layout = f.find("layout");
    LC_CHECK(layout != nullptr, f.field("layout") << " is missing; it is required");
    io::json_fields const lf(*layout, f.field("layout"));
    r.layout.layers = detail::bounded<std::int32_t>(lf, "layers", 1, i32_max);
    r.layout.width = detail::bounded<std::int64_t>(lf, "width", 1, i32_max);
    r.layout.type = detail::dtype_from_name(lf, "dtype");
    r.timeout_ms = f.integer("timeout_ms", 60'000);
    LC_CHECK(r.timeout_ms >= 1, f.field("timeout_ms")
                                    << " = " << r.timeout_ms << " must be >= 1 (milliseconds)");
    r.start_timeout_ms = f.integer("start_timeout_ms", 600'000);
    LC_CHECK(r.start_timeout_ms >= 1, f.field("start_timeout_ms")
                                          << " = " << r.start_timeout_ms
                                          << " must be >= 1 (milliseconds)");
    return r;
  }
  if (type == "allocate_result") {
    allocate_response r;
    r.request_id = detail::id_field(f, "request_id");
    r.accepted = f.boolean("accepted", false);
    LC_CHECK(f.has("accepted"), f.field("accepted") << " is missing; it is required");
    r.free_slots = f.integer("free_slots", 0);
    if (r.accepted) {
      r.id = detail::id_field(f, "transfer_id");
      r.prefix_hit = detail::bounded<std::int64_t>(f, "prefix_hit", 0, i32_max);
      r.dst_slots = detail::int32_array(f, "dst_slots");
    } else {
      r.reason = failure_from_name(f.string("reason"));
      LC_CHECK(r.reason != failure::none,
               f.field("reason") << " is 'none' in a refusal; name why it was refused");
      r.message = f.string("message", "");
    }
    return r;
  }
  if (type == "layer") {
    return layer_landed{detail::id_field(f, "transfer_id"),
                        detail::bounded<std::int32_t>(f, "layer", 0, i32_max)};
  }
  if (type == "done") {
    return transfer_done{detail::id_field(f, "transfer_id"),
                         detail::bounded<std::int32_t>(f, "layers", 1, i32_max),
                         detail::bounded<std::int64_t>(f, "tokens", 0, i32_max)};
  }
  if (type == "abort") {
    transfer_abort a;
    a.id = detail::id_field(f, "transfer_id");
    a.reason = failure_from_name(f.string("reason"));
    LC_CHECK(a.reason != failure::none, f.field("reason") << " is 'none' in an abort; name why");
    a.origin = detail::side_from_name(f, "origin");
    a.message = f.string("message", "");
    a.ack = f.boolean("ack", false);
    return a;
  }
  LC_THROW(f.field("type") << " = '" << type
                           << "' is not a message type; allowed: allocate, allocate_result, "
                              "layer, done, abort");
}

}  // namespace lightcore::pd
