// safetensors_file: one memory-mapped .safetensors file whose header is validated in full when it
// is opened, so that a corrupt or hostile file fails there with a message naming the problem and
// never yields a view outside the file.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of UTF-8 JSON {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
// ..., "__metadata__": {"key": "value"}} (possibly padded with trailing spaces), then the data
// area. Offsets are relative to the data area. The checks follow the format's own rules: offsets
// inside the data area, end - begin == numel * element size, tensors cover the data area exactly
// (no overlaps, no holes), names unique, metadata values strings.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/json_fields.hpp"
#include "lightcore/io/mapped_file.hpp"

namespace lightcore::io {

// Every element type the safetensors format names. All are accepted in a header (their sizes are
// known, so the file can be validated); only those with a lightcore::dtype can be viewed.
enum class st_dtype : std::uint8_t {
  boolean,  // "BOOL": one byte, 0 or 1; viewed as u8
  u8,
  i8,
  f8_e4m3,  // "F8_E4M3": DeepSeek's FP8 weights
  f8_e5m2,
  f8_e8m0,
  i16,
  u16,
  f16,
  bf16,
  i32,
  u32,
  f32,
  i64,
  u64,
  f64,
};

struct st_dtype_info {
  st_dtype id;
  std::string_view name;         // as written in the header
  std::size_t size;              // bytes per element
  std::optional<dtype> view_as;  // the lightcore dtype a view of it has, if any
};

inline constexpr std::array<st_dtype_info, 16> st_dtypes{{
    {st_dtype::boolean, "BOOL", 1, dtype::u8},
    {st_dtype::u8, "U8", 1, dtype::u8},
    {st_dtype::i8, "I8", 1, std::nullopt},
    {st_dtype::f8_e4m3, "F8_E4M3", 1, dtype::fp8_e4m3},
    {st_dtype::f8_e5m2, "F8_E5M2", 1, std::nullopt},
    {st_dtype::f8_e8m0, "F8_E8M0", 1, std::nullopt},
    {st_dtype::i16, "I16", 2, std::nullopt},
    {st_dtype::u16, "U16", 2, std::nullopt},
    {st_dtype::f16, "F16", 2, dtype::f16},
    {st_dtype::bf16, "BF16", 2, dtype::bf16},
    {st_dtype::i32, "I32", 4, dtype::i32},
    {st_dtype::u32, "U32", 4, std::nullopt},
    {st_dtype::f32, "F32", 4, dtype::f32},
    {st_dtype::i64, "I64", 8, dtype::i64},
    {st_dtype::u64, "U64", 8, std::nullopt},
    {st_dtype::f64, "F64", 8, std::nullopt},
}};

inline constexpr st_dtype_info const& info_of(st_dtype t) noexcept {
  return st_dtypes[static_cast<std::size_t>(t)];
}
inline constexpr std::string_view name_of(st_dtype t) noexcept { return info_of(t).name; }
inline constexpr std::size_t size_of(st_dtype t) noexcept { return info_of(t).size; }
inline std::ostream& operator<<(std::ostream& os, st_dtype t) { return os << name_of(t); }

inline std::optional<st_dtype> st_dtype_from_name(std::string_view name) noexcept {
  for (auto const& d : st_dtypes)
    if (d.name == name) return d.id;
  return std::nullopt;
}

// The safetensors dtype that stores a lightcore dtype.
inline constexpr st_dtype st_dtype_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return st_dtype::f32;
    case dtype::bf16: return st_dtype::bf16;
    case dtype::f16: return st_dtype::f16;
    case dtype::fp8_e4m3: return st_dtype::f8_e4m3;
    case dtype::i32: return st_dtype::i32;
    case dtype::i64: return st_dtype::i64;
    case dtype::u8: return st_dtype::u8;
  }
  return st_dtype::u8;
}

namespace detail {
// "F32, F16, BF16, ..." for messages.
inline std::string st_dtype_list(bool viewable_only) {
  std::string s;
  for (auto const& d : st_dtypes) {
    if (viewable_only && !d.view_as) continue;
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}
}  // namespace detail

// One tensor of a file's header.
struct safetensors_entry {
  std::string name;
  st_dtype type = st_dtype::u8;
  std::vector<std::int64_t> shape;  // any rank; a view needs rank <= max_rank
  std::uint64_t begin = 0;          // byte offsets into the data area, [begin, end)
  std::uint64_t end = 0;

  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto const e : shape) n *= e;
    return n;
  }
  std::uint64_t nbytes() const noexcept { return end - begin; }
};

// The largest header accepted: the format's reference implementation refuses more than 100 MB,
// so a corrupt length cannot make us parse (or allocate for) an arbitrary amount of text.
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;

namespace detail {

// The element count of `shape` times `elem` bytes, or nullopt on overflow.
inline std::optional<std::uint64_t> st_byte_size(std::vector<std::int64_t> const& shape,
                                                 std::size_t elem) {
  std::uint64_t n = elem;
  for (auto const e : shape) {
    auto const u = static_cast<std::uint64_t>(e);
    if (u != 0 && n > UINT64_MAX / u) return std::nullopt;
    n *= u;
  }
  return n;
}

inline std::vector<std::int64_t> st_parse_int_array(json_fields const& f, std::string_view key,
                                                    json const& v, char const* expected) {
  if (!v.is_array()) f.type_error(key, v, expected);
  std::vector<std::int64_t> out;
  out.reserve(v.size());
  for (json const& e : v) {
    auto const i = json_to_int64(e);
    if (!i || *i < 0) f.type_error(key, v, expected);
    out.push_back(*i);
  }
  return out;
}

inline safetensors_entry st_parse_entry(std::string const& name, json const& v,
                                        std::string const& where) {
  json_fields const f(v, where + ": tensor \"" + name + "\"");
  safetensors_entry e;
  e.name = name;
  std::string const type = f.string("dtype");
  auto const t = st_dtype_from_name(type);
  LC_CHECK(t.has_value(), f.field("dtype") << " = \"" << type << "\" is not a safetensors dtype; "
                                           << "known: " << st_dtype_list(false));
  e.type = *t;
  json const* shape = f.find("shape");
  LC_CHECK(shape != nullptr, f.field("shape") << " is missing; it is required");
  e.shape = st_parse_int_array(f, "shape", *shape, "an array of non-negative integers");
  json const* offsets = f.find("data_offsets");
  LC_CHECK(offsets != nullptr, f.field("data_offsets") << " is missing; it is required");
  auto const off = st_parse_int_array(f, "data_offsets", *offsets,
                                      "an array of two non-negative integers [begin, end]");
  if (off.size() != 2)
    f.type_error("data_offsets", *offsets, "an array of two non-negative integers [begin, end]");
  e.begin = std::uint64_t(off[0]);
  e.end = std::uint64_t(off[1]);
  LC_CHECK(e.begin <= e.end, f.field("data_offsets") << " = [" << e.begin << ", " << e.end
                                                     << "]: begin must not exceed end");
  auto const bytes = st_byte_size(e.shape, size_of(e.type));
  LC_CHECK(bytes.has_value(), f.field("shape") << " = " << shape->dump() << " of " << e.type
                                               << " overflows a 64-bit byte count");
  LC_CHECK(*bytes == e.nbytes(), f.where()
                                     << ": data_offsets [" << e.begin << ", " << e.end << ") hold "
                                     << e.nbytes() << " bytes, but shape " << shape->dump()
                                     << " of " << e.type << " needs " << *bytes);
  return e;
}

}  // namespace detail

class safetensors_file {
 public:
  // Maps `path` and validates its header; every problem is a lightcore::error naming the file.
  explicit safetensors_file(std::filesystem::path path) : file_(std::move(path)) {
    std::string const where = file_.path().string();
    auto const bytes = file_.bytes();
    LC_CHECK(bytes.size() >= 8, where << ": truncated: " << bytes.size() << " bytes, fewer than "
                                      << "the 8-byte header length");
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::uint8_t(bytes[i]);
    LC_CHECK(header_len <= bytes.size() - 8,
             where << ": header length " << header_len << " exceeds the " << bytes.size() - 8
                   << " bytes that follow it (truncated file, or not a safetensors file)");
    LC_CHECK(header_len <= safetensors_max_header_bytes,
             where << ": header length " << header_len << " exceeds the limit of "
                   << safetensors_max_header_bytes << " bytes");
    data_offset_ = 8 + header_len;
    std::uint64_t const data_size = bytes.size() - data_offset_;
    std::string_view const text(reinterpret_cast<char const*>(bytes.data()) + 8, header_len);
    LC_CHECK(!text.empty() && text.front() == '{',
             where << ": the header does not start with '{' (not a safetensors file)");

    // Names seen at the top level: the JSON parser keeps the last of duplicate keys, which
    // would silently drop a tensor.
    std::unordered_set<std::string> keys;
    std::string duplicate;
    auto const on_key = [&](int depth, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::key && depth == 1 &&
          !keys.insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
      return true;
    };
    json header;
    try {
      header = json::parse(text, on_key);
    } catch (json::exception const& e) {
      LC_THROW(where << ": the header is not valid JSON (" << e.what() << ")");
    }
    LC_CHECK(header.is_object(), where << ": the header must be a JSON object");
    LC_CHECK(duplicate.empty(),
             where << ": tensor \"" << duplicate << "\" appears more than once in the header");

    for (auto const& [key, value] : header.items()) {
      if (key == "__metadata__") {
        LC_CHECK(value.is_object(), where << ": __metadata__ must be an object of strings; got "
                                          << detail::json_excerpt(value));
        for (auto const& [mk, mv] : value.items()) {
          LC_CHECK(mv.is_string(), where << ": __metadata__ value of \"" << mk
                                         << "\" must be a string; got "
                                         << detail::json_excerpt(mv));
          metadata_.emplace(mk, mv.get<std::string>());
        }
        continue;
      }
      entries_.push_back(detail::st_parse_entry(key, value, where));
    }

    // Data order: the tensors must tile [0, data_size) exactly.
    std::sort(entries_.begin(), entries_.end(), [](auto const& a, auto const& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t cursor = 0;
    std::string const* previous = nullptr;
    for (auto const& e : entries_) {
      LC_CHECK(e.end <= data_size,
               where << ": tensor \"" << e.name << "\" data_offsets [" << e.begin << ", " << e.end
                     << ") run past the data area of " << data_size << " bytes");
      LC_CHECK(e.begin >= cursor, where << ": tensor \"" << e.name << "\" [" << e.begin << ", "
                                        << e.end << ") overlaps tensor \""
                                        << (previous ? *previous : std::string()) << "\", which "
                                        << "ends at " << cursor);
      LC_CHECK(e.begin == cursor, where << ": bytes [" << cursor << ", " << e.begin
                                        << ") of the data area belong to no tensor (a hole "
                                        << "before \"" << e.name << "\")");
      cursor = e.end;
      previous = &e.name;
    }
    LC_CHECK(cursor == data_size, where << ": the last " << data_size - cursor << " bytes of the "
                                        << data_size << "-byte data area belong to no tensor");
    for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
  }

  std::filesystem::path const& path() const noexcept { return file_.path(); }
  // Tensors in data order.
  std::span<safetensors_entry const> entries() const noexcept { return entries_; }
  std::size_t size() const noexcept { return entries_.size(); }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
  std::map<std::string, std::string, std::less<>> const& metadata() const noexcept {
    return metadata_;
  }
  // Bytes from the start of the file to the data area (8 + header length).
  std::uint64_t data_offset() const noexcept { return data_offset_; }

  safetensors_entry const& entry(std::string_view name) const {
    auto const it = index_.find(name);
    LC_CHECK(it != index_.end(), path().string()
                                     << ": no tensor named \"" << name << "\" (the "
                                     << "file holds " << entries_.size() << " tensors)");
    return entries_[it->second];
  }

  // The raw bytes of a tensor, whatever its dtype.
  std::span<std::byte const> bytes(std::string_view name) const { return bytes_of(entry(name)); }
  std::span<std::byte const> bytes_of(safetensors_entry const& e) const {
    return file_.bytes().subspan(data_offset_ + e.begin, e.nbytes());
  }

  // A host view of the tensor. The memory is mapped read-only: writing through the view faults.
  // Dtypes without a lightcore dtype (F64, I8, ...) and ranks above max_rank are errors here.
  tensor_view tensor(std::string_view name) const { return view_of(entry(name)); }
  tensor_view view_of(safetensors_entry const& e) const {
    auto const& info = info_of(e.type);
    LC_CHECK(info.view_as.has_value(), path().string()
                                           << ": tensor \"" << e.name << "\" has dtype " << e.type
                                           << ", which lightcore cannot view; supported: "
                                           << detail::st_dtype_list(true) << " (BOOL as u8)");
    LC_CHECK(e.shape.size() <= std::size_t(max_rank),
             path().string() << ": tensor \"" << e.name << "\" has rank " << e.shape.size()
                             << "; lightcore views hold at most rank " << max_rank);
    auto const* p = bytes_of(e).data();
    // The reference writer keeps tensors aligned to their element size (8-byte aligned data area,
    // tensors sorted by alignment); a file that breaks that would give misaligned typed loads.
    // An empty tensor is never loaded from, so it may sit anywhere.
    LC_CHECK(e.nbytes() == 0 || reinterpret_cast<std::uintptr_t>(p) % info.size == 0,
             path().string() << ": tensor \"" << e.name << "\" starts at file offset "
                             << data_offset_ + e.begin << ", not aligned to its " << info.size
                             << "-byte elements");
    return tensor_view(const_cast<std::byte*>(p), *info.view_as,
                       dims(std::span<std::int64_t const>(e.shape)), device::cpu());
  }

 private:
  mapped_file file_;
  std::uint64_t data_offset_ = 0;
  std::vector<safetensors_entry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string, std::less<>> metadata_;
};

}  // namespace lightcore::io
