// Typed reads of JSON object fields for the io readers (config.json, safetensors headers and
// indexes). Every failure is a lightcore::error naming the document, the field, the value found
// and what is allowed, because these files come from users and their mistakes must be fixable
// from the message alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "lightcore/core/error.hpp"

namespace lightcore::io {

using json = nlohmann::json;

namespace detail {

// A short rendering of a JSON value for messages: long arrays or objects are cut.
inline std::string json_excerpt(json const& v) {
  std::string s = v.dump();
  constexpr std::size_t max_chars = 80;
  if (s.size() > max_chars) s = s.substr(0, max_chars - 3) + "...";
  return s;
}

// The kind of a JSON value as a user would name it ("integer" and "number" told apart, since an
// integer field given 128.0 is an error).
inline char const* json_kind(json const& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

// The value of an integer JSON number as int64; unsigned values above INT64_MAX do not fit.
inline std::optional<std::int64_t> json_to_int64(json const& v) {
  if (v.is_number_unsigned()) {
    auto const u = v.get<std::uint64_t>();
    if (u > std::uint64_t(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
    return std::int64_t(u);
  }
  if (v.is_number_integer()) return v.get<std::int64_t>();
  return std::nullopt;
}

}  // namespace detail

// Reads the fields of one JSON object. `where` names the object in messages, e.g.
// "config.json" or "config.json: rope_scaling".
class json_fields {
 public:
  json_fields(json const& object, std::string where) : object_(object), where_(std::move(where)) {
    LC_CHECK(object.is_object(), where_ << ": expected a JSON object; got "
                                        << detail::json_kind(object) << ' '
                                        << detail::json_excerpt(object));
  }

  std::string const& where() const noexcept { return where_; }

  // The field's value, or nullptr when the key is absent (a JSON null is returned as a value).
  json const* find(std::string_view key) const {
    auto const it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  // Present and not null.
  bool has(std::string_view key) const {
    json const* v = find(key);
    return v != nullptr && !v->is_null();
  }

  // Required fields: absent or null is an error.
  std::int64_t integer(std::string_view key) const { return to_integer(key, required(key)); }
  double number(std::string_view key) const { return to_number(key, required(key)); }
  std::string string(std::string_view key) const { return to_string(key, required(key)); }

  // Fields with a default used when the key is absent; null is an error (the field is not
  // nullable).
  std::int64_t integer(std::string_view key, std::int64_t fallback) const {
    json const* v = find(key);
    return v == nullptr ? fallback : to_integer(key, *v);
  }
  double number(std::string_view key, double fallback) const {
    json const* v = find(key);
    return v == nullptr ? fallback : to_number(key, *v);
  }
  bool boolean(std::string_view key, bool fallback) const {
    json const* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) type_error(key, *v, "a boolean (true or false)");
    return v->get<bool>();
  }
  std::string string(std::string_view key, std::string fallback) const {
    json const* v = find(key);
    return v == nullptr ? std::move(fallback) : to_string(key, *v);
  }

  // Nullable integer: absent gives `fallback`, null gives nullopt.
  std::optional<std::int64_t> optional_integer(std::string_view key,
                                               std::optional<std::int64_t> fallback) const {
    json const* v = find(key);
    if (v == nullptr) return fallback;
    if (v->is_null()) return std::nullopt;
    return to_integer(key, *v);
  }

  // "<where>: field `key`" for callers' own messages.
  std::string field(std::string_view key) const {
    return where_ + ": field `" + std::string(key) + "`";
  }

  [[noreturn]] void type_error(std::string_view key, json const& v, char const* expected) const {
    LC_THROW(field(key) << " must be " << expected << "; got " << detail::json_kind(v) << ' '
                        << detail::json_excerpt(v));
  }

 private:
  json const& required(std::string_view key) const {
    json const* v = find(key);
    LC_CHECK(v != nullptr, field(key) << " is missing; it is required");
    LC_CHECK(!v->is_null(), field(key) << " is null; it is required");
    return *v;
  }
  std::int64_t to_integer(std::string_view key, json const& v) const {
    if (!v.is_number_integer()) type_error(key, v, "an integer");
    auto const i = detail::json_to_int64(v);
    LC_CHECK(i.has_value(), field(key) << " = " << v.dump() << " does not fit a signed 64-bit "
                                       << "integer");
    return *i;
  }
  double to_number(std::string_view key, json const& v) const {
    if (!v.is_number()) type_error(key, v, "a number");
    double const d = v.get<double>();
    LC_CHECK(std::isfinite(d), field(key) << " = " << v.dump() << " must be finite");
    return d;
  }
  std::string to_string(std::string_view key, json const& v) const {
    if (!v.is_string()) type_error(key, v, "a string");
    return v.get<std::string>();
  }

  json const& object_;
  std::string where_;
};

}  // namespace lightcore::io
