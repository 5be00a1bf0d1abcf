// What the shared-memory request table adds to serving, with no model: per-token delivery latency
// (engine append_output -> the stream's handler thread has read the token), per-request costs
// (slot allocate / release, submit -> engine sees it, engine finish -> handler sees the end) and
// the CPU each side spends per token, at 1..256 concurrent streams, with the engine stepping as
// fast as it can or on a fixed step period. Also measures the floor: one futex wake-up across
// processes and one condition-variable hand-off inside a process.
//
// Structure mirrors examples/server: a fork()ed engine process opens the table, takes
// next_event(), and each step appends one token to every live request, then finish() and
// release(); the parent is the front end: a dispatcher thread on next_output() bumps a per-slot
// sequence under a mutex and notifies that slot's condition variable, and one handler thread per
// stream allocates, submits, waits and reads. Publish times travel in a second shm segment the
// benchmark owns, written by the engine before each append_output (steady_clock is one clock for
// every process of the machine).
//
//   lightcore_bench_ipc [--streams=1,16,64,256] [--tokens=128] [--periods-ms=0,10]
//                       [--target-tokens=262144] [--period-requests=4] [--floor-iters=3000]
//                       [--floor-idle-iters=200]
//                       [--json=PATH]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/ipc/futex.hpp"
#include "lightcore/ipc/request_table.hpp"
#include "lightcore/ipc/shm_region.hpp"

namespace {

namespace ipc = lightcore::ipc;
using namespace std::chrono_literals;

// What the front end hands the engine with each request (trivially copyable, 64 bytes like the
// server's wire_params).
struct bench_params {
  std::int32_t max_new_tokens = 0;
  std::int32_t reserved[15] = {};
};
using table_type = ipc::request_table<bench_params>;

std::uint64_t now_ns() {
  return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now().time_since_epoch())
                           .count());
}

std::uint64_t cpu_ns(int who) {
  rusage u = {};
  ::getrusage(who, &u);
  auto const ns = [](timeval t) {
    return std::uint64_t(t.tv_sec) * 1'000'000'000ull + t.tv_usec * 1000ull;
  };
  return ns(u.ru_utime) + ns(u.ru_stime);
}

// ---- statistics -------------------------------------------------------------------------------

struct summary {
  std::size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

summary summarize(std::vector<double> v) {
  summary s;
  s.count = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto const at = [&](double q) {  // nearest rank
    auto const rank = std::size_t(std::ceil(q * double(v.size())));
    return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  s.max = v.back();
  return s;
}

std::string json_of(summary const& s) {
  std::ostringstream o;
  o << "{\"count\": " << s.count << ", \"mean\": " << s.mean << ", \"p50\": " << s.p50
    << ", \"p90\": " << s.p90 << ", \"p99\": " << s.p99 << ", \"max\": " << s.max << "}";
  return o.str();
}

// ---- the benchmark's own shared segment -------------------------------------------------------

// Engine -> front end side channel: results of the engine process and, per (slot, token), the
// steady_clock time just before the engine's append_output. Plain fields are ordered by the
// table's own atomics: the engine writes them before append_output / finish (release), the
// handler reads them after output_count / state (acquire).
struct alignas(64) side_header {
  std::atomic<std::uint32_t> abort{0};  // front end -> engine: stop now (a handler failed)
  std::uint32_t engine_ok = 0;          // 1 once the engine wrote its results
  std::uint64_t engine_cpu_ns = 0;      // user + system of the engine over the run, less the
                                        // simulated forward pass (the step-period sleep)
  std::uint64_t engine_tokens = 0;
  std::uint64_t engine_steps = 0;
  summary append_ns;          // wall time of one append_output call
  summary finish_release_ns;  // wall time of finish() + release() on the engine side
  char error[160] = {};
};

struct slot_times {
  std::uint64_t seen_ns = 0;    // the engine took the submission from next_event
  std::uint64_t finish_ns = 0;  // just before finish()
};

class side_view {
 public:
  static std::size_t bytes(std::uint32_t slots, std::uint32_t tokens) {
    return sizeof(side_header) + slots * sizeof(slot_times) +
           std::size_t(slots) * tokens * sizeof(std::uint64_t);
  }
  side_view(void* p, std::uint32_t slots, std::uint32_t tokens)
      : head_(static_cast<side_header*>(p)),
        slots_(reinterpret_cast<slot_times*>(head_ + 1)),
        publish_(reinterpret_cast<std::uint64_t*>(slots_ + slots)),
        tokens_(tokens) {}
  side_header& head() const { return *head_; }
  slot_times& slot(std::uint32_t i) const { return slots_[i]; }
  std::uint64_t& publish(std::uint32_t slot, std::uint32_t token) const {
    return publish_[std::size_t(slot) * tokens_ + token];
  }

 private:
  side_header* head_;
  slot_times* slots_;
  std::uint64_t* publish_;
  std::uint32_t tokens_;
};

// ---- one configuration ------------------------------------------------------------------------

struct run_config {
  std::uint32_t streams = 1;            // concurrent requests = handler threads
  std::uint32_t tokens = 128;           // output tokens per request
  std::uint32_t requests = 1;           // requests per stream, one after the other
  std::chrono::microseconds period{0};  // engine step period; 0: step as fast as possible
};

struct run_result {
  run_config cfg;
  double wall_s = 0;
  std::uint64_t tokens = 0;
  summary token_us;            // append_output -> handler has read the token
  summary submit_us;           // submit -> engine took it from next_event
  summary end_us;              // engine finish -> handler saw the final state
  summary alloc_ns;            // allocate_slot
  summary submit_call_ns;      // write_prompt + submit
  summary release_ns;          // the front end's release
  double tokens_per_read = 0;  // tokens a handler found per read (batching under load)
  std::uint64_t cv_waits = 0, dispatches = 0, alloc_retries = 0;
  double front_cpu_ns_per_token = 0, dispatcher_cpu_ns_per_token = 0;
  double engine_cpu_ns_per_token = 0;
  summary engine_append_ns, engine_finish_release_ns;
  std::uint64_t engine_steps = 0;
};

// The engine process: the loop of examples/server/engine_process.cpp without a model.
int engine_main(run_config const& cfg, std::string const& table_name,
                std::string const& side_name) {
  table_type table = table_type::open(table_name);
  ipc::shm_region side_region = ipc::shm_region::open(side_name);
  side_view const side(side_region.payload(), table.config().slots, cfg.tokens);
  std::uint64_t const cpu0 = cpu_ns(RUSAGE_THREAD);
  std::uint64_t sleep_cpu = 0;  // CPU of the simulated forward pass, not the table's

  struct live_request {
    ipc::slot_handle h;
    std::uint32_t produced = 0;
  };
  std::vector<live_request> live;
  std::uint64_t const total = std::uint64_t(cfg.streams) * cfg.requests;
  std::uint64_t served = 0, steps = 0;
  std::vector<double> append_ns, finish_ns;
  append_ns.reserve(total * cfg.tokens);
  finish_ns.reserve(total);
  std::int32_t one[1] = {0};
  float one_lp[1] = {-0.5f};
  auto deadline = std::chrono::steady_clock::now();
  while (served < total) {
    if (side.head().abort.load(std::memory_order_acquire) != 0) return 2;
    bool const was_idle = live.empty();
    // Block while idle (bounded, to notice an abort); otherwise take what arrived and step.
    auto ev = table.next_event(was_idle ? std::chrono::nanoseconds(100ms) : 0ns);
    for (; ev; ev = table.next_event(0ns)) {
      if (ev->what != ipc::table_event::kind::submitted) continue;
      ipc::slot_handle const h = ev->slot;
      side.slot(h.index).seen_ns = now_ns();
      (void)table.request_id(h);  // read what a real engine reads
      (void)table.params(h);
      (void)table.prompt(h);
      table.start(h);
      live.push_back({h, 0});
    }
    if (live.empty()) continue;
    if (cfg.period.count() > 0) {  // the "forward pass": a fixed step period
      auto const now = std::chrono::steady_clock::now();
      deadline = was_idle ? now + cfg.period : deadline + cfg.period;
      std::uint64_t const c0 = cpu_ns(RUSAGE_THREAD);
      std::this_thread::sleep_until(deadline);
      sleep_cpu += cpu_ns(RUSAGE_THREAD) - c0;
      deadline = std::max(deadline, std::chrono::steady_clock::now());
    }
    for (std::size_t k = 0; k < live.size();) {
      live_request& r = live[k];
      one[0] = std::int32_t(r.produced);
      std::uint64_t const t0 = now_ns();
      side.publish(r.h.index, r.produced) = t0;
      table.append_output(r.h, one, one_lp);
      append_ns.push_back(double(now_ns() - t0));
      if (++r.produced < cfg.tokens) {
        ++k;
        continue;
      }
      std::uint64_t const tf = now_ns();
      side.slot(r.h.index).finish_ns = tf;
      table.finish(r.h, ipc::finish_reason::length);
      table.release(r.h);
      finish_ns.push_back(double(now_ns() - tf));
      ++served;
      live[k] = live.back();  // the moved-in request is stepped at k in this same step
      live.pop_back();
    }
    ++steps;
  }
  side_header& out = side.head();
  out.engine_cpu_ns = cpu_ns(RUSAGE_THREAD) - cpu0 - sleep_cpu;
  out.engine_tokens = append_ns.size();
  out.engine_steps = steps;
  out.append_ns = summarize(std::move(append_ns));
  out.finish_release_ns = summarize(std::move(finish_ns));
  std::atomic_thread_fence(std::memory_order_release);  // waitpid orders it anyway
  out.engine_ok = 1;
  return 0;
}

struct waiter {
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t seq = 0;  // bumped by the dispatcher for every notification of the slot
};

struct handler_stats {
  std::vector<double> token_us, submit_us, end_us, alloc_ns, submit_call_ns, release_ns;
  std::uint64_t tokens = 0, reads = 0, cv_waits = 0, alloc_retries = 0, cpu_ns = 0;
  std::string error;
};

run_result run_one(run_config const& cfg, int index) {
  std::uint32_t const slots = cfg.streams + 8;  // a stream re-allocates before the engine's
                                                // release of its previous slot may have landed
  std::string const suffix = std::to_string(index);
  std::string const table_name =
      ipc::instance_name("lcbench", ipc::default_instance_id(), "ipc-table-" + suffix);
  std::string const side_name =
      ipc::instance_name("lcbench", ipc::default_instance_id(), "ipc-side-" + suffix);
  table_type table = table_type::create(
      table_name, {.slots = slots, .max_prompt = 16, .max_output = cfg.tokens, .logprobs = true});
  ipc::shm_region side_region =
      ipc::shm_region::create(side_name, side_view::bytes(slots, cfg.tokens));
  new (side_region.payload()) side_header;
  side_view const side(side_region.payload(), slots, cfg.tokens);

  std::fflush(nullptr);
  pid_t const engine = ::fork();
  LC_CHECK(engine >= 0, "fork failed: " << std::strerror(errno));
  if (engine == 0) {
    ::alarm(90);  // a hung engine dies and the front end notices
    int code = 1;
    try {
      code = engine_main(cfg, table_name, side_name);
    } catch (std::exception const& e) {
      std::snprintf(side.head().error, sizeof(side.head().error), "%s", e.what());
    }
    ::_exit(code);  // never run the parent's destructors (they own the segments)
  }

  std::vector<std::unique_ptr<waiter>> waiters;
  for (std::uint32_t i = 0; i < slots; ++i) waiters.push_back(std::make_unique<waiter>());
  std::atomic<bool> stopping{false}, engine_dead{false};
  std::uint64_t dispatches = 0, dispatcher_cpu = 0;
  auto const start = std::chrono::steady_clock::now();

  std::thread dispatcher([&] {
    while (!stopping.load()) {
      auto h = table.next_output(200ms);
      if (!h) continue;
      waiter& w = *waiters[h->index];
      {
        std::lock_guard g(w.m);
        ++w.seq;
      }
      w.cv.notify_all();
      ++dispatches;
    }
    dispatcher_cpu = cpu_ns(RUSAGE_THREAD);
  });

  std::vector<handler_stats> stats(cfg.streams);
  std::vector<std::thread> handlers;
  for (std::uint32_t s = 0; s < cfg.streams; ++s) {
    handlers.emplace_back([&, s] {
      handler_stats& st = stats[s];
      std::int32_t const prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
      bench_params p;
      p.max_new_tokens = std::int32_t(cfg.tokens);
      try {
        for (std::uint32_t r = 0; r < cfg.requests && st.error.empty(); ++r) {
          std::uint64_t const t0 = now_ns();
          std::optional<ipc::slot_handle> h;
          while (!(h = table.allocate_slot())) {
            LC_CHECK(!engine_dead.load(), "the engine died");
            ++st.alloc_retries;
            std::this_thread::yield();
          }
          std::uint64_t const t1 = now_ns();
          table.write_prompt(*h, prompt);
          std::uint64_t const t_submit = now_ns();
          table.submit(*h, std::uint64_t(s) << 32 | r, p);
          std::uint64_t const t2 = now_ns();
          st.alloc_ns.push_back(double(t1 - t0));
          st.submit_call_ns.push_back(double(t2 - t1));
          // The read loop of the server's generation::next().
          std::uint32_t read = 0;
          std::vector<std::int32_t> ids;
          std::vector<float> lps;
          waiter& w = *waiters[h->index];
          std::unique_lock lk(w.m);
          for (;;) {
            std::uint64_t const seen = w.seq;
            lk.unlock();
            auto const state = table.state(*h);
            std::uint32_t const n = table.output_count(*h);
            if (n > read) {
              // outputs() / logprobs() end at the count they load themselves, which may
              // have grown since `n` was read: take exactly [read, n) so that no token is
              // read twice.
              auto const out = table.outputs(*h, read).first(n - read);
              ids.insert(ids.end(), out.begin(), out.end());
              auto const lp = table.logprobs(*h, read).first(n - read);
              lps.insert(lps.end(), lp.begin(), lp.end());
              std::uint64_t const t = now_ns();
              for (std::uint32_t i = read; i < n; ++i)
                st.token_us.push_back(double(t - side.publish(h->index, i)) * 1e-3);
              if (read == 0)
                st.submit_us.push_back(double(side.slot(h->index).seen_ns - t_submit) * 1e-3);
              ++st.reads;
              read = n;
              lk.lock();
              continue;
            }
            if (state >= ipc::slot_state::finished) {
              st.end_us.push_back(double(now_ns() - side.slot(h->index).finish_ns) * 1e-3);
              LC_CHECK(state == ipc::slot_state::finished, "request failed in the engine");
              break;
            }
            LC_CHECK(!engine_dead.load(), "the engine died");
            lk.lock();
            ++st.cv_waits;
            w.cv.wait(lk, [&] { return w.seq != seen || engine_dead.load(); });
          }
          LC_CHECK(read == cfg.tokens && ids.size() == cfg.tokens,
                   "request got " << read << " tokens; expected " << cfg.tokens);
          for (std::uint32_t i = 0; i < cfg.tokens; ++i)
            LC_CHECK(ids[i] == std::int32_t(i) && lps[i] == -0.5f,
                     "token " << i << " is " << ids[i] << "; expected " << i);
          std::uint64_t const tr = now_ns();
          table.release(*h);
          st.release_ns.push_back(double(now_ns() - tr));
          st.tokens += read;
        }
      } catch (std::exception const& e) {
        st.error = e.what();
        side.head().abort.store(1, std::memory_order_release);
      }
      st.cpu_ns = cpu_ns(RUSAGE_THREAD);
    });
  }

  // Like the server's front end: the engine's exit is watched, and waiters learn of its death.
  int status = 0;
  while (::waitpid(engine, &status, 0) < 0 && errno == EINTR) {
  }
  bool const engine_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!engine_ok) {
    engine_dead.store(true);
    for (auto& w : waiters) {
      std::lock_guard g(w->m);
      w->cv.notify_all();
    }
  }
  for (auto& t : handlers) t.join();
  double const wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stopping.store(true);
  dispatcher.join();

  // The first failure is the cause: a handler's own error sets abort, which ends the engine,
  // which fails the other handlers with "the engine died".
  for (auto const& st : stats)
    LC_CHECK(st.error.empty() || st.error.find("the engine died") != std::string::npos,
             "a handler failed: " << st.error);
  LC_CHECK(engine_ok && side.head().engine_ok == 1,
           "the engine process failed (status " << status << "): " << side.head().error);
  for (auto const& st : stats) LC_CHECK(st.error.empty(), "a handler failed: " << st.error);

  run_result res;
  res.cfg = cfg;
  res.wall_s = wall_s;
  handler_stats all;
  std::uint64_t handler_cpu = 0;
  for (auto& st : stats) {
    auto const append = [](std::vector<double>& to, std::vector<double> const& from) {
      to.insert(to.end(), from.begin(), from.end());
    };
    append(all.token_us, st.token_us);
    append(all.submit_us, st.submit_us);
    append(all.end_us, st.end_us);
    append(all.alloc_ns, st.alloc_ns);
    append(all.submit_call_ns, st.submit_call_ns);
    append(all.release_ns, st.release_ns);
    all.tokens += st.tokens;
    all.reads += st.reads;
    all.cv_waits += st.cv_waits;
    all.alloc_retries += st.alloc_retries;
    handler_cpu += st.cpu_ns;
  }
  res.tokens = all.tokens;
  res.token_us = summarize(std::move(all.token_us));
  res.submit_us = summarize(std::move(all.submit_us));
  res.end_us = summarize(std::move(all.end_us));
  res.alloc_ns = summarize(std::move(all.alloc_ns));
  res.submit_call_ns = summarize(std::move(all.submit_call_ns));
  res.release_ns = summarize(std::move(all.release_ns));
  res.tokens_per_read = double(all.tokens) / double(std::max<std::uint64_t>(all.reads, 1));
  res.cv_waits = all.cv_waits;
  res.dispatches = dispatches;
  res.alloc_retries = all.alloc_retries;
  double const tokens = double(std::max<std::uint64_t>(all.tokens, 1));
  res.front_cpu_ns_per_token = double(handler_cpu + dispatcher_cpu) / tokens;
  res.dispatcher_cpu_ns_per_token = double(dispatcher_cpu) / tokens;
  res.engine_cpu_ns_per_token = double(side.head().engine_cpu_ns) / tokens;
  res.engine_append_ns = side.head().append_ns;
  res.engine_finish_release_ns = side.head().finish_release_ns;
  res.engine_steps = side.head().engine_steps;
  LC_CHECK(side.head().engine_tokens == all.tokens, "engine appended " << side.head().engine_tokens
                                                                       << " tokens, front end read "
                                                                       << all.tokens);
  return res;
}

// ---- floors -----------------------------------------------------------------------------------

// The server's wake-up chain without the table: a process notifies an event_counter (what
// slot_ring::pop sleeps on); in another process a relay thread (the dispatcher) wakes and
// notifies a condition variable; a reader thread (the handler) wakes and answers through a
// second event_counter. The pinger sleeps `gap` before each ping, so both threads of the other
// process are asleep when it comes, as they are between decode steps.
struct floor_result {
  std::chrono::microseconds gap{0};
  summary futex_us;       // notify -> relay thread in the other process runs
  summary chain_us;       // notify -> reader thread (after the condition variable hop) runs
  summary round_trip_us;  // notify -> the pinger has the reader's answer
};

struct alignas(64) floor_shared {
  alignas(64) ipc::event_counter ping;
  alignas(64) ipc::event_counter pong;
  alignas(64) std::atomic<std::uint64_t> sent{0};  // iteration the pinger published
  std::atomic<std::uint64_t> acked{0};             // iteration the reader answered
  std::uint64_t t_send = 0, t_relay = 0, t_recv = 0;
};

// The forked side of the floor: relay (this thread) and reader.
void floor_child(floor_shared& f, std::uint64_t iters) {
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t seq = 0;
  std::thread reader([&] {
    for (std::uint64_t i = 1; i <= iters; ++i) {
      std::unique_lock lk(m);
      cv.wait(lk, [&] { return seq >= i; });
      f.t_recv = now_ns();
      lk.unlock();
      f.acked.store(i, std::memory_order_release);
      f.pong.notify_all();
    }
  });
  for (std::uint64_t i = 1; i <= iters; ++i) {
    f.ping.wait_for([&] { return f.sent.load(std::memory_order_acquire) >= i; });
    std::uint64_t const t = now_ns();
    {
      std::lock_guard g(m);
      f.t_relay = t;
      seq = i;
    }
    cv.notify_all();
  }
  reader.join();
}

floor_result measure_floor(int iters, std::chrono::microseconds gap, int index) {
  std::string const name = ipc::instance_name("lcbench", ipc::default_instance_id(),
                                              "ipc-floor-" + std::to_string(index));
  ipc::shm_region region = ipc::shm_region::create(name, sizeof(floor_shared));
  auto* f = new (region.payload()) floor_shared;
  std::fflush(nullptr);
  pid_t const child = ::fork();
  LC_CHECK(child >= 0, "fork failed: " << std::strerror(errno));
  if (child == 0) {
    ::alarm(60);
    int code = 0;
    try {
      floor_child(*f, std::uint64_t(iters));
    } catch (...) {
      code = 1;
    }
    ::_exit(code);
  }
  std::vector<double> futex, chain, round_trip;
  for (std::uint64_t i = 1; i <= std::uint64_t(iters); ++i) {
    std::this_thread::sleep_for(gap);
    f->t_send = now_ns();
    f->sent.store(i, std::memory_order_release);
    f->ping.notify_all();
    f->pong.wait_for([&] { return f->acked.load(std::memory_order_acquire) >= i; });
    std::uint64_t const t = now_ns();
    futex.push_back(double(f->t_relay - f->t_send) * 1e-3);
    chain.push_back(double(f->t_recv - f->t_send) * 1e-3);
    round_trip.push_back(double(t - f->t_send) * 1e-3);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  LC_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the floor's child process failed");
  return {gap, summarize(std::move(futex)), summarize(std::move(chain)),
          summarize(std::move(round_trip))};
}

// ---- flags and output -------------------------------------------------------------------------

struct options {
  std::vector<std::uint32_t> streams = {1, 16, 64, 256};
  std::uint32_t tokens = 128;
  std::vector<std::uint32_t> periods_ms = {0, 10};
  std::uint64_t target_tokens = 262144;  // fast runs: requests per stream to reach about this
  std::uint32_t period_requests = 4;     // stepped runs: requests per stream
  int floor_iters = 3000;                // floor with a 20 us gap
  int floor_idle_iters = 200;            // floor with the longest step period as the gap
  std::string json;
};

std::vector<std::uint32_t> parse_list(std::string const& flag, std::string const& v,
                                      std::uint32_t lo, std::uint32_t hi) {
  std::vector<std::uint32_t> out;
  std::stringstream in(v);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    unsigned long const x = std::strtoul(item.c_str(), &end, 10);
    LC_CHECK(!item.empty() && *end == '\0' && x >= lo && x <= hi,
             flag << ": \"" << item << "\" is not allowed; allowed: integers " << lo << ".." << hi
                  << ", comma separated");
    out.push_back(std::uint32_t(x));
  }
  LC_CHECK(!out.empty(), flag << ": empty list; allowed: integers " << lo << ".." << hi);
  return out;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    auto const eq = a.find('=');
    std::string const key = a.substr(0, eq), val = eq == std::string::npos ? "" : a.substr(eq + 1);
    auto one = [&](std::uint32_t lo, std::uint32_t hi) {
      return parse_list(key, val, lo, hi).at(0);
    };
    if (key == "--streams")
      o.streams = parse_list(key, val, 1, 1024);
    else if (key == "--tokens")
      o.tokens = one(1, 4096);
    else if (key == "--periods-ms")
      o.periods_ms = parse_list(key, val, 0, 1000);
    else if (key == "--target-tokens")
      o.target_tokens = one(1, 10'000'000);
    else if (key == "--period-requests")
      o.period_requests = one(1, 1000);
    else if (key == "--floor-iters")
      o.floor_iters = int(one(10, 1'000'000));
    else if (key == "--floor-idle-iters")
      o.floor_idle_iters = int(one(10, 100'000));
    else if (key == "--json")
      o.json = val;
    else
      LC_THROW("unknown flag \"" << a
                                 << "\"; allowed: --streams=, --tokens=, --periods-ms=, "
                                    "--target-tokens=, --period-requests=, --floor-iters=, "
                                    "--floor-idle-iters=, "
                                    "--json=");
  }
  return o;
}

void print_floors(std::vector<floor_result> const& fs) {
  std::printf(
      "floor: a sleeping thread in another process woken (event_counter), then a condition\n"
      "variable hop to a second sleeping thread, as the server's dispatcher -> handler [us]\n"
      "gap        samples   futex p50/p99    chain p50   chain p90   chain p99   chain max   "
      "round trip p50\n");
  for (auto const& f : fs) {
    std::printf("%-9s %8zu %7.1f/%-7.1f %11.1f %11.1f %11.1f %11.1f %14.1f\n",
                (std::to_string(f.gap.count()) + "us").c_str(), f.chain_us.count, f.futex_us.p50,
                f.futex_us.p99, f.chain_us.p50, f.chain_us.p90, f.chain_us.p99, f.chain_us.max,
                f.round_trip_us.p50);
  }
}

void print_results(std::vector<run_result> const& rs) {
  std::printf(
      "\nper token: engine append_output -> handler thread has read it [us]; per request [us]\n"
      "step     streams  tokens   tok p50   tok p90   tok p99   tok max  tok/read  "
      "sub->eng p50/p99   fin->end p50/p99\n");
  for (auto const& r : rs) {
    std::printf("%-8s %7u %7llu %9.1f %9.1f %9.1f %9.1f %9.2f  %8.1f/%-8.1f %8.1f/%-8.1f\n",
                r.cfg.period.count() == 0
                    ? "fast"
                    : (std::to_string(r.cfg.period.count() / 1000) + "ms").c_str(),
                r.cfg.streams, static_cast<unsigned long long>(r.tokens), r.token_us.p50,
                r.token_us.p90, r.token_us.p99, r.token_us.max, r.tokens_per_read, r.submit_us.p50,
                r.submit_us.p99, r.end_us.p50, r.end_us.p99);
  }
  std::printf(
      "\ncosts [ns]: front end per request (p50), engine per call, CPU per token\n"
      "step     streams   alloc  wr+submit  release  append p50/mean/p99  fin+rel  "
      "eng cpu/tok  front cpu/tok (disp)  tokens/s\n");
  for (auto const& r : rs) {
    std::printf(
        "%-8s %7u %7.0f %10.0f %8.0f %6.0f/%6.0f/%-6.0f %8.0f %12.0f %14.0f (%5.0f) %9.0f\n",
        r.cfg.period.count() == 0 ? "fast"
                                  : (std::to_string(r.cfg.period.count() / 1000) + "ms").c_str(),
        r.cfg.streams, r.alloc_ns.p50, r.submit_call_ns.p50, r.release_ns.p50,
        r.engine_append_ns.p50, r.engine_append_ns.mean, r.engine_append_ns.p99,
        r.engine_finish_release_ns.mean, r.engine_cpu_ns_per_token, r.front_cpu_ns_per_token,
        r.dispatcher_cpu_ns_per_token, double(r.tokens) / r.wall_s);
  }
}

void write_json(std::string const& path, std::vector<floor_result> const& fs,
                std::vector<run_result> const& rs) {
  std::ofstream o(path);
  LC_CHECK(o, "--json: cannot write \"" << path << "\"");
  o << "{\n  \"cpus\": " << std::thread::hardware_concurrency() << ",\n  \"floors\": [\n";
  for (std::size_t i = 0; i < fs.size(); ++i) {
    auto const& f = fs[i];
    o << "    {\"gap_us\": " << f.gap.count() << ", \"futex_us\": " << json_of(f.futex_us)
      << ",\n     \"chain_us\": " << json_of(f.chain_us)
      << ",\n     \"round_trip_us\": " << json_of(f.round_trip_us) << "}"
      << (i + 1 < fs.size() ? ",\n" : "\n");
  }
  o << "  ],\n  \"runs\": [\n";
  for (std::size_t i = 0; i < rs.size(); ++i) {
    auto const& r = rs[i];
    o << "    {\"streams\": " << r.cfg.streams << ", \"tokens_per_request\": " << r.cfg.tokens
      << ", \"requests_per_stream\": " << r.cfg.requests
      << ", \"step_period_us\": " << r.cfg.period.count() << ", \"wall_s\": " << r.wall_s
      << ", \"tokens\": " << r.tokens << ", \"engine_steps\": " << r.engine_steps
      << ",\n     \"token_latency_us\": " << json_of(r.token_us)
      << ",\n     \"submit_to_engine_us\": " << json_of(r.submit_us)
      << ",\n     \"finish_to_handler_us\": " << json_of(r.end_us)
      << ",\n     \"allocate_slot_ns\": " << json_of(r.alloc_ns)
      << ",\n     \"write_prompt_submit_ns\": " << json_of(r.submit_call_ns)
      << ",\n     \"front_release_ns\": " << json_of(r.release_ns)
      << ",\n     \"engine_append_output_ns\": " << json_of(r.engine_append_ns)
      << ",\n     \"engine_finish_release_ns\": " << json_of(r.engine_finish_release_ns)
      << ",\n     \"tokens_per_read\": " << r.tokens_per_read << ", \"cv_waits\": " << r.cv_waits
      << ", \"dispatches\": " << r.dispatches << ", \"alloc_retries\": " << r.alloc_retries
      << ",\n     \"engine_cpu_ns_per_token\": " << r.engine_cpu_ns_per_token
      << ", \"front_cpu_ns_per_token\": " << r.front_cpu_ns_per_token
      << ", \"dispatcher_cpu_ns_per_token\": " << r.dispatcher_cpu_ns_per_token << "}"
      << (i + 1 < rs.size() ? ",\n" : "\n");
  }
  o << "  ]\n}\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options const o = parse(argc, argv);
    std::printf("lightcore_bench_ipc: %u CPUs, %u tokens per request\n\n",
                std::thread::hardware_concurrency(), o.tokens);
    std::vector<floor_result> floors = {measure_floor(o.floor_iters, 20us, 0)};
    std::uint32_t const idle_ms = *std::max_element(o.periods_ms.begin(), o.periods_ms.end());
    if (idle_ms > 0)
      floors.push_back(measure_floor(o.floor_idle_iters, std::chrono::milliseconds(idle_ms), 1));
    print_floors(floors);
    std::vector<run_result> results;
    int index = 0;
    for (std::uint32_t const period : o.periods_ms) {
      for (std::uint32_t const streams : o.streams) {
        run_config c;
        c.streams = streams;
        c.tokens = o.tokens;
        c.period = std::chrono::milliseconds(period);
        std::uint64_t const per_round = std::uint64_t(streams) * o.tokens;
        c.requests = period > 0 ? o.period_requests
                                : std::uint32_t(std::max<std::uint64_t>(
                                      2, (o.target_tokens + per_round - 1) / per_round));
        results.push_back(run_one(c, index++));
        std::fprintf(stderr, "  done: %s, %u streams\n", period ? "stepped" : "fast", streams);
      }
    }
    print_results(results);
    if (!o.json.empty()) write_json(o.json, floors, results);
    return 0;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "lightcore_bench_ipc: %s\n", e.what());
    return 1;
  }
}
