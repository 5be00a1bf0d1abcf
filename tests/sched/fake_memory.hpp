// fake_memory: a kv_memory that counts token slots exactly as the engine spends them when it
// carries out a step_plan (release, pause into the prefix cache, pin hits, allocate), and fails
// loudly on over-commitment. Plus the pieces of a scripted simulation: a sampler that reports
// EOS where a test wants it, and step expectations compared row by row.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <ostream>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/sched/kv_memory.hpp"
#include "lightcore/sched/policies.hpp"
#include "lightcore/sched/request.hpp"
#include "lightcore/sched/scheduler.hpp"
#include "lightcore/sched/step_plan.hpp"

namespace lightcore::sched::testing {

class fake_memory {
 public:
  explicit fake_memory(std::int64_t capacity) : capacity_(capacity) {}

  std::int64_t capacity() const { return capacity_; }
  // Free slots plus evictable (cached, unreferenced) ones.
  std::int64_t available_tokens() const { return capacity_ - used_; }
  std::int64_t prefix_hit(request const& r) const {
    auto const it = cache_.find(r.id);
    return it == cache_.end() ? 0 : it->second;
  }

  // Puts `tokens` of r's prefix in the cache, as an earlier request with the same prefix would.
  void seed_cache(std::uint64_t id, std::int64_t tokens) {
    LC_CHECK(tokens <= free_slots(), "fake_memory: no room to seed " << tokens << " tokens");
    cache_[id] += tokens;
    evictable_ += tokens;
  }

  void execute(step_plan const& plan) {
    for (std::uint64_t const id : plan.release) {
      used_ -= held_[id];
      held_.erase(id);
    }
    for (std::uint64_t const id : plan.paused) {
      std::int64_t const n = held_[id];
      held_.erase(id);
      used_ -= n;
      cache_[id] += n;
      evictable_ += n;
    }
    for (prefill_chunk const& c : plan.prefill) {
      if (!c.is_first || c.start == 0) continue;
      auto const it = cache_.find(c.id);
      LC_CHECK(it != cache_.end() && it->second >= c.start,
               "fake_memory: request " << c.id << " pins " << c.start << " cached tokens, but the "
                                       << "cache holds " << (it == cache_.end() ? 0 : it->second));
      it->second -= c.start;
      if (it->second == 0) cache_.erase(it);
      evictable_ -= c.start;
      used_ += c.start;
      held_[c.id] += c.start;
    }
    for (std::uint64_t const id : plan.decode) allocate(id, 1);
    for (prefill_chunk const& c : plan.prefill) allocate(c.id, c.length);
  }

  std::int64_t held(std::uint64_t id) const {
    auto const it = held_.find(id);
    return it == held_.end() ? 0 : it->second;
  }
  std::int64_t used() const { return used_; }
  std::int64_t evictable() const { return evictable_; }
  std::int64_t free_slots() const { return capacity_ - used_ - evictable_; }

 private:
  void allocate(std::uint64_t id, std::int64_t n) {
    LC_CHECK(n <= capacity_ - used_, "fake_memory: over-commit: request "
                                         << id << " takes " << n << " slots, only "
                                         << capacity_ - used_ << " available");
    // Evict cached prefixes (lowest id first) only when the free slots do not suffice.
    std::int64_t short_by = n - free_slots();
    for (auto it = cache_.begin(); short_by > 0 && it != cache_.end();) {
      std::int64_t const take = std::min(short_by, it->second);
      it->second -= take;
      evictable_ -= take;
      short_by -= take;
      it = it->second == 0 ? cache_.erase(it) : std::next(it);
    }
    used_ += n;
    held_[id] += n;
  }

  std::int64_t capacity_;
  std::int64_t used_ = 0;       // slots referenced by requests
  std::int64_t evictable_ = 0;  // slots of cached prefixes nobody references
  std::map<std::uint64_t, std::int64_t> held_;
  std::map<std::uint64_t, std::int64_t> cache_;  // cached prefix tokens, keyed by request id
};

static_assert(kv_memory<fake_memory>);

// One token result per sampling row of requests still live; `eos_at[id] = n` ends request id
// with EOS at its n-th output token.
inline std::vector<token_result> sample(step_plan const& plan,
                                        std::map<std::uint64_t, std::int64_t> const& eos_at,
                                        std::map<std::uint64_t, std::int64_t>& outputs) {
  std::vector<token_result> out;
  auto row = [&](std::uint64_t id) {
    std::int64_t const n = ++outputs[id];
    auto const it = eos_at.find(id);
    out.push_back(
        {id, static_cast<std::int32_t>(id * 1000 + n), it != eos_at.end() && it->second == n});
  };
  for (std::uint64_t const id : plan.decode) row(id);
  for (prefill_chunk const& c : plan.prefill)
    if (c.is_last) row(c.id);
  return out;
}

// A chunk as a table row: request id, token range, whether it ends the sequence.
struct chunk_row {
  std::uint64_t id;
  std::int64_t start;
  std::int64_t length;
  bool last;
  friend bool operator==(chunk_row const&, chunk_row const&) = default;
  friend std::ostream& operator<<(std::ostream& os, chunk_row const& c) {
    return os << "{id " << c.id << " [" << c.start << ", " << c.start + c.length << ")"
              << (c.last ? " last" : "") << "}";
  }
};

// One row of an expected-state table.
struct expected_step {
  std::vector<chunk_row> prefill;
  std::vector<std::uint64_t> decode;
  std::vector<std::uint64_t> paused = {};
  std::vector<std::uint64_t> resumed = {};
  std::vector<std::uint64_t> release = {};
  std::int64_t available_after = 0;  // fake_memory::available_tokens() once the plan ran
};

inline std::vector<chunk_row> rows(step_plan const& plan) {
  std::vector<chunk_row> r;
  for (prefill_chunk const& c : plan.prefill) r.push_back({c.id, c.start, c.length, c.is_last});
  return r;
}

// Runs the steps of `table` on (s, mem), comparing each plan and the memory after it.
template <class Scheduler>
void run_table(Scheduler& s, fake_memory& mem, std::vector<expected_step> const& table,
               std::map<std::uint64_t, std::int64_t> const& eos_at,
               std::map<std::uint64_t, std::int64_t>& outputs) {
  for (std::size_t i = 0; i < table.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "table row " << i << ", step " << s.step());
    expected_step const& e = table[i];
    step_plan const plan = s.schedule(mem);
    EXPECT_EQ(rows(plan), e.prefill);
    EXPECT_EQ(plan.decode, e.decode);
    EXPECT_EQ(plan.paused, e.paused);
    EXPECT_EQ(plan.resumed, e.resumed);
    EXPECT_EQ(plan.release, e.release);
    mem.execute(plan);
    EXPECT_EQ(mem.available_tokens(), e.available_after);
    s.complete(plan, sample(plan, eos_at, outputs));
  }
}

// Every admission x order policy, as typed-test parameters: combo<A, O, Budget>::type is the
// scheduler with a fixed chunk budget.
template <class Admission, class Order, std::int64_t Budget>
struct combo {
  using type = scheduler<Admission, Order, chunk::fixed<Budget>>;
};
template <std::int64_t Budget>
using every_policy = ::testing::Types<combo<admit::conservative, order::strict_fcfs, Budget>,
                                      combo<admit::conservative, order::fcfs_skip_head, Budget>,
                                      combo<admit::optimistic, order::strict_fcfs, Budget>,
                                      combo<admit::optimistic, order::fcfs_skip_head, Budget>>;

// A randomized request's ending: max_new_tokens, and the output index of its EOS.
struct ending {
  std::int64_t max_new;
  std::int64_t eos_at;  // may lie beyond max_new: then max_new ends it
};

}  // namespace lightcore::sched::testing
