// The engine process: the request table on one side, the engine over the DeepSeek executor on the
// other.
#include "engine_process.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine_stats.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/engine/engine.hpp"
#include "lightcore/ipc/request_table.hpp"
#include "models/deepseek_v3/executor.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "pd_decode.hpp"
#include "pd_prefill.hpp"
#include "wire.hpp"
#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/backend/cuda.hpp"
#endif

namespace lightcore::server {
namespace {

namespace ds = models::deepseek_v3;
using table_type = ipc::request_table<wire_params>;

ipc::finish_reason to_table(engine::finish_reason r) {
  switch (r) {
    case engine::finish_reason::stop: return ipc::finish_reason::stop;
    case engine::finish_reason::length: return ipc::finish_reason::length;
    case engine::finish_reason::abort: return ipc::finish_reason::abort;
    case engine::finish_reason::none: break;
  }
  return ipc::finish_reason::error;
}

// Free memory of the current CUDA device, bytes (0 without CUDA).
std::size_t free_device_bytes() {
#if defined(LIGHTCORE_WITH_CUDA)
  std::size_t free_bytes = 0, total = 0;
  LC_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return free_bytes;
#else
  return 0;
#endif
}

template <Backend B>
std::int64_t kv_capacity(B& backend, engine_options const& o, std::size_t bytes_per_token) {
  if (o.kv_tokens > 0) return o.kv_tokens;
  if constexpr (B::kind == device_kind::cpu) {
    (void)backend;
    (void)bytes_per_token;
    return 65536;
  } else {
    return memory::kv_pool<B>::tokens_for_budget(free_device_bytes(), o.kv_memory_fraction,
                                                 bytes_per_token);
  }
}

// The engine's state after a step (or when it went idle) into the stats block.
template <class Engine>
void publish(Engine const& eng, engine_stats_values& sv, std::uint64_t rows) {
  engine::engine_stats const st = eng.stats();
  auto const relaxed = std::memory_order_relaxed;
  std::uint64_t const steps = sv.steps.load(relaxed);
  if (st.steps != steps) {
    sv.last_rows.store(rows, relaxed);
    sv.last_forward_tokens.store(std::uint64_t(st.forward_tokens) - sv.forward_tokens.load(relaxed),
                                 relaxed);
  }
  sv.forward_tokens.store(std::uint64_t(st.forward_tokens), relaxed);
  sv.kv_used.store(std::uint64_t(st.kv.used), relaxed);
  sv.cached_tokens.store(std::uint64_t(st.cached_tokens), relaxed);
  sv.prefix_query_tokens.store(std::uint64_t(st.prefix.query_tokens), relaxed);
  sv.prefix_hit_tokens.store(std::uint64_t(st.prefix.hit_tokens), relaxed);
  sv.running.store(eng.scheduler().running().size(), relaxed);
  sv.waiting.store(eng.scheduler().queued().size(), relaxed);
  sv.steps.store(st.steps, relaxed);
}

// A token of the mock engine: a fixed function of the prompt and the output index, never one of
// the request's stop ids (so it never ends early), in [0, vocab).
std::int32_t mock_token(std::uint64_t prompt_hash, std::int64_t index, std::int64_t vocab,
                        wire_params const& p) {
  std::uint64_t x = prompt_hash + 0x9e3779b97f4a7c15ull * std::uint64_t(index + 1);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  auto t = std::int32_t(x % std::uint64_t(vocab));
  auto const* const stop_end = p.stop_ids + std::clamp(p.stop_count, 0, max_stop_token_ids);
  while (std::find(p.stop_ids, stop_end, t) != stop_end) t = std::int32_t((t + 1) % vocab);
  return t;
}

// The mock engine: no model, no scheduler. Every live request is admitted at once and gets one
// token per step until max_new_tokens.
int serve_mock(engine_options const& o) {
  table_type table = table_type::open(o.table_name);
  engine_stats_block stats = engine_stats_block::open(o.stats_name);
  engine_stats_values& sv = stats.values();
  LC_CHECK(o.mock_vocab >= 2, "the mock engine needs a vocabulary of at least 2 tokens");
  std::cerr << "engine: mock (no model), vocab " << o.mock_vocab << "\n";
  if (o.ready_fd >= 0) {
    char const byte = 1;
    LC_CHECK(::write(o.ready_fd, &byte, 1) == 1, "cannot report readiness to the front end");
    ::close(o.ready_fd);
  }
  struct live {
    ipc::slot_handle slot;
    std::uint64_t id = 0;
    std::uint64_t prompt_hash = 0;
    std::int64_t produced = 0;
    wire_params params;
    bool done = false;
  };
  std::vector<live> lives;
  std::vector<std::int32_t> one(1);
  std::vector<float> const zero_lp(1, 0.0f);
  std::uint64_t steps = 0, forward = 0;
  auto const relaxed = std::memory_order_relaxed;
  auto end = [&](live& l, ipc::finish_reason why) {
    table.finish(l.slot, why);
    table.release(l.slot);
    l.done = true;
  };
  for (;;) {
    auto first = table.next_event(lives.empty() ? ipc::no_timeout : std::chrono::nanoseconds(0));
    for (auto ev = first; ev; ev = table.next_event(std::chrono::nanoseconds(0))) {
      ipc::slot_handle const h = ev->slot;
      if (ev->what == ipc::table_event::kind::abort_requested) {
        for (live& l : lives)
          if (!l.done && l.slot == h) end(l, ipc::finish_reason::abort);
        continue;
      }
      live l;
      l.slot = h;
      l.id = table.request_id(h);
      l.params = table.params(h);
      l.prompt_hash = 1469598103934665603ull;  // FNV-1a over the prompt ids
      for (std::int32_t const t : table.prompt(h))
        l.prompt_hash = (l.prompt_hash ^ std::uint32_t(t)) * 1099511628211ull;
      table.start(h);
      stats.admitted_ns(h.index).store(engine_stats_block::now_ns(), relaxed);
      if (table.abort_requested(h)) {
        end(l, ipc::finish_reason::abort);
        continue;
      }
      lives.push_back(l);
    }
    std::erase_if(lives, [](live const& l) { return l.done; });
    std::uint64_t const rows = lives.size();
    for (live& l : lives) {
      one[0] = mock_token(l.prompt_hash, l.produced, o.mock_vocab, l.params);
      table.append_output(l.slot, one, zero_lp);
      if (++l.produced >= l.params.max_new_tokens) end(l, ipc::finish_reason::length);
    }
    std::erase_if(lives, [](live const& l) { return l.done; });
    if (rows > 0) {
      ++steps;
      forward += rows;
      sv.last_rows.store(rows, relaxed);
      sv.last_forward_tokens.store(rows, relaxed);
    }
    sv.forward_tokens.store(forward, relaxed);
    sv.running.store(lives.size(), relaxed);
    sv.steps.store(steps, relaxed);
  }
}

template <Backend B>
int serve(B& backend, engine_options const& o) {
  table_type table = table_type::open(o.table_name);
  auto const t0 = std::chrono::steady_clock::now();
  ds::model_weights<B> weights =
      o.model.empty()
          ? ds::dummy_weights(backend,
                              o.config_text.empty()
                                  ? io::load_model_config(o.config)
                                  : io::parse_model_config(o.config_text, "the built-in model"),
                              {.shard = {}, .seed = o.seed, .layout = {}})
          : ds::load_weights(backend, o.model);
  io::model_config const& c = weights.config();
  ds::executor<B> exec(backend, weights, ds::model_options{o.max_seq_len}, o.max_running);

  engine::engine_config ec;
  ec.kv.layers = std::int32_t(c.num_hidden_layers);
  ec.kv.width = c.kv_lora_rank + c.qk_rope_head_dim;
  ec.kv.max_requests = o.max_running;
  ec.kv.max_tokens = o.max_seq_len;
  ec.kv.capacity = kv_capacity(
      backend, o, memory::kv_pool<B>::bytes_per_token(ec.kv.layers, ec.kv.width, dtype::bf16));
  ec.prefix_cache = o.prefix_cache;
  ec.scheduler.max_running_requests = o.max_running;
  ec.scheduler.max_seq_len = o.max_seq_len;
  ec.scheduler.max_tokens_per_step = std::max<std::int64_t>(o.max_tokens_per_step, o.max_running);
  engine::engine<B, ds::executor<B>> eng(backend, exec, ec);
  double const load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "engine: " << c.num_hidden_layers << " layers, vocab " << c.vocab_size << ", on "
            << backend.where() << ", KV pool " << ec.kv.capacity << " tokens, ready in " << load_s
            << " s\n";

  // Prefill/decode roles: the control endpoint and the role's state, owned by this thread.
  using engine_type = decltype(eng);
  pd_outbox outbox;
  pd_inbox inbox([&table] { table.wake_engine(); });
  std::unique_ptr<pd_node> node;
  std::unique_ptr<pd_control_server> control;  // after node: its handlers go first
  std::int32_t control_port = 0;
  if (o.role != "single") {
    control = std::make_unique<pd_control_server>(std::size_t(o.control_threads));
    control_port = control->bind(o.control_host, o.control_port);
    pd_role_options ro;
    ro.control_url = "http://" + (o.advertise_host.empty() ? o.control_host : o.advertise_host) +
                     ":" + std::to_string(control_port);
    ro.kv_host = o.kv_host;
    ro.kv_port = o.kv_port;
    ro.timeout = std::chrono::milliseconds(o.pd_timeout_ms);
    ro.transport = o.pd_transport;
    if (o.role == "prefill") {
      auto p = std::make_unique<pd_prefill<B, engine_type>>(eng, exec.stream(), outbox, inbox, ro);
      // Each prompt's KV goes layer by layer while its prefill step runs.
      if constexpr (engine_type::streams_kv)
        if (o.pd_stream_layers) eng.set_kv_stream_observer(p.get());
      node = std::move(p);
    } else
      node = std::make_unique<pd_decode<B, engine_type>>(eng, outbox, inbox, ro);
    node->routes(control->http());
    control->listen();
    std::cerr << "engine: " << o.role << " control endpoint on " << ro.control_url << "\n";
  }

  if (o.ready_fd >= 0) {
    char const byte = 1;
    LC_CHECK(::write(o.ready_fd, &byte, 1) == 1, "cannot report readiness to the front end");
    if (node)
      LC_CHECK(::write(o.ready_fd, &control_port, sizeof control_port) == sizeof control_port,
               "cannot report the control port to the front end");
    ::close(o.ready_fd);
  }

  engine_stats_block stats = engine_stats_block::open(o.stats_name);
  engine_stats_values& sv = stats.values();
  sv.kv_capacity.store(std::uint64_t(ec.kv.capacity), std::memory_order_relaxed);

  std::unordered_map<std::uint64_t, ipc::slot_handle> slots;  // request id -> its record
  std::unordered_set<std::uint64_t> pending;  // submitted, not yet admitted by the scheduler
  std::unordered_set<std::uint64_t> running_now;
  auto end_request = [&](std::uint64_t id, ipc::finish_reason why) {
    auto it = slots.find(id);
    if (it == slots.end()) return;
    pending.erase(id);
    table.finish(it->second, why);
    table.release(it->second);
    slots.erase(it);
  };
  auto on_event = [&](ipc::table_event const& ev) {
    ipc::slot_handle const h = ev.slot;
    if (ev.what == ipc::table_event::kind::abort_requested) {
      std::uint64_t const id = table.request_id(h);
      if (slots.contains(id) && eng.abort(id)) end_request(id, ipc::finish_reason::abort);
      return;
    }
    std::uint64_t const id = table.request_id(h);
    wire_params const p = table.params(h);
    engine::request<kernels::sampling_request> r;
    r.id = id;
    auto const prompt = table.prompt(h);
    r.prompt.assign(prompt.begin(), prompt.end());
    r.sampling = p.sampling;
    r.max_new_tokens = p.max_new_tokens;
    r.stop_token_ids.assign(p.stop_ids,
                            p.stop_ids + std::clamp(p.stop_count, 0, max_stop_token_ids));
    try {
      eng.submit(std::move(r));
    } catch (std::exception const& e) {
      table.fail(h, e.what());
      table.release(h);
      return;
    }
    table.start(h);
    slots.emplace(id, h);
    pending.insert(id);
    if (table.abort_requested(h) && eng.abort(id)) end_request(id, ipc::finish_reason::abort);
  };

  std::vector<std::int32_t> one(1);
  std::vector<float> one_lp(1);
  std::size_t const top_k = table.config().top_logprobs;
  std::vector<ipc::top_entry> tops(top_k);
  for (;;) {
    // The role's queued work and its poll() first, and the stats after them when idle: what
    // they publish is then fresh when the loop goes to sleep below.
    if (node) {
      inbox.run_all();
      node->poll();
      if (eng.idle()) publish(eng, sv, 0);
    }
    // Block while idle; otherwise take what has arrived and step. With a role, work also comes
    // through the control endpoint's queue, which wakes this wait; while transfers are under
    // way the role's poll() has deadlines to keep, so the idle wait is bounded then.
    auto const idle_wait = node && node->busy()
                               ? std::chrono::nanoseconds(std::chrono::milliseconds(1))
                               : std::chrono::nanoseconds(ipc::no_timeout);
    auto first = table.next_event_or(eng.idle() ? idle_wait : std::chrono::nanoseconds(0),
                                     [&inbox] { return inbox.pending(); });
    for (auto ev = first; ev; ev = table.next_event(std::chrono::nanoseconds(0))) on_event(*ev);
    if (eng.idle()) {
      publish(eng, sv, 0);
      continue;
    }
    try {
      std::uint64_t const step_start = engine_stats_block::now_ns();
      auto const events = eng.step();
      // Admissions: a pending request the scheduler now runs (or that already sampled) was
      // admitted by this step; its queue time ends at the step's start.
      if (!pending.empty()) {
        running_now.clear();
        for (std::uint64_t const id : eng.scheduler().running()) running_now.insert(id);
        for (engine::token_event const& t : events) running_now.insert(t.id);
        for (auto it = pending.begin(); it != pending.end();) {
          if (running_now.contains(*it)) {
            stats.admitted_ns(slots.at(*it).index).store(step_start, std::memory_order_relaxed);
            it = pending.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (engine::token_event const& t : events) {
        if (node && node->on_token(t)) continue;
        auto it = slots.find(t.id);
        if (it == slots.end()) continue;
        one[0] = t.token;
        one_lp[0] = t.logprob;
        for (std::size_t j = 0; j < top_k; ++j)
          tops[j] = j < t.top_ids.size() ? ipc::top_entry{t.top_ids[j], t.top_logprobs[j]}
                                         : ipc::top_entry{};
        table.append_output(it->second, one, one_lp, tops);
        if (t.finished != engine::finish_reason::none) end_request(t.id, to_table(t.finished));
      }
      publish(eng, sv, std::uint64_t(events.size()));
    } catch (std::exception const& e) {
      std::cerr << "engine: a step failed: " << e.what() << "\n";
      for (auto const& [id, h] : slots) {
        table.fail(h, std::string("the engine failed: ") + e.what());
        table.release(h);
      }
      // The process ends now: control handlers still waiting for this thread's answers must not
      // hold its exit (their peers see the connection drop), so the endpoint is not joined.
      (void)control.release();
      (void)node.release();
      return 1;
    }
  }
}

}  // namespace

int run_engine(engine_options const& o) {
  try {
    if (o.mock) return serve_mock(o);
    bool use_cuda = o.device == "cuda";
#if defined(LIGHTCORE_WITH_CUDA)
    if (o.device == "auto") use_cuda = backend::cuda::device_count() > 0;
    if (use_cuda) {
      backend::cuda gpu(0);
      return serve(gpu, o);
    }
#else
    LC_CHECK(!use_cuda, "--device cuda: this build has no CUDA backend; allowed: cpu, auto");
#endif
    backend::cpu cpu;
    return serve(cpu, o);
  } catch (std::exception const& e) {
    std::cerr << "engine: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace lightcore::server
