// KV transfers that end without landing: a cancel on either side mid-transfer, a timeout on
// either side, a decode pool too small, a layout mismatch; each frees the source pins and the
// destination slots exactly once (the pools' stats and token_slots' double-free check say so),
// and misuse is refused with a message that names what was wrong.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "lightcore/core/error.hpp"
#include "pd_test_util.hpp"

namespace {

namespace pd = lightcore::pd;
using lightcore::test::pd_layers;
using lightcore::test::pd_link;
using namespace std::chrono_literals;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (lightcore::error const& e) {
    return e.message();
  }
  return "(no error)";
}

struct started {
  std::vector<std::int32_t> src;
  pd::allocate_response r;
};

started start(pd_link& t, std::int64_t n, std::optional<std::chrono::milliseconds> timeout = {},
              pd::clock::time_point now = pd::clock::now()) {
  started s;
  s.src = t.pin(n);
  s.r = t.rx.allocate(t.tx.make_request(77, pd_link::tokens(n), timeout), now);
  EXPECT_TRUE(s.r.accepted) << s.r.message;
  t.tx.begin(s.r, s.src, t.releaser(), timeout, now);
  return s;
}

TEST(PdTransferFailures, PrefillCancelMidTransferFreesBothSidesOnce) {
  pd_link t;
  auto const p0 = t.prefill.stats().used, d0 = t.decode.stats().used;
  auto const s = start(t, 30);
  t.tx.send_layer(s.r.id, 0);
  t.link.drain();
  t.link.pause();
  t.tx.send_layer(s.r.id, 1);  // queued, not copied
  EXPECT_TRUE(t.tx.cancel(s.r.id));
  EXPECT_FALSE(t.tx.cancel(s.r.id)) << "a second cancel finds it ended";
  // A copy is in flight: the decode side must not hear "abort" (and free) yet.
  EXPECT_EQ(t.rx.status(s.r.id)->state, pd::receiver_state::receiving);
  EXPECT_TRUE(t.tx.poll().empty()) << "pins stay while a copy is in flight";
  EXPECT_EQ(t.releases, 0);
  t.link.resume();
  t.link.drain();
  EXPECT_EQ(t.rx.status(s.r.id)->state, pd::receiver_state::failed);
  EXPECT_EQ(t.rx.status(s.r.id)->error.reason, pd::failure::cancelled);
  EXPECT_EQ(t.rx.status(s.r.id)->error.origin, pd::side::prefill);

  auto const rx_events = t.rx.poll();
  ASSERT_EQ(rx_events.size(), 1u);
  EXPECT_FALSE(rx_events[0].landed);
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_EQ(t.rx.stats().freed_slots, 30);
  auto const tx_events = t.tx.poll();
  ASSERT_EQ(tx_events.size(), 1u);
  EXPECT_EQ(tx_events[0].error.reason, pd::failure::cancelled);
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.prefill.stats().used, p0);
  // Nothing is freed twice by later polls.
  EXPECT_TRUE(t.tx.poll().empty());
  EXPECT_TRUE(t.rx.poll().empty());
  EXPECT_EQ(t.releases, 1);
  // Sending after one's own cancel is a bug in the caller.
  EXPECT_NE(error_of([&] { t.tx.send_layer(s.r.id, 2); }).find("cancelled by this side"),
            std::string::npos);
}

TEST(PdTransferFailures, DecodeCancelWaitsForTheAckThenFreesOnce) {
  pd_link t;
  auto const p0 = t.prefill.stats().used, d0 = t.decode.stats().used;
  auto const s = start(t, 25);
  t.tx.send_layer(s.r.id, 0);
  t.link.drain();
  t.link.pause();
  t.tx.send_layer(s.r.id, 1);  // in flight when the decode side gives up
  EXPECT_TRUE(t.rx.cancel(s.r.id));
  EXPECT_EQ(t.rx.status(s.r.id)->state, pd::receiver_state::aborting);
  EXPECT_EQ(t.tx.status(s.r.id)->state, pd::sender_state::failed);
  // The prefill side may still write: the slots are held until it acknowledges.
  EXPECT_TRUE(t.rx.poll().empty());
  EXPECT_EQ(t.decode.stats().used, d0 + 25);
  t.link.resume();
  t.link.drain();
  EXPECT_EQ(t.rx.status(s.r.id)->state, pd::receiver_state::failed);
  auto const ev = t.rx.poll();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].error.reason, pd::failure::cancelled);
  EXPECT_EQ(ev[0].error.origin, pd::side::decode);
  EXPECT_EQ(t.decode.stats().used, d0);
  // The forward carries on and learns the transfer is over.
  EXPECT_FALSE(t.tx.send_layer(s.r.id, 2));
  EXPECT_EQ(t.tx.poll().size(), 1u);
  EXPECT_FALSE(t.tx.send_layer(s.r.id, 3)) << "released, but still known as ended";
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.prefill.stats().used, p0);
}

TEST(PdTransferFailures, DecodeCancelOfALandedTransferFreesIt) {
  pd_link t;
  auto const d0 = t.decode.stats().used;
  auto const s = start(t, 9);
  for (std::int32_t l = 0; l < pd_layers; ++l) t.tx.send_layer(s.r.id, l);
  ASSERT_EQ(t.rx.wait(s.r.id, 2s), pd::receiver_state::landed);
  EXPECT_TRUE(t.rx.cancel(s.r.id));
  t.rx.poll();
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_EQ(t.prefix.evictable_tokens(), t.prefix.cached_tokens()) << "prefix lock released";
  EXPECT_NE(error_of([&] { t.rx.take(s.r.id); }).find("unknown transfer"), std::string::npos);
}

// The prefill side gives up a transfer that already landed (its request ended with the first
// token): the decode side frees it at once instead of keeping it until a claim timeout.
TEST(PdTransferFailures, PrefillAbortOfALandedTransferFreesIt) {
  pd_link t;
  auto const d0 = t.decode.stats().used;
  auto const s = start(t, 9);
  for (std::int32_t l = 0; l < pd_layers; ++l) t.tx.send_layer(s.r.id, l);
  ASSERT_EQ(t.rx.wait(s.r.id, 2s), pd::receiver_state::landed);
  t.rx.handle(pd::transfer_abort{s.r.id, pd::failure::cancelled, pd::side::prefill,
                                 "the request ended with its first token", false});
  auto const events = t.rx.poll();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(events[0].landed);
  EXPECT_EQ(events[0].error.origin, pd::side::prefill);
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_EQ(t.prefix.evictable_tokens(), t.prefix.cached_tokens()) << "prefix lock released";
  EXPECT_NE(error_of([&] { t.rx.take(s.r.id); }).find("unknown transfer"), std::string::npos);
}

TEST(PdTransferFailures, PrefillTimeoutFreesBothSides) {
  pd_link t;
  auto const p0 = t.prefill.stats().used, d0 = t.decode.stats().used;
  auto const t0 = pd::clock::now();
  auto const s = start(t, 16, 100ms, t0);
  t.tx.send_layer(s.r.id, 0);
  t.link.drain();
  EXPECT_TRUE(t.tx.poll(t0 + 50ms).empty());
  auto const ev = t.tx.poll(t0 + 150ms);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].error.reason, pd::failure::timeout);
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.prefill.stats().used, p0);
  // The abort reached the decode side, which frees at its next poll (before its own deadline).
  EXPECT_EQ(t.rx.status(s.r.id)->error.reason, pd::failure::timeout);
  EXPECT_EQ(t.rx.poll(t0 + 60ms).size(), 1u);
  EXPECT_EQ(t.decode.stats().used, d0);
}

TEST(PdTransferFailures, DecodeTimeoutWithASilentPrefillSideFreesAfterTheGrace) {
  pd_link t;
  t.to_prefill = false;  // the prefill instance is gone: no acknowledgement comes
  auto const d0 = t.decode.stats().used;
  auto const t0 = pd::clock::now();
  pd::allocate_request req = t.tx.make_request(3, pd_link::tokens(11), 50ms);
  req.start_timeout_ms = 200;  // no layer ever lands: the start budget is what runs out
  auto const r = t.rx.allocate(req, t0);
  ASSERT_TRUE(r.accepted);
  EXPECT_TRUE(t.rx.poll(t0 + 100ms).empty());
  EXPECT_TRUE(t.rx.poll(t0 + 250ms).empty()) << "timed out, but the grace has not passed";
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::aborting);
  EXPECT_EQ(t.decode.stats().used, d0 + 11);
  auto const ev = t.rx.poll(t0 + 250ms + pd::transfer_config{}.abort_grace);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].error.reason, pd::failure::timeout);
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_TRUE(t.rx.poll(t0 + 1h).empty());
}

// A prompt may wait in the prefill instance's queue longer than the transfer's budget: the
// decode side holds its slots for start_timeout_ms, and timeout_ms counts from the first layer.
TEST(PdTransferFailures, TheTransferBudgetStartsWithTheFirstLandedLayer) {
  pd_link t;
  t.to_prefill = false;
  auto const d0 = t.decode.stats().used;
  auto const t0 = pd::clock::now();
  pd::allocate_request req = t.tx.make_request(4, pd_link::tokens(9), 100ms);
  req.start_timeout_ms = 1000;
  auto const r = t.rx.allocate(req, t0);
  ASSERT_TRUE(r.accepted);
  EXPECT_TRUE(t.rx.poll(t0 + 600ms).empty()) << "queued past timeout_ms, inside the start budget";
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::allocated);
  t.rx.handle(pd::layer_landed{r.id, 0}, t0 + 700ms);
  t.rx.handle(pd::layer_landed{r.id, 1}, t0 + 900ms);  // later layers do not extend it
  EXPECT_TRUE(t.rx.poll(t0 + 790ms).empty());
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::receiving);
  EXPECT_TRUE(t.rx.poll(t0 + 810ms).empty()) << "timed out; the abort waits for its grace";
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::aborting);
  EXPECT_EQ(t.rx.status(r.id)->error.reason, pd::failure::timeout);
  auto const ev = t.rx.poll(t0 + 810ms + pd::transfer_config{}.abort_grace);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(t.decode.stats().used, d0);
}

TEST(PdTransferFailures, TooSmallDecodePoolIsRefusedCleanly) {
  pd_link t(512, 16);
  auto const d0 = t.decode.stats().used;
  // A cached prefix that does not cover enough: its lock must be dropped with the refusal.
  std::vector<std::int32_t> old;
  ASSERT_TRUE(t.decode.slots().try_alloc(4, old));
  auto const prompt = pd_link::tokens(40);
  t.prefix.insert(std::span(prompt).first(4), old);
  auto const r = t.rx.allocate(t.tx.make_request(1, prompt));
  EXPECT_FALSE(r.accepted);
  EXPECT_EQ(r.reason, pd::failure::out_of_slots);
  EXPECT_NE(r.message.find("this prompt needs 36"), std::string::npos) << r.message;
  EXPECT_EQ(t.prefix.evictable_tokens(), 4) << "the prefix lock was released";
  EXPECT_EQ(t.decode.stats().used, d0 + 4) << "only the cached prefix is held (by the cache)";
  EXPECT_EQ(t.rx.active(), 0u);
  EXPECT_EQ(t.rx.stats().refused, 1);
  // A refused allocation cannot begin.
  auto const src = t.pin(40);
  EXPECT_NE(error_of([&] { t.tx.begin(r, src, t.releaser()); }).find("was refused"),
            std::string::npos);
}

TEST(PdTransferFailures, LayoutMismatchAndBadPromptsAreRefused) {
  pd_link t;
  auto req = t.tx.make_request(1, pd_link::tokens(8));
  req.layout.width = 64;
  auto const a = t.rx.allocate(req);
  EXPECT_FALSE(a.accepted);
  EXPECT_EQ(a.reason, pd::failure::layout_mismatch);
  EXPECT_NE(a.message.find("4 layers x 64 bf16"), std::string::npos) << a.message;
  auto const b = t.rx.allocate(t.tx.make_request(2, pd_link::tokens(2000)));
  EXPECT_EQ(b.reason, pd::failure::bad_request);
  EXPECT_NE(b.message.find("allowed: 1..1024"), std::string::npos) << b.message;
  EXPECT_EQ(t.rx.active(), 0u);
}

TEST(PdTransferFailures, MisuseIsRefusedWithClearErrors) {
  pd_link t;
  auto src = t.pin(10);
  auto const r = t.rx.allocate(t.tx.make_request(4, pd_link::tokens(10)));
  ASSERT_TRUE(r.accepted);
  std::vector<std::int32_t> const short_src(src.begin(), src.begin() + 7);
  EXPECT_NE(error_of([&] {
              t.tx.begin(r, short_src, t.releaser());
            }).find("has 7 source slots but the decode side expects 0 cached + 10 new"),
            std::string::npos);
  std::vector<std::int32_t> bad = src;
  bad[3] = 99999;
  EXPECT_NE(error_of([&] {
              t.tx.begin(r, bad, t.releaser());
            }).find("source slot 99999 is out of range; allowed: 0..511"),
            std::string::npos);
  t.tx.begin(r, src, t.releaser());
  EXPECT_NE(error_of([&] { t.tx.begin(r, src, t.releaser()); }).find("has begun already"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              t.tx.send_layer(r.id, pd_layers);
            }).find("layer 4 of transfer 1 is out of range; allowed: 0..3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t.tx.send_layer(r.id, -1); }).find("out of range"), std::string::npos);
  t.tx.send_layer(r.id, 0);
  EXPECT_NE(error_of([&] { t.tx.send_layer(r.id, 0); }).find("was sent already"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t.tx.send_layer(12345, 0); }).find("unknown transfer 12345"),
            std::string::npos);
  t.link.drain();
  EXPECT_NE(error_of([&] { t.rx.take(r.id); }).find("is receiving; only a landed transfer"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              t.rx.handle(pd::layer_landed{r.id, 9});
            }).find("reports layer 9; allowed: 0..3"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              t.tx.handle(pd::layer_landed{r.id, 0});
            }).find("not for the prefill side"),
            std::string::npos);
  // A stray message (an id this side never gave out) is counted and ignored.
  t.rx.handle(pd::transfer_done{999, pd_layers, 1});
  EXPECT_EQ(t.rx.stats().stray_messages, 1);
  // A done that disagrees with the allocation fails the transfer rather than trusting it.
  t.rx.handle(pd::transfer_done{r.id, pd_layers, 3});
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::failed);
  EXPECT_EQ(t.rx.status(r.id)->error.reason, pd::failure::bad_request);
  t.tx.cancel(r.id);
  t.link.drain();
  t.rx.poll();
  t.tx.poll();
  EXPECT_EQ(t.releases, 1);
}

// A transport that keeps the jobs for the test to complete, or refuses them.
struct scripted_transport {
  pd::kv_layout layout() const { return {pd_layers, 8, lightcore::dtype::bf16}; }
  std::int64_t source_slots() const { return 64; }
  std::int64_t destination_slots() const { return 64; }
  void submit(pd::layer_copy job) {
    LC_CHECK(!refuse, "queue full");
    jobs.push_back(std::move(job));
  }
  std::vector<pd::layer_copy> jobs;
  bool refuse = false;
};
static_assert(pd::kv_transport<scripted_transport>);

TEST(PdTransferFailures, TransportErrorsFailTheTransfer) {
  scripted_transport link;
  std::vector<pd::message> sent;
  pd::kv_sender<scripted_transport> tx(link, [&](pd::message const& m) { sent.push_back(m); });
  pd::allocate_response r;
  r.accepted = true;
  r.id = 11;
  r.dst_slots = {5, 6, 7};
  std::vector<std::int32_t> const src{1, 2, 3};
  int releases = 0;
  auto release = [&](std::span<std::int32_t const> s) {
    EXPECT_EQ(s.size(), 3u);
    ++releases;
  };
  tx.begin(r, src, release);
  ASSERT_TRUE(tx.send_layer(11, 0));
  ASSERT_TRUE(tx.send_layer(11, 1));
  link.jobs[0].done({});
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<pd::layer_landed>(sent[0]));
  link.jobs[1].done("link down");
  auto const st = tx.status(11);
  EXPECT_EQ(st->state, pd::sender_state::failed);
  EXPECT_EQ(st->error.reason, pd::failure::transport);
  EXPECT_NE(st->error.message.find("copy of layer 1 failed: link down"), std::string::npos);
  ASSERT_EQ(sent.size(), 2u);
  ASSERT_TRUE(std::holds_alternative<pd::transfer_abort>(sent[1]));
  EXPECT_EQ(std::get<pd::transfer_abort>(sent[1]).reason, pd::failure::transport);
  EXPECT_EQ(tx.poll().size(), 1u);
  EXPECT_EQ(releases, 1);

  // A transport that refuses the job: send_layer says so and the transfer fails at once.
  r.id = 12;
  tx.begin(r, src, release);
  link.refuse = true;
  EXPECT_FALSE(tx.send_layer(12, 0));
  EXPECT_EQ(tx.status(12)->error.reason, pd::failure::transport);
  EXPECT_NE(tx.status(12)->error.message.find("queue full"), std::string::npos);
  EXPECT_EQ(tx.poll().size(), 1u);
  EXPECT_EQ(releases, 2);
  EXPECT_EQ(tx.stats().released, 2);
}

}  // namespace
