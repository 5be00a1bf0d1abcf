// request_table: a fork()ed "engine" process streams outputs token by token while the front
// end reads every published prefix (never torn), abort requests cross processes, slots are
// reused with new generations, references free slots, and bad inputs are clear errors.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "ipc_test_util.hpp"
#include "lightcore/ipc/request_table.hpp"

namespace lightcore {
namespace {

using namespace std::chrono_literals;
using ipc::finish_reason;
using ipc::request_table_config;
using ipc::slot_handle;
using ipc::slot_state;
using ipc::table_event;
using ipc::token_id;

// Stands in for the server's sampling parameters.
struct sampling {
  float temperature = 1.0f;
  std::int32_t top_k = 0;
  std::uint32_t max_tokens = 16;
  char stop[8] = {};
};
using table = ipc::request_table<sampling>;

// Output i of request `id`: a known sequence, so every prefix the front end reads is checked.
token_id expected_token(std::uint64_t id, std::uint32_t i) {
  return static_cast<token_id>((id * 1000003u + i * 7919u) % 129280u);
}
float expected_logprob(std::uint32_t i) { return -0.001f * static_cast<float>(i); }

slot_handle submit_request(table& t, std::uint64_t id, std::uint32_t max_tokens) {
  auto const h = t.allocate_slot();
  EXPECT_TRUE(h.has_value());
  std::vector<token_id> const prompt = {1, 2, 3, static_cast<token_id>(id)};
  t.write_prompt(*h, prompt);
  t.submit(*h, id, sampling{0.7f, 5, max_tokens, {'\n'}});
  return *h;
}

// The engine's side, run in the child: takes requests from the ring; request 1 streams
// `n1` tokens and finishes with "length"; request 2 streams until aborted.
bool engine_main(std::string const& name, std::uint32_t n1) {
  auto t = table::open(name);
  auto ev = t.next_event(5s);
  if (!ev || ev->what != table_event::kind::submitted) return false;
  auto const h1 = ev->slot;
  auto const p = t.params(h1);
  auto const prompt = t.prompt(h1);
  if (t.request_id(h1) != 1 || p.top_k != 5 || p.max_tokens != n1 || prompt.size() != 4 ||
      prompt[3] != 1) {
    return false;
  }
  t.start(h1);
  std::uint32_t i = 0;
  while (i < n1) {
    std::uint32_t const k = std::min<std::uint32_t>(1 + i % 3, n1 - i);  // 1..3 per append
    std::vector<token_id> ids;
    std::vector<float> lps;
    for (std::uint32_t j = 0; j < k; ++j) {
      ids.push_back(expected_token(1, i + j));
      lps.push_back(expected_logprob(i + j));
    }
    t.append_output(h1, ids, lps);
    i += k;
    // Paces the stream now and then, so that the front end reads while tokens keep coming.
    if (i % 16 < k) std::this_thread::sleep_for(20us);
  }
  t.finish(h1, finish_reason::length);
  t.release(h1);

  ev = t.next_event(5s);
  if (!ev || ev->what != table_event::kind::submitted) return false;
  auto const h2 = ev->slot;
  bool saw_abort_event = false;
  for (std::uint32_t j = 0; j < 100000 && !saw_abort_event; ++j) {
    token_id const id = expected_token(2, j);
    t.append_output(h2, std::span(&id, 1));
    if (auto e = t.next_event(j < 5 ? 0ns : 2ms)) {
      saw_abort_event = e->what == table_event::kind::abort_requested && e->slot == h2;
    }
  }
  if (!saw_abort_event || !t.abort_requested(h2)) return false;
  t.finish(h2, finish_reason::abort);
  t.release(h2);
  return true;
}

TEST(RequestTable, ForkedEngineStreamsOutputsNeverTorn) {
  constexpr std::uint32_t n1 = 3000;
  auto const name = test::unique_shm_name("table");
  auto t = table::create(name, {.slots = 4, .max_prompt = 16, .max_output = n1, .logprobs = true});
  pid_t const engine = test::fork_child([&] { return engine_main(name, n1); });

  auto const h1 = submit_request(t, 1, n1);
  std::uint32_t seen = 0, reads = 0, bad_prefixes = 0;
  while (true) {
    auto const h = t.next_output(5s);
    ASSERT_TRUE(h.has_value()) << "no output notification within 5 s";
    ASSERT_EQ(*h, h1);
    // Read the whole published prefix every time: ids and logprobs must all be there.
    auto const ids = t.outputs(h1);
    auto const lps = t.logprobs(h1);
    ASSERT_EQ(ids.size(), lps.size());
    ASSERT_GE(ids.size(), seen) << "n_output went backwards";
    for (std::uint32_t i = 0; i < ids.size(); ++i) {
      if (ids[i] != expected_token(1, i) || lps[i] != expected_logprob(i)) ++bad_prefixes;
    }
    seen = static_cast<std::uint32_t>(ids.size());
    ++reads;
    if (t.state(h1) == slot_state::finished) break;
  }
  EXPECT_EQ(bad_prefixes, 0u);
  EXPECT_EQ(t.output_count(h1), n1);
  EXPECT_EQ(t.read_outputs(h1, n1 - 2),
            (std::vector<token_id>{expected_token(1, n1 - 2), expected_token(1, n1 - 1)}));
  EXPECT_EQ(t.reason(h1), finish_reason::length);
  EXPECT_GT(reads, 10u) << "the front end should read while the engine writes";
  auto const times = t.times(h1);
  EXPECT_GT(times.submitted_ns, 0u);
  EXPECT_GE(times.first_token_ns, times.submitted_ns);
  EXPECT_GE(times.finished_ns, times.first_token_ns);

  // The abort request crosses to the engine, which stops the request.
  auto const h2 = submit_request(t, 2, 100000);
  bool aborted = false;
  while (auto const h = t.next_output(5s)) {
    if (*h != h2) continue;
    if (!aborted && t.output_count(h2) >= 5) aborted = t.request_abort(h2);
    if (t.state(h2) >= slot_state::finished) break;
  }
  EXPECT_TRUE(aborted);
  EXPECT_FALSE(t.request_abort(h2)) << "a second abort is not new";
  EXPECT_EQ(t.state(h2), slot_state::finished);
  EXPECT_EQ(t.reason(h2), finish_reason::abort);
  test::expect_child_ok(engine);

  // The engine released its references; ours free the slots.
  EXPECT_EQ(t.free_slots(), 2u);
  EXPECT_TRUE(t.release(h1));
  EXPECT_TRUE(t.release(h2));
  EXPECT_EQ(t.free_slots(), 4u);
}

TEST(RequestTable, ReferencesGenerationsAndReuse) {
  auto const name = test::unique_shm_name("reuse");
  auto front = table::create(name, {.slots = 2, .max_prompt = 8, .max_output = 8});
  auto engine = table::open(name);  // a second mapping, as the engine process has
  EXPECT_EQ(engine.config().slots, 2u);

  auto const a = front.allocate_slot();
  auto const b = front.allocate_slot();
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->index, b->index);
  EXPECT_FALSE(front.allocate_slot().has_value()) << "all slots are held";
  EXPECT_EQ(front.state(*a), slot_state::reserved);

  std::vector<token_id> const prompt = {5, 6};
  front.write_prompt(*a, prompt);
  front.submit(*a, 77, sampling{});
  auto const ev = engine.next_event(1s);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->slot, *a);
  EXPECT_EQ(engine.request_id(*a), 77u);
  EXPECT_FALSE(front.release(*a)) << "the engine still holds the slot";
  EXPECT_EQ(front.state(*a), slot_state::submitted);
  engine.fail(*a, "model raised: out of KV");
  EXPECT_EQ(front.state(*a), slot_state::error);
  EXPECT_EQ(front.error_message(*a), "model raised: out of KV");
  EXPECT_EQ(front.reason(*a), finish_reason::error);
  EXPECT_TRUE(engine.release(*a)) << "the last reference frees the slot";
  EXPECT_THROW_WITH(front.release(*a), "is free");
  EXPECT_TRUE(front.release(*b)) << "a reserved slot held only by the front end";
  EXPECT_FALSE(front.next_output(10ms).has_value()) << "the failed slot was released: skipped";

  // Reallocating bumps the generation: the old handle no longer reaches the slot.
  slot_handle again{};
  for (int i = 0; i < 4; ++i) {
    auto h = front.allocate_slot();
    ASSERT_TRUE(h.has_value());
    if (h->index == a->index) {
      again = *h;
      break;
    }
    front.release(*h);
  }
  ASSERT_EQ(again.index, a->index);
  EXPECT_GT(again.generation, a->generation);
  EXPECT_EQ(front.output_count(again), 0u);
  EXPECT_EQ(front.error_message(again), "");
  EXPECT_FALSE(front.abort_requested(again));
  EXPECT_THROW_WITH(front.write_prompt(*a, prompt), "released and reused");
  EXPECT_THROW_WITH(engine.append_output(*a, prompt), "released and reused");
}

TEST(RequestTable, BadInputsAreClearErrors) {
  auto const name = test::unique_shm_name("bad");
  auto t = table::create(name, {.slots = 2, .max_prompt = 4, .max_output = 3, .logprobs = false});
  auto const h = t.allocate_slot();
  ASSERT_TRUE(h.has_value());
  std::vector<token_id> const long_prompt(5, 1), ok_prompt(4, 1);
  EXPECT_THROW_WITH(t.write_prompt(*h, long_prompt), "prompt of 5 tokens");
  EXPECT_THROW_WITH(t.write_prompt(*h, {}), "allowed 1..4");
  EXPECT_THROW_WITH(t.submit(*h, 1, sampling{}), "has no prompt");
  EXPECT_THROW_WITH(t.append_output(*h, ok_prompt), "allowed states 2..3");
  EXPECT_THROW_WITH(t.state(slot_handle{2, 0}), "slot 2 is out of range; allowed 0..1");
  t.write_prompt(*h, ok_prompt);
  t.submit(*h, 9, sampling{});
  EXPECT_THROW_WITH(t.write_prompt(*h, ok_prompt), "allowed states 1..1");
  std::vector<token_id> const two = {1, 2};
  std::vector<float> const lps = {0.f, 0.f};
  EXPECT_THROW_WITH(t.append_output(*h, two, lps), "does not");  // this table keeps no logprobs
  t.append_output(*h, two);
  EXPECT_THROW_WITH(t.append_output(*h, two), "would exceed max_output 3");
  EXPECT_EQ(t.output_count(*h), 2u) << "a refused append publishes nothing";
  EXPECT_THROW_WITH(t.outputs(*h, 3), "from = 3");
  EXPECT_TRUE(t.logprobs(*h).empty());
  EXPECT_THROW_WITH(t.finish(*h, finish_reason::error), "allowed: stop, length, abort");
  t.finish(*h, finish_reason::stop);
  EXPECT_THROW_WITH(t.finish(*h, finish_reason::stop), "allowed states 2..3");

  EXPECT_THROW_WITH(table::create(test::unique_shm_name("cfg"), {.slots = 0}), "slots = 0");
  EXPECT_THROW_WITH(table::create(test::unique_shm_name("cfg"), {.max_output = 0}),
                    "max_output = 0");
  EXPECT_THROW_WITH(table::create(test::unique_shm_name("cfg"), {.top_logprobs = 21}),
                    "top_logprobs = 21; allowed 0..20");
  EXPECT_THROW_WITH(
      table::create(test::unique_shm_name("cfg"), {.logprobs = false, .top_logprobs = 2}),
      "needs logprobs = true");
  // Front end and engine built with different Params, or a different kind of segment.
  EXPECT_THROW_WITH(ipc::request_table<double>::open(name), "disagree on Params");
  auto const plain = test::unique_shm_name("plain");
  auto r = ipc::shm_region::create(plain, 64);
  EXPECT_THROW_WITH(table::open(plain), "magic");
  auto const newer = test::unique_shm_name("newer");
  auto v2 = ipc::shm_region::create(newer, 4096, {table::layout.magic, table::layout.version + 1});
  EXPECT_THROW_WITH(table::open(newer),
                    "layout version " + std::to_string(table::layout.version + 1) +
                        "; this build reads " + std::to_string(table::layout.version));
  auto const small = test::unique_shm_name("small");
  auto s = ipc::shm_region::create(small, 64, table::layout);
  EXPECT_THROW_WITH(table::open(small), "smaller than the table header");
}

TEST(RequestTable, BytesPerSlotFollowsTheConfig) {
  request_table_config c{.slots = 8, .max_prompt = 100, .max_output = 50, .logprobs = true};
  // 256 header + 64 (Params rounded) + 448 (100 prompt ids) + 256 (50 ids) + 200 -> 1280.
  EXPECT_EQ(table::bytes_per_slot(c), 1280u);
  c.logprobs = false;
  EXPECT_EQ(table::bytes_per_slot(c), 1024u);
  auto t = table::create(test::unique_shm_name("bytes"), c);
  EXPECT_GE(t.region().payload_bytes(), 8 * 1024u);
}

}  // namespace
}  // namespace lightcore

namespace lightcore {
namespace {

TEST(RequestTable, AlternativesTravelWithEachOutputToken) {
  auto const name = test::unique_shm_name("top");
  auto t = table::create(name, {.slots = 2, .max_prompt = 8, .max_output = 8, .top_logprobs = 3});
  auto engine = table::open(name);
  auto h = t.allocate_slot();
  ASSERT_TRUE(h);
  std::vector<ipc::token_id> const prompt = {1, 2};
  t.write_prompt(*h, prompt);
  t.submit(*h, 7, sampling{});
  auto ev = engine.next_event(std::chrono::seconds(1));
  ASSERT_TRUE(ev);
  std::vector<ipc::top_entry> const tops = {{5, -0.1f}, {6, -2.0f}, {-1, 0.0f},
                                            {9, -0.5f}, {8, -0.7f}, {7, -3.0f}};
  std::vector<ipc::token_id> const ids = {5, 9};
  std::vector<float> const lps = {-0.1f, -0.5f};
  engine.append_output(ev->slot, ids, lps, tops);
  std::vector<ipc::top_entry> const wrong(4);
  EXPECT_THROW_WITH(engine.append_output(ev->slot, ids, lps, wrong),
                    "4 alternatives for 2 ids; allowed: none, or 3 per id");
  engine.append_output(ev->slot, std::vector<ipc::token_id>{4});  // alternatives padded
  auto const got = t.top_logprobs(*h, 1);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got[0].id, 9);
  EXPECT_EQ(got[1].id, 8);
  EXPECT_FLOAT_EQ(got[2].logprob, -3.0f);
  EXPECT_EQ(got[3].id, -1) << "an append without alternatives pads them";
  EXPECT_EQ(t.top_logprobs(*h, 0)[0].id, 5);
}

}  // namespace
}  // namespace lightcore
