// The engine's side of prefill/decode separation, on the CPU backend: a prefill engine keeps a
// finished hold_kv request's KV until release_held(); a decode engine adopts a prompt whose KV
// was copied into its pool and continues it. Greedy tokens through the two engines equal one
// engine's; every slot comes back on both sides, on success, abort and refusal.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/engine/engine.hpp"
#include "models/deepseek_v3/executor.hpp"
#include "models/deepseek_v3/weights_loader.hpp"

namespace lightcore::test {
namespace {

namespace ds = models::deepseek_v3;
using backend::cpu;
using executor_t = ds::executor<cpu>;
using engine_t = engine::engine<cpu, executor_t>;
using request_t = engine_t::request_type;

constexpr std::int64_t max_len = 96;

struct model_fixture {
  cpu backend;
  io::model_config config = io::load_model_config(std::filesystem::path(LIGHTCORE_TEST_DATA_DIR) /
                                                  "configs" / "tiny_deepseek_v2.json");
  ds::model_weights<cpu> weights =
      ds::dummy_weights(backend, config, {.shard = {}, .seed = 5, .layout = {}});

  engine::engine_config config_of(std::int64_t capacity, std::int64_t running = 8,
                                  bool prefix = true) const {
    engine::engine_config c;
    c.kv.layers = std::int32_t(config.num_hidden_layers);
    c.kv.capacity = capacity;
    c.kv.max_requests = 8;
    c.kv.max_tokens = max_len;
    c.prefix_cache = prefix;
    c.scheduler.max_seq_len = max_len;
    c.scheduler.max_tokens_per_step = 64;
    c.scheduler.max_running_requests = running;
    return c;
  }
};

model_fixture& fixture() {
  static model_fixture f;  // read only; each test builds its own executors and engines
  return f;
}

std::vector<std::int32_t> prompt_of(std::int64_t n, std::int32_t salt) {
  std::vector<std::int32_t> p;
  for (std::int64_t i = 0; i < n; ++i) p.push_back(std::int32_t((i * 53 + salt * 97 + 3) % 1000));
  return p;
}

request_t greedy(std::uint64_t id, std::vector<std::int32_t> prompt, std::int64_t max_new,
                 bool hold = false) {
  request_t r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.max_new_tokens = max_new;
  r.hold_kv = hold;
  return r;
}

std::map<std::uint64_t, std::vector<std::int32_t>> run(engine_t& e) {
  std::map<std::uint64_t, std::vector<std::int32_t>> out;
  for (int steps = 0; !e.idle(); ++steps) {
    for (engine::token_event const& t : e.step()) out[t.id].push_back(t.token);
    if (steps > 1000) {
      ADD_FAILURE() << "the engine did not go idle";
      break;
    }
  }
  return out;
}

// What a transport does: copies the rows of src_slots in every layer of `from` into dst_slots
// of `to`.
void copy_rows(engine_t& from, engine_t& to, std::span<std::int32_t const> src_slots,
               std::span<std::int32_t const> dst_slots) {
  ASSERT_EQ(src_slots.size(), dst_slots.size());
  auto const src = from.kv_pool().layers();
  auto const dst = to.kv_pool().layers();
  ASSERT_EQ(src.size(), dst.size());
  for (std::size_t l = 0; l < src.size(); ++l) {
    std::size_t const row = std::size_t(src[l].size(1)) * src[l].element_size();
    for (std::size_t i = 0; i < src_slots.size(); ++i)
      std::memcpy(static_cast<std::byte*>(dst[l].data()) + std::size_t(dst_slots[i]) * row,
                  static_cast<std::byte const*>(src[l].data()) + std::size_t(src_slots[i]) * row,
                  row);
  }
}

// The decode side's allocation: the prefix its cache holds (locked), fresh slots for the rest.
engine::adopted_kv allocate(engine_t& d, std::span<std::int32_t const> prompt) {
  engine::adopted_kv kv;
  if (memory::radix_cache* cache = d.prefix_cache()) {
    // At least the last prompt token moves, as a prefill would compute it.
    auto const m = cache->match(prompt.first(prompt.size() - 1));
    if (m.length > 0) {
      cache->lock(m.node);
      kv.prefix_node = m.node;
      kv.prefix_hit = m.length;
      kv.slots.assign(m.slots.begin(), m.slots.end());
    }
  }
  std::int64_t const rest = std::int64_t(prompt.size()) - kv.prefix_hit;
  EXPECT_TRUE(d.kv_pool().slots().try_alloc(rest, kv.slots));
  return kv;
}

void expect_all_slots_back(engine_t const& e) {
  engine::engine_stats const s = e.stats();
  EXPECT_EQ(e.live_requests(), 0u);
  EXPECT_EQ(e.held_requests(), 0u);
  EXPECT_EQ(s.kv.used, s.cached_tokens) << "slots held outside the prefix cache leaked";
  EXPECT_EQ(s.evictable_tokens, s.cached_tokens) << "a prefix stayed pinned";
}

// Prefill on P (one token, KV held), copy, adopt on D, decode there; P releases its hold.
std::vector<std::int32_t> through_two_engines(engine_t& p, engine_t& d, std::uint64_t id,
                                              std::vector<std::int32_t> const& prompt,
                                              std::int64_t max_new) {
  p.submit(greedy(id, prompt, 1, true));
  std::vector<std::int32_t> out;
  while (out.empty() && !p.idle())
    for (engine::token_event const& t : p.step())
      if (t.id == id) {
        EXPECT_EQ(t.finished, engine::finish_reason::length);
        out.push_back(t.token);
      }
  auto const held = p.held(id);
  EXPECT_TRUE(held.has_value());
  if (!held) return out;
  EXPECT_TRUE(std::equal(held->tokens.begin(), held->tokens.end(), prompt.begin(), prompt.end()));
  engine::adopted_kv kv = allocate(d, prompt);
  std::int64_t const hit = kv.prefix_hit;
  copy_rows(p, d, held->slots.subspan(std::size_t(hit)),
            std::span<std::int32_t const>(kv.slots).subspan(std::size_t(hit)));
  EXPECT_TRUE(p.release_held(id));
  EXPECT_FALSE(p.release_held(id));
  d.adopt(greedy(id, prompt, max_new), out.front(), std::move(kv));
  auto const decoded = run(d);
  if (decoded.contains(id)) out.insert(out.end(), decoded.at(id).begin(), decoded.at(id).end());
  run(p);
  return out;
}

TEST(EngineHandover, PrefillThenAdoptGivesTheTokensOfOneEngine) {
  model_fixture& f = fixture();
  executor_t ex_single(f.backend, f.weights, ds::model_options{max_len}, 8);
  executor_t ex_p(f.backend, f.weights, ds::model_options{max_len}, 8);
  executor_t ex_d(f.backend, f.weights, ds::model_options{max_len}, 8);
  engine_t single(f.backend, ex_single, f.config_of(512));
  engine_t p(f.backend, ex_p, f.config_of(512));
  engine_t d(f.backend, ex_d, f.config_of(512));
  for (std::uint64_t id = 1; id <= 3; ++id) {
    auto const prompt = prompt_of(10 + std::int64_t(id) * 7, std::int32_t(id));
    single.submit(greedy(id, prompt, 9));
    auto const expected = run(single).at(id);
    EXPECT_EQ(through_two_engines(p, d, id, prompt, 9), expected) << "request " << id;
  }
  // The same prompt again: D's prefix cache holds it, so only the last token's row moves.
  auto const prompt = prompt_of(17, 1);
  single.submit(greedy(9, prompt, 5));
  auto const expected = run(single).at(9);
  std::int64_t const hits_before = d.stats().scheduler.prefix_hit_tokens;
  EXPECT_EQ(through_two_engines(p, d, 9, prompt, 5), expected);
  EXPECT_EQ(d.stats().scheduler.prefix_hit_tokens - hits_before, 16);
  EXPECT_EQ(d.stats().scheduler.adopted, 4u);
  expect_all_slots_back(p);
  expect_all_slots_back(d);
}

// What a PD prefill side sees through engine::kv_stream_observer: which prompts a step completes
// (before its forward), then every layer in order, each one's KV rows already written.
struct stream_recorder final : engine::kv_stream_observer {
  engine_t* e = nullptr;
  struct start {
    std::uint64_t id = 0;
    std::vector<std::int32_t> tokens, slots;
  };
  std::vector<std::vector<start>> calls;          // per before_forward
  std::vector<std::vector<std::int64_t>> layers;  // per before_forward, the after_layer calls
  // Per call, per layer: the started slots' rows of that layer (and of the next one) when
  // after_layer ran.
  std::vector<std::vector<std::vector<std::byte>>> rows_at, next_rows_at;

  std::vector<std::byte> rows_of(std::int64_t layer) const {
    auto const v = e->kv_pool().layers()[std::size_t(layer)];
    std::size_t const row = std::size_t(v.size(1)) * v.element_size();
    std::vector<std::byte> out;
    for (start const& s : calls.back())
      for (std::int32_t const slot : s.slots) {
        auto const* p = static_cast<std::byte const*>(v.data()) + std::size_t(slot) * row;
        out.insert(out.end(), p, p + row);
      }
    return out;
  }
  void before_forward(std::span<engine::kv_stream_start const> starts) override {
    calls.emplace_back();
    for (auto const& s : starts)
      calls.back().push_back(
          {s.id, {s.kv.tokens.begin(), s.kv.tokens.end()}, {s.kv.slots.begin(), s.kv.slots.end()}});
    layers.emplace_back();
    rows_at.emplace_back();
    next_rows_at.emplace_back();
  }
  void after_layer(std::int64_t layer) override {
    layers.back().push_back(layer);
    rows_at.back().push_back(rows_of(layer));
    std::int64_t const n = std::int64_t(e->kv_pool().layers().size());
    next_rows_at.back().push_back(layer + 1 < n ? rows_of(layer + 1) : std::vector<std::byte>{});
  }
};

TEST(EngineHandover, StreamObserverSeesCompletedPromptsThenEachWrittenLayer) {
  static_assert(engine_t::streams_kv);
  model_fixture& f = fixture();
  for (bool const overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped" : "sequential");
    executor_t ex(f.backend, f.weights, ds::model_options{max_len}, 8);
    engine::engine_config c = f.config_of(512);
    c.overlap = overlap;
    c.scheduler.max_tokens_per_step = 16;  // a 40-token prompt takes three chunks
    engine_t e(f.backend, ex, c);
    // The pool may reuse the previous loop's memory, rows and all: NaN bytes everywhere, so that
    // a row not yet written never equals the row that will be.
    for (tensor_view const& layer : e.kv_pool().layers())
      std::memset(layer.data(), 0xFF, layer.nbytes());
    stream_recorder rec;
    rec.e = &e;
    e.set_kv_stream_observer(&rec);
    auto const long_prompt = prompt_of(40, 3), short_prompt = prompt_of(6, 4);
    e.submit(greedy(1, long_prompt, 1, true));
    e.submit(greedy(2, prompt_of(5, 5), 3));  // no hold: never streamed
    run(e);
    e.submit(greedy(3, short_prompt, 1, true));
    e.submit(greedy(4, prompt_of(7, 6), 1, true));
    run(e);
    std::int64_t const n_layers = std::int64_t(e.kv_pool().layers().size());
    // One call for the step that completes request 1 (its last chunk), one for 3 and 4 together.
    ASSERT_EQ(rec.calls.size(), 2u);
    ASSERT_EQ(rec.calls[0].size(), 1u);
    EXPECT_EQ(rec.calls[0][0].id, 1u);
    EXPECT_EQ(rec.calls[0][0].tokens, long_prompt);
    EXPECT_EQ(rec.calls[0][0].slots.size(), long_prompt.size()) << "every chunk's slots";
    ASSERT_EQ(rec.calls[1].size(), 2u);
    EXPECT_EQ(rec.calls[1][0].id + rec.calls[1][1].id, 7u);
    for (std::size_t call = 0; call < rec.calls.size(); ++call) {
      std::vector<std::int64_t> want(std::size_t(n_layers), 0);
      for (std::int64_t l = 0; l < n_layers; ++l) want[std::size_t(l)] = l;
      EXPECT_EQ(rec.layers[call], want) << "each layer once, in order";
    }
    // Each held prompt's rows as the transfer would read them at the end equal what every
    // after_layer(l) saw of layer l; layer l + 1 was not written yet then (its last chunk's rows).
    for (std::size_t call = 0; call < rec.calls.size(); ++call) {
      for (auto const& s : rec.calls[call]) {
        auto const held = e.held(s.id);
        ASSERT_TRUE(held.has_value());
        EXPECT_TRUE(
            std::equal(held->slots.begin(), held->slots.end(), s.slots.begin(), s.slots.end()));
      }
      auto const calls = rec.calls;  // rows_of() reads the last call's slots
      rec.calls.assign(1, calls[call]);
      for (std::int64_t l = 0; l < n_layers; ++l) {
        EXPECT_EQ(rec.rows_at[call][std::size_t(l)], rec.rows_of(l)) << "layer " << l;
        if (l + 1 < n_layers) {
          EXPECT_NE(rec.next_rows_at[call][std::size_t(l)], rec.rows_of(l + 1))
              << "layer " << l + 1 << " was already written at after_layer(" << l << ")";
        }
      }
      rec.calls = calls;
    }
    for (std::uint64_t const id : {1u, 3u, 4u}) EXPECT_TRUE(e.release_held(id));
    run(e);
    expect_all_slots_back(e);
  }
}

TEST(EngineHandover, HeldKvStaysUntilReleasedAndCountsAgainstThePool) {
  model_fixture& f = fixture();
  executor_t ex(f.backend, f.weights, ds::model_options{max_len}, 8);
  engine_t p(f.backend, ex, f.config_of(128, 8, false));
  p.submit(greedy(1, prompt_of(40, 2), 1, true));
  run(p);
  EXPECT_TRUE(p.idle());
  EXPECT_EQ(p.held_requests(), 1u);
  ASSERT_TRUE(p.held(1).has_value());
  EXPECT_EQ(p.held(1)->slots.size(), 40u);
  EXPECT_EQ(p.stats().kv.used, 40);
  // The pool's other 88 slots still serve (the scheduler does not count the held ones as
  // released): two requests that need 80 between them run to the end.
  p.submit(greedy(2, prompt_of(30, 3), 10));
  p.submit(greedy(3, prompt_of(30, 4), 10));
  auto const out = run(p);
  EXPECT_EQ(out.at(2).size(), 10u);
  EXPECT_EQ(out.at(3).size(), 10u);
  EXPECT_EQ(p.stats().kv.used, 40);
  EXPECT_TRUE(p.release_held(1));
  EXPECT_FALSE(p.held(1).has_value());
  expect_all_slots_back(p);
  EXPECT_EQ(p.stats().kv.used, 0);
}

TEST(EngineHandover, ReleaseBeforeTheNextStepAndAbortHoldNothing) {
  model_fixture& f = fixture();
  executor_t ex(f.backend, f.weights, ds::model_options{max_len}, 8);
  engine_t p(f.backend, ex, f.config_of(256));
  p.submit(greedy(1, prompt_of(12, 5), 1, true));
  while (p.step().empty()) {
  }
  // The final event is out; the request still waits for the next step's release.
  ASSERT_TRUE(p.held(1).has_value());
  EXPECT_TRUE(p.release_held(1));
  EXPECT_FALSE(p.held(1).has_value());
  run(p);
  EXPECT_EQ(p.held_requests(), 0u);
  // Aborted: nothing is held.
  p.submit(greedy(2, prompt_of(50, 6), 1, true));
  EXPECT_TRUE(p.abort(2));
  run(p);
  EXPECT_FALSE(p.held(2).has_value());
  EXPECT_FALSE(p.release_held(2));
  expect_all_slots_back(p);
}

TEST(EngineHandover, AdoptedRequestsWaitForRoomAndCanBeAborted) {
  model_fixture& f = fixture();
  executor_t ex(f.backend, f.weights, ds::model_options{max_len}, 8);
  engine_t d(f.backend, ex, f.config_of(512, 1));  // one running request at a time
  auto const a = prompt_of(20, 7), b = prompt_of(20, 8);
  d.adopt(greedy(1, a, 6), 11, allocate(d, a));
  d.adopt(greedy(2, b, 6), 12, allocate(d, b));
  std::vector<engine::token_event> first;
  for (int i = 0; i < 3 && first.empty(); ++i) first = d.step();  // overlapped: a step later
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].id, 1u);
  EXPECT_EQ(first[0].index, 1);  // index 0 was sampled by the prefill side
  EXPECT_EQ(d.scheduler().running().size(), 1u);
  EXPECT_TRUE(d.abort(2));  // still waiting for room
  auto const out = run(d);
  EXPECT_EQ(out.at(1).size(), 4u);  // indices 2..5 of 6
  EXPECT_FALSE(out.contains(2));
  expect_all_slots_back(d);
}

TEST(EngineHandover, RefusesBadAdoptionsAndLeavesTheEngineUnchanged) {
  model_fixture& f = fixture();
  executor_t ex(f.backend, f.weights, ds::model_options{max_len}, 8);
  engine_t d(f.backend, ex, f.config_of(256));
  auto const prompt = prompt_of(10, 9);
  engine::adopted_kv kv = allocate(d, prompt);
  std::int64_t const used = d.stats().kv.used;
  auto expect_refused = [&](request_t r, engine::adopted_kv k) {
    EXPECT_THROW(d.adopt(std::move(r), 1, std::move(k)), error);
    EXPECT_EQ(d.stats().kv.used, used);
    EXPECT_EQ(d.live_requests(), 0u);
  };
  engine::adopted_kv short_kv = kv;
  short_kv.slots.pop_back();
  expect_refused(greedy(1, prompt, 5), short_kv);  // one slot short
  expect_refused(greedy(1, prompt, 1), kv);        // nothing left to decode
  expect_refused(greedy(1, {}, 5), kv);            // empty prompt
  expect_refused(greedy(1, prompt, max_len), kv);  // longer than max_seq_len
  engine::adopted_kv unlocked = kv;
  unlocked.prefix_hit = 3;  // a hit without its lock
  expect_refused(greedy(1, prompt, 5), unlocked);
  engine::adopted_kv wild = kv;
  wild.slots[0] = 256;  // outside the pool
  expect_refused(greedy(1, prompt, 5), wild);
  // The caller still owns the allocation; a valid adoption then runs.
  d.adopt(greedy(1, prompt, 3), 42, kv);
  EXPECT_THROW(d.adopt(greedy(1, prompt, 3), 42, engine::adopted_kv{}), error);  // duplicate id
  EXPECT_EQ(run(d).at(1).size(), 2u);
  expect_all_slots_back(d);
}

}  // namespace
}  // namespace lightcore::test
