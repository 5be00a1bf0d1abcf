// inproc_group: the rendezvous that the ranks of an in-process communicator share (N ranks as N
// threads of one process). Each collective is two meetings: every rank posts its call and waits
// for the others (the last to arrive checks that the calls agree), then, after each rank has read
// what it needs from the others' buffers, every rank waits again before writing its own output,
// so that an in-place operation never overwrites a buffer another rank is still reading.
//
// Waiting is on a condition variable (no spinning). A rank that fails poisons the group: every
// rank waiting now or arriving later gets an error naming the failed rank and its reason, so a
// failure or a disagreement never leaves the others hanging. A rank that waits longer than the
// timeout poisons the group too (a rank skipped a collective or called them in another order).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lightcore::dist {

struct inproc_options {
  // How long a rank waits for the others at one meeting before the group is poisoned. Default 5
  // minutes: far above any legitimate wait in a test, short enough to turn a hang into an error.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
};

enum class collective : std::uint8_t {
  all_reduce_sum,
  all_gather,
  reduce_scatter_sum,
  all_to_all_v,
  broadcast,
  barrier,
};

inline char const* name_of(collective c) noexcept {
  switch (c) {
    case collective::all_reduce_sum: return "all_reduce_sum";
    case collective::all_gather: return "all_gather";
    case collective::reduce_scatter_sum: return "reduce_scatter_sum";
    case collective::all_to_all_v: return "all_to_all_v";
    case collective::broadcast: return "broadcast";
    case collective::barrier: return "barrier";
  }
  return "?";
}

// What one rank passed to a collective; the others read its buffers through it.
struct inproc_call {
  collective op = collective::barrier;
  tensor_view in;   // the input (in place: the buffer itself)
  tensor_view out;  // the output of all_gather, reduce_scatter_sum, all_to_all_v
  std::span<std::int64_t const> send_counts, recv_counts;  // all_to_all_v: rows per rank
  int root = 0;                                            // broadcast
};

class inproc_group {
 public:
  explicit inproc_group(int world_size, inproc_options options = {})
      : world_(world_size), options_(options), calls_(std::size_t(std::max(world_size, 0))) {
    LC_CHECK(world_size >= 1, "inproc_group: world size " << world_size << " must be at least 1");
    here_.assign(calls_.size(), 0);
    left_.assign(calls_.size(), 0);
  }
  inproc_group(inproc_group const&) = delete;
  inproc_group& operator=(inproc_group const&) = delete;

  int world_size() const noexcept { return world_; }

  // Stops the group: every rank waiting now or calling later throws, naming `rank` and `reason`.
  // The first poisoning wins; later ones are ignored. Safe to call from any rank at any time.
  void poison(int rank, std::string const& reason) noexcept {
    std::lock_guard lock(mutex_);
    poison_locked(rank, reason);
  }

  bool poisoned() const {
    std::lock_guard lock(mutex_);
    return stopped_;
  }
  // The rank whose failure stopped the group; -1 while it runs or when the ranks disagreed.
  int poisoned_by() const {
    std::lock_guard lock(mutex_);
    return poisoned_by_;
  }

  // Rank `rank` will call no more collectives. If others wait for it, or later call a collective,
  // that is a mismatch: the group is poisoned rather than left to hang.
  void leave(int rank) noexcept {
    std::lock_guard lock(mutex_);
    left_[std::size_t(rank)] = 1;
    if (arrived_ > 0 && here_[std::size_t(rank)] == 0)
      poison_locked(rank,
                    "it finished while other ranks wait in " + std::string(name_of(waiting_)));
  }

  // First meeting: posts `call`, waits until every rank has posted one, and checks that they agree
  // (the same collective, dtype and sizes). Throws on disagreement, poisoning, or timeout.
  void post(int rank, inproc_call const& call) {
    std::unique_lock lock(mutex_);
    calls_[std::size_t(rank)] = call;
    meet(lock, rank, call.op, [this] { return agreement(); });
  }

  // Second meeting: every rank has finished reading the others' buffers.
  void done_reading(int rank, collective op) {
    std::unique_lock lock(mutex_);
    meet(lock, rank, op, [] { return std::string(); });
  }

  // The calls of the current collective; valid between post() and done_reading().
  std::span<inproc_call const> calls() const noexcept { return calls_; }

 private:
  // rank -1: no one rank failed (the ranks' calls disagree).
  void poison_locked(int rank, std::string const& reason) noexcept {
    if (stopped_) return;
    stopped_ = true;
    poisoned_by_ = rank;
    try {
      reason_ = rank >= 0 ? "rank " + std::to_string(rank) + " failed: " + reason : reason;
    } catch (...) {  // out of memory: the flag alone still releases every rank
    }
    cv_.notify_all();
  }

  [[noreturn]] void throw_poisoned(int rank, collective op) const {
    LC_THROW("inproc communicator: rank " << rank << " cannot complete " << name_of(op) << ": "
                                          << reason_);
  }

  // Arrive; the last arrival runs `check` (a non-empty message poisons the group) and releases
  // the others. Waits with a timeout; every exit other than a clean release throws.
  template <class Check>
  void meet(std::unique_lock<std::mutex>& lock, int rank, collective op, Check&& check) {
    if (stopped_) throw_poisoned(rank, op);
    for (int r = 0; r < world_; ++r)
      if (left_[std::size_t(r)] != 0) {
        poison_locked(r,
                      "it finished while rank " + std::to_string(rank) + " calls " + name_of(op));
        throw_poisoned(rank, op);
      }
    waiting_ = op;
    here_[std::size_t(rank)] = 1;
    std::uint64_t const generation = generation_;
    if (++arrived_ == world_) {
      std::string const problem = check();
      arrived_ = 0;
      here_.assign(here_.size(), 0);
      ++generation_;
      if (!problem.empty()) poison_locked(-1, problem);
      cv_.notify_all();
    } else {
      bool const released = cv_.wait_for(lock, options_.timeout,
                                         [&] { return generation_ != generation || stopped_; });
      if (!released) poison_locked(rank, timeout_reason(op));
    }
    if (stopped_) throw_poisoned(rank, op);
  }

  std::string timeout_reason(collective op) const {
    std::ostringstream os;
    os << "it waited " << options_.timeout.count() << " ms in " << name_of(op) << " for rank(s)";
    for (int r = 0; r < world_; ++r)
      if (here_[std::size_t(r)] == 0) os << ' ' << r;
    os << "; every rank must call the same collectives in the same order";
    return os.str();
  }

  // "" when every rank's call agrees with rank 0's, else what differs and what is required.
  std::string agreement() const {
    std::ostringstream os;
    inproc_call const& a = calls_[0];
    for (int r = 1; r < world_; ++r) {
      inproc_call const& b = calls_[std::size_t(r)];
      if (b.op != a.op) {
        os << "ranks disagree on the collective: rank 0 calls " << name_of(a.op) << ", rank " << r
           << " calls " << name_of(b.op) << "; every rank must call the same collectives in the "
           << "same order";
        return os.str();
      }
      if (b.in.type() != a.in.type() || !same_rows(a, b)) {
        os << name_of(a.op) << ": ranks disagree on the input: rank 0 passes " << a.in.type() << ' '
           << a.in.shape() << ", rank " << r << " passes " << b.in.type() << ' ' << b.in.shape()
           << "; every rank must pass the same dtype and shape";
        return os.str();
      }
      if (a.op == collective::broadcast && b.root != a.root) {
        os << "broadcast: ranks disagree on the root: rank 0 names " << a.root << ", rank " << r
           << " names " << b.root;
        return os.str();
      }
    }
    if (a.op == collective::all_to_all_v) {
      for (int src = 0; src < world_; ++src)
        for (int dst = 0; dst < world_; ++dst) {
          std::int64_t const sent = calls_[std::size_t(src)].send_counts[std::size_t(dst)];
          std::int64_t const expected = calls_[std::size_t(dst)].recv_counts[std::size_t(src)];
          if (sent != expected) {
            os << "all_to_all_v: rank " << src << " sends " << sent << " rows to rank " << dst
               << ", which expects " << expected << "; send_counts[" << dst << "] on rank " << src
               << " must equal recv_counts[" << src << "] on rank " << dst;
            return os.str();
          }
        }
    }
    return {};
  }

  // all_to_all_v ranks send different row counts: only their row shapes must agree.
  static bool same_rows(inproc_call const& a, inproc_call const& b) {
    if (a.op != collective::all_to_all_v) return a.in.shape() == b.in.shape();
    if (a.in.rank() != b.in.rank()) return false;
    for (int d = 1; d < a.in.rank(); ++d)
      if (a.in.size(d) != b.in.size(d)) return false;
    return true;
  }

  int const world_;
  inproc_options const options_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<inproc_call> calls_;  // one per rank
  std::vector<char> here_;          // ranks waiting at the current meeting
  std::vector<char> left_;          // ranks that will call nothing more
  int arrived_ = 0;
  std::uint64_t generation_ = 0;  // meetings completed; a waiter is released when it moves
  collective waiting_ = collective::barrier;
  bool stopped_ = false;  // poisoned
  int poisoned_by_ = -1;
  std::string reason_;
};

}  // namespace lightcore::dist
