// request_table<Params>: the per-request state the front end and the engine share, as a
// fixed-layout array of records in one shm_region, with the two slot_rings that carry slot
// indexes between them (submit ring: front -> engine, output ring: engine -> front).
//
// Ordering rules (see docs/ipc.md): whoever fills a field publishes it by a release store of
// the atomic that guards it, and readers acquire that atomic first: the prompt and Params are
// guarded by `state` (submit), output ids and logprobs below n_output by `n_output`, the
// finish reason / error message by `state` (finished / error). A reader therefore never sees a
// torn record. Each ring has a single consumer (the engine's scheduler thread, the front end's
// output thread); any number of threads or processes may produce.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/ipc/futex.hpp"
#include "lightcore/ipc/shm_region.hpp"
#include "lightcore/ipc/slot_ring.hpp"

namespace lightcore::ipc {

using token_id = std::int32_t;

// Sizes of a table, fixed when the front end creates it and read back by open().
struct request_table_config {
  std::uint32_t slots = 256;        // records = requests in flight at once; default 256
  std::uint32_t max_prompt = 8192;  // prompt tokens a record holds; default 8192
  std::uint32_t max_output = 4096;  // output tokens a record holds; default 4096
  bool logprobs = true;             // keep one float logprob per output token; default true
  // Alternatives kept per output token (id and logprob each), 0..20; default 0 (none). Each costs
  // 8 bytes per output token per slot of shared memory (pages are only touched when written).
  std::uint32_t top_logprobs = 0;
};

// One alternative at an output position: a token id and its logprob (id -1: padding).
struct top_entry {
  std::int32_t id = -1;
  float logprob = 0.0f;
};
static_assert(sizeof(top_entry) == 8);

// A record's lifecycle, ordered: "has reached X" is `state >= X`.
enum class slot_state : std::uint32_t {
  free = 0,       // nobody holds it
  reserved = 1,   // the front end is filling it in
  submitted = 2,  // prompt and params published; the engine has not started it
  running = 3,    // the engine produces output
  finished = 4,   // done, finish reason set
  error = 5,      // failed, error message set
};

enum class finish_reason : std::uint32_t { none = 0, stop = 1, length = 2, abort = 3, error = 4 };

// A slot index plus the generation it had when obtained: operations with a handle whose slot
// was released and reused since are errors, not silent writes into another request.
struct slot_handle {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  friend bool operator==(slot_handle const&, slot_handle const&) = default;
};

// What the engine gets from the submit ring.
struct table_event {
  enum class kind : std::uint32_t { submitted, abort_requested };
  slot_handle slot;
  kind what = kind::submitted;
};

struct request_times {
  std::uint64_t submitted_ns = 0;    // ns since the epoch; 0 until set
  std::uint64_t first_token_ns = 0;  // first append_output with at least one id
  std::uint64_t finished_ns = 0;     // finish() or fail()
};

namespace detail {

// 256 bytes at the start of every record. Plain fields are guarded by the atomics above them
// as the header comment of request_table.hpp says.
struct alignas(64) record_header {
  static constexpr std::size_t error_bytes = 192;  // error message with terminator

  std::atomic<std::uint32_t> state{0};           // slot_state
  std::atomic<std::uint32_t> generation{0};      // bumped by every allocation
  std::atomic<std::uint32_t> refcount{0};        // front end + engine; 0: free
  std::atomic<std::uint32_t> abort{0};           // 1 once the front end asked to abort
  std::atomic<std::uint32_t> output_pending{0};  // 1 while the slot sits in the output ring
  std::atomic<std::uint32_t> n_output{0};        // published output ids
  std::uint32_t n_prompt = 0;
  std::uint32_t finish = 0;  // finish_reason
  std::uint64_t request_id = 0;
  std::atomic<std::uint64_t> t_submitted_ns{0};
  std::atomic<std::uint64_t> t_first_token_ns{0};
  std::atomic<std::uint64_t> t_finished_ns{0};
  char error_message[error_bytes] = {};
};
static_assert(sizeof(record_header) == 256);

struct alignas(64) table_header {
  std::uint32_t slots = 0;
  std::uint32_t max_prompt = 0;
  std::uint32_t max_output = 0;
  std::uint32_t logprobs = 0;
  std::uint32_t top_logprobs = 0;
  std::uint32_t params_bytes = 0;  // sizeof(Params) of the creating build
  std::uint32_t params_align = 0;
  std::uint64_t record_stride = 0;  // bytes
  std::uint64_t submit_ring_offset = 0;
  std::uint64_t output_ring_offset = 0;
  std::uint64_t records_offset = 0;
  std::uint64_t payload_bytes = 0;
  alignas(64) std::atomic<std::uint32_t> allocate_hint{0};
};

constexpr std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

constexpr std::uint32_t next_pow2(std::uint64_t n) {
  std::uint64_t p = 2;
  while (p < n) p *= 2;
  return static_cast<std::uint32_t>(p);
}

inline std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// Byte offsets of a record's parts.
struct record_layout {
  std::size_t params = 0, prompt = 0, output = 0, logprobs = 0, top = 0, stride = 0;
};

inline record_layout layout_of(request_table_config const& c, std::size_t params_bytes,
                               std::size_t params_align) {
  record_layout l;
  l.params = round_up(sizeof(record_header), params_align);
  l.prompt = round_up(l.params + params_bytes, 64);
  l.output = round_up(l.prompt + std::size_t(c.max_prompt) * sizeof(token_id), 64);
  l.logprobs = round_up(l.output + std::size_t(c.max_output) * sizeof(token_id), 64);
  l.top = round_up(l.logprobs + (c.logprobs ? std::size_t(c.max_output) * sizeof(float) : 0), 64);
  std::size_t const end =
      l.top + std::size_t(c.max_output) * std::size_t(c.top_logprobs) * sizeof(top_entry);
  l.stride = round_up(end, 64);
  return l;
}

}  // namespace detail

template <class Params>
class request_table {
  static_assert(std::is_trivially_copyable_v<Params>,
                "request_table<Params>: Params crosses processes as bytes, so it must be "
                "trivially copyable (no pointers, strings or vectors; use fixed arrays)");
  static_assert(alignof(Params) <= 64, "request_table<Params>: alignof(Params) must be <= 64");

 public:
  static constexpr region_layout layout{0x4241545145524c43ull, 2};  // "LCREQTAB", version 2
  // Ring entries from request_abort carry this bit over the slot index.
  static constexpr std::uint32_t abort_bit = 1u << 31;
  static constexpr std::uint32_t max_slots = 1u << 20;
  static constexpr std::uint32_t max_tokens = 1u << 24;  // max_prompt / max_output bound
  static constexpr std::uint32_t max_top_logprobs = 20;  // top_logprobs bound

  // Bytes one record takes: 256 (header) + Params + 4 * max_prompt + 4 * max_output
  // (+ 4 * max_output with logprobs) + 8 * top_logprobs * max_output, each part rounded up to 64.
  static std::size_t bytes_per_slot(request_table_config const& c) {
    return detail::layout_of(c, sizeof(Params), alignof(Params)).stride;
  }

  // Creates the table `name` (the front end does this once per server instance).
  static request_table create(std::string const& name, request_table_config const& c) {
    check_config(c);
    auto const rl = detail::layout_of(c, sizeof(Params), alignof(Params));
    std::uint32_t const submit_cap = detail::next_pow2(3ull * c.slots);  // see docs/ipc.md
    std::uint32_t const output_cap = detail::next_pow2(c.slots);
    detail::table_header th;
    th.slots = c.slots;
    th.max_prompt = c.max_prompt;
    th.max_output = c.max_output;
    th.logprobs = c.logprobs ? 1 : 0;
    th.top_logprobs = c.top_logprobs;
    th.params_bytes = sizeof(Params);
    th.params_align = alignof(Params);
    th.record_stride = rl.stride;
    th.submit_ring_offset = sizeof(detail::table_header);
    th.output_ring_offset = th.submit_ring_offset + slot_ring::bytes_for(submit_cap);
    th.records_offset = th.output_ring_offset + slot_ring::bytes_for(output_cap);
    th.payload_bytes = th.records_offset + std::uint64_t(c.slots) * rl.stride;
    request_table t;
    t.region_ = shm_region::create(name, th.payload_bytes, layout, [&](void* p, std::size_t) {
      auto* h = new (p) detail::table_header;
      h->slots = th.slots;
      h->max_prompt = th.max_prompt;
      h->max_output = th.max_output;
      h->logprobs = th.logprobs;
      h->top_logprobs = th.top_logprobs;
      h->params_bytes = th.params_bytes;
      h->params_align = th.params_align;
      h->record_stride = th.record_stride;
      h->submit_ring_offset = th.submit_ring_offset;
      h->output_ring_offset = th.output_ring_offset;
      h->records_offset = th.records_offset;
      h->payload_bytes = th.payload_bytes;
      auto* base = static_cast<std::byte*>(p);
      slot_ring::init(base + th.submit_ring_offset, submit_cap);
      slot_ring::init(base + th.output_ring_offset, output_cap);
      for (std::uint32_t i = 0; i < c.slots; ++i) {
        new (base + th.records_offset + std::uint64_t(i) * rl.stride) detail::record_header;
      }
    });
    t.attach();
    return t;
  }

  // Opens the table another process created, checking that its layout matches this build.
  static request_table open(std::string const& name) {
    request_table t;
    t.region_ = shm_region::open(name, layout);
    LC_CHECK(t.region_.payload_bytes() >= sizeof(detail::table_header),
             "request_table \"" << name << "\": payload of " << t.region_.payload_bytes()
                                << " bytes is smaller than the table header ("
                                << sizeof(detail::table_header) << " bytes)");
    auto const& h = *static_cast<detail::table_header const*>(t.region_.payload());
    LC_CHECK(h.params_bytes == sizeof(Params) && h.params_align == alignof(Params),
             "request_table \"" << name << "\" holds Params of " << h.params_bytes
                                << " bytes (align " << h.params_align << "); this build's are "
                                << sizeof(Params) << " (align " << alignof(Params)
                                << "): front end and engine disagree on Params");
    request_table_config const c{h.slots, h.max_prompt, h.max_output, h.logprobs != 0,
                                 h.top_logprobs};
    check_config(c);
    LC_CHECK(h.record_stride == bytes_per_slot(c) &&
                 h.payload_bytes == h.records_offset + std::uint64_t(h.slots) * h.record_stride &&
                 h.payload_bytes <= t.region_.payload_bytes(),
             "request_table \"" << name << "\": header describes " << h.slots << " slots of "
                                << h.record_stride << " bytes (" << h.payload_bytes
                                << " payload bytes) but the segment holds "
                                << t.region_.payload_bytes() << " payload bytes");
    t.attach();
    return t;
  }

  request_table() = default;
  request_table(request_table&&) noexcept = default;
  request_table& operator=(request_table&&) noexcept = default;

  request_table_config const& config() const noexcept { return config_; }
  shm_region const& region() const noexcept { return region_; }

  // ---- front end -------------------------------------------------------------------------

  // Reserves a free slot for a new request (front end's reference taken); nullopt when all
  // slots are in use.
  std::optional<slot_handle> allocate_slot() {
    auto& hint = table_head().allocate_hint;
    std::uint32_t const start = hint.fetch_add(1, std::memory_order_relaxed) % config_.slots;
    for (std::uint32_t k = 0; k < config_.slots; ++k) {
      std::uint32_t const i = (start + k) % config_.slots;
      auto& r = record(i);
      auto expected = static_cast<std::uint32_t>(slot_state::free);
      if (r.state.load(std::memory_order_relaxed) != expected) continue;
      if (!r.state.compare_exchange_strong(expected,
                                           static_cast<std::uint32_t>(slot_state::reserved),
                                           std::memory_order_acquire)) {
        continue;
      }
      std::uint32_t const gen = r.generation.fetch_add(1, std::memory_order_acq_rel) + 1;
      r.refcount.store(1, std::memory_order_relaxed);
      r.abort.store(0, std::memory_order_relaxed);
      r.n_output.store(0, std::memory_order_relaxed);
      r.n_prompt = 0;
      r.finish = static_cast<std::uint32_t>(finish_reason::none);
      r.request_id = 0;
      r.t_submitted_ns.store(0, std::memory_order_relaxed);
      r.t_first_token_ns.store(0, std::memory_order_relaxed);
      r.t_finished_ns.store(0, std::memory_order_relaxed);
      r.error_message[0] = '\0';
      // output_pending stays as it is: a stale entry of the previous generation may still sit
      // in the output ring, and clearing the flag would let the slot enter the ring twice.
      return slot_handle{i, gen};
    }
    return std::nullopt;
  }

  void write_prompt(slot_handle h, std::span<token_id const> prompt) {
    auto& r = checked(h, "write_prompt");
    expect_state(h, r, slot_state::reserved, slot_state::reserved, "write_prompt");
    LC_CHECK(!prompt.empty() && prompt.size() <= config_.max_prompt,
             "write_prompt: prompt of " << prompt.size() << " tokens for slot " << h.index
                                        << "; allowed 1.." << config_.max_prompt
                                        << " (max_prompt)");
    std::memcpy(prompt_ptr(h.index), prompt.data(), prompt.size_bytes());
    r.n_prompt = static_cast<std::uint32_t>(prompt.size());
  }

  // Publishes the request to the engine (which takes its own reference) and wakes it.
  void submit(slot_handle h, std::uint64_t request_id, Params const& params) {
    auto& r = checked(h, "submit");
    expect_state(h, r, slot_state::reserved, slot_state::reserved, "submit");
    LC_CHECK(r.n_prompt > 0, "submit: slot " << h.index << " has no prompt; call write_prompt");
    r.request_id = request_id;
    std::memcpy(params_ptr(h.index), &params, sizeof(Params));
    r.t_submitted_ns.store(detail::now_ns(), std::memory_order_relaxed);
    r.refcount.fetch_add(1, std::memory_order_relaxed);
    r.state.store(static_cast<std::uint32_t>(slot_state::submitted), std::memory_order_release);
    push_or_throw(submit_ring_, h.index, "submit");
  }

  // Asks the engine to stop the request; true the first time. The engine sees it through
  // abort_requested() and an abort event on the submit ring.
  bool request_abort(slot_handle h) {
    auto& r = checked(h, "request_abort");
    if (r.abort.exchange(1, std::memory_order_acq_rel) != 0) return false;
    auto const s = r.state.load(std::memory_order_acquire);
    if (s == std::uint32_t(slot_state::submitted) || s == std::uint32_t(slot_state::running)) {
      push_or_throw(submit_ring_, h.index | abort_bit, "request_abort");
    }
    return true;
  }

  // The next slot with new output or a new final state, waiting up to `timeout`. The handle
  // holds the slot's current generation; a slot may be reported with nothing new (callers
  // compare with what they read before). Slots already released are skipped.
  std::optional<slot_handle> next_output(std::chrono::nanoseconds timeout = no_timeout) {
    using clock = std::chrono::steady_clock;
    auto const deadline = timeout == no_timeout ? clock::time_point::max() : clock::now() + timeout;
    for (;;) {
      auto const v = output_ring_.pop(time_left(timeout, deadline));
      if (!v) return std::nullopt;
      auto& r = record(*v);
      // acq_rel: reads the engine's latest set of the flag, so everything the engine published
      // before it (n_output, state) is visible to the reads that follow.
      r.output_pending.exchange(0, std::memory_order_acq_rel);
      if (r.state.load(std::memory_order_acquire) == std::uint32_t(slot_state::free)) continue;
      return slot_handle{*v, r.generation.load(std::memory_order_acquire)};
    }
  }

  slot_state state(slot_handle h) const {
    return static_cast<slot_state>(checked(h, "state").state.load(std::memory_order_acquire));
  }
  std::uint32_t output_count(slot_handle h) const {
    return checked(h, "output_count").n_output.load(std::memory_order_acquire);
  }

  // Published output ids [from, n_output): a view valid while this side holds the slot.
  std::span<token_id const> outputs(slot_handle h, std::uint32_t from = 0) const {
    auto const n = published(h, from, "outputs");
    return {output_ptr(h.index) + from, n - from};
  }
  std::vector<token_id> read_outputs(slot_handle h, std::uint32_t from = 0) const {
    auto const s = outputs(h, from);
    return {s.begin(), s.end()};
  }
  // Logprobs of the published outputs [from, n_output); empty when the table keeps none.
  std::span<float const> logprobs(slot_handle h, std::uint32_t from = 0) const {
    auto const n = published(h, from, "logprobs");
    if (!config_.logprobs) return {};
    return {logprob_ptr(h.index) + from, n - from};
  }
  // The alternatives of outputs [from, published count): top_logprobs entries per output.
  std::span<top_entry const> top_logprobs(slot_handle h, std::uint32_t from = 0) const {
    auto const n = published(h, from, "top_logprobs");
    std::size_t const k = config_.top_logprobs;
    return {top_ptr(h.index) + std::size_t(from) * k, std::size_t(n - from) * k};
  }

  finish_reason reason(slot_handle h) const {
    auto& r = checked(h, "reason");
    if (r.state.load(std::memory_order_acquire) < std::uint32_t(slot_state::finished)) {
      return finish_reason::none;
    }
    return static_cast<finish_reason>(r.finish);
  }
  std::string error_message(slot_handle h) const {
    auto& r = checked(h, "error_message");
    if (r.state.load(std::memory_order_acquire) != std::uint32_t(slot_state::error)) return {};
    return std::string(r.error_message);
  }
  request_times times(slot_handle h) const {
    auto& r = checked(h, "times");
    return {r.t_submitted_ns.load(std::memory_order_acquire),
            r.t_first_token_ns.load(std::memory_order_acquire),
            r.t_finished_ns.load(std::memory_order_acquire)};
  }

  // Drops this side's reference; the slot is free once both sides dropped theirs. Returns true
  // when this call freed it.
  bool release(slot_handle h) {
    auto& r = checked(h, "release");
    std::uint32_t n = r.refcount.load(std::memory_order_relaxed);
    do {
      LC_CHECK(n > 0, "release: slot " << h.index << " has no reference left to release");
    } while (!r.refcount.compare_exchange_weak(n, n - 1, std::memory_order_acq_rel));
    if (n != 1) return false;
    r.state.store(static_cast<std::uint32_t>(slot_state::free), std::memory_order_release);
    return true;
  }

  // Slots not held by anyone (a snapshot).
  std::uint32_t free_slots() const {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < config_.slots; ++i) {
      n += record(i).state.load(std::memory_order_relaxed) == std::uint32_t(slot_state::free);
    }
    return n;
  }

  // ---- engine ----------------------------------------------------------------------------

  // The next submission or abort request, waiting up to `timeout`. Abort events whose abort
  // flag is no longer set (left over from an earlier generation) are skipped; an abort may
  // still be reported twice, so handle it idempotently.
  std::optional<table_event> next_event(std::chrono::nanoseconds timeout = no_timeout) {
    return next_event_or(timeout, [] { return false; });
  }

  // As next_event(), but also returns nullopt as soon as interrupted() holds: the engine sleeps
  // on the table and on work that reaches it another way (a control endpoint's queue), whose
  // producer calls wake_engine() after making interrupted() hold. Engine process only.
  template <class Interrupt>
  std::optional<table_event> next_event_or(std::chrono::nanoseconds timeout,
                                           Interrupt&& interrupted) {
    using clock = std::chrono::steady_clock;
    auto const deadline = timeout == no_timeout ? clock::time_point::max() : clock::now() + timeout;
    for (;;) {
      auto const v = submit_ring_.pop_or(time_left(timeout, deadline), interrupted);
      if (!v) return std::nullopt;
      std::uint32_t const i = *v & ~abort_bit;
      auto& r = record(i);
      auto const s = r.state.load(std::memory_order_acquire);
      slot_handle const h{i, r.generation.load(std::memory_order_acquire)};
      if ((*v & abort_bit) == 0) return table_event{h, table_event::kind::submitted};
      bool const live =
          s == std::uint32_t(slot_state::submitted) || s == std::uint32_t(slot_state::running);
      if (live && r.abort.load(std::memory_order_acquire) != 0) {
        return table_event{h, table_event::kind::abort_requested};
      }
    }
  }

  // Wakes the engine sleeping in next_event_or() to check its interrupt; no event is queued.
  void wake_engine() { submit_ring_.wake(); }

  std::span<token_id const> prompt(slot_handle h) const {
    auto& r = checked(h, "prompt");
    expect_state(h, r, slot_state::submitted, slot_state::error, "prompt");
    return {prompt_ptr(h.index), r.n_prompt};
  }
  Params params(slot_handle h) const {
    auto& r = checked(h, "params");
    expect_state(h, r, slot_state::submitted, slot_state::error, "params");
    Params p;
    std::memcpy(&p, params_ptr(h.index), sizeof(Params));
    return p;
  }
  std::uint64_t request_id(slot_handle h) const {
    auto& r = checked(h, "request_id");
    expect_state(h, r, slot_state::submitted, slot_state::error, "request_id");
    return r.request_id;
  }
  // Marks a submitted request as running (append_output does so too).
  void start(slot_handle h) {
    auto& r = checked(h, "start");
    expect_state(h, r, slot_state::submitted, slot_state::running, "start");
    r.state.store(std::uint32_t(slot_state::running), std::memory_order_release);
  }

  bool abort_requested(slot_handle h) const {
    return checked(h, "abort_requested").abort.load(std::memory_order_acquire) != 0;
  }

  // Appends output ids (and their logprobs, when the table keeps them: empty or one per id)
  // and publishes the new count, then wakes the front end.
  // tops: empty, or top_logprobs entries per id (its alternatives, padded with id -1).
  void append_output(slot_handle h, std::span<token_id const> ids, std::span<float const> lps = {},
                     std::span<top_entry const> tops = {}) {
    auto& r = checked(h, "append_output");
    expect_state(h, r, slot_state::submitted, slot_state::running, "append_output");
    LC_CHECK(lps.empty() || (config_.logprobs && lps.size() == ids.size()),
             "append_output: " << lps.size() << " logprobs for " << ids.size()
                               << " ids; allowed: none, or one per id when the table keeps "
                                  "logprobs (it "
                               << (config_.logprobs ? "does" : "does not") << ")");
    LC_CHECK(tops.empty() || tops.size() == ids.size() * config_.top_logprobs,
             "append_output: " << tops.size() << " alternatives for " << ids.size()
                               << " ids; allowed: none, or " << config_.top_logprobs
                               << " per id (the table's top_logprobs)");
    std::uint32_t const n = r.n_output.load(std::memory_order_relaxed);  // single writer
    LC_CHECK(ids.size() <= config_.max_output - n,
             "append_output: slot " << h.index << " holds " << n << " output ids; appending "
                                    << ids.size() << " would exceed max_output "
                                    << config_.max_output);
    r.state.store(std::uint32_t(slot_state::running), std::memory_order_relaxed);
    std::memcpy(output_ptr(h.index) + n, ids.data(), ids.size_bytes());
    if (config_.logprobs) {
      float* dst = logprob_ptr(h.index) + n;
      if (lps.empty()) {
        std::fill_n(dst, ids.size(), std::numeric_limits<float>::quiet_NaN());
      } else {
        std::memcpy(dst, lps.data(), lps.size_bytes());
      }
    }
    if (config_.top_logprobs > 0) {
      top_entry* dst = top_ptr(h.index) + std::size_t(n) * config_.top_logprobs;
      if (tops.empty())
        std::fill_n(dst, ids.size() * config_.top_logprobs, top_entry{});
      else
        std::memcpy(dst, tops.data(), tops.size_bytes());
    }
    if (n == 0 && !ids.empty())
      r.t_first_token_ns.store(detail::now_ns(), std::memory_order_relaxed);
    r.n_output.store(n + static_cast<std::uint32_t>(ids.size()), std::memory_order_release);
    notify_output(h.index);
  }

  // Marks the request done (reason: stop, length or abort) and wakes the front end.
  void finish(slot_handle h, finish_reason why) {
    auto& r = checked(h, "finish");
    expect_state(h, r, slot_state::submitted, slot_state::running, "finish");
    LC_CHECK(
        why == finish_reason::stop || why == finish_reason::length || why == finish_reason::abort,
        "finish: reason " << std::uint32_t(why)
                          << " is not allowed; allowed: stop, length, abort (errors: fail)");
    r.finish = static_cast<std::uint32_t>(why);
    r.t_finished_ns.store(detail::now_ns(), std::memory_order_relaxed);
    r.state.store(std::uint32_t(slot_state::finished), std::memory_order_release);
    notify_output(h.index);
  }

  // Marks the request failed with `message` (cut to 191 bytes) and wakes the front end.
  void fail(slot_handle h, std::string_view message) {
    auto& r = checked(h, "fail");
    expect_state(h, r, slot_state::submitted, slot_state::running, "fail");
    auto const n = std::min(message.size(), detail::record_header::error_bytes - 1);
    std::memcpy(r.error_message, message.data(), n);
    r.error_message[n] = '\0';
    r.finish = static_cast<std::uint32_t>(finish_reason::error);
    r.t_finished_ns.store(detail::now_ns(), std::memory_order_relaxed);
    r.state.store(std::uint32_t(slot_state::error), std::memory_order_release);
    notify_output(h.index);
  }

 private:
  static void check_config(request_table_config const& c) {
    LC_CHECK(c.slots >= 1 && c.slots <= max_slots,
             "request_table: slots = " << c.slots << "; allowed 1.." << max_slots);
    LC_CHECK(c.max_prompt >= 1 && c.max_prompt <= max_tokens,
             "request_table: max_prompt = " << c.max_prompt << "; allowed 1.." << max_tokens);
    LC_CHECK(c.max_output >= 1 && c.max_output <= max_tokens,
             "request_table: max_output = " << c.max_output << "; allowed 1.." << max_tokens);
    LC_CHECK(
        c.top_logprobs <= max_top_logprobs,
        "request_table: top_logprobs = " << c.top_logprobs << "; allowed 0.." << max_top_logprobs);
    LC_CHECK(c.top_logprobs == 0 || c.logprobs,
             "request_table: top_logprobs = " << c.top_logprobs
                                              << " needs logprobs = true (alternatives come with "
                                                 "the chosen token's logprob)");
  }

  static std::chrono::nanoseconds time_left(std::chrono::nanoseconds timeout,
                                            std::chrono::steady_clock::time_point deadline) {
    if (timeout == no_timeout) return no_timeout;
    return std::max(std::chrono::nanoseconds(deadline - std::chrono::steady_clock::now()),
                    std::chrono::nanoseconds::zero());
  }

  void attach() {
    auto const& h = table_head();
    config_ = {h.slots, h.max_prompt, h.max_output, h.logprobs != 0, h.top_logprobs};
    auto const rl = detail::layout_of(config_, sizeof(Params), alignof(Params));
    params_off_ = rl.params;
    prompt_off_ = rl.prompt;
    output_off_ = rl.output;
    logprobs_off_ = rl.logprobs;
    top_off_ = rl.top;
    stride_ = rl.stride;
    records_ = payload() + h.records_offset;
    submit_ring_ = slot_ring::attach(payload() + h.submit_ring_offset);
    output_ring_ = slot_ring::attach(payload() + h.output_ring_offset);
  }

  std::byte* payload() const noexcept { return static_cast<std::byte*>(region_.payload()); }
  detail::table_header& table_head() const noexcept {
    return *reinterpret_cast<detail::table_header*>(payload());
  }
  std::byte* record_base(std::uint32_t i) const noexcept {
    return records_ + std::size_t(i) * stride_;
  }
  detail::record_header& record(std::uint32_t i) const noexcept {
    return *reinterpret_cast<detail::record_header*>(record_base(i));
  }
  std::byte* params_ptr(std::uint32_t i) const noexcept { return record_base(i) + params_off_; }
  token_id* prompt_ptr(std::uint32_t i) const noexcept {
    return reinterpret_cast<token_id*>(record_base(i) + prompt_off_);
  }
  token_id* output_ptr(std::uint32_t i) const noexcept {
    return reinterpret_cast<token_id*>(record_base(i) + output_off_);
  }
  float* logprob_ptr(std::uint32_t i) const noexcept {
    return reinterpret_cast<float*>(record_base(i) + logprobs_off_);
  }
  top_entry* top_ptr(std::uint32_t i) const noexcept {
    return reinterpret_cast<top_entry*>(record_base(i) + top_off_);
  }

  // The record of `h`, after checking that the index is in range, the slot is held and it was
  // not reused since `h` was obtained.
  detail::record_header& checked(slot_handle h, char const* op) const {
    LC_CHECK(region_.valid(), op << ": the request_table is empty (moved from or not created)");
    LC_CHECK(h.index < config_.slots,
             op << ": slot " << h.index << " is out of range; allowed 0.." << config_.slots - 1);
    auto& r = record(h.index);
    auto const gen = r.generation.load(std::memory_order_acquire);
    LC_CHECK(gen == h.generation, op << ": slot " << h.index << " handle has generation "
                                     << h.generation << " but the slot is at generation " << gen
                                     << " (released and reused since)");
    LC_CHECK(r.state.load(std::memory_order_acquire) != std::uint32_t(slot_state::free),
             op << ": slot " << h.index << " is free (released); allowed: slots held by a handle");
    return r;
  }

  static void expect_state(slot_handle h, detail::record_header const& r, slot_state lo,
                           slot_state hi, char const* op) {
    auto const s = r.state.load(std::memory_order_acquire);
    LC_CHECK(s >= std::uint32_t(lo) && s <= std::uint32_t(hi),
             op << ": slot " << h.index << " is in state " << s << "; allowed states "
                << std::uint32_t(lo) << ".." << std::uint32_t(hi)
                << " (0 free, 1 reserved, 2 submitted, 3 running, 4 finished, 5 error)");
  }

  std::uint32_t published(slot_handle h, std::uint32_t from, char const* op) const {
    auto const n = checked(h, op).n_output.load(std::memory_order_acquire);
    LC_CHECK(from <= n, op << ": from = " << from << " for slot " << h.index << "; allowed 0.." << n
                           << " (published outputs)");
    return n;
  }

  void notify_output(std::uint32_t i) {
    // One entry per slot in the output ring at a time: capacity `slots` always suffices.
    if (record(i).output_pending.exchange(1, std::memory_order_acq_rel) == 0) {
      push_or_throw(output_ring_, i, "output notification");
    }
  }

  static void push_or_throw(slot_ring& ring, std::uint32_t value, char const* op) {
    LC_CHECK(ring.push(value), op << ": ring of " << ring.capacity()
                                  << " entries is full (its consumer is not popping)");
  }

  shm_region region_;
  request_table_config config_;
  std::byte* records_ = nullptr;
  std::size_t params_off_ = 0, prompt_off_ = 0, output_off_ = 0, logprobs_off_ = 0, top_off_ = 0,
              stride_ = 0;
  slot_ring submit_ring_;
  slot_ring output_ring_;
};

}  // namespace lightcore::ipc
