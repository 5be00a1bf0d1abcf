// kv_pool<B>: the token-level KV cache (page size 1) on backend B. Per layer one tensor
// [capacity, width] with one row per token slot, the device req_to_token table [rows, max_tokens]
// of slot ids through which attention finds a request's tokens, and the host bookkeeping behind
// both (token_slots hands out slot ids, req_to_token_table rows and the host mirror).
//
// Every allocation decision is made on the host: write_slots() updates the mirror and queues the
// copy of the new entries on the step's stream, so the forward never waits for a round trip.
//
//   memory::kv_pool<backend::cuda> kv(gpu, {.layers = 61, .capacity = n, .max_requests = 256});
//   auto row = kv.table().acquire_row();                  // admission
//   std::vector<std::int32_t> ids;
//   if (kv.slots().try_alloc(prompt_len, ids)) kv.write_slots(*row, 0, ids, stream);
//   attention(q, kv.layer(i), kv.req_to_token(), ...);    // the forward reads both views
//
// Not thread-safe: it belongs to the thread that schedules.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/memory/req_to_token.hpp"
#include "lightcore/memory/token_slots.hpp"

namespace lightcore::memory {

struct kv_pool_config {
  std::int32_t layers = 1;          // layers with a KV cache; default 1
  std::int64_t capacity = 0;        // token slots per layer (rows of each KV tensor); required
  std::int64_t width = 576;         // elements per slot; default 576 (MLA latent: 512 kv + 64 rope)
  dtype type = dtype::bf16;         // element type of the KV tensors; default bf16
  std::int32_t max_requests = 256;  // rows of req_to_token (requests held at once); default 256
  std::int64_t max_tokens = 16384;  // positions one request may address; default 16384
};

struct kv_pool_stats {
  std::int64_t capacity = 0;  // token slots
  std::int64_t used = 0;      // slots handed out (held by requests or by a prefix cache)
  std::int64_t free = 0;      // slots that try_alloc can hand out now
};

template <Backend B>
class kv_pool {
 public:
  kv_pool(B& backend, kv_pool_config const& config)
      : backend_(&backend),
        config_(config),
        slots_(config.capacity),
        table_(config.max_requests, config.max_tokens) {
    LC_CHECK(config.layers >= 1, "kv_pool needs at least one layer; got " << config.layers);
    LC_CHECK(config.capacity >= 1 && config.capacity <= std::int64_t{INT32_MAX},
             "kv_pool capacity " << config.capacity << " slots is out of range; allowed: 1.."
                                 << INT32_MAX << " (slot ids are int32)");
    LC_CHECK(config.width >= 1, "kv_pool width " << config.width << " must be >= 1 element");
    layers_.reserve(std::size_t(config.layers));
    for (std::int32_t l = 0; l < config.layers; ++l)
      layers_.emplace_back(backend, config.type, dims{config.capacity, config.width});
    LC_CHECK(std::int64_t(config.max_requests) * config.max_tokens <= std::int64_t{INT32_MAX},
             "kv_pool: req_to_token of " << config.max_requests << " x " << config.max_tokens
                                         << " entries; at most 2^31 - 1 (flat int32 indices)");
    req_to_token_ = tensor<B>(backend, dtype::i32, dims{config.max_requests, config.max_tokens});
    // Slot 0 everywhere: a kernel that reads past a request's length by mistake still reads a
    // valid row instead of leaving the pool.
    auto stream = backend.make_stream();
    fill(backend, req_to_token_.view(), std::int32_t{0}, stream);
    stream.synchronize();
  }

  kv_pool(kv_pool const&) = delete;
  kv_pool& operator=(kv_pool const&) = delete;

  // KV bytes one token takes across all layers: layers * width * element size.
  static std::size_t bytes_per_token(std::int32_t layers, std::int64_t width, dtype type) {
    LC_CHECK(layers >= 1 && width >= 1,
             "bytes_per_token needs layers >= 1 and width >= 1; got " << layers << ", " << width);
    return std::size_t(layers) * std::size_t(width) * size_of(type);
  }

  // Slots that fit in `fraction` of `free_bytes`: floor(free_bytes * fraction / bytes_per_token).
  // free_bytes: bytes of device memory free now (after weights and workspaces are placed);
  // fraction: the share of them given to the KV pool, in (0, 1]; bytes_per_token: KV bytes of
  // one token over all layers (bytes_per_token() above). The req_to_token table is not counted:
  // it is small (rows * max_tokens * 4 bytes), leave room for it in the remaining fraction.
  static std::int64_t tokens_for_budget(std::size_t free_bytes, double fraction,
                                        std::size_t bytes_per_token) {
    LC_CHECK(fraction > 0.0 && fraction <= 1.0,
             "KV memory fraction " << fraction << " is out of range; allowed: (0, 1]");
    LC_CHECK(bytes_per_token > 0, "bytes_per_token must be > 0");
    long double const budget = static_cast<long double>(free_bytes) * fraction;
    auto const tokens =
        static_cast<std::int64_t>(std::floor(budget / static_cast<long double>(bytes_per_token)));
    return tokens < std::int64_t{INT32_MAX} ? tokens : std::int64_t{INT32_MAX};
  }

  // Records slot ids for positions [pos0, pos0 + slots.size()) of a held request row and queues
  // their copy into the device table on `stream`. The copy reads the host mirror, which is
  // pageable memory: the driver stages such a copy before the call returns, so later mirror
  // updates cannot race with it.
  void write_slots(std::int32_t row, std::int64_t pos0, std::span<std::int32_t const> slots,
                   typename B::stream_type const& stream) {
    check_slots(slots, "write_slots");
    table_.set(row, pos0, slots);
    if (slots.empty()) return;
    std::size_t const offset =
        std::size_t(row) * std::size_t(config_.max_tokens) + std::size_t(pos0);
    auto* const dst = static_cast<std::int32_t*>(req_to_token_.data()) + offset;
    backend_->copy(dst, table_.data() + offset, slots.size() * sizeof(std::int32_t), stream);
  }

  // The same entries recorded in the host mirror only, their flat device-table indices (row *
  // max_tokens + position) and ids appended to `index` and `values`: for a caller that sends a
  // whole step's updates at once (one copy and one scatter). Same checks as write_slots.
  void stage_slots(std::int32_t row, std::int64_t pos0, std::span<std::int32_t const> slots,
                   std::vector<std::int32_t>& index, std::vector<std::int32_t>& values) {
    check_slots(slots, "stage_slots");
    table_.set(row, pos0, slots);
    std::int64_t const base = std::int64_t(row) * config_.max_tokens + pos0;
    for (std::size_t i = 0; i < slots.size(); ++i)
      index.push_back(std::int32_t(base + std::int64_t(i)));
    values.insert(values.end(), slots.begin(), slots.end());
  }

  // Views for the forward pass.
  tensor_view layer(std::int32_t l) const {
    LC_CHECK(l >= 0 && l < config_.layers,
             "kv_pool layer " << l << " is out of range; allowed: 0.." << config_.layers - 1);
    return layers_[std::size_t(l)].view();
  }
  std::vector<tensor_view> layers() const {
    std::vector<tensor_view> v;
    v.reserve(layers_.size());
    for (tensor<B> const& t : layers_) v.push_back(t.view());
    return v;
  }
  tensor_view req_to_token() const { return req_to_token_.view(); }  // [rows, max_tokens] i32

  kv_pool_stats stats() const noexcept {
    return {slots_.capacity(), slots_.used(), slots_.available()};
  }
  // Bytes the pool holds on the device: KV tensors plus the req_to_token table.
  std::size_t device_bytes() const noexcept {
    std::size_t n = req_to_token_.nbytes();
    for (tensor<B> const& t : layers_) n += t.nbytes();
    return n;
  }

  token_slots& slots() noexcept { return slots_; }
  token_slots const& slots() const noexcept { return slots_; }
  req_to_token_table& table() noexcept { return table_; }
  req_to_token_table const& table() const noexcept { return table_; }
  kv_pool_config const& config() const noexcept { return config_; }

 private:
  void check_slots(std::span<std::int32_t const> slots, char const* what) const {
    for (std::int32_t const s : slots)
      LC_CHECK(s >= 0 && s < config_.capacity, "kv_pool::" << what << ": slot id " << s
                                                           << " is out of range; allowed: 0.."
                                                           << config_.capacity - 1);
  }

  B* backend_;
  kv_pool_config config_;
  std::vector<tensor<B>> layers_;  // each [capacity, width]
  tensor<B> req_to_token_;         // [max_requests, max_tokens] i32
  token_slots slots_;
  req_to_token_table table_;
};

}  // namespace lightcore::memory
