// KV transfers that land: layer by layer and bit-exact at the decode side's slots, only the
// suffix past the decode side's prefix hit, nothing at all on a full hit, and many at once.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "pd_test_util.hpp"

namespace {

namespace pd = lightcore::pd;
using lightcore::test::pd_layers;
using lightcore::test::pd_link;
using namespace std::chrono_literals;

TEST(PdTransfer, LandsLayerByLayerBitExact) {
  pd_link t;
  auto const p0 = t.prefill.stats().used;
  auto const d0 = t.decode.stats().used;
  constexpr std::int64_t n = 37;
  auto const src = t.pin(n);
  pd::allocate_response const r = t.rx.allocate(t.tx.make_request(5, pd_link::tokens(n)));
  ASSERT_TRUE(r.accepted) << r.message;
  EXPECT_EQ(r.prefix_hit, 0);
  ASSERT_EQ(r.dst_slots.size(), std::size_t(n));
  EXPECT_EQ(t.decode.stats().used, d0 + n);
  t.tx.begin(r, src, t.releaser());

  for (std::int32_t l = 0; l < pd_layers; ++l) {
    ASSERT_TRUE(t.tx.send_layer(r.id, l));
    t.link.drain();
    auto const st = t.rx.status(r.id);
    ASSERT_TRUE(st);
    EXPECT_EQ(st->layers_landed, l + 1);
    EXPECT_EQ(st->state,
              l + 1 < pd_layers ? pd::receiver_state::receiving : pd::receiver_state::landed);
    EXPECT_TRUE(t.layer_matches(l, src, r.dst_slots)) << "layer " << l;
    if (l + 1 < pd_layers) {  // the next layer is still the poison
      EXPECT_FALSE(t.layer_matches(l + 1, src, r.dst_slots)) << "layer " << l + 1;
    }
  }
  EXPECT_EQ(t.rx.wait(r.id, 1s), pd::receiver_state::landed);
  auto const events = t.rx.poll();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].landed);
  EXPECT_TRUE(t.rx.poll().empty()) << "a landed transfer is reported once";
  pd::landed_kv kv = t.rx.take(r.id);
  EXPECT_EQ(kv.request_id, 5u);
  EXPECT_EQ(kv.slots, r.dst_slots);
  EXPECT_EQ(kv.tokens, pd_link::tokens(n));

  auto const sent = t.tx.poll();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(sent[0].landed);
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.prefill.stats().used, p0);
  EXPECT_EQ(t.link.rows_copied(), std::uint64_t(n * pd_layers));
  EXPECT_EQ(t.tx.stats().rows_sent, n * pd_layers);
  // The decode engine owns the slots now; giving them back empties the pool.
  t.decode.slots().free(kv.slots);
  t.prefix.unlock(*kv.prefix_node);
  EXPECT_EQ(t.decode.stats().used, d0);
  EXPECT_EQ(t.tx.active(), 0u);
  EXPECT_EQ(t.rx.active(), 0u);
}

TEST(PdTransfer, PrefixHitMovesOnlyTheSuffix) {
  pd_link t;
  constexpr std::int64_t cached = 20, n = 32;
  auto const prompt = pd_link::tokens(n);
  auto const src = t.pin(n);
  // The decode side holds the first 20 tokens' KV (from an earlier request with the same
  // prefix): copy those rows there and publish them in its prefix cache.
  std::vector<std::int32_t> old;
  ASSERT_TRUE(t.decode.slots().try_alloc(cached, old));
  for (std::int32_t l = 0; l < pd_layers; ++l)
    for (std::int64_t i = 0; i < cached; ++i) {
      auto const a = pd_link::row(t.prefill, l, src[std::size_t(i)]);
      std::memcpy(const_cast<std::uint8_t*>(pd_link::row(t.decode, l, old[std::size_t(i)]).data()),
                  a.data(), a.size());
    }
  auto const ins = t.prefix.insert(std::span(prompt).first(cached), old);
  ASSERT_EQ(ins.existing, 0);
  auto const d0 = t.decode.stats().used;

  pd::allocate_response const r = t.rx.allocate(t.tx.make_request(8, prompt));
  ASSERT_TRUE(r.accepted);
  EXPECT_EQ(r.prefix_hit, cached);
  ASSERT_EQ(r.dst_slots.size(), std::size_t(n - cached));
  EXPECT_EQ(t.decode.stats().used, d0 + (n - cached));
  EXPECT_EQ(t.rx.stats().prefix_hit_tokens, cached);
  t.tx.begin(r, src, t.releaser());
  for (std::int32_t l = 0; l < pd_layers; ++l) t.tx.send_layer(r.id, l);
  ASSERT_EQ(t.rx.wait(r.id, 2s), pd::receiver_state::landed);
  EXPECT_EQ(t.link.rows_copied(), std::uint64_t((n - cached) * pd_layers));

  pd::landed_kv const kv = t.rx.take(r.id);
  EXPECT_EQ(kv.prefix_hit, cached);
  ASSERT_EQ(kv.slots.size(), std::size_t(n));
  EXPECT_TRUE(std::equal(old.begin(), old.end(), kv.slots.begin()));
  for (std::int32_t l = 0; l < pd_layers; ++l)
    EXPECT_TRUE(t.layer_matches(l, src, kv.slots)) << "layer " << l;
  // The prefix stays locked for the decode request: eviction cannot take it.
  EXPECT_EQ(t.prefix.evictable_tokens(), 0);
  t.prefix.unlock(*kv.prefix_node);
  EXPECT_EQ(t.prefix.evictable_tokens(), cached);
  t.tx.poll();
  EXPECT_EQ(t.releases, 1);
}

TEST(PdTransfer, FullPrefixHitMovesNothing) {
  pd_link t;
  constexpr std::int64_t n = 12;
  auto const prompt = pd_link::tokens(n);
  std::vector<std::int32_t> old;
  ASSERT_TRUE(t.decode.slots().try_alloc(n, old));
  t.prefix.insert(prompt, old);
  auto const src = t.pin(n);
  pd::allocate_response const r = t.rx.allocate(t.tx.make_request(1, prompt));
  ASSERT_TRUE(r.accepted);
  EXPECT_EQ(r.prefix_hit, n);
  EXPECT_TRUE(r.dst_slots.empty());
  t.tx.begin(r, src, t.releaser());
  EXPECT_EQ(t.rx.status(r.id)->state, pd::receiver_state::landed);
  // The forward still passes every layer; the pins stay until it has.
  for (std::int32_t l = 0; l + 1 < pd_layers; ++l) EXPECT_TRUE(t.tx.send_layer(r.id, l));
  EXPECT_TRUE(t.tx.poll().empty());
  EXPECT_EQ(t.releases, 0);
  EXPECT_TRUE(t.tx.send_layer(r.id, pd_layers - 1));
  EXPECT_EQ(t.tx.poll().size(), 1u);
  EXPECT_EQ(t.releases, 1);
  EXPECT_EQ(t.link.rows_copied(), 0u);
  EXPECT_EQ(t.rx.take(r.id).slots, old);
}

TEST(PdTransfer, ManyTransfersAtOnce) {
  pd_link t(2048, 1536);
  std::mt19937_64 rng(lightcore::test::run_seed() + 1);
  auto const p0 = t.prefill.stats().used;
  auto const d0 = t.decode.stats().used;
  constexpr int count = 24;
  std::vector<std::vector<std::int32_t>> srcs;
  std::vector<pd::allocate_response> rs;
  for (int i = 0; i < count; ++i) {
    std::int64_t const n = 1 + std::int64_t(rng() % 60);
    srcs.push_back(t.pin(n));
    // Distinct prompts: no prefix is shared, every transfer moves all its rows.
    rs.push_back(t.rx.allocate(t.tx.make_request(std::uint64_t(i), pd_link::tokens(n, 100 * i))));
    ASSERT_TRUE(rs.back().accepted) << rs.back().message;
    t.tx.begin(rs.back(), srcs.back(), t.releaser());
  }
  // Layers of different transfers interleave in the queue, as the forward of a batch sends them.
  for (std::int32_t l = 0; l < pd_layers; ++l)
    for (int i = 0; i < count; ++i) ASSERT_TRUE(t.tx.send_layer(rs[std::size_t(i)].id, l));
  std::vector<pd::landed_kv> taken;
  for (auto const& r : rs) {
    ASSERT_EQ(t.rx.wait(r.id, 5s), pd::receiver_state::landed);
  }
  EXPECT_EQ(t.rx.poll().size(), std::size_t(count));
  for (int i = 0; i < count; ++i) {
    taken.push_back(t.rx.take(rs[std::size_t(i)].id));
    for (std::int32_t l = 0; l < pd_layers; ++l)
      EXPECT_TRUE(t.layer_matches(l, srcs[std::size_t(i)], taken.back().slots))
          << "transfer " << i << " layer " << l;
  }
  EXPECT_EQ(t.tx.poll().size(), std::size_t(count));
  EXPECT_EQ(t.releases, count);
  EXPECT_EQ(t.prefill.stats().used, p0);
  for (auto const& kv : taken) {
    t.decode.slots().free(kv.slots);
    t.prefix.unlock(*kv.prefix_node);
  }
  EXPECT_EQ(t.decode.stats().used, d0);
  auto const s = t.tx.stats();
  EXPECT_EQ(s.begun, count);
  EXPECT_EQ(s.landed, count);
  EXPECT_EQ(s.released, count);
  EXPECT_EQ(t.rx.stats().landed, count);
}

}  // namespace
