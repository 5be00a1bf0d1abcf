#include "examples/server/api/request_fields.hpp"

#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

namespace lightcore::server::detail {

void fail(int status, std::string param, std::string message, std::string code) {
  api_error e;
  e.status = status;
  e.param = std::move(param);
  e.message = std::move(message);
  e.code = std::move(code);
  if (status == 404) e.type = "not_found_error";
  throw api_failure{std::move(e)};
}

namespace {

std::string number_text(double v) {
  char buf[32];
  auto const r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

}  // namespace

std::string range::describe() const {
  auto const inf = std::numeric_limits<double>::infinity();
  if (hi == inf) return (lo_open ? "> " : ">= ") + number_text(lo);
  if (lo == -inf) return (hi_open ? "< " : "<= ") + number_text(hi);
  return std::string(lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) +
         (hi_open ? ")" : "]");
}

bool range::contains(double v) const {
  if (!std::isfinite(v)) return false;
  bool const above = lo_open ? v > lo : v >= lo;
  bool const below = hi_open ? v < hi : v <= hi;
  return above && below;
}

std::string json_type(nlohmann::json const& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::number_float: return "a number";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "an integer";
    default: return "an unsupported value";
  }
}

std::string show(nlohmann::json const& v) {
  constexpr std::size_t max_chars = 60;
  auto s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

field_reader::field_reader(nlohmann::json const& object, std::string prefix)
    : object_(object), prefix_(std::move(prefix)) {}

nlohmann::json const* field_reader::find(std::string_view name) const {
  auto const it = object_.find(name);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> field_reader::boolean(std::string_view name) const {
  auto const* v = find(name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) {
    fail(400, param(name),
         "'" + param(name) + "' must be a boolean (true or false); got " + json_type(*v) + " " +
             show(*v));
  }
  return v->get<bool>();
}

std::optional<double> field_reader::number(std::string_view name, range const& allowed) const {
  auto const* v = find(name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) {
    fail(400, param(name),
         "'" + param(name) + "' must be a number in " + allowed.describe() + "; got " +
             json_type(*v) + " " + show(*v));
  }
  auto const d = v->get<double>();
  if (!allowed.contains(d)) {
    auto const r = allowed.describe();
    bool const interval = r[0] == '[' || r[0] == '(';
    fail(400, param(name),
         "'" + param(name) + "' must be a finite number " + (interval ? "in " : "") + r + "; got " +
             show(*v));
  }
  return d;
}

std::optional<std::int64_t> as_integer(nlohmann::json const& v) {
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<std::int64_t>();
  if (v.is_number_unsigned()) {
    auto const u = v.get<std::uint64_t>();
    if (u > std::uint64_t(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
    return std::int64_t(u);
  }
  if (v.is_number_float()) {
    auto const d = v.get<double>();
    // Integral floats (16.0) are accepted: some clients write every number as a float.
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) return std::int64_t(d);
  }
  return std::nullopt;
}

std::optional<std::int64_t> field_reader::integer(std::string_view name, std::int64_t lo,
                                                  std::int64_t hi) const {
  auto const* v = find(name);
  if (v == nullptr) return std::nullopt;
  std::ostringstream allowed;
  allowed << "an integer in [" << lo << ", " << hi << "]";
  if (!v->is_number()) {
    fail(400, param(name),
         "'" + param(name) + "' must be " + allowed.str() + "; got " + json_type(*v) + " " +
             show(*v));
  }
  auto const i = as_integer(*v);
  if (!i || *i < lo || *i > hi) {
    fail(400, param(name), "'" + param(name) + "' must be " + allowed.str() + "; got " + show(*v));
  }
  return *i;
}

std::optional<std::string> field_reader::string(std::string_view name) const {
  auto const* v = find(name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) {
    fail(400, param(name),
         "'" + param(name) + "' must be a string; got " + json_type(*v) + " " + show(*v));
  }
  return v->get<std::string>();
}

std::optional<std::uint64_t> field_reader::seed(std::string_view name) const {
  auto const* v = find(name);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<std::uint64_t>();
  auto const i = as_integer(*v);
  if (!v->is_number() || !i) {
    fail(400, param(name),
         "'" + param(name) + "' must be an integer (64 bits); got " + json_type(*v) + " " +
             show(*v));
  }
  return std::uint64_t(*i);
}

std::vector<std::string> field_reader::strings(std::string_view name, std::size_t max_count) const {
  auto const* v = find(name);
  std::vector<std::string> out;
  if (v == nullptr) return out;
  auto const p = param(name);
  auto const what = "a string or an array of at most " + std::to_string(max_count) + " strings";
  auto take = [&](nlohmann::json const& s, std::string const& where) {
    if (!s.is_string()) {
      fail(400, where, "'" + where + "' must be " + what + "; got " + json_type(s) + " " + show(s));
    }
    auto str = s.get<std::string>();
    if (str.empty()) fail(400, where, "'" + where + "' must not be an empty string");
    out.push_back(std::move(str));
  };
  if (v->is_array()) {
    if (v->size() > max_count) {
      fail(400, p,
           "'" + p + "' has " + std::to_string(v->size()) + " entries; at most " +
               std::to_string(max_count) + " are allowed");
    }
    for (std::size_t i = 0; i < v->size(); ++i) take((*v)[i], p + "[" + std::to_string(i) + "]");
  } else {
    take(*v, p);
  }
  return out;
}

std::vector<text::token_id> read_token_ids(nlohmann::json const& v, std::string const& param,
                                           std::size_t vocab) {
  if (!v.is_array()) {
    fail(400, param,
         "'" + param + "' must be an array of token ids; got " + json_type(v) + " " + show(v));
  }
  std::vector<text::token_id> ids;
  ids.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    auto const id = as_integer(v[i]);
    if (!v[i].is_number() || !id || *id < 0 || std::uint64_t(*id) >= vocab) {
      fail(400, param,
           "'" + param + "[" + std::to_string(i) + "]' must be a token id in [0, " +
               std::to_string(vocab) + "); got " + show(v[i]));
    }
    ids.push_back(text::token_id(*id));
  }
  return ids;
}

std::vector<text::token_id> field_reader::token_ids(std::string_view name,
                                                    std::size_t vocab) const {
  auto const* v = find(name);
  if (v == nullptr) return {};
  return read_token_ids(*v, param(name), vocab);
}

}  // namespace lightcore::server::detail
