// kv_receiver: the decode side of a KV transfer. allocate() answers the prefill side's allocate
// message: it matches the prompt against this instance's prefix cache, locks the hit, and
// reserves slots for the missing suffix only; handle() learns from the prefill side's messages
// when each layer and then the whole KV has landed; take() hands a landed prompt's slots to the
// decode engine. Cancel, a peer abort and timeouts free the destination slots and the prefix
// lock exactly once, in poll(), and never while the prefill side may still write into them.
//
//   pd::kv_receiver<backend::cpu> rx(pool, &prefix, [&](pd::message const& m) { post(m); });
//   auto response = rx.allocate(request);       // reply with to_json(response)
//   rx.handle(parse_message(body));             // layer / done / abort, from any thread
//   for (auto const& e : rx.poll()) if (e.landed) start_decoding(rx.take(e.id));
//
// allocate, cancel, poll and take belong to the thread that owns the decode pool and prefix
// cache; handle() and wait() may be called from any thread. The sink is called with no lock held.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/memory/radix_cache.hpp"
#include "lightcore/pd/messages.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

// Ordered: "has reached state X" is a comparison.
enum class receiver_state : std::uint8_t {
  allocated,  // slots reserved; no layer landed yet
  receiving,  // some layers landed
  landed,     // the prefill side said done: the whole KV is here; take() it
  aborting,   // this side gave up; waiting until the prefill side writes no more
  failed,     // ended without landing; slots freed by the next poll()
};

inline constexpr std::string_view name_of(receiver_state s) noexcept {
  switch (s) {
    case receiver_state::allocated: return "allocated";
    case receiver_state::receiving: return "receiving";
    case receiver_state::landed: return "landed";
    case receiver_state::aborting: return "aborting";
    case receiver_state::failed: return "failed";
  }
  return "?";
}

struct receiver_status {
  receiver_state state = receiver_state::allocated;
  std::int32_t layers_landed = 0;
  std::int64_t prefix_hit = 0;
  std::int64_t tokens = 0;  // suffix rows per layer
  transfer_error error;
};

// A landed prompt, handed to the decode engine. It now owns `slots[prefix_hit, n)` (free them
// or insert them into the prefix cache) and the lock on `prefix_node` (unlock it when the
// request ends); slots[0, prefix_hit) belong to the prefix cache.
struct landed_kv {
  transfer_id id = 0;
  std::uint64_t request_id = 0;
  std::vector<std::int32_t> tokens;  // [n] the prompt
  std::vector<std::int32_t> slots;   // [n] its KV slots in this pool
  std::int64_t prefix_hit = 0;
  std::optional<memory::radix_cache::handle> prefix_node;  // locked; absent without a cache
};

// What poll() reports: a transfer that landed (take() it) or failed (its slots are freed).
struct receiver_event {
  transfer_id id = 0;
  std::uint64_t request_id = 0;
  bool landed = false;
  transfer_error error;
};

struct receiver_stats {
  std::int64_t accepted = 0;
  std::int64_t refused = 0;
  std::int64_t landed = 0;
  std::int64_t failed = 0;
  std::int64_t prefix_hit_tokens = 0;  // tokens served by this side's prefix cache
  std::int64_t freed_slots = 0;        // destination slots given back after failures
  std::int64_t stray_messages = 0;     // messages for unknown or ended transfers (ignored)
};

template <Backend B>
class kv_receiver {
 public:
  using sink = std::function<void(message const&)>;

  // prefix: this instance's prefix cache over `pool`, or nullptr for none.
  kv_receiver(memory::kv_pool<B>& pool, memory::radix_cache* prefix, sink to_prefill,
              transfer_config const& config = {})
      : pool_(&pool), prefix_(prefix), to_prefill_(std::move(to_prefill)), config_(config) {
    LC_CHECK(to_prefill_ != nullptr, "kv_receiver needs a message sink towards the prefill side");
  }
  kv_receiver(kv_receiver const&) = delete;
  kv_receiver& operator=(kv_receiver const&) = delete;

  kv_layout layout() const noexcept {
    auto const& c = pool_->config();
    return {c.layers, c.width, c.type};
  }

  // Reserves destination slots for the prompt's suffix past this side's prefix hit, or refuses
  // (layout_mismatch, bad_request, out_of_slots) without holding anything.
  allocate_response allocate(allocate_request const& r, clock::time_point now = clock::now()) {
    allocate_response out;
    out.request_id = r.request_id;
    auto refuse = [&](failure why, std::string text) {
      std::lock_guard lock(mutex_);
      ++stats_.refused;
      out.accepted = false;
      out.reason = why;
      out.message = std::move(text);
      out.free_slots = pool_->slots().available();
      return out;
    };
    if (r.layout != layout()) {
      std::ostringstream os;
      os << "the prefill pool is " << r.layout << ", this decode pool " << layout();
      return refuse(failure::layout_mismatch, os.str());
    }
    auto const n = std::int64_t(r.tokens.size());
    if (n == 0 || n > pool_->config().max_tokens)
      return refuse(failure::bad_request, "a prompt of " + std::to_string(n) +
                                              " tokens; allowed: 1.." +
                                              std::to_string(pool_->config().max_tokens));
    if (r.timeout_ms < 1 || r.start_timeout_ms < 1)
      return refuse(failure::bad_request, "timeout_ms " + std::to_string(r.timeout_ms) +
                                              " and start_timeout_ms " +
                                              std::to_string(r.start_timeout_ms) + " must be >= 1");

    std::vector<std::int32_t> prefix_slots;
    std::optional<memory::radix_cache::handle> node;
    if (prefix_ != nullptr) {
      auto const m = prefix_->match(r.tokens);
      prefix_slots.assign(m.slots.begin(), m.slots.end());
      prefix_->lock(m.node);  // before any eviction below, so the hit survives it
      node = m.node;
    }
    std::int64_t const need = n - std::int64_t(prefix_slots.size());
    auto& slots = pool_->slots();
    if (prefix_ != nullptr && slots.available() < need)
      prefix_->evict(need - slots.available(),
                     [&](std::span<std::int32_t const> freed) { slots.free(freed); });
    std::vector<std::int32_t> fresh;
    if (!slots.try_alloc(need, fresh)) {
      if (node) prefix_->unlock(*node);
      return refuse(failure::out_of_slots,
                    "the decode pool has " + std::to_string(slots.available()) +
                        " free slots; this prompt needs " + std::to_string(need) + " beyond its " +
                        std::to_string(prefix_slots.size()) + " cached tokens");
    }

    auto rec = std::make_unique<record>();
    rec->request_id = r.request_id;
    rec->tokens = r.tokens;
    rec->prefix_slots = std::move(prefix_slots);
    rec->fresh = std::move(fresh);
    rec->node = node;
    rec->landed_layers.assign(std::size_t(layout().layers), false);
    // Until the first layer lands the prompt may still wait in the prefill instance's queue; the
    // transfer's own budget starts then (handle()).
    rec->deadline = now + std::chrono::milliseconds(r.start_timeout_ms);
    rec->budget = std::chrono::milliseconds(r.timeout_ms);
    std::lock_guard lock(mutex_);
    rec->id = next_id_++;
    out.accepted = true;
    out.id = rec->id;
    out.prefix_hit = std::int64_t(rec->prefix_slots.size());
    out.dst_slots = rec->fresh;
    out.free_slots = slots.available();
    ++stats_.accepted;
    stats_.prefix_hit_tokens += out.prefix_hit;
    records_.emplace(rec->id, std::move(rec));
    return out;
  }

  // A message from the prefill side: layer, done or abort. Messages about unknown or ended
  // transfers are counted and ignored (they may cross an abort on the way). The first landed
  // layer starts the transfer's timeout_ms budget.
  void handle(message const& m, clock::time_point now = clock::now()) {
    {
      std::lock_guard lock(mutex_);
      if (auto const* x = std::get_if<layer_landed>(&m)) {
        record* r = live(x->id);
        if (r == nullptr || r->state >= receiver_state::landed) return stray();
        LC_CHECK(x->layer >= 0 && x->layer < layout().layers,
                 "kv_receiver: transfer " << x->id << " reports layer " << x->layer
                                          << "; allowed: 0.." << layout().layers - 1);
        if (!r->landed_layers[std::size_t(x->layer)]) {
          r->landed_layers[std::size_t(x->layer)] = true;
          ++r->layers_landed;
        }
        if (r->state == receiver_state::allocated) r->deadline = now + r->budget;
        r->state = receiver_state::receiving;
      } else if (auto const* d = std::get_if<transfer_done>(&m)) {
        record* r = live(d->id);
        if (r == nullptr || r->state == receiver_state::landed ||
            r->state == receiver_state::failed)
          return stray();
        if (r->state == receiver_state::aborting) {
          r->state = receiver_state::failed;  // the peer writes no more: free at once
        } else if (d->layers != layout().layers || d->tokens != std::int64_t(r->fresh.size())) {
          set_failed(*r, failure::bad_request, side::decode,
                     "done reports " + std::to_string(d->layers) + " layers x " +
                         std::to_string(d->tokens) + " tokens; expected " +
                         std::to_string(layout().layers) + " x " + std::to_string(r->fresh.size()));
        } else {
          r->state = receiver_state::landed;
          r->layers_landed = layout().layers;
          ++stats_.landed;
        }
      } else if (auto const* a = std::get_if<transfer_abort>(&m)) {
        record* r = live(a->id);
        if (r == nullptr || r->state == receiver_state::failed) return stray();
        // On a landed transfer: the prefill side gives it up (its request ended with the first
        // token after the KV had already moved); nobody will take() it, so it is freed now
        // rather than after the claim timeout.
        if (r->state == receiver_state::aborting)
          r->state = receiver_state::failed;  // our own error stands; the ack frees the slots
        else
          set_failed(*r, a->reason, a->origin, a->message);
      } else {
        LC_THROW("kv_receiver::handle: message type index "
                 << m.index() << " is not for the decode side; allowed: layer, done, abort");
      }
      changed_.notify_all();  // under the lock: a waiter may destroy this object once it wakes
    }
  }

  // Gives a transfer up from this side (the client went away, the instance stops). A landed one
  // is freed by the next poll(); a live one is freed once the prefill side acknowledges, or
  // after abort_grace. Returns false for an unknown or ended transfer.
  bool cancel(transfer_id id, failure reason = failure::cancelled,
              std::string text = "cancelled by the decode side",
              clock::time_point now = clock::now()) {
    std::optional<message> out;
    {
      std::lock_guard lock(mutex_);
      record* r = live(id);
      if (r == nullptr || r->state >= receiver_state::aborting) return false;
      if (r->state == receiver_state::landed)
        set_failed(*r, reason, side::decode, std::move(text));
      else
        out = start_abort(*r, reason, std::move(text), now);
    }
    if (out) emit(*out);
    changed_.notify_all();
    return true;
  }

  // Times out live transfers, gives up waiting for acknowledgements after abort_grace, frees the
  // slots and prefix locks of failed transfers, and reports those and newly landed transfers.
  std::vector<receiver_event> poll(clock::time_point now = clock::now()) {
    std::vector<message> out;
    std::vector<std::unique_ptr<record>> dead;
    std::vector<receiver_event> events;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, r] : records_) {
        if (r->state <= receiver_state::receiving && now >= r->deadline)
          out.push_back(start_abort(*r, failure::timeout,
                                    "transfer " + std::to_string(id) + " passed its deadline",
                                    now));
        if (r->state == receiver_state::aborting && now >= r->abort_deadline)
          r->state = receiver_state::failed;  // no acknowledgement: the peer is presumed gone
        if (r->state == receiver_state::landed && !r->reported) {
          r->reported = true;
          events.push_back({id, r->request_id, true, {}});
        }
      }
      for (auto it = records_.begin(); it != records_.end();) {
        if (it->second->state == receiver_state::failed) {
          dead.push_back(std::move(it->second));
          it = records_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto const& r : dead) stats_.freed_slots += std::int64_t(r->fresh.size());
    }
    for (auto const& m : out) emit(m);
    for (auto const& r : dead) {
      pool_->slots().free(r->fresh);
      if (r->node) prefix_->unlock(*r->node);
      events.push_back({r->id, r->request_id, false, r->error});
    }
    if (!dead.empty()) changed_.notify_all();
    return events;
  }

  // Hands a landed transfer to the decode engine (see landed_kv for what it then owns).
  landed_kv take(transfer_id id) {
    std::lock_guard lock(mutex_);
    record* r = live(id);
    LC_CHECK(r != nullptr, "kv_receiver::take: unknown transfer "
                               << id << " (never allocated, taken already, or freed)");
    LC_CHECK(r->state == receiver_state::landed, "kv_receiver::take: transfer "
                                                     << id << " is " << name_of(r->state)
                                                     << "; only a landed transfer can be taken");
    landed_kv out;
    out.id = id;
    out.request_id = r->request_id;
    out.tokens = std::move(r->tokens);
    out.slots = std::move(r->prefix_slots);
    out.prefix_hit = std::int64_t(out.slots.size());
    out.slots.insert(out.slots.end(), r->fresh.begin(), r->fresh.end());
    out.prefix_node = r->node;
    records_.erase(id);
    return out;
  }

  // Waits until the transfer landed or failed (or is unknown), at most `timeout`. Returns its
  // state then (nullopt: unknown, i.e. taken or freed).
  std::optional<receiver_state> wait(transfer_id id, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [&] {
      record* r = live(id);
      return r == nullptr || r->state == receiver_state::landed ||
             r->state == receiver_state::failed;  // not aborting: that one is still settling
    });
    record* r = live(id);
    return r == nullptr ? std::nullopt : std::optional<receiver_state>(r->state);
  }

  std::optional<receiver_status> status(transfer_id id) const {
    std::lock_guard lock(mutex_);
    auto it = records_.find(id);
    if (it == records_.end()) return std::nullopt;
    record const& r = *it->second;
    return receiver_status{r.state, r.layers_landed, std::int64_t(r.prefix_slots.size()),
                           std::int64_t(r.fresh.size()), r.error};
  }
  receiver_stats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  std::size_t active() const {
    std::lock_guard lock(mutex_);
    return records_.size();
  }

 private:
  struct record {
    transfer_id id = 0;
    std::uint64_t request_id = 0;
    std::vector<std::int32_t> tokens;        // [n]
    std::vector<std::int32_t> prefix_slots;  // [prefix_hit] owned by the prefix cache
    std::vector<std::int32_t> fresh;         // [n - prefix_hit] ours until take() or freed
    std::optional<memory::radix_cache::handle> node;
    std::vector<bool> landed_layers;  // [layers]
    std::int32_t layers_landed = 0;
    receiver_state state = receiver_state::allocated;
    transfer_error error;
    bool reported = false;       // landed event returned by poll()
    clock::time_point deadline;  // start_timeout_ms after allocation, then timeout_ms after
                                 // the first landed layer
    std::chrono::milliseconds budget{0};  // timeout_ms
    clock::time_point abort_deadline;
  };

  record* live(transfer_id id) {
    auto it = records_.find(id);
    return it == records_.end() ? nullptr : it->second.get();
  }
  void stray() { ++stats_.stray_messages; }

  void set_failed(record& r, failure reason, side origin, std::string text) {
    r.state = receiver_state::failed;
    r.error = {reason, origin, std::move(text)};
    ++stats_.failed;
  }

  message start_abort(record& r, failure reason, std::string text, clock::time_point now) {
    r.state = receiver_state::aborting;
    r.error = {reason, side::decode, std::move(text)};
    r.abort_deadline = now + config_.abort_grace;
    ++stats_.failed;
    return transfer_abort{r.id, reason, side::decode, r.error.message, false};
  }

  void emit(message const& m) noexcept {
    try {
      to_prefill_(m);
    } catch (...) {
      // A lost abort is covered by abort_grace here and by the deadline on the prefill side.
    }
  }

  memory::kv_pool<B>* pool_;
  memory::radix_cache* prefix_;
  sink to_prefill_;
  transfer_config config_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::unordered_map<transfer_id, std::unique_ptr<record>> records_;
  transfer_id next_id_ = 1;
  receiver_stats stats_;
};

}  // namespace lightcore::pd
