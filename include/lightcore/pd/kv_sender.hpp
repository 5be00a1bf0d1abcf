// kv_sender: the prefill side of a KV transfer. After the decode side accepted an allocation,
// begin() pins the prompt's source slots; the forward calls send_layer(l) as soon as layer l's
// KV is written, so the copy of layer l overlaps the compute of layer l + 1; the last landed
// layer sends `done`. Cancel, a peer abort, a timeout or a transport error end it; poll() then
// releases the source pins exactly once.
//
//   pd::kv_sender<pd::host_transport> tx(link, [&](pd::message const& m) { post(to_json(m)); });
//   tx.begin(response, prompt_slots, [&](auto slots) { unpin(slots); });
//   for (l...) { forward_layer(l); tx.send_layer(response.id, l); }
//   tx.poll();                                   // each scheduler step: timeouts, releases
//
// begin, send_layer, cancel and poll belong to the thread that owns the prefill pool (the
// release callback runs there); handle() and the transport's completions may come from any
// thread. The message sink is called without any lock held, from either kind of thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/pd/messages.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

// Ordered: "has reached state X" is a comparison.
enum class sender_state : std::uint8_t {
  sending,  // layers being submitted and copied
  done,     // every layer landed; `done` sent; pins released by the next poll()
  failed,   // ended without landing; pins released by the next poll() once no copy is in flight
};

struct sender_status {
  sender_state state = sender_state::sending;
  std::int32_t layers_sent = 0;    // send_layer() calls accepted
  std::int32_t layers_landed = 0;  // copies finished
  std::int64_t tokens = 0;         // rows per layer this transfer moves (the suffix)
  transfer_error error;            // when failed
};

// What poll() reports for each transfer it finished: the pins are released.
struct sender_event {
  transfer_id id = 0;
  std::uint64_t request_id = 0;
  bool landed = false;  // true: the decode side has the whole KV
  transfer_error error;
};

struct sender_stats {
  std::int64_t begun = 0;
  std::int64_t landed = 0;
  std::int64_t failed = 0;
  std::int64_t released = 0;  // release callbacks run (must end equal to begun)
  std::int64_t rows_sent = 0;
};

template <kv_transport Transport>
class kv_sender {
 public:
  using sink = std::function<void(message const&)>;
  using release_fn = std::function<void(std::span<std::int32_t const>)>;

  kv_sender(Transport& transport, sink to_decode, transfer_config const& config = {})
      : transport_(&transport), to_decode_(std::move(to_decode)), config_(config) {
    LC_CHECK(to_decode_ != nullptr, "kv_sender needs a message sink towards the decode side");
  }
  kv_sender(kv_sender const&) = delete;
  kv_sender& operator=(kv_sender const&) = delete;

  // Waits for the copies still in flight (their completions point into this object).
  ~kv_sender() {
    std::unique_lock lock(mutex_);
    drained_.wait(lock, [&] { return in_flight_total_ == 0; });
  }

  // The allocate message for a prompt, with this side's layout.
  allocate_request make_request(std::uint64_t request_id, std::vector<std::int32_t> tokens,
                                std::optional<std::chrono::milliseconds> timeout = {}) const {
    return {request_id, std::move(tokens), transport_->layout(),
            (timeout ? *timeout : config_.timeout).count()};
  }

  // Starts the transfer the decode side accepted. prompt_slots: the prefill pool's slots of the
  // whole prompt ([prefix_hit + dst_slots.size()]); positions [prefix_hit, n) move. The pins are
  // handed to `release` exactly once, from poll(), when the transfer has ended either way.
  void begin(allocate_response const& r, std::span<std::int32_t const> prompt_slots,
             release_fn release, std::optional<std::chrono::milliseconds> timeout = {},
             clock::time_point now = clock::now()) {
    LC_CHECK(r.accepted, "kv_sender::begin: request " << r.request_id << " was refused ("
                                                      << name_of(r.reason) << ": " << r.message
                                                      << "); only an accepted allocation begins");
    LC_CHECK(release != nullptr, "kv_sender::begin: transfer " << r.id << " needs a release "
                                                               << "callback for its pins");
    LC_CHECK(r.prefix_hit >= 0 && r.prefix_hit + std::int64_t(r.dst_slots.size()) ==
                                      std::int64_t(prompt_slots.size()),
             "kv_sender::begin: transfer " << r.id << " has " << prompt_slots.size()
                                           << " source slots but the decode side expects "
                                           << r.prefix_hit << " cached + " << r.dst_slots.size()
                                           << " new tokens; the counts must match");
    for (std::int32_t const s : prompt_slots)
      LC_CHECK(s >= 0 && s < transport_->source_slots(),
               "kv_sender::begin: source slot " << s << " is out of range; allowed: 0.."
                                                << transport_->source_slots() - 1);
    for (std::int32_t const d : r.dst_slots)
      LC_CHECK(d >= 0 && d < transport_->destination_slots(),
               "kv_sender::begin: destination slot " << d << " is out of range; allowed: 0.."
                                                     << transport_->destination_slots() - 1);
    auto rec = std::make_unique<record>();
    rec->id = r.id;
    rec->request_id = r.request_id;
    rec->src.assign(prompt_slots.begin(), prompt_slots.end());
    rec->dst = r.dst_slots;
    rec->prefix_hit = r.prefix_hit;
    rec->release = std::move(release);
    rec->sent.assign(std::size_t(transport_->layout().layers), false);
    rec->deadline = now + (timeout ? *timeout : config_.timeout);
    std::vector<message> out;
    {
      std::lock_guard lock(mutex_);
      LC_CHECK(!records_.contains(r.id) && !ended_.contains(r.id),
               "kv_sender::begin: transfer " << r.id << " has begun already");
      record& x = *records_.emplace(r.id, std::move(rec)).first->second;
      ++stats_.begun;
      // Nothing missing at the destination (its prefix cache had the whole prompt): done now.
      if (x.dst.empty()) finish_landed(x, out);
    }
    emit(out);
  }

  // Queues layer l of transfer `id`, whose KV is now written. Returns false when the transfer
  // already ended without landing through no call of this side (the peer aborted, timeout,
  // transport error) or the transport refused the copy (the transfer then fails): the forward
  // just carries on. Throws for an unknown id, a layer out of range or sent twice, and a
  // transfer this side cancelled.
  bool send_layer(transfer_id id, std::int32_t layer) {
    layer_copy job;
    std::vector<message> out;
    {
      std::lock_guard lock(mutex_);
      if (auto const e = recently_ended(id)) {
        LC_CHECK(!*e, "kv_sender::send_layer: transfer "
                          << id << " was cancelled by this side and has ended; no layer may be "
                          << "sent after that");
        return false;
      }
      record& r = find(id, "send_layer");
      std::int32_t const layers = transport_->layout().layers;
      LC_CHECK(layer >= 0 && layer < layers, "kv_sender::send_layer: layer "
                                                 << layer << " of transfer " << id
                                                 << " is out of range; allowed: 0.." << layers - 1);
      LC_CHECK(!r.sent[std::size_t(layer)], "kv_sender::send_layer: layer "
                                                << layer << " of transfer " << id
                                                << " was sent already; each layer is sent once");
      LC_CHECK(!(r.state == sender_state::failed && r.error.origin == side::prefill &&
                 r.error.reason == failure::cancelled),
               "kv_sender::send_layer: transfer " << id << " was cancelled by this side ("
                                                  << r.error.message
                                                  << "); no layer may be sent after that");
      if (r.state == sender_state::failed) return false;
      r.sent[std::size_t(layer)] = true;
      ++r.layers_sent;
      if (r.dst.empty()) return true;  // nothing to move; landed at begin()
      ++r.in_flight;
      ++in_flight_total_;
      job.layer = layer;
      job.src_slots = std::span<std::int32_t const>(r.src).subspan(std::size_t(r.prefix_hit));
      job.dst_slots = r.dst;
      job.done = [this, id, layer](std::string_view error) { on_copied(id, layer, error); };
    }
    try {
      transport_->submit(std::move(job));
    } catch (std::exception const& e) {
      {
        std::lock_guard lock(mutex_);
        record& r = *records_.at(id);
        --r.in_flight;
        --in_flight_total_;
        fail(r, failure::transport, side::prefill,
             std::string("the transport refused layer ") + std::to_string(layer) + ": " + e.what(),
             out);
        drained_.notify_all();
      }
      emit(out);
      return false;
    }
    return true;
  }

  // Ends a transfer from this side (the request was aborted, the instance stops). Returns false
  // when it had ended already. The decode side hears `abort` once no copy is in flight.
  bool cancel(transfer_id id, failure reason = failure::cancelled,
              std::string text = "cancelled by the prefill side") {
    std::vector<message_t> out;
    {
      std::lock_guard lock(mutex_);
      auto it = records_.find(id);
      if (it == records_.end() || it->second->state != sender_state::sending) return false;
      fail(*it->second, reason, side::prefill, std::move(text), out);
    }
    emit(out);
    return true;
  }

  // A message from the decode side: only `abort` is meant for this side.
  void handle(message const& m) {
    auto const* a = std::get_if<transfer_abort>(&m);
    LC_CHECK(a != nullptr, "kv_sender::handle: message type index "
                               << m.index() << " is not for the prefill side; allowed: abort");
    std::vector<message_t> out;
    {
      std::lock_guard lock(mutex_);
      auto it = records_.find(a->id);
      if (it == records_.end() || it->second->state != sender_state::sending) {
        // Ended already (landed, failed, or released): nothing of ours is in flight, so the
        // acknowledgement can go at once.
        if (it == records_.end() || it->second->in_flight == 0)
          out.emplace_back(std::in_place_type<transfer_abort>, a->id, a->reason, side::decode,
                           "acknowledged", true);
        else
          it->second->ack_due = true;
      } else {
        it->second->ack_due = true;
        fail(*it->second, a->reason, side::decode, a->message, out);
      }
    }
    emit(out);
  }

  // Fails transfers past their deadline and releases the pins of every ended transfer with no
  // copy in flight. Returns those transfers.
  std::vector<sender_event> poll(clock::time_point now = clock::now()) {
    std::vector<message_t> out;
    std::vector<std::unique_ptr<record>> ended;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, r] : records_)
        if (r->state == sender_state::sending && now >= r->deadline)
          fail(*r, failure::timeout, side::prefill,
               "transfer " + std::to_string(id) + " passed its deadline", out);
      for (auto it = records_.begin(); it != records_.end();) {
        record& r = *it->second;
        // A landed transfer keeps its pins until the forward has passed its last layer.
        bool const over = r.state == sender_state::failed ||
                          (r.state == sender_state::done && r.layers_sent == layers());
        if (over && r.in_flight == 0) {
          remember_ended(r);
          ended.push_back(std::move(it->second));
          it = records_.erase(it);
        } else {
          ++it;
        }
      }
      stats_.released += std::int64_t(ended.size());
    }
    emit(out);
    std::vector<sender_event> events;
    std::exception_ptr first_error;
    for (auto& r : ended) {
      // Outside the lock: the callback touches the pool and may call back into this object.
      // A throwing callback (a double free, say) must not cost the others their release.
      try {
        r->release(r->src);
      } catch (...) {
        if (!first_error) first_error = std::current_exception();
      }
      events.push_back({r->id, r->request_id, r->state == sender_state::done, r->error});
    }
    if (first_error) std::rethrow_exception(first_error);
    return events;
  }

  std::optional<sender_status> status(transfer_id id) const {
    std::lock_guard lock(mutex_);
    auto it = records_.find(id);
    if (it == records_.end()) return std::nullopt;
    record const& r = *it->second;
    return sender_status{r.state, r.layers_sent, r.layers_landed, std::int64_t(r.dst.size()),
                         r.error};
  }

  sender_stats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  std::size_t active() const {
    std::lock_guard lock(mutex_);
    return records_.size();
  }

 private:
  using message_t = message;

  struct record {
    transfer_id id = 0;
    std::uint64_t request_id = 0;
    std::vector<std::int32_t> src;  // [prompt tokens] pinned source slots
    std::vector<std::int32_t> dst;  // [suffix tokens] destination slots
    std::int64_t prefix_hit = 0;
    release_fn release;
    std::vector<bool> sent;  // [layers]
    std::int32_t layers_sent = 0;
    std::int32_t layers_landed = 0;
    std::int32_t in_flight = 0;  // copies submitted and not completed
    sender_state state = sender_state::sending;
    transfer_error error;
    bool abort_sent = false;
    bool ack_due = false;  // the decode side aborted and waits for our "no more writes"
    clock::time_point deadline;
  };

  std::int32_t layers() const noexcept { return transport_->layout().layers; }

  // Released transfers stay known for a while, so that a forward still sending their layers
  // gets `false` rather than "unknown transfer". Value: cancelled by this side.
  void remember_ended(record const& r) {
    bool const own_cancel = r.state == sender_state::failed && r.error.origin == side::prefill &&
                            r.error.reason == failure::cancelled;
    ended_.emplace(r.id, own_cancel);
    ended_order_.push_back(r.id);
    if (ended_order_.size() > max_remembered) {
      ended_.erase(ended_order_.front());
      ended_order_.pop_front();
    }
  }
  std::optional<bool> recently_ended(transfer_id id) const {
    auto it = ended_.find(id);
    return it == ended_.end() ? std::nullopt : std::optional<bool>(it->second);
  }

  record& find(transfer_id id, char const* what) {
    auto it = records_.find(id);
    LC_CHECK(it != records_.end(), "kv_sender::" << what << ": unknown transfer " << id
                                                 << " (never begun, or ended and released)");
    return *it->second;
  }

  void finish_landed(record& r, std::vector<message_t>& out) {
    r.state = sender_state::done;
    ++stats_.landed;
    out.emplace_back(std::in_place_type<transfer_done>, r.id, transport_->layout().layers,
                     std::int64_t(r.dst.size()));
  }

  // Marks r failed (first reason wins) and sends the abort once nothing is in flight.
  void fail(record& r, failure reason, side origin, std::string text, std::vector<message_t>& out) {
    if (r.state == sender_state::sending) {
      r.state = sender_state::failed;
      r.error = {reason, origin, std::move(text)};
      ++stats_.failed;
    }
    maybe_send_abort(r, out);
  }

  void maybe_send_abort(record& r, std::vector<message_t>& out) {
    if (r.state != sender_state::failed || r.in_flight > 0 || r.abort_sent) return;
    r.abort_sent = true;
    out.emplace_back(std::in_place_type<transfer_abort>, r.id, r.error.reason, r.error.origin,
                     r.error.message, r.ack_due);
  }

  void on_copied(transfer_id id, std::int32_t layer, std::string_view error) noexcept {
    std::vector<message_t> out;
    {
      std::lock_guard lock(mutex_);
      record& r = *records_.at(id);
      --r.in_flight;
      if (!error.empty()) {
        fail(r, failure::transport, side::prefill,
             "copy of layer " + std::to_string(layer) + " failed: " + std::string(error), out);
      } else if (r.state == sender_state::sending) {
        ++r.layers_landed;
        stats_.rows_sent += std::int64_t(r.dst.size());
        out.emplace_back(std::in_place_type<layer_landed>, id, layer);
        if (r.layers_landed == transport_->layout().layers) finish_landed(r, out);
      } else {
        maybe_send_abort(r, out);
      }
    }
    emit(out);
    // Last: once the count reaches zero the destructor may run, so nothing of this object is
    // touched after the lock is released (the notify happens under it).
    std::lock_guard lock(mutex_);
    --in_flight_total_;
    drained_.notify_all();
  }

  void emit(std::vector<message_t> const& out) noexcept {
    for (message_t const& m : out) {
      try {
        to_decode_(m);
      } catch (...) {
        // The sink's failure is the channel's: the decode side's timeout covers a lost message.
      }
    }
  }

  Transport* transport_;
  sink to_decode_;
  transfer_config config_;
  mutable std::mutex mutex_;
  std::condition_variable drained_;
  std::unordered_map<transfer_id, std::unique_ptr<record>> records_;
  std::int64_t in_flight_total_ = 0;
  static constexpr std::size_t max_remembered = 4096;  // released ids kept for send_layer
  std::unordered_map<transfer_id, bool> ended_;
  std::deque<transfer_id> ended_order_;
  sender_stats stats_;
};

}  // namespace lightcore::pd
