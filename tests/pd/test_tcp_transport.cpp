// The protocol over the TCP transport (loopback): layers land bit-exact through the framing,
// the prefix hit shortens the copy, many transfers share the connection, a cancel with frames in
// flight frees both sides once, and the server refuses frames that do not fit its pool.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "lightcore/core/error.hpp"
#include "pd_test_util.hpp"

namespace {

namespace pd = lightcore::pd;
using lightcore::test::pd_layers;
using lightcore::test::pd_tcp_link;
using namespace std::chrono_literals;

TEST(PdTcpTransport, ManyTransfersLandBitExact) {
  pd_tcp_link t;
  auto const p0 = t.prefill.stats().used, d0 = t.decode.stats().used;
  constexpr int count = 6;
  std::vector<std::vector<std::int32_t>> srcs;
  std::vector<pd::allocate_response> rs;
  for (int i = 0; i < count; ++i) {
    std::int64_t const n = 5 + 7 * i;
    srcs.push_back(t.pin(n));
    rs.push_back(
        t.rx.allocate(t.tx.make_request(std::uint64_t(i), pd_tcp_link::tokens(n, 97 * i))));
    ASSERT_TRUE(rs.back().accepted) << rs.back().message;
    t.tx.begin(rs.back(), srcs.back(), t.releaser());
  }
  for (std::int32_t l = 0; l < pd_layers; ++l)
    for (auto const& r : rs) ASSERT_TRUE(t.tx.send_layer(r.id, l));
  std::uint64_t rows = 0;
  for (int i = 0; i < count; ++i) {
    auto const& r = rs[std::size_t(i)];
    ASSERT_EQ(t.rx.wait(r.id, 5s), pd::receiver_state::landed) << "transfer " << i;
    for (std::int32_t l = 0; l < pd_layers; ++l)
      EXPECT_TRUE(t.layer_matches(l, srcs[std::size_t(i)], r.dst_slots)) << i << "/" << l;
    rows += r.dst_slots.size() * pd_layers;
  }
  EXPECT_EQ(t.server->rows_received(), rows);
  EXPECT_EQ(t.rx.poll().size(), std::size_t(count));
  for (auto const& r : rs) {
    auto const kv = t.rx.take(r.id);
    t.decode.slots().free(kv.slots);
    t.prefix.unlock(*kv.prefix_node);
  }
  EXPECT_EQ(t.tx.poll().size(), std::size_t(count));
  EXPECT_EQ(t.releases, count);
  EXPECT_EQ(t.prefill.stats().used, p0);
  EXPECT_EQ(t.decode.stats().used, d0);
}

TEST(PdTcpTransport, PrefixHitSendsOnlyTheSuffix) {
  pd_tcp_link t;
  auto const prompt = pd_tcp_link::tokens(24);
  std::vector<std::int32_t> old;
  ASSERT_TRUE(t.decode.slots().try_alloc(10, old));
  t.prefix.insert(std::span(prompt).first(10), old);
  auto const src = t.pin(24);
  auto const r = t.rx.allocate(t.tx.make_request(1, prompt));
  ASSERT_TRUE(r.accepted);
  EXPECT_EQ(r.prefix_hit, 10);
  t.tx.begin(r, src, t.releaser());
  for (std::int32_t l = 0; l < pd_layers; ++l) t.tx.send_layer(r.id, l);
  ASSERT_EQ(t.rx.wait(r.id, 5s), pd::receiver_state::landed);
  EXPECT_EQ(t.server->rows_received(), std::uint64_t(14 * pd_layers));
  std::span<std::int32_t const> const suffix = std::span(src).subspan(10);
  for (std::int32_t l = 0; l < pd_layers; ++l)
    EXPECT_TRUE(t.layer_matches(l, suffix, r.dst_slots)) << "layer " << l;
}

TEST(PdTcpTransport, DecodeCancelWithFramesInFlightFreesOnce) {
  pd_tcp_link t;
  auto const p0 = t.prefill.stats().used, d0 = t.decode.stats().used;
  auto const src = t.pin(50);
  auto const r = t.rx.allocate(t.tx.make_request(2, pd_tcp_link::tokens(50)));
  ASSERT_TRUE(r.accepted);
  t.tx.begin(r, src, t.releaser());
  t.tx.send_layer(r.id, 0);
  t.tx.send_layer(r.id, 1);
  EXPECT_TRUE(t.rx.cancel(r.id));
  // The ack comes once the prefill side's frames are acknowledged by the server.
  auto const state = t.rx.wait(r.id, 5s);
  ASSERT_EQ(state, pd::receiver_state::failed);
  EXPECT_EQ(t.rx.poll().size(), 1u);
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_FALSE(t.tx.send_layer(r.id, 2));
  auto const ev = t.tx.poll();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].error.origin, pd::side::decode);
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.prefill.stats().used, p0);
}

TEST(PdTcpTransport, ServerRefusesFramesThatDoNotFit) {
  pd_tcp_link t;
  // A raw layer_copy past the decode pool: the server refuses it and says why.
  std::vector<std::int32_t> const src{1, 2}, dst{3, 100000};
  std::string error = "(not called)";
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  t.link.submit({.layer = 1, .src_slots = src, .dst_slots = dst, .done = [&](std::string_view e) {
                   std::lock_guard lock(m);
                   error = std::string(e);
                   done = true;
                   cv.notify_all();
                 }});
  std::unique_lock lock(m);
  ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return done; }));
  EXPECT_NE(error.find("destination slot 100000 out of range"), std::string::npos) << error;
  EXPECT_EQ(t.server->frames_refused(), 1u);
}

TEST(PdTcpTransport, LayoutMismatchAndNoServerAreClearErrors) {
  lightcore::backend::cpu cpu;
  lightcore::test::cpu_pool narrow(cpu, {.layers = pd_layers, .capacity = 8, .width = 8});
  lightcore::test::cpu_pool wide(cpu, {.layers = pd_layers, .capacity = 8, .width = 16});
  pd::tcp_kv_server server(wide.layers());
  try {
    pd::tcp_transport link(narrow.layers(), "127.0.0.1", server.port());
    FAIL() << "a layout mismatch must be refused";
  } catch (lightcore::error const& e) {
    EXPECT_NE(e.message().find("the prefill pool is 4 layers x 8 bf16, the decode pool 4 layers "
                               "x 16 bf16"),
              std::string::npos)
        << e.message();
  }
  EXPECT_THROW(pd::tcp_transport(narrow.layers(), "not-an-address", 1), lightcore::error);
}

}  // namespace
