// The wire format of the NCCL KV transport (pd/nccl_transport.hpp), host-only so that CPU builds
// test it: the fixed-size hello, layer header and ack records, their checks, and the hex form of
// an NCCL unique id for the JSON control messages. docs/pd.md ("NCCL framing") specifies it.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

static_assert(std::endian::native == std::endian::little,
              "the pd NCCL framing is little-endian and copies records as bytes");

// Bytes of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES); nccl_transport.hpp checks it against nccl.h.
inline constexpr std::size_t nccl_id_size = 128;
using nccl_id_bytes = std::array<std::uint8_t, nccl_id_size>;

inline constexpr std::uint32_t nccl_frame_magic = 0x4b564e44;  // bytes 'D' 'N' 'V' 'K'
inline constexpr std::uint16_t nccl_frame_version = 1;

enum class nccl_frame_kind : std::uint16_t {
  hello = 1,  // each side to the other, once, when the link is made
  layer = 2,  // P -> D: announces one layer's slot ids and rows, which follow
  ack = 3,    // D -> P: one per layer header, same tag
};

// Sent by each side once after the communicators are made: its pool's shape. Each side refuses
// a peer whose layout differs; P learns D's slot count from D's hello.
struct nccl_hello {
  std::uint32_t magic = nccl_frame_magic;
  std::uint16_t version = nccl_frame_version;
  std::uint16_t kind = std::uint16_t(nccl_frame_kind::hello);
  std::int32_t layers = 0;
  std::uint32_t type = 0;  // lightcore::dtype value
  std::int64_t width = 0;  // elements per row
  std::int64_t slots = 0;  // rows of each layer tensor
};
static_assert(sizeof(nccl_hello) == 32 && std::is_trivially_copyable_v<nccl_hello>);

// P -> D before each layer's payload: `rows` x i32 destination slot ids, then `rows` x
// `row_bytes` row data, as two further sends (none when rows is 0).
struct nccl_layer_header {
  std::uint32_t magic = nccl_frame_magic;
  std::uint16_t version = nccl_frame_version;
  std::uint16_t kind = std::uint16_t(nccl_frame_kind::layer);
  std::uint64_t tag = 0;  // P's sequence number of the layer copy, echoed by the ack
  std::int32_t layer = 0;
  std::uint32_t rows = 0;
  std::uint64_t row_bytes = 0;  // must equal D's row size: a consistency check of the stream
};
static_assert(sizeof(nccl_layer_header) == 32 && std::is_trivially_copyable_v<nccl_layer_header>);

// Room for a refusal's reason in an ack; a longer one is cut to this many bytes.
inline constexpr std::size_t nccl_ack_message_capacity = 224;

// D -> P, one per layer header: status 0 when every row was written into D's pool, otherwise 1
// and the reason (D wrote nothing of that layer).
struct nccl_ack {
  std::uint32_t magic = nccl_frame_magic;
  std::uint16_t version = nccl_frame_version;
  std::uint16_t kind = std::uint16_t(nccl_frame_kind::ack);
  std::uint64_t tag = 0;
  std::int32_t layer = 0;
  std::uint32_t rows = 0;
  std::uint32_t status = 0;
  std::uint32_t message_bytes = 0;  // <= nccl_ack_message_capacity
  std::array<char, nccl_ack_message_capacity> message{};
};
static_assert(sizeof(nccl_ack) == 256 && std::is_trivially_copyable_v<nccl_ack>);

// The record's bytes as sent.
template <class Record>
requires std::is_trivially_copyable_v<Record> std::array<std::byte, sizeof(Record)> pack(
    Record const& r)
noexcept { return std::bit_cast<std::array<std::byte, sizeof(Record)>>(r); }

namespace detail {
template <class Record>
std::string unpack_record(std::span<std::byte const> bytes, nccl_frame_kind kind, char const* what,
                          Record& out) {
  if (bytes.size() != sizeof(Record))
    return std::string(what) + " of " + std::to_string(bytes.size()) + " bytes; it is " +
           std::to_string(sizeof(Record));
  Record r;
  std::memcpy(&r, bytes.data(), sizeof r);
  if (r.magic != nccl_frame_magic) return std::string("bad magic in a ") + what;
  if (r.version != nccl_frame_version)
    return std::string(what) + " version " + std::to_string(r.version) + "; this side speaks " +
           std::to_string(nccl_frame_version);
  if (r.kind != std::uint16_t(kind))
    return std::string("expected a ") + what + " (kind " + std::to_string(std::uint16_t(kind)) +
           "), got kind " + std::to_string(r.kind);
  out = r;
  return {};
}
}  // namespace detail

// Each unpack checks size, magic, version and kind (and the ack its message length): an empty
// string when `out` holds the record, else the reason (and `out` is unchanged). A failure means
// the two sides are out of step: the link cannot continue.
inline std::string unpack(std::span<std::byte const> bytes, nccl_hello& out) {
  return detail::unpack_record(bytes, nccl_frame_kind::hello, "hello", out);
}
inline std::string unpack(std::span<std::byte const> bytes, nccl_layer_header& out) {
  return detail::unpack_record(bytes, nccl_frame_kind::layer, "layer header", out);
}
inline std::string unpack(std::span<std::byte const> bytes, nccl_ack& out) {
  nccl_ack a;
  std::string e = detail::unpack_record(bytes, nccl_frame_kind::ack, "ack", a);
  if (!e.empty()) return e;
  if (a.message_bytes > nccl_ack_message_capacity)
    return "ack message of " + std::to_string(a.message_bytes) + " bytes; at most " +
           std::to_string(nccl_ack_message_capacity);
  if (a.status != 0 && a.status != 1)
    return "ack status " + std::to_string(a.status) + "; allowed 0 (written) or 1 (refused)";
  out = a;
  return {};
}

inline nccl_hello make_hello(kv_layout const& l, std::int64_t slots) noexcept {
  nccl_hello h;
  h.layers = l.layers;
  h.type = std::uint32_t(l.type);
  h.width = l.width;
  h.slots = slots;
  return h;
}

inline kv_layout layout_of(nccl_hello const& h) noexcept {
  return {h.layers, h.width, static_cast<dtype>(h.type)};
}

// The ack of a layer header: status 0 when `error` is empty, else 1 with the reason, cut to
// nccl_ack_message_capacity bytes.
inline nccl_ack make_ack(nccl_layer_header const& h, std::string_view error) noexcept {
  nccl_ack a;
  a.tag = h.tag;
  a.layer = h.layer;
  a.rows = h.rows;
  a.status = error.empty() ? 0 : 1;
  a.message_bytes = std::uint32_t(std::min(error.size(), nccl_ack_message_capacity));
  std::memcpy(a.message.data(), error.data(), a.message_bytes);
  return a;
}

inline std::string_view message_of(nccl_ack const& a) noexcept {
  return {a.message.data(), std::min<std::size_t>(a.message_bytes, nccl_ack_message_capacity)};
}

// Whether D can size and receive the payload that follows `h`: the row size must be its own and
// the row count at most its slot count (a layer cannot name more distinct slots). A failure is
// fatal to the link (the payload cannot be received, so the stream is out of step); an empty
// string when the header is receivable.
inline std::string check_receivable(nccl_layer_header const& h, std::size_t row_bytes,
                                    std::int64_t slots) {
  if (h.row_bytes != row_bytes)
    return "layer header claims rows of " + std::to_string(h.row_bytes) +
           " bytes; this pool's are " + std::to_string(row_bytes);
  if (std::int64_t(h.rows) > slots)
    return "layer header claims " + std::to_string(h.rows) + " rows; this pool has " +
           std::to_string(slots) + " slots";
  return {};
}

// Whether D writes the received layer: the layer must exist and every destination slot id be in
// [0, slots). The reason for refusing it (sent back in the ack), or an empty string.
inline std::string check_layer(nccl_layer_header const& h, std::int32_t layers,
                               std::span<std::int32_t const> dst_slots, std::int64_t slots) {
  if (h.layer < 0 || h.layer >= layers)
    return "layer " + std::to_string(h.layer) + " is out of range; this pool has " +
           std::to_string(layers) + " layers";
  if (dst_slots.size() != h.rows)
    return std::to_string(dst_slots.size()) + " slot ids for " + std::to_string(h.rows) + " rows";
  for (std::size_t i = 0; i < dst_slots.size(); ++i)
    if (dst_slots[i] < 0 || dst_slots[i] >= slots)
      return "destination slot " + std::to_string(dst_slots[i]) + " (row " + std::to_string(i) +
             ") is out of range; allowed 0.." + std::to_string(slots - 1);
  return {};
}

// A run of consecutive slot ids: rows [index, index + count) of a copy name slots
// [first, first + count). One device copy moves a whole run.
struct slot_run {
  std::size_t index = 0;
  std::int32_t first = 0;
  std::size_t count = 0;
};

// Splits `ids` into maximal runs of consecutive ids, in order.
inline std::vector<slot_run> consecutive_runs(std::span<std::int32_t const> ids) {
  std::vector<slot_run> runs;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t n = 1;
    while (i + n < ids.size() && std::int64_t(ids[i + n]) == std::int64_t(ids[i]) + std::int64_t(n))
      ++n;
    runs.push_back({i, ids[i], n});
    i += n;
  }
  return runs;
}

// The 256 lowercase hex characters of an NCCL unique id, two per byte in order, for JSON.
inline std::string nccl_id_to_hex(nccl_id_bytes const& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(2 * id.size(), '0');
  for (std::size_t i = 0; i < id.size(); ++i) {
    out[2 * i] = digits[id[i] >> 4];
    out[2 * i + 1] = digits[id[i] & 0xf];
  }
  return out;
}

// The id written by nccl_id_to_hex (either case accepted); throws, saying what was wrong, on any
// other length or a character that is not a hex digit.
inline nccl_id_bytes nccl_id_from_hex(std::string_view hex) {
  LC_CHECK(hex.size() == 2 * nccl_id_size,
           "NCCL unique id: " << hex.size() << " hex characters; it needs exactly "
                              << 2 * nccl_id_size << " (" << nccl_id_size << " bytes)");
  auto nibble = [&](std::size_t at) -> std::uint8_t {
    char const c = hex[at];
    if (c >= '0' && c <= '9') return std::uint8_t(c - '0');
    if (c >= 'a' && c <= 'f') return std::uint8_t(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return std::uint8_t(c - 'A' + 10);
    LC_THROW("NCCL unique id: character " << at << " ('" << c
                                          << "') is not a hex digit; allowed 0-9, a-f, A-F");
  };
  nccl_id_bytes id{};
  for (std::size_t i = 0; i < id.size(); ++i)
    id[i] = std::uint8_t(nibble(2 * i) << 4 | nibble(2 * i + 1));
  return id;
}

}  // namespace lightcore::pd
