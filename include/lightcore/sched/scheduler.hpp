// scheduler: continuous batching over a token-level KV pool. Once per step the engine's host
// thread asks schedule(memory) for a step_plan (one mixed batch of prefill chunks and decode
// rows), carries it out, and reports the sampled tokens through complete(plan, results).
//
//   sched::scheduler<admit::optimistic, order::fcfs_skip_head, chunk::fixed<4096>> s(config);
//   s.add({.id = 7, .prompt_tokens = 900, .max_new_tokens = 256});
//   for (;;) {
//     step_plan plan = s.schedule(pool);           // pool satisfies kv_memory
//     std::vector<token_result> out = engine.run(plan);
//     s.complete(plan, out);
//   }
//
// Decisions, in order, each step: release what finished or was aborted; if the decode rows do
// not fit the available slots, pause the newest running requests until they do; decode every
// decoding request (one token of the budget each); continue running prefills with what is left;
// then admit queued requests (paused first) whose peak estimate fits the capacity and whose first
// chunk fits the available slots now. A step that pauses admits nothing, so a request is never
// paused and scheduled in one step. Not thread-safe: it belongs to the engine's host thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/sched/kv_memory.hpp"
#include "lightcore/sched/peak.hpp"
#include "lightcore/sched/policies.hpp"
#include "lightcore/sched/request.hpp"
#include "lightcore/sched/step_plan.hpp"

namespace lightcore::sched {

struct scheduler_config {
  std::int64_t max_running_requests = 0;  // requests prefilling or decoding at once; at most the
                                          // per-step token budget, so that every running request
                                          // decodes in every step; 0: the budget
  std::int64_t max_tokens_per_step = 0;   // tokens per forward pass (decode rows + prefill
                                          // chunks); 0: the chunk policy's tokens_per_step
  std::int64_t max_prefill_tokens_while_decoding = 0;  // tokens; prefill admitted in a step that
                                                       // also decodes, so that a burst of long
                                                       // prompts does not stretch the latency of
                                                       // every decoding request; 0: no cap
  std::int64_t max_seq_len = 32768;  // tokens; prompt + max_new_tokens of one request
};

struct scheduler_stats {
  std::uint64_t steps = 0;     // completed steps
  std::uint64_t admitted = 0;  // first admissions
  std::uint64_t resumed = 0;   // admissions of paused requests
  std::uint64_t paused = 0;    // pauses under memory pressure
  std::uint64_t finished = 0;
  std::uint64_t aborted = 0;
  std::uint64_t adopted = 0;           // requests taken over with their prompt's KV (adopt())
  std::int64_t prefill_tokens = 0;     // tokens computed by prefill chunks (recomputation too)
  std::int64_t decode_tokens = 0;      // decode rows run
  std::int64_t admitted_tokens = 0;    // sequence tokens at admission/resumption
  std::int64_t prefix_hit_tokens = 0;  // of which found in the prefix cache

  double prefix_hit_rate() const noexcept {
    return admitted_tokens == 0
               ? 0.0
               : static_cast<double>(prefix_hit_tokens) / static_cast<double>(admitted_tokens);
  }
};

template <class Admission, class Order = order::strict_fcfs, class Chunk = chunk::fixed<4096>>
class scheduler {
  static_assert(admission_policy<Admission>,
                "scheduler<Admission, Order, Chunk>: Admission must be an admission policy "
                "(remaining(request) -> int64, record_finished(request)), "
                "e.g. admit::conservative or admit::optimistic");
  static_assert(order_policy<Order>,
                "scheduler<Admission, Order, Chunk>: Order must be an ordering policy "
                "(static bool skip_head), e.g. order::strict_fcfs or order::fcfs_skip_head");
  static_assert(chunk_policy<Chunk>,
                "scheduler<Admission, Order, Chunk>: Chunk must be a chunking policy "
                "(static int64 tokens_per_step), e.g. chunk::fixed<4096>");

 public:
  using admission_type = Admission;
  using order_type = Order;
  using chunk_type = Chunk;

  explicit scheduler(scheduler_config const& config = {}, Admission admission = Admission{})
      : config_(config), admission_(std::move(admission)) {
    if (config_.max_tokens_per_step == 0) config_.max_tokens_per_step = Chunk::tokens_per_step;
    LC_CHECK(config_.max_tokens_per_step > 0, "scheduler: max_tokens_per_step is "
                                                  << config.max_tokens_per_step
                                                  << "; allowed: > 0, or 0 for the chunk "
                                                     "policy's default");
    if (config_.max_running_requests == 0)
      config_.max_running_requests = config_.max_tokens_per_step;
    LC_CHECK(config_.max_running_requests >= 1 &&
                 config_.max_running_requests <= config_.max_tokens_per_step,
             "scheduler: max_running_requests is "
                 << config_.max_running_requests << "; allowed: 1.." << config_.max_tokens_per_step
                 << ", or 0 for the budget (every running request decodes in every step)");
    LC_CHECK(config_.max_prefill_tokens_while_decoding >= 0,
             "scheduler: max_prefill_tokens_while_decoding is "
                 << config_.max_prefill_tokens_while_decoding << "; allowed: >= 0 (0: no cap)");
    LC_CHECK(config_.max_seq_len >= 2, "scheduler: max_seq_len is "
                                           << config_.max_seq_len
                                           << "; allowed: >= 2 (one prompt and one new token)");
  }

  // Queues a fresh request (counts zero, state waiting). Throws lightcore::error for an empty
  // prompt, max_new_tokens < 1, prompt + max_new_tokens > max_seq_len, or a live duplicate id.
  void add(request r) {
    LC_CHECK(r.prompt_tokens > 0, "add: request " << r.id << " has a prompt of " << r.prompt_tokens
                                                  << " tokens; a prompt needs at least 1 token");
    LC_CHECK(r.max_new_tokens > 0, "add: request " << r.id << " asks for max_new_tokens = "
                                                   << r.max_new_tokens << "; allowed: >= 1");
    LC_CHECK(r.prompt_tokens <= config_.max_seq_len &&
                 r.max_new_tokens <= config_.max_seq_len - r.prompt_tokens,
             "add: request " << r.id << " needs prompt " << r.prompt_tokens << " + max_new_tokens "
                             << r.max_new_tokens << " tokens, more than max_seq_len "
                             << config_.max_seq_len
                             << "; shorten the prompt or lower max_new_tokens");
    LC_CHECK(
        r.generated == 0 && r.computed == 0 && r.cached == 0 && r.state == request_state::waiting,
        "add: request " << r.id << " is not fresh (generated " << r.generated << ", computed "
                        << r.computed << ", cached " << r.cached << ", state " << to_string(r.state)
                        << "); allowed: all counts 0 and state waiting");
    LC_CHECK(!table_.contains(r.id), "add: request id " << r.id
                                                        << " is already in use; ids must be "
                                                           "unique among live requests");
    r.arrival = next_arrival_++;
    table_.emplace(r.id, r);
    queue_.push_back(r.id);  // the newest arrival sorts last among waiting requests
  }

  // Takes over a request whose prompt's KV is in the pool already and whose first token was
  // sampled elsewhere (prefill/decode separation: another instance ran the prefill): it decodes
  // from its next step on. r.prompt_tokens and r.max_new_tokens as for add(), r.max_new_tokens
  // >= 2 (the first token counts); r.cached: the leading prompt tokens that belong to the prefix
  // cache (the rest of the prompt's slots are the request's own). It joins the running set at
  // the next schedule() that has room under max_running_requests, ahead of queued requests: its
  // memory is held already. Throws lightcore::error as add() does, and for a bad r.cached.
  void adopt(request r) {
    LC_CHECK(
        r.prompt_tokens > 0 && r.max_new_tokens >= 2 && r.prompt_tokens <= config_.max_seq_len &&
            r.max_new_tokens <= config_.max_seq_len - r.prompt_tokens,
        "adopt: request " << r.id << " has prompt " << r.prompt_tokens << " and max_new_tokens "
                          << r.max_new_tokens << "; allowed: prompt >= 1, max_new_tokens >= 2 "
                          << "(the first token is sampled already), their sum <= max_seq_len "
                          << config_.max_seq_len);
    LC_CHECK(0 <= r.cached && r.cached <= r.prompt_tokens,
             "adopt: request " << r.id << " has " << r.cached << " cached tokens; allowed: 0.."
                               << r.prompt_tokens << " (its prompt)");
    LC_CHECK(!table_.contains(r.id), "adopt: request id " << r.id
                                                          << " is already in use; ids must be "
                                                             "unique among live requests");
    r.generated = 1;
    r.computed = r.prompt_tokens;
    r.state = request_state::decoding;
    r.arrival = next_arrival_++;
    table_.emplace(r.id, r);
    adopted_.push_back(r.id);
    stats_.admitted_tokens += r.total_len();
    stats_.prefix_hit_tokens += r.cached;
    ++stats_.adopted;
  }

  // Aborts a request in any live state. Returns false when the id is unknown or the request has
  // already finished or been aborted. Its KV (if any) is listed in the next plan's `release`; if
  // the abort lands between schedule() and complete(), that step's rows for it are ignored.
  bool abort(std::uint64_t id) {
    auto const it = table_.find(id);
    if (it == table_.end() || is_done(it->second.state)) return false;
    request& r = it->second;
    if (is_queued(r.state)) erase_id(queue_, id);
    if (is_running(r.state)) {
      auto const adopted = std::find(adopted_.begin(), adopted_.end(), id);
      if (adopted != adopted_.end())
        adopted_.erase(adopted);
      else
        erase_id(running_, id);
    }
    r.state = request_state::aborted;
    to_release_.push_back(id);
    ++stats_.aborted;
    return true;
  }

  // Decides the next step. Called with no plan in flight, or with one (overlapped scheduling:
  // the engine plans step t + 1 while step t runs): that plan's rows are then counted as done
  // with one unfinished token per sampling row, except where max_new_tokens makes the token the
  // last one; a request that turns out to have finished (a stop token) or is aborted meanwhile
  // keeps its row in the new plan, and its token there is ignored by complete().
  template <class Memory>
  step_plan schedule(Memory const& memory) {
    static_assert(kv_memory<Memory>,
                  "scheduler::schedule(memory): memory must satisfy sched::kv_memory "
                  "(available_tokens(), prefix_hit(request), capacity(), each -> int64)");
    LC_CHECK(flight_.size() <= 1, "schedule: the plans of steps "
                                      << flight_.front().plan.step << " and "
                                      << flight_.back().plan.step
                                      << " are in flight; complete the older one first (at most "
                                         "one plan runs ahead)");
    if (!flight_.empty() && !flight_.front().advanced) {
      advance(flight_.front().plan);
      flight_.front().advanced = true;
    }
    std::int64_t const capacity = memory.capacity();
    LC_CHECK(capacity >= config_.max_seq_len, "schedule: the KV pool holds "
                                                  << capacity << " tokens, fewer than max_seq_len "
                                                  << config_.max_seq_len
                                                  << "; a request of max_seq_len could never run; "
                                                     "allowed: max_seq_len <= capacity");
    std::int64_t const reported = memory.available_tokens();
    LC_CHECK(0 <= reported && reported <= capacity,
             "schedule: memory reports " << reported << " available tokens; allowed: 0.."
                                         << capacity << " (its capacity)");

    step_plan plan;
    plan.step = next_plan_++;
    // Slots the engine frees before allocating. A request's prefix hits may be shared with
    // other requests, so only the slots it computed itself are sure to come back.
    std::int64_t avail = reported;
    for (std::uint64_t const id : to_release_) {
      auto const it = table_.find(id);
      bool const kept = it->second.keeps_kv && it->second.state == request_state::finished;
      if (!kept) avail += it->second.computed - it->second.cached;
      plan.release.push_back(id);
      table_.erase(it);
    }
    to_release_.clear();

    // Adopted requests join first, as room allows: their KV is in the pool already.
    while (!adopted_.empty() && std::int64_t(running_.size()) < config_.max_running_requests) {
      insert_by_arrival(running_, adopted_.front());
      adopted_.erase(adopted_.begin());
    }

    std::int64_t decode_rows = 0;
    for (std::uint64_t const id : running_)
      decode_rows += table_.at(id).state == request_state::decoding ? 1 : 0;
    // Memory pressure: pause the newest running requests until the others' decode rows fit.
    while (decode_rows > avail && !running_.empty()) {
      std::uint64_t const id = running_.back();
      running_.pop_back();
      request& r = table_.at(id);
      if (r.state == request_state::decoding) --decode_rows;
      avail += r.computed - r.cached;
      r.state = request_state::paused;
      r.computed = 0;
      r.cached = 0;
      plan.paused.push_back(id);
      enqueue_paused(id);
      ++stats_.paused;
    }

    for (std::uint64_t const id : running_)
      if (table_.at(id).state == request_state::decoding) plan.decode.push_back(id);
    avail -= decode_rows;
    std::int64_t prefill_budget = config_.max_tokens_per_step - decode_rows;
    if (decode_rows > 0 && config_.max_prefill_tokens_while_decoding > 0)
      prefill_budget = std::min(prefill_budget, config_.max_prefill_tokens_while_decoding);

    // Running prefills go on first, oldest first: finishing a prompt frees the budget sooner
    // than starting another one would.
    for (std::uint64_t const id : running_) {
      request const& r = table_.at(id);
      if (r.state != request_state::prefilling) continue;
      std::int64_t const n = std::min({r.to_compute(), prefill_budget, avail});
      if (n <= 0) continue;
      plan.prefill.push_back({id, r.computed, n, n == r.to_compute(), false});
      prefill_budget -= n;
      avail -= n;
    }

    if (plan.paused.empty()) admit(memory, capacity, plan, avail, prefill_budget);
    flight_.push_back({plan, false});
    return plan;
  }

  // Advances the requests of `plan` by the engine's results: one per sampling row (decode rows
  // and last chunks), in any order, for every request still live; results of requests that have
  // finished or been aborted since (or of released ones) are ignored. Plans are completed once,
  // in order. The plan and the results are checked before anything changes, so a rejected call
  // can be retried.
  void complete(step_plan const& plan, std::span<token_result const> results) {
    LC_CHECK(
        !flight_.empty() && plan.step == flight_.front().plan.step,
        "complete: got the plan of step "
            << plan.step << " but the oldest step in flight is "
            << (flight_.empty() ? std::string("none") : std::to_string(flight_.front().plan.step))
            << "; each plan is completed once, in order");
    step_plan const& mine = flight_.front().plan;
    // Member scratch, cleared each call: a steady step allocates nothing here.
    std::unordered_map<std::uint64_t, token_result const*>& by_id = by_id_;
    by_id.clear();
    for (token_result const& t : results)
      LC_CHECK(by_id.emplace(t.id, &t).second,
               "complete: two results for request " << t.id << "; one per sampling row");
    std::unordered_set<std::uint64_t>& sampling = sampling_;  // ids whose rows sample
    sampling.clear();
    for (prefill_chunk const& c : mine.prefill)
      if (c.is_last) sampling.insert(c.id);
    for (std::uint64_t const id : mine.decode) sampling.insert(id);
    for (token_result const& t : results)
      LC_CHECK(sampling.contains(t.id), "complete: result for request "
                                            << t.id << ", which has no sampling row in step "
                                            << plan.step
                                            << " (only decode rows and last chunks sample)");
    bool const advanced = flight_.front().advanced;
    for (std::uint64_t const id : sampling) {
      auto const it = table_.find(id);
      if (it == table_.end() || is_done(it->second.state)) continue;
      // Before advance(), a live request's row must be its state's (the plan was not altered).
      bool const chunk = std::any_of(mine.prefill.begin(), mine.prefill.end(),
                                     [&](prefill_chunk const& c) { return c.id == id; });
      LC_CHECK(advanced || it->second.state ==
                               (chunk ? request_state::prefilling : request_state::decoding),
               "complete: request "
                   << id << " is " << to_string(it->second.state) << " but its row expects it "
                   << (chunk ? "prefilling" : "decoding") << "; the plan was altered");
      LC_CHECK(by_id.contains(id), "complete: no result for request "
                                       << id << ", which sampled a token in step " << plan.step);
    }
    if (!advanced) advance(mine);
    for (token_result const& t : results) {
      if (!t.finished) continue;
      auto const it = table_.find(t.id);
      if (it == table_.end() || is_done(it->second.state)) continue;
      finish(it->second);
    }
    flight_.pop_front();
    ++step_;
    ++stats_.steps;
  }

  // The request record, or nullptr once it has been released (or was never added).
  request const* find(std::uint64_t id) const {
    auto const it = table_.find(id);
    return it == table_.end() ? nullptr : &it->second;
  }
  // Prefilling and decoding requests, oldest arrival first.
  std::span<std::uint64_t const> running() const noexcept { return running_; }
  // Paused requests (oldest first), then waiting ones (oldest first): the admission order.
  std::span<std::uint64_t const> queued() const noexcept { return queue_; }
  // Requests not yet released (queued, running, or done and awaiting the next plan's release).
  std::size_t size() const noexcept { return table_.size(); }
  bool idle() const noexcept { return table_.empty(); }
  std::uint64_t step() const noexcept { return step_; }  // completed steps
  std::size_t plans_in_flight() const noexcept { return flight_.size(); }
  scheduler_config const& config() const noexcept { return config_; }
  scheduler_stats const& stats() const noexcept { return stats_; }
  Admission const& admission() const noexcept { return admission_; }

 private:
  template <class Memory>
  void admit(Memory const& memory, std::int64_t capacity, step_plan& plan, std::int64_t& avail,
             std::int64_t& prefill_budget) {
    std::vector<token_need> base;
    base.reserve(running_.size() + 1);
    for (std::uint64_t const id : running_) {
      request const& r = table_.at(id);
      base.push_back({r.total_len(), admission_.remaining(r)});
    }
    std::vector<token_need> scratch;
    auto it = queue_.begin();
    while (it != queue_.end()) {
      if (static_cast<std::int64_t>(running_.size()) >= config_.max_running_requests) break;
      if (prefill_budget <= 0) break;
      request& c = table_.at(*it);
      std::int64_t const reported_hit = memory.prefix_hit(c);
      LC_CHECK(reported_hit >= 0, "schedule: memory reports a prefix hit of "
                                      << reported_hit << " tokens for request " << c.id
                                      << "; allowed: >= 0");
      // At least one token is computed: the last one's logits give the next token.
      std::int64_t const hit = std::min(reported_hit, c.total_len() - 1);
      std::int64_t const first = std::min(c.total_len() - hit, prefill_budget);
      token_need const need{c.total_len(), admission_.remaining(c)};
      scratch = base;
      scratch.push_back(need);  // peak_tokens sorts its scratch
      bool const fits = hit + first <= avail && peak_tokens(scratch) <= capacity;
      if (!fits) {
        if (Order::skip_head && c.state == request_state::waiting) {
          ++it;
          continue;
        }
        break;
      }
      if (c.state == request_state::paused) {
        plan.resumed.push_back(c.id);
        ++stats_.resumed;
      } else {
        ++stats_.admitted;
      }
      stats_.admitted_tokens += c.total_len();
      stats_.prefix_hit_tokens += hit;
      c.state = request_state::prefilling;
      c.cached = hit;
      c.computed = hit;
      plan.prefill.push_back({c.id, hit, first, hit + first == c.total_len(), true});
      avail -= hit + first;
      prefill_budget -= first;
      base.push_back(need);
      insert_by_arrival(running_, c.id);
      it = queue_.erase(it);
    }
  }

  // Counts a plan's rows as run: every row's slots are computed (those of requests finished or
  // aborted since too, so that their release is exact); a live sampling row adds one token,
  // which ends the request when it reaches max_new_tokens. A stop token is known only from
  // the results (complete()).
  void advance(step_plan const& plan) {
    for (prefill_chunk const& c : plan.prefill) {
      auto const it = table_.find(c.id);
      if (it == table_.end()) continue;
      request& r = it->second;
      if (is_done(r.state)) {
        r.computed += c.length;  // finished or aborted since: its slots were filled anyway
        continue;
      }
      LC_CHECK(r.state == request_state::prefilling && c.start == r.computed &&
                   c.length <= r.to_compute(),
               "complete: chunk [" << c.start << ", " << c.start + c.length << ") of request "
                                   << c.id << " does not continue its " << r.computed
                                   << " computed tokens; the plan was altered");
      r.computed += c.length;
      stats_.prefill_tokens += c.length;
      if (!c.is_last) continue;
      r.state = request_state::decoding;
      add_token(r);
    }
    for (std::uint64_t const id : plan.decode) {
      auto const it = table_.find(id);
      if (it == table_.end()) continue;
      request& r = it->second;
      ++r.computed;
      if (is_done(r.state)) continue;
      LC_CHECK(r.state == request_state::decoding,
               "complete: request " << id << " is " << to_string(r.state)
                                    << " but its decode row expects it decoding; the plan was "
                                       "altered");
      ++stats_.decode_tokens;
      add_token(r);
    }
  }

  void add_token(request& r) {
    ++r.generated;
    if (r.generated >= r.max_new_tokens) finish(r);
  }

  void finish(request& r) {
    if (r.state == request_state::paused)
      erase_id(queue_, r.id);
    else
      erase_id(running_, r.id);
    r.state = request_state::finished;
    admission_.record_finished(r);
    to_release_.push_back(r.id);
    ++stats_.finished;
  }

  // Paused requests go back to the head of the queue, ordered among themselves by arrival.
  void enqueue_paused(std::uint64_t id) {
    std::uint64_t const arrival = table_.at(id).arrival;
    auto pos = std::find_if(queue_.begin(), queue_.end(), [&](std::uint64_t q) {
      request const& o = table_.at(q);
      return o.state != request_state::paused || o.arrival > arrival;
    });
    queue_.insert(pos, id);
  }

  void insert_by_arrival(std::vector<std::uint64_t>& ids, std::uint64_t id) {
    std::uint64_t const arrival = table_.at(id).arrival;
    auto pos = std::find_if(ids.begin(), ids.end(),
                            [&](std::uint64_t q) { return table_.at(q).arrival > arrival; });
    ids.insert(pos, id);
  }

  static void erase_id(std::vector<std::uint64_t>& ids, std::uint64_t id) {
    ids.erase(std::find(ids.begin(), ids.end(), id));
  }

  scheduler_config config_;
  Admission admission_;
  std::unordered_map<std::uint64_t, request> table_;
  std::vector<std::uint64_t> queue_;    // paused (by arrival), then waiting (by arrival)
  std::vector<std::uint64_t> running_;  // prefilling and decoding, by arrival
  std::vector<std::uint64_t> adopted_;  // decoding, KV held, waiting for room in running_
  std::vector<std::uint64_t> to_release_;
  std::uint64_t next_arrival_ = 0;
  std::uint64_t step_ = 0;       // completed steps
  std::uint64_t next_plan_ = 0;  // the number of the next plan
  struct in_flight {
    step_plan plan;
    bool advanced = false;  // its rows were counted by a schedule() that ran ahead
  };
  std::deque<in_flight> flight_;                                  // oldest first; at most two
  std::unordered_map<std::uint64_t, token_result const*> by_id_;  // complete()'s scratch
  std::unordered_set<std::uint64_t> sampling_;                    // complete()'s scratch
  scheduler_stats stats_;
};

}  // namespace lightcore::sched
