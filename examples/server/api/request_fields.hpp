// Typed, range-checked reads of a JSON request object's fields, for the request parsers. A bad
// field stops parsing with an api_failure that names the field, what it held and what is allowed;
// the parsers turn it into an api_error (it never leaves the library).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "examples/server/api/request.hpp"

namespace lightcore::server::detail {

struct api_failure {
  api_error error;
};

[[noreturn]] void fail(int status, std::string param, std::string message, std::string code = {});

// A closed or open interval of allowed values, printed as "[0, 2]", "(0, 1]" or ">= 0".
struct range {
  double lo;
  double hi;
  bool lo_open = false;
  bool hi_open = false;
  std::string describe() const;
  bool contains(double v) const;
};

// The JSON type name a message shows ("a string", "an array", ...).
std::string json_type(nlohmann::json const& v);

// A short, bounded rendering of a value for messages (long strings are cut).
std::string show(nlohmann::json const& v);

// The fields of one JSON object; param names are prefixed (e.g. "parameters.") in messages.
// Absent and null fields read as nullopt: JSON clients send null for "not set".
class field_reader {
 public:
  field_reader(nlohmann::json const& object, std::string prefix);

  nlohmann::json const* find(std::string_view name) const;
  std::string param(std::string_view name) const { return prefix_ + std::string(name); }

  std::optional<bool> boolean(std::string_view name) const;
  std::optional<double> number(std::string_view name, range const& allowed) const;
  std::optional<std::int64_t> integer(std::string_view name, std::int64_t lo,
                                      std::int64_t hi) const;
  std::optional<std::string> string(std::string_view name) const;
  // A seed: any integer that fits 64 bits (negative ones keep their two's-complement bits).
  std::optional<std::uint64_t> seed(std::string_view name) const;
  // A string or an array of at most max_count strings; each non-empty.
  std::vector<std::string> strings(std::string_view name, std::size_t max_count) const;
  // An array of token ids, each in [0, vocab).
  std::vector<text::token_id> token_ids(std::string_view name, std::size_t vocab) const;

 private:
  nlohmann::json const& object_;
  std::string prefix_;
};

// An integer JSON value (an integral float counts) or nullopt.
std::optional<std::int64_t> as_integer(nlohmann::json const& v);

// Token ids of an array value (each in [0, vocab)); param names the field in messages.
std::vector<text::token_id> read_token_ids(nlohmann::json const& v, std::string const& param,
                                           std::size_t vocab);

}  // namespace lightcore::server::detail
