// The vocabulary of prefill/decode separation: what a KV transfer is (request, token range, the
// source and destination slot ids), why one fails, and the kv_transport concept that moves one
// layer's rows from a prefill instance's KV pool into a decode instance's.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::pd {

// Chosen by the decode side when it accepts a transfer; unique among that instance's transfers.
using transfer_id = std::uint64_t;

using clock = std::chrono::steady_clock;

// The two ends of a transfer.
enum class side : std::uint8_t { prefill, decode };

inline constexpr std::string_view name_of(side s) noexcept {
  return s == side::prefill ? "prefill" : "decode";
}

// Why a transfer ended without landing. The names are the wire names of the JSON messages.
enum class failure : std::uint8_t {
  none,             // not failed
  cancelled,        // a side cancelled it (the client went away, the request was aborted)
  timeout,          // the deadline passed before the whole KV landed
  out_of_slots,     // the decode pool cannot hold the missing suffix now (retry elsewhere)
  layout_mismatch,  // the two pools disagree on layers, width or element type
  bad_request,      // a malformed or inconsistent message or call
  transport,        // the transport failed to move a layer
  shutdown,         // the instance is stopping
};

inline constexpr std::string_view name_of(failure f) noexcept {
  switch (f) {
    case failure::none: return "none";
    case failure::cancelled: return "cancelled";
    case failure::timeout: return "timeout";
    case failure::out_of_slots: return "out_of_slots";
    case failure::layout_mismatch: return "layout_mismatch";
    case failure::bad_request: return "bad_request";
    case failure::transport: return "transport";
    case failure::shutdown: return "shutdown";
  }
  return "?";
}

// The failure named `name`; throws, listing the names, for an unknown one.
inline failure failure_from_name(std::string_view name) {
  for (auto f :
       {failure::none, failure::cancelled, failure::timeout, failure::out_of_slots,
        failure::layout_mismatch, failure::bad_request, failure::transport, failure::shutdown})
    if (name_of(f) == name) return f;
  LC_THROW("unknown transfer failure reason '"
           << name
           << "'; allowed: none, cancelled, timeout, out_of_slots, layout_mismatch, bad_request, "
              "transport, shutdown");
}

// A failure with where it started and a sentence for logs and HTTP replies. The router maps
// out_of_slots (and shutdown) to "try another decode instance", everything else to a 5xx.
struct transfer_error {
  failure reason = failure::none;
  side origin = side::prefill;  // the side that decided the transfer failed
  std::string message;
};

// The shape every KV pool of a deployment must share for rows to be copied as bytes.
struct kv_layout {
  std::int32_t layers = 1;   // layers with a KV cache; default 1
  std::int64_t width = 576;  // elements per slot row; default 576 (MLA latent 512 + rope 64)
  dtype type = dtype::bf16;  // element type; default bf16

  std::size_t row_bytes() const noexcept { return std::size_t(width) * size_of(type); }
  friend bool operator==(kv_layout const&, kv_layout const&) = default;
};

inline std::ostream& operator<<(std::ostream& os, kv_layout const& l) {
  return os << l.layers << " layers x " << l.width << " " << l.type;
}

// Timing of the protocol; both sides use the same struct.
struct transfer_config {
  // Whole-transfer budget, from allocation to the last layer landing; default 60 s. A request
  // may ask for less in its allocate message; a transfer that exceeds it fails with `timeout`
  // and frees everything.
  std::chrono::milliseconds timeout{60'000};
  // After the decode side gives up on a transfer (cancel or timeout) it keeps the destination
  // slots until the prefill side acknowledges that it writes no more, or until this much time
  // passes without the acknowledgement (the peer is presumed gone); default 5 s.
  std::chrono::milliseconds abort_grace{5'000};
};

// One layer's worth of a transfer: copy row src_slots[i] of the source pool's layer tensor to
// row dst_slots[i] of the destination pool's layer tensor, for every i. The spans stay valid
// until `done` is called.
struct layer_copy {
  std::int32_t layer = 0;
  std::span<std::int32_t const> src_slots;  // [n] rows of the prefill pool's layer tensor
  std::span<std::int32_t const> dst_slots;  // [n] rows of the decode pool's layer tensor
  // Called exactly once, from any thread, when the rows have landed (empty message) or the copy
  // failed (the reason). Must not throw.
  std::function<void(std::string_view error)> done;
};

// A kv_transport moves layer rows between one prefill pool and one decode pool (it knows both
// ends: host pointers in one process, imported CUDA IPC handles across processes, a socket).
//   layout()                 the shared kv_layout
//   source_slots()           rows of each source layer tensor (slot ids allowed: 0..n-1)
//   destination_slots()      rows of each destination layer tensor
//   submit(layer_copy)       queues the copy and returns at once; the prefill thread never
//                            waits for the bytes to move. It either throws (the job was not
//                            taken: done is never called) or calls done exactly once later
template <class T>
concept kv_transport = requires(T& t, T const& ct, layer_copy job) {
  { ct.layout() } -> std::same_as<kv_layout>;
  { ct.source_slots() } -> std::convertible_to<std::int64_t>;
  { ct.destination_slots() } -> std::convertible_to<std::int64_t>;
  t.submit(std::move(job));
};

}  // namespace lightcore::pd
