// A prefill pool and a decode pool of different sizes and slot layouts in one process, joined by
// a transport (the host transport, or TCP over loopback); the control messages between the two
// sides go through their JSON form.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/memory/radix_cache.hpp"
#include "lightcore/pd/host_transport.hpp"
#include "lightcore/pd/kv_receiver.hpp"
#include "lightcore/pd/kv_sender.hpp"
#include "lightcore/pd/messages.hpp"
#include "lightcore/pd/tcp_transport.hpp"

namespace lightcore::test {

namespace pd = lightcore::pd;
using cpu_pool = memory::kv_pool<backend::cpu>;

inline constexpr std::int32_t pd_layers = 4;
inline constexpr std::int64_t pd_width = 40;  // bf16 elements: 80-byte rows

template <class Transport>
struct pd_pair {
  explicit pd_pair(std::int64_t prefill_slots = 512, std::int64_t decode_slots = 384)
      : prefill(cpu, {.layers = pd_layers,
                      .capacity = prefill_slots,
                      .width = pd_width,
                      .max_requests = 8,
                      .max_tokens = 1024}),
        decode(cpu, {.layers = pd_layers,
                     .capacity = decode_slots,
                     .width = pd_width,
                     .max_requests = 8,
                     .max_tokens = 1024}),
        prefix({true, decode_slots}),
        link_ptr(make_link(prefill, decode, server)),
        link(*link_ptr),
        rx(decode, &prefix,
           [this](pd::message const& m) {
             if (to_prefill) tx.handle(through_json(m));
           }),
        tx(link, [this](pd::message const& m) {
          if (to_decode) rx.handle(through_json(m));
        }) {
    std::mt19937_64 rng(run_seed());
    for (std::int32_t l = 0; l < pd_layers; ++l) {
      randomize(prefill.layer(l), rng);
      randomize(decode.layer(l), rng);  // poison: nothing may look landed by accident
    }
    // Shuffle both free lists so that slot ids are neither ascending nor aligned across pools.
    shuffle(prefill, rng);
    shuffle(decode, rng);
  }
  ~pd_pair() {
    if constexpr (std::is_same_v<Transport, pd::host_transport>) {
      link.resume();  // a paused worker would keep the sender waiting for its copies
      link.drain();
    }
  }

  static std::unique_ptr<Transport> make_link(cpu_pool& p, cpu_pool& d,
                                              std::unique_ptr<pd::tcp_kv_server>& server) {
    if constexpr (std::is_same_v<Transport, pd::tcp_transport>) {
      server = std::make_unique<pd::tcp_kv_server>(d.layers());
      return std::make_unique<pd::tcp_transport>(p.layers(), "127.0.0.1", server->port());
    } else {
      return std::make_unique<Transport>(p, d);
    }
  }

  static pd::message through_json(pd::message const& m) {
    return pd::parse_message(pd::json::parse(pd::to_json(m).dump()));
  }
  static void randomize(tensor_view t, std::mt19937_64& rng) {
    auto* p = static_cast<std::uint16_t*>(t.data());
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = std::uint16_t(rng());
  }
  static void shuffle(cpu_pool& pool, std::mt19937_64& rng) {
    std::vector<std::int32_t> ids;
    ASSERT_TRUE(pool.slots().try_alloc(pool.slots().available(), ids));
    std::shuffle(ids.begin(), ids.end(), rng);
    pool.slots().free(ids);
  }

  // Row `slot` of `layer` in a pool.
  static std::span<std::uint8_t const> row(cpu_pool const& pool, std::int32_t layer,
                                           std::int32_t slot) {
    auto const* base = static_cast<std::uint8_t const*>(pool.layer(layer).data());
    std::size_t const bytes = std::size_t(pd_width) * 2;
    return {base + std::size_t(slot) * bytes, bytes};
  }
  // Every row of `layer` at dst equals its source row.
  bool layer_matches(std::int32_t layer, std::span<std::int32_t const> src,
                     std::span<std::int32_t const> dst) const {
    if (src.size() != dst.size()) return false;
    for (std::size_t i = 0; i < src.size(); ++i) {
      auto const a = row(prefill, layer, src[i]);
      auto const b = row(decode, layer, dst[i]);
      if (std::memcmp(a.data(), b.data(), a.size()) != 0) return false;
    }
    return true;
  }

  // Source slots for a prompt of n tokens, with a release callback that frees them and counts.
  std::vector<std::int32_t> pin(std::int64_t n) {
    std::vector<std::int32_t> ids;
    EXPECT_TRUE(prefill.slots().try_alloc(n, ids));
    return ids;
  }
  typename pd::kv_sender<Transport>::release_fn releaser() {
    return [this](std::span<std::int32_t const> s) {
      ++releases;
      prefill.slots().free(s);
    };
  }

  static std::vector<std::int32_t> tokens(std::int64_t n, std::int32_t first = 1000) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) t[std::size_t(i)] = first + std::int32_t(i);
    return t;
  }

  backend::cpu cpu;
  cpu_pool prefill;
  cpu_pool decode;
  memory::radix_cache prefix;
  std::unique_ptr<pd::tcp_kv_server> server;  // the decode side's end of a TCP link
  std::unique_ptr<Transport> link_ptr;
  Transport& link;
  bool to_decode = true;   // false: messages towards the decode side are lost
  bool to_prefill = true;  // false: messages towards the prefill side are lost
  // The receiver outlives the sender: the sender's destructor waits for completions that still
  // post messages to it.
  pd::kv_receiver<backend::cpu> rx;
  pd::kv_sender<Transport> tx;
  int releases = 0;
};

using pd_link = pd_pair<pd::host_transport>;
using pd_tcp_link = pd_pair<pd::tcp_transport>;

}  // namespace lightcore::test
