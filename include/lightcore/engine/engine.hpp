// engine: continuous batching over one executor. The host side of every step: the scheduler's
// plan, KV slots from the token pool (evicting from the radix prefix cache when the pool runs
// short), the req_to_token rows, the rows of the mixed batch, and the bookkeeping of each
// request's tokens and finish condition. The device side is the executor's (step.hpp).
//
//   engine::engine<backend::cuda, ds::executor<backend::cuda>> e(gpu, exec, config);
//   e.submit({.id = 1, .prompt = ids, .sampling = {...}, .max_new_tokens = 64});
//   while (!e.idle())
//     for (token_event const& t : e.step()) deliver(t);
//
// Not thread-safe: it belongs to one host thread (the engine process's loop).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/memory/radix_cache.hpp"
#include "lightcore/sched/scheduler.hpp"

namespace lightcore::engine {

// Why a request ended.
enum class finish_reason : std::uint8_t {
  none,    // still running
  stop,    // sampled one of its stop token ids (EOS among them unless the client ignores it)
  length,  // reached max_new_tokens
  abort,   // aborted by the client
};

// A generation request as the engine takes it.
template <class Params>
struct request {
  std::uint64_t id = 0;                      // unique among live requests; chosen by the caller
  std::vector<std::int32_t> prompt;          // token ids; not empty
  Params sampling{};                         // the executor's per-request sampling record
  std::int64_t max_new_tokens = 16;          // tokens; >= 1
  std::vector<std::int32_t> stop_token_ids;  // sampling one of these ends the request (it is kept
                                             // as the last output token)
  // Prefill instance of prefill/decode separation: when the request ends (not by abort), the KV
  // it computed stays pinned in the pool, readable through held(), until release_held(id).
  bool hold_kv = false;
};

// The KV a finished hold_kv request keeps: the tokens whose KV is computed (the prompt, and the
// generated tokens but the last) and their slots, position order. Valid until release_held().
struct held_kv {
  std::span<std::int32_t const> tokens;
  std::span<std::int32_t const> slots;
};

// A hold_kv request whose prompt the step about to be issued completes.
struct kv_stream_start {
  std::uint64_t id = 0;
  held_kv kv;  // the prompt's tokens and slots, valid during before_forward() only
};

// Streams a prompt's KV layer by layer while the step that completes the prompt computes it:
// the prefill side of a PD deployment begins each transfer before the forward and sends layer
// l as soon as the forward has issued it, so that the copy of layer l overlaps the compute of the
// layers after it instead of waiting for the whole step. Called on the engine's thread, within
// step(); only for steps that complete a hold_kv prompt, on executors that can call back per
// layer (engine::streams_kv).
class kv_stream_observer {
 public:
  virtual ~kv_stream_observer() = default;
  // Before the step's forward is issued. The slots hold the prompt's KV once every layer is done.
  virtual void before_forward(std::span<kv_stream_start const> starts) = 0;
  // During the forward, for each layer in order: the layer's KV rows of every start are written
  // when the executor's stream reaches this point (on the CPU backend: written).
  virtual void after_layer(std::int64_t layer) = 0;
};

// A prompt's KV that another instance computed, landed in this engine's pool (a
// pd::landed_kv converts field by field): the request owns slots[prefix_hit, n) and the lock on
// prefix_node; slots[0, prefix_hit) belong to the prefix cache.
struct adopted_kv {
  std::vector<std::int32_t> slots;  // [n] one per prompt token
  std::int64_t prefix_hit = 0;
  std::optional<memory::radix_cache::handle> prefix_node;  // locked; absent without a cache hit
};

// One sampled token of one request, in the order the step produced them.
struct token_event {
  std::uint64_t id = 0;
  std::int32_t token = 0;
  float logprob = 0.0f;    // NaN where the request asked for no logprobs
  std::int64_t index = 0;  // 0-based position of the token in the request's output
  finish_reason finished = finish_reason::none;
  // The alternatives the executor drew for this position (empty when no row of the step asked
  // for any), largest first, padded with id -1; valid until the next step().
  std::span<std::int32_t const> top_ids;
  std::span<float const> top_logprobs;
};

// What generate() returns for one request.
struct generation {
  std::uint64_t id = 0;
  std::vector<std::int32_t> tokens;  // the sampled ids, the last one included
  std::vector<float> logprobs;       // one per token (NaN where none were asked for)
  finish_reason finished = finish_reason::none;
};

struct engine_config {
  memory::kv_pool_config kv;          // the token pool (layers, capacity, width, rows, ...)
  bool prefix_cache = true;           // radix prefix cache over finished/paused sequences
  sched::scheduler_config scheduler;  // budgets and limits; max_seq_len <= kv.max_tokens
  // Plan step t + 1 while step t runs (executors that can: overlapping_executor). Default true.
  bool overlap = true;
};

struct engine_stats {
  std::uint64_t steps = 0;
  std::int64_t forward_tokens = 0;  // tokens through the forward (prefill and decode)
  std::int64_t sampled_tokens = 0;
  memory::kv_pool_stats kv;
  std::int64_t cached_tokens = 0;     // held by the prefix cache
  std::int64_t evictable_tokens = 0;  // of those, unreferenced
  memory::radix_cache_stats prefix;
  sched::scheduler_stats scheduler;
  // Where a step's time goes, summed over steps (seconds of wall time):
  double engine_host_seconds = 0.0;    // scheduling, slots, rows, bookkeeping (outside run())
  double executor_host_seconds = 0.0;  // the executor's host work before it waits on the device
  double step_seconds = 0.0;           // whole step() calls
  double device_seconds = 0.0;         // device time of the steps (where the backend measures)
  double device_idle_seconds = 0.0;    // device idle between consecutive steps
  // The same over decode-only steps (no prefill chunk): the steady state of generation.
  std::uint64_t decode_steps = 0;
  std::int64_t decode_rows = 0;
  double decode_host_seconds = 0.0;  // engine + executor host time
  double decode_step_seconds = 0.0;
  double decode_device_seconds = 0.0;
  double decode_idle_seconds = 0.0;  // device idle before each decode-only step
};

template <Backend B, executor Exec,
          class Scheduler = sched::scheduler<sched::admit::conservative, sched::order::strict_fcfs>>
class engine {
 public:
  using params_type = typename Exec::params_type;
  using request_type = request<params_type>;

  // scheduler_args: what the scheduler takes after its config (its admission policy object, e.g.
  // sched::admit::optimistic(initial_output_tokens)).
  template <class... SchedulerArgs>
  engine(B& backend, Exec& exec, engine_config const& config, SchedulerArgs&&... scheduler_args)
      : exec_(&exec),
        config_(config),
        pool_(backend, config.kv),
        prefix_({config.prefix_cache, config.kv.capacity}),
        sched_(checked_scheduler_config(config), std::forward<SchedulerArgs>(scheduler_args)...) {
    // Decode graphs are captured now, over this pool, not by the first decode step.
    if constexpr (requires { exec.prepare(kv_layers_, pool_.req_to_token()); })
      exec.prepare(kv_layers_, pool_.req_to_token());
  }

  engine(engine const&) = delete;
  engine& operator=(engine const&) = delete;

  // Queues a request. Throws lightcore::error, saying what is allowed, for an empty prompt,
  // max_new_tokens < 1, a sequence longer than max_seq_len, or a live duplicate id.
  void submit(request_type r) {
    LC_CHECK(!r.prompt.empty(), "engine::submit: request " << r.id << " has an empty prompt");
    LC_CHECK(!live_.contains(r.id), "engine::submit: request id " << r.id << " is live already");
    sched_.add({.id = r.id,
                .prompt_tokens = std::int64_t(r.prompt.size()),
                .max_new_tokens = r.max_new_tokens,
                .keeps_kv = r.hold_kv});
    record rec;
    rec.tokens = std::move(r.prompt);
    rec.prompt_len = std::int64_t(rec.tokens.size());
    rec.sampling = r.sampling;
    rec.max_new_tokens = r.max_new_tokens;
    rec.stop_ids = std::move(r.stop_token_ids);
    rec.hold_kv = r.hold_kv;
    live_.emplace(r.id, std::move(rec));
  }

  // Prefill/decode separation, decode side: takes over a request whose prompt's KV is in this
  // engine's pool (kv.slots, one per prompt token) and whose first output token, first_token, was
  // sampled by the prefill instance. It decodes from the next step on; its first token_event has
  // index 1, and r.max_new_tokens counts first_token (so >= 2). Throws lightcore::error, saying
  // what is allowed, for a bad request or KV (the caller then still owns kv), or when no
  // req_to_token row is free.
  void adopt(request_type r, std::int32_t first_token, adopted_kv kv) {
    std::int64_t const n = std::int64_t(r.prompt.size());
    LC_CHECK(n > 0, "engine::adopt: request " << r.id << " has an empty prompt");
    LC_CHECK(!live_.contains(r.id), "engine::adopt: request id " << r.id << " is live already");
    LC_CHECK(std::int64_t(kv.slots.size()) == n,
             "engine::adopt: request " << r.id << " has " << n << " prompt tokens but "
                                       << kv.slots.size() << " KV slots; one slot per token");
    LC_CHECK(0 <= kv.prefix_hit && kv.prefix_hit <= n &&
                 kv.prefix_node.has_value() == (kv.prefix_hit > 0),
             "engine::adopt: request " << r.id << " has prefix_hit " << kv.prefix_hit
                                       << (kv.prefix_node ? " with" : " without")
                                       << " a prefix lock; allowed: 0.." << n
                                       << ", locked exactly when > 0");
    for (std::int32_t const s : kv.slots)
      LC_CHECK(0 <= s && s < pool_.slots().capacity(),
               "engine::adopt: request " << r.id << " has KV slot " << s << "; allowed: 0.."
                                         << pool_.slots().capacity() - 1);
    LC_CHECK(pool_.table().rows_held() < pool_.table().rows(),
             "engine::adopt: no free req_to_token row for request "
                 << r.id << " (rows: " << config_.kv.max_requests << ")");
    sched_.adopt({.id = r.id,
                  .prompt_tokens = n,
                  .max_new_tokens = r.max_new_tokens,
                  .cached = kv.prefix_hit,
                  .keeps_kv = r.hold_kv});
    record rec;
    rec.tokens = std::move(r.prompt);
    rec.tokens.push_back(first_token);
    rec.prompt_len = n;
    rec.sampling = r.sampling;
    rec.max_new_tokens = r.max_new_tokens;
    rec.stop_ids = std::move(r.stop_token_ids);
    rec.hold_kv = r.hold_kv;
    rec.row = pool_.table().acquire_row();
    rec.slots = std::move(kv.slots);
    rec.pinned = kv.prefix_hit;
    rec.lock = kv.prefix_node;
    write_slots(*rec.row, 0, rec.slots);
    live_.emplace(r.id, std::move(rec));
  }

  // Prefill/decode separation, prefill side: the KV a finished hold_kv request keeps, from its
  // final token_event until release_held(id); nullopt for any other id.
  std::optional<held_kv> held(std::uint64_t id) const {
    record const* r = nullptr;
    if (auto it = live_.find(id); it != live_.end())
      r = &it->second;
    else if (auto h = held_.find(id); h != held_.end())
      r = &h->second;
    if (r == nullptr || !r->hold_kv || r->held_released ||
        (r->finished != finish_reason::stop && r->finished != finish_reason::length))
      return std::nullopt;
    return held_kv{std::span<std::int32_t const>(r->tokens).first(r->slots.size()), r->slots};
  }

  // Ends the hold of held(id): the KV goes to the prefix cache (or back to the pool without
  // one), now or, if the step that finished the request has not been followed by another yet,
  // with the next step. Returns false when id holds nothing.
  bool release_held(std::uint64_t id) {
    if (!held(id)) return false;
    if (auto h = held_.find(id); h != held_.end()) {
      free_into_cache(h->second);
      held_.erase(h);
      return true;
    }
    live_.at(id).held_released = true;  // release() frees it normally
    return true;
  }
  std::size_t held_requests() const noexcept { return held_.size(); }

  // Whether the executor calls back per layer, so that a kv_stream_observer can be set.
  static constexpr bool streams_kv =
      requires(Exec & e, std::function<void(std::int64_t)> const* f) {
    e.set_after_layer_kv(f);
  };
  // The observer of steps that complete hold_kv prompts (it must outlive its use); null: none.
  void set_kv_stream_observer(kv_stream_observer* o) {
    static_assert(streams_kv,
                  "engine::set_kv_stream_observer: the executor cannot call back "
                  "per layer (it has no set_after_layer_kv)");
    kv_observer_ = o;
    after_layer_kv_ = nullptr;
    if (o != nullptr) after_layer_kv_ = [o](std::int64_t layer) { o->after_layer(layer); };
  }

  // Aborts a live request; its KV is freed with the next step. Returns false for an unknown or
  // already finished id.
  bool abort(std::uint64_t id) {
    auto it = live_.find(id);
    if (it == live_.end() || it->second.finished != finish_reason::none) return false;
    if (!sched_.abort(id)) return false;
    it->second.finished = finish_reason::abort;
    return true;
  }

  // Runs one step (nothing when idle) and returns the tokens it sampled. With overlap (an
  // overlapping_executor and engine_config::overlap), a call plans and launches step t + 1, then
  // waits for step t and returns its tokens: the host's work for the next step runs while the
  // device computes the current one, and a decode row whose previous token is not known yet
  // takes it on the device. Without, a call plans, runs and returns one step.
  std::vector<token_event> step() {
    std::vector<token_event> events;
    if (idle()) return events;
    auto const t_start = clock::now();
    // The two flights take turns: the one not in flight plans the next step (their vectors and
    // maps keep their capacity, so a steady step allocates nothing here).
    flight* next = nullptr;
    double host = 0.0;  // the engine's own host time: planning and bookkeeping, not the executor
    if (!sched_.idle()) {
      next = inflight_ == &flights_[0] ? &flights_[1] : &flights_[0];
      plan_step(*next);
      flush_slots();
      bool const streaming = begin_kv_stream(*next);
      host += seconds_since(t_start);
      if constexpr (overlapping_executor<Exec>) {
        if (config_.overlap && !rows_.empty()) {
          exec_->launch(rows_, kv_layers_, pool_.req_to_token());
          next->launched = true;
        }
      }
      if (streaming && next->launched) end_kv_stream();
    }
    if (inflight_ != nullptr) {
      // Step t: its tokens (the device ran it while the host planned step t + 1).
      step_output out = collect();
      auto const t_done = clock::now();
      step_times const times = times_of(out);
      finish_step(*inflight_, std::move(out), events);
      host += seconds_since(t_done);
      account(*inflight_, times, host, seconds_since(t_start));
      host = 0.0;
      inflight_ = nullptr;
    }
    if (next != nullptr) {
      if (next->launched) {
        inflight_ = next;
      } else {
        // Sequential: run it now (or, with no rows, just complete it).
        step_output out;
        if (!rows_.empty()) out = exec_->run(rows_, kv_layers_, pool_.req_to_token());
        end_kv_stream();
        auto const t_ran = clock::now();
        step_times const times = times_of(out);
        finish_step(*next, std::move(out), events);
        host += seconds_since(t_ran);
        account(*next, times, host, seconds_since(t_start));
      }
    }
    return events;
  }

  // The offline API: submits `requests` (on top of any already queued), steps until every one of
  // them has finished, calling on_token(token_event const&) for each sampled token as it comes
  // (the streaming callback; it may call abort()), and returns their generations in the order
  // given. Requests submitted earlier run alongside; their tokens reach on_token too.
  template <class OnToken>
  std::vector<generation> generate(std::vector<request_type> requests, OnToken&& on_token) {
    std::unordered_map<std::uint64_t, std::size_t> index;
    std::vector<generation> out(requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i) {
      out[i].id = requests[i].id;
      index.emplace(requests[i].id, i);
    }
    for (request_type& r : requests) submit(std::move(r));
    std::size_t open = out.size();
    while (open > 0 && !idle()) {
      for (token_event const& t : step()) {
        on_token(t);
        auto it = index.find(t.id);
        if (it == index.end()) continue;
        generation& g = out[it->second];
        g.tokens.push_back(t.token);
        g.logprobs.push_back(t.logprob);
        if (t.finished != finish_reason::none) {
          g.finished = t.finished;
          --open;
        }
      }
      // Requests aborted from the callback end without a final token.
      for (generation& g : out)
        if (g.finished == finish_reason::none) {
          auto const rec = live_.find(g.id);
          if (rec != live_.end() && rec->second.finished == finish_reason::abort) {
            g.finished = finish_reason::abort;
            --open;
          }
        }
    }
    return out;
  }
  std::vector<generation> generate(std::vector<request_type> requests) {
    return generate(std::move(requests), [](token_event const&) {});
  }

  // No request is queued, running, or waiting for its KV to be released.
  bool idle() const noexcept { return sched_.idle() && inflight_ == nullptr; }
  std::size_t live_requests() const noexcept { return live_.size(); }

  engine_stats stats() const {
    engine_stats s = stats_;
    s.kv = pool_.stats();
    s.cached_tokens = prefix_.cached_tokens();
    s.evictable_tokens = prefix_.evictable_tokens();
    s.prefix = prefix_.stats();
    s.scheduler = sched_.stats();
    return s;
  }

  memory::kv_pool<B> const& pool() const noexcept { return pool_; }
  // The pool and the prefix cache (nullptr when disabled) for a KV transfer (pd::kv_receiver,
  // transports): used on the engine's thread, between steps, only.
  memory::kv_pool<B>& kv_pool() noexcept { return pool_; }
  memory::radix_cache* prefix_cache() noexcept { return config_.prefix_cache ? &prefix_ : nullptr; }
  Scheduler const& scheduler() const noexcept { return sched_; }

 private:
  struct record {
    std::vector<std::int32_t> tokens;  // prompt, then generated ids
    std::int64_t prompt_len = 0;
    params_type sampling{};
    std::int64_t max_new_tokens = 0;
    std::vector<std::int32_t> stop_ids;
    std::optional<std::int32_t> row;  // req_to_token row while it holds KV
    std::vector<std::int32_t> slots;  // slot of each position whose KV is computed or queued
    std::int64_t pinned = 0;          // slots[0, pinned) belong to the prefix cache
    std::optional<memory::radix_cache::handle> lock;
    finish_reason finished = finish_reason::none;
    bool hold_kv = false;        // keep the KV after a normal finish (held_) ...
    bool held_released = false;  // ... unless released before the request left live_
  };

  // The scheduler's view of the pool and the prefix cache.
  struct memory_view {
    engine* e;
    std::int64_t available_tokens() const {
      return e->pool_.slots().available() + e->prefix_.evictable_tokens();
    }
    std::int64_t capacity() const { return e->pool_.slots().capacity(); }
    std::int64_t prefix_hit(sched::request const& r) const {
      record const& rec = e->live_.at(r.id);
      // Read only: the scheduler may ask about a blocked request every step; the prefix is
      // matched (and counted in the stats) once, when its first chunk is pinned.
      return e->prefix_.cached_prefix(
          std::span<std::int32_t const>(rec.tokens).first(std::size_t(r.total_len())));
    }
  };

  static sched::scheduler_config checked_scheduler_config(engine_config const& c) {
    sched::scheduler_config s = c.scheduler;
    LC_CHECK(s.max_seq_len <= c.kv.max_tokens,
             "engine: max_seq_len " << s.max_seq_len << " exceeds the positions a req_to_token "
                                    << "row holds (" << c.kv.max_tokens << ")");
    s.max_running_requests = std::min<std::int64_t>(s.max_running_requests, c.kv.max_requests);
    return s;
  }

  // pending: the row's token is still on the device; it counts as generated (and ends the
  // history, which the executor completes there).
  void fill_sampling(step_row<params_type>& row, record const& r, bool pending) const {
    row.sampling = r.sampling;
    std::int64_t const generated = std::int64_t(r.tokens.size()) - r.prompt_len + (pending ? 1 : 0);
    row.generated = std::int32_t(generated);
    row.history = std::span<std::int32_t const>(r.tokens).subspan(std::size_t(r.prompt_len));
  }

  // Pins the first `start` tokens of the request's sequence, which the prefix cache holds (the
  // scheduler counted them as computed), and gives the request a req_to_token row.
  void pin_prefix(std::uint64_t id, record& r, std::int64_t start) {
    if (!r.row) {
      r.row = pool_.table().acquire_row();
      LC_CHECK(r.row, "engine: no free req_to_token row for request "
                          << id << " (rows: " << config_.kv.max_requests << ")");
    }
    r.slots.clear();
    r.pinned = 0;
    if (start == 0) return;
    auto const m = prefix_.match(std::span<std::int32_t const>(r.tokens).first(std::size_t(start)));
    LC_CHECK(m.length == start, "engine: request " << id << " was admitted with " << start
                                                   << " cached tokens but the prefix cache holds "
                                                   << m.length);
    prefix_.lock(m.node);
    r.lock = m.node;
    r.slots.assign(m.slots.begin(), m.slots.end());
    r.pinned = start;
    write_slots(*r.row, 0, r.slots);
  }

  // n more slots for the request, from the free list or, when it runs short, by evicting the
  // least recently used unreferenced prefixes.
  // Evicts the least recently used unreferenced prefixes until n slots are free (or nothing is
  // left to evict).
  void make_room(std::int64_t n) {
    std::int64_t const short_by = n - pool_.slots().available();
    if (short_by > 0)
      prefix_.evict(short_by, [&](std::span<std::int32_t const> s) { pool_.slots().free(s); });
  }

  void extend(record& r, std::int64_t n) {
    make_room(n);
    std::size_t const pos = r.slots.size();
    LC_CHECK(pool_.slots().try_alloc(n, r.slots),
             "engine: the KV pool has " << pool_.slots().available() << " free slots for " << n
                                        << " new tokens after eviction; the scheduler "
                                           "over-committed the pool");
    write_slots(*r.row, std::int64_t(pos), std::span<std::int32_t const>(r.slots).subspan(pos));
  }

  // Gives the request's computed KV to the prefix cache (which keeps what it did not hold yet),
  // frees the duplicates, drops the pin and the row.
  void free_into_cache(record& r) {
    if (!r.slots.empty()) {
      // Slots whose token is known go to the cache; with overlap, the slot of a token still on
      // the device (never the case for a request that ends normally) is freed.
      std::int64_t const n = std::min(std::int64_t(r.slots.size()), std::int64_t(r.tokens.size()));
      std::span<std::int32_t const> const slots(r.slots);
      auto const ins = prefix_.insert(std::span<std::int32_t const>(r.tokens).first(std::size_t(n)),
                                      slots.first(std::size_t(n)));
      std::int64_t const existing = std::min(ins.existing, n);
      if (existing > r.pinned)
        pool_.slots().free(slots.subspan(std::size_t(r.pinned), std::size_t(existing - r.pinned)));
      if (std::int64_t(r.slots.size()) > n) pool_.slots().free(slots.subspan(std::size_t(n)));
    }
    if (r.lock) prefix_.unlock(*r.lock);
    r.lock.reset();
    if (r.row) pool_.table().release_row(*r.row);
    r.row.reset();
    r.slots.clear();
    r.pinned = 0;
  }

  // The scheduler released a finished or aborted request. With overlap, a request that ends by
  // max_new_tokens is released while its last row is still in flight: its record waits in
  // retiring_ (or held_) for that row's token.
  void release(std::uint64_t id) {
    auto it = live_.find(id);
    if (it == live_.end()) return;
    record& r = it->second;
    bool const aborted = r.finished == finish_reason::abort;
    bool const hold = r.hold_kv && !r.held_released && !aborted;
    if (hold) {
      // The request leaves the running set but keeps its row-less KV for the transfer.
      if (r.row) pool_.table().release_row(*r.row);
      r.row.reset();
      held_.emplace(id, std::move(r));
    } else {
      free_into_cache(r);
      if (!aborted && inflight_ != nullptr && inflight_->row_of.contains(id))
        retiring_.emplace(id, std::move(r));
    }
    live_.erase(it);
  }

  // A planned step: its plan, the ids of its sampling rows in row order, and where each sampling
  // row sits among the step's rows (a pending id of the next step is read from there).
  struct flight {
    sched::step_plan plan;
    std::vector<std::uint64_t> sampled_ids;
    std::unordered_map<std::uint64_t, std::int32_t> row_of;
    bool launched = false;  // queued on the executor, collected by the next step()
  };

  using clock = std::chrono::steady_clock;
  static double seconds(clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  }
  static double seconds_since(clock::time_point a) { return seconds(a, clock::now()); }

  // Schedules the next step and carries out its plan on the host: releases, pauses, prefix pins,
  // KV slots (queued req_to_token updates) and the rows of the mixed batch in rows_.
  void plan_step(flight& f) {
    f.sampled_ids.clear();
    f.row_of.clear();
    f.launched = false;
    memory_view const mem{this};
    f.plan = sched_.schedule(mem);
    sched::step_plan const& plan = f.plan;
    for (std::uint64_t const id : plan.release) release(id);
    for (std::uint64_t const id : plan.paused) free_into_cache(live_.at(id));
    for (sched::prefill_chunk const& c : plan.prefill)
      if (c.is_first) pin_prefix(c.id, live_.at(c.id), c.start);
    // Evict once for the whole step (an eviction walks the cache's leaves), not per request.
    make_room(plan.forward_tokens());
    rows_.clear();
    for (sched::prefill_chunk const& c : plan.prefill) {
      record& r = live_.at(c.id);
      LC_CHECK(std::int64_t(r.slots.size()) == c.start,
               "engine: request " << c.id << " holds " << r.slots.size()
                                  << " slots but its chunk starts at " << c.start);
      extend(r, c.length);
      step_row<params_type> row;
      row.tokens = std::span<std::int32_t const>(r.tokens).subspan(std::size_t(c.start),
                                                                   std::size_t(c.length));
      row.cached = c.start;
      row.req_row = *r.row;
      row.sample = c.is_last;
      row.prefill = true;
      fill_sampling(row, r, false);
      if (c.is_last) {
        f.row_of.emplace(c.id, std::int32_t(rows_.size()));
        f.sampled_ids.push_back(c.id);
      }
      rows_.push_back(row);
    }
    for (std::uint64_t const id : plan.decode) {
      record& r = live_.at(id);
      // Its previous token may still be on the device (drawn by the step in flight).
      std::int32_t pending = -1;
      if (inflight_ != nullptr)
        if (auto const it = inflight_->row_of.find(id); it != inflight_->row_of.end())
          pending = it->second;
      std::int64_t const pos = std::int64_t(r.tokens.size()) - (pending >= 0 ? 0 : 1);
      LC_CHECK(std::int64_t(r.slots.size()) == pos, "engine: decoding request "
                                                        << id << " holds " << r.slots.size()
                                                        << " slots for " << pos + 1 << " tokens");
      extend(r, 1);
      step_row<params_type> row;
      row.tokens = pending >= 0
                       ? std::span<std::int32_t const>(placeholder_)
                       : std::span<std::int32_t const>(r.tokens).subspan(std::size_t(pos), 1);
      row.cached = pos;
      row.req_row = *r.row;
      row.sample = true;
      row.pending = pending;
      fill_sampling(row, r, pending >= 0);
      f.row_of.emplace(id, std::int32_t(rows_.size()));
      f.sampled_ids.push_back(id);
      rows_.push_back(row);
    }
  }

  // Arms the executor's per-layer callback when the planned step completes a hold_kv prompt and
  // an observer is set, after telling the observer which prompts; returns whether it did.
  bool begin_kv_stream(flight const& f) {
    if constexpr (streams_kv) {
      if (kv_observer_ == nullptr) return false;
      kv_starts_.clear();
      for (sched::prefill_chunk const& c : f.plan.prefill) {
        if (!c.is_last) continue;
        record const& r = live_.at(c.id);
        if (!r.hold_kv || r.held_released) continue;
        kv_starts_.push_back(
            {c.id,
             held_kv{std::span<std::int32_t const>(r.tokens).first(r.slots.size()), r.slots}});
      }
      if (kv_starts_.empty()) return false;
      kv_observer_->before_forward(kv_starts_);
      exec_->set_after_layer_kv(&after_layer_kv_);
      return true;
    } else {
      (void)f;
      return false;
    }
  }
  void end_kv_stream() {
    if constexpr (streams_kv) exec_->set_after_layer_kv(nullptr);
  }

  static constexpr bool batched_table_updates =
      requires(Exec & e, tensor_view const& t, std::span<std::int32_t const> i) {
    e.update_table(t, i, i);
  };

  // Slot ids of positions [pos0, pos0 + n) of a request row: in the host mirror at once; on the
  // device in one batch before the next step (executors with update_table), or at once.
  void write_slots(std::int32_t row, std::int64_t pos0, std::span<std::int32_t const> slots) {
    if constexpr (batched_table_updates)
      pool_.stage_slots(row, pos0, slots, table_index_, table_value_);
    else
      pool_.write_slots(row, pos0, slots, exec_->stream());
  }

  void flush_slots() {
    if constexpr (batched_table_updates) {
      exec_->update_table(pool_.req_to_token(), table_index_, table_value_);
      table_index_.clear();
      table_value_.clear();
    }
  }

  step_output collect() {
    if constexpr (overlapping_executor<Exec>) {
      return exec_->collect();
    } else {
      LC_THROW("engine: a step is in flight on an executor that cannot overlap");
    }
  }

  // The tokens of a finished step: each request's bookkeeping, its events, the scheduler's
  // completion. Rows of requests that ended meanwhile (aborted, or finished one step before:
  // overlap ran them once more) are dropped.
  void finish_step(flight const& f, step_output&& out_, std::vector<token_event>& events) {
    LC_CHECK(out_.tokens.size() == f.sampled_ids.size(),
             "engine: the executor returned " << out_.tokens.size() << " tokens for "
                                              << f.sampled_ids.size() << " sampling rows");
    // Kept: the events' alternatives point into it. A step without sampling rows (a plan that
    // only releases) leaves it alone: the events of the step collected earlier in the same call
    // still point there.
    if (!f.sampled_ids.empty()) last_out_ = std::move(out_);
    step_output const& out = last_out_;
    results_.clear();
    for (std::size_t i = 0; i < f.sampled_ids.size(); ++i) {
      std::uint64_t const id = f.sampled_ids[i];
      record* found = nullptr;
      for (auto* m : {&live_, &retiring_, &held_})
        if (auto it = m->find(id); it != m->end()) {
          found = &it->second;
          break;
        }
      if (found == nullptr || found->finished != finish_reason::none) continue;
      record& r = *found;
      std::int32_t const tok = out.tokens[i];
      r.tokens.push_back(tok);
      std::int64_t const generated = std::int64_t(r.tokens.size()) - r.prompt_len;
      if (std::find(r.stop_ids.begin(), r.stop_ids.end(), tok) != r.stop_ids.end())
        r.finished = finish_reason::stop;
      else if (generated >= r.max_new_tokens)
        r.finished = finish_reason::length;
      results_.push_back({id, tok, r.finished != finish_reason::none});
      token_event ev{
          id,
          tok,
          out.logprobs.empty() ? std::numeric_limits<float>::quiet_NaN() : out.logprobs[i],
          generated - 1,
          r.finished,
          {},
          {}};
      if (last_out_.top_n > 0) {
        std::size_t const k = std::size_t(last_out_.top_n);
        ev.top_ids = std::span<std::int32_t const>(last_out_.top_ids).subspan(i * k, k);
        ev.top_logprobs = std::span<float const>(last_out_.top_logprobs).subspan(i * k, k);
      }
      events.push_back(ev);
    }
    sched_.complete(f.plan, results_);
    retiring_.clear();
  }

  // What the executor reported of a step's time (kept before its output moves).
  struct step_times {
    double host = 0.0, device = 0.0, idle = 0.0;
  };
  static step_times times_of(step_output const& o) {
    return {o.host_seconds, o.device_seconds, o.idle_before_seconds};
  }

  // host: the engine's own host time in the step; times: the executor's.
  void account(flight const& f, step_times const& out, double host, double whole) {
    stats_.engine_host_seconds += host;
    stats_.executor_host_seconds += out.host;
    stats_.step_seconds += whole;
    stats_.device_seconds += out.device;
    stats_.device_idle_seconds += out.idle;
    if (f.plan.prefill.empty() && !f.plan.decode.empty()) {
      ++stats_.decode_steps;
      stats_.decode_rows += std::int64_t(f.plan.decode.size());
      stats_.decode_host_seconds += host + out.host;
      stats_.decode_step_seconds += whole;
      stats_.decode_device_seconds += out.device;
      stats_.decode_idle_seconds += out.idle;
    }
    ++stats_.steps;
    stats_.forward_tokens += f.plan.forward_tokens();
    stats_.sampled_tokens += std::int64_t(results_.size());
  }

  Exec* exec_;
  engine_config config_;
  memory::kv_pool<B> pool_;
  memory::radix_cache prefix_;
  Scheduler sched_;
  std::unordered_map<std::uint64_t, record> live_;
  std::unordered_map<std::uint64_t, record> held_;       // finished hold_kv requests, KV pinned
  std::unordered_map<std::uint64_t, record> retiring_;   // released, last row still in flight
  flight flights_[2];                                    // planned steps, in turn
  flight* inflight_ = nullptr;                           // the one launched and not collected yet
  std::vector<tensor_view> kv_layers_ = pool_.layers();  // the pool's layer views (fixed)
  std::int32_t placeholder_[1] = {0};                    // the token of a pending row
  std::vector<std::int32_t> table_index_, table_value_;  // req_to_token updates not yet sent
  engine_stats stats_;
  std::vector<step_row<params_type>> rows_;
  std::vector<sched::token_result> results_;
  step_output last_out_;
  kv_stream_observer* kv_observer_ = nullptr;
  std::function<void(std::int64_t)> after_layer_kv_;  // calls kv_observer_->after_layer
  std::vector<kv_stream_start> kv_starts_;            // scratch of begin_kv_stream
};

}  // namespace lightcore::engine
