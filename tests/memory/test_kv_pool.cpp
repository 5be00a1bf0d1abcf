// req_to_token_table and kv_pool on the CPU backend: rows are handed out once, positions past
// max_tokens are refused with the limit named, write_slots lands in the device table, the KV
// tensors have the configured shape, and the budget arithmetic is floor(bytes * fraction / bpt).
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/memory/req_to_token.hpp"

namespace {

namespace lc = lightcore;
using lc::memory::kv_pool;
using lc::memory::req_to_token_table;
using pool = kv_pool<lc::backend::cpu>;

template <class F>
void expect_error(F&& f, std::string const& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (lc::error const& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ReqToTokenTable, RowsAreHandedOutOnceAndReturned) {
  req_to_token_table t(3, 16);
  EXPECT_EQ(t.rows(), 3);
  EXPECT_EQ(t.max_tokens(), 16);
  auto a = t.acquire_row(), b = t.acquire_row(), c = t.acquire_row();
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0);
  EXPECT_NE(*a, *b);
  EXPECT_NE(*b, *c);
  EXPECT_NE(*a, *c);
  EXPECT_EQ(t.rows_held(), 3);
  EXPECT_FALSE(t.acquire_row().has_value());  // full: no admission
  t.release_row(*b);
  EXPECT_FALSE(t.is_held(*b));
  auto d = t.acquire_row();
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, *b);
  expect_error([&] { t.release_row(7); }, "out of range; allowed: 0..2");
  t.release_row(*a);
  expect_error([&] { t.release_row(*a); }, "not held");
}

TEST(ReqToTokenTable, SetWritesTheMirrorWithinLimits) {
  req_to_token_table t(2, 8);
  auto r = t.acquire_row();
  ASSERT_TRUE(r);
  std::vector<std::int32_t> const first{5, 6, 7};
  t.set(*r, 0, first);
  std::vector<std::int32_t> const more{40, 41, 42, 43, 44};
  t.set(*r, 3, more);  // fills the row exactly
  auto row = t.row(*r);
  ASSERT_EQ(row.size(), 8u);
  EXPECT_EQ(std::vector<std::int32_t>(row.begin(), row.end()),
            (std::vector<std::int32_t>{5, 6, 7, 40, 41, 42, 43, 44}));
  expect_error([&] { t.set(*r, 6, first); }, "at most max_tokens = 8");
  expect_error([&] { t.set(*r, -1, first); }, "do not fit");
  EXPECT_EQ(t.row(*r)[6], 43);  // the refused write changed nothing
  expect_error([&] { t.set(1 - *r, 0, first); }, "not held");
  expect_error([] { req_to_token_table(0, 4); }, "at least one row");
  expect_error([] { req_to_token_table(1, 0); }, "max_tokens >= 1");
}

TEST(KvPool, SizesFollowTheConfig) {
  lc::backend::cpu host;
  pool kv(host, {.layers = 3, .capacity = 100, .width = 576, .max_requests = 4, .max_tokens = 32});
  auto const layers = kv.layers();
  ASSERT_EQ(layers.size(), 3u);
  for (auto const& v : layers) {
    EXPECT_EQ(v.shape(), (lc::dims{100, 576}));
    EXPECT_EQ(v.type(), lc::dtype::bf16);
  }
  EXPECT_NE(layers[0].data(), layers[1].data());
  EXPECT_EQ(kv.layer(2).data(), layers[2].data());
  EXPECT_EQ(kv.req_to_token().shape(), (lc::dims{4, 32}));
  EXPECT_EQ(kv.req_to_token().type(), lc::dtype::i32);
  EXPECT_EQ(kv.device_bytes(), std::size_t(3 * 100 * 576 * 2 + 4 * 32 * 4));
  auto const s = kv.stats();
  EXPECT_EQ(s.capacity, 100);
  EXPECT_EQ(s.used, 0);
  EXPECT_EQ(s.free, 100);
  expect_error([&] { (void)kv.layer(3); }, "allowed: 0..2");

  pool f32(host, {.layers = 1, .capacity = 8, .width = 64, .type = lc::dtype::f32});
  EXPECT_EQ(f32.layer(0).type(), lc::dtype::f32);
  EXPECT_EQ(f32.layer(0).shape(), (lc::dims{8, 64}));
  expect_error([&] { pool bad(host, {.layers = 0, .capacity = 8}); }, "at least one layer");
  expect_error([&] { pool bad(host, {.layers = 1, .capacity = 0}); }, "capacity 0");
}

TEST(KvPool, WriteSlotsLandsInTheDeviceTable) {
  lc::backend::cpu host;
  auto stream = host.make_stream();
  pool kv(host, {.layers = 1, .capacity = 64, .width = 8, .max_requests = 3, .max_tokens = 16});
  auto const table = kv.req_to_token().as<std::int32_t, 2>();
  for (std::int64_t r = 0; r < 3; ++r)
    for (std::int64_t c = 0; c < 16; ++c) ASSERT_EQ(table(r, c), 0);  // initialised

  auto row0 = kv.table().acquire_row();
  auto row1 = kv.table().acquire_row();
  ASSERT_TRUE(row0 && row1);
  std::vector<std::int32_t> prompt, decode;
  ASSERT_TRUE(kv.slots().try_alloc(5, prompt));
  ASSERT_TRUE(kv.slots().try_alloc(2, decode));
  kv.write_slots(*row1, 0, prompt, stream);
  kv.write_slots(*row1, 5, decode, stream);
  kv.write_slots(*row0, 3, decode, stream);
  stream.synchronize();
  for (std::int64_t p = 0; p < 5; ++p) EXPECT_EQ(table(*row1, p), prompt[std::size_t(p)]);
  for (std::int64_t p = 0; p < 2; ++p) {
    EXPECT_EQ(table(*row1, 5 + p), decode[std::size_t(p)]);
    EXPECT_EQ(table(*row0, 3 + p), decode[std::size_t(p)]);
  }
  EXPECT_EQ(table(*row0, 2), 0);  // untouched neighbours
  EXPECT_EQ(table(*row0, 5), 0);
  EXPECT_EQ(table(*row1, 7), 0);
  EXPECT_EQ(kv.table().row(*row1)[6], decode[1]);  // the host mirror agrees
  EXPECT_EQ(kv.stats().used, 7);
  EXPECT_EQ(kv.stats().free, 57);

  std::vector<std::int32_t> const bad_id{64};
  expect_error([&] { kv.write_slots(*row0, 0, bad_id, stream); }, "allowed: 0..63");
  expect_error([&] { kv.write_slots(*row0, 15, decode, stream); }, "max_tokens = 16");
  expect_error([&] { kv.write_slots(2, 0, decode, stream); }, "not held");
  EXPECT_EQ(table(*row0, 0), 0);  // refused writes reach neither mirror nor device
}

TEST(KvPool, StageSlotsRecordsTheMirrorAndReturnsFlatIndices) {
  lc::backend::cpu host;
  pool kv(host, {.layers = 1, .capacity = 64, .width = 8, .max_requests = 3, .max_tokens = 16});
  auto row = kv.table().acquire_row();
  ASSERT_TRUE(row);
  std::vector<std::int32_t> const ids{7, 9, 11};
  std::vector<std::int32_t> index, values;
  kv.stage_slots(*row, 4, ids, index, values);
  EXPECT_EQ(index, (std::vector<std::int32_t>{*row * 16 + 4, *row * 16 + 5, *row * 16 + 6}));
  EXPECT_EQ(values, ids);
  EXPECT_EQ(kv.table().row(*row)[5], 9);  // the mirror has them ...
  auto const device = kv.req_to_token().as<std::int32_t, 2>();
  EXPECT_EQ(device(*row, 5), 0);  // ... the device table not yet
  std::vector<std::int32_t> const bad_id{64};
  expect_error([&] { kv.stage_slots(*row, 0, bad_id, index, values); }, "allowed: 0..63");
  expect_error([&] { kv.stage_slots(*row, 15, ids, index, values); }, "max_tokens = 16");
  EXPECT_EQ(index.size(), 3u);  // refused calls append nothing
  expect_error(
      [&] {
        pool(host, {.layers = 1, .capacity = 64, .max_requests = 65536, .max_tokens = 65536});
      },
      "at most 2^31 - 1");
}

TEST(KvPool, TokensForBudgetArithmetic) {
  // DeepSeek-V3: 61 layers of 576 bf16 elements = 70272 bytes per token.
  std::size_t const bpt = pool::bytes_per_token(61, 576, lc::dtype::bf16);
  EXPECT_EQ(bpt, std::size_t{61} * 576 * 2);
  std::size_t const gib = std::size_t{1} << 30;
  // 10 GiB * 0.9 / 70272 = 137518.16... -> 137518
  EXPECT_EQ(pool::tokens_for_budget(10 * gib, 0.9, bpt), 137518);
  EXPECT_EQ(pool::tokens_for_budget(1000, 1.0, 10), 100);
  EXPECT_EQ(pool::tokens_for_budget(1009, 1.0, 10), 100);  // floor, never rounds up
  EXPECT_EQ(pool::tokens_for_budget(1000, 0.5, 10), 50);
  EXPECT_EQ(pool::tokens_for_budget(9, 1.0, 10), 0);
  EXPECT_EQ(pool::tokens_for_budget(std::size_t{1} << 62, 1.0, 1), std::int64_t{INT32_MAX});
  expect_error([] { (void)pool::tokens_for_budget(1000, 0.0, 10); }, "allowed: (0, 1]");
  expect_error([] { (void)pool::tokens_for_budget(1000, 1.5, 10); }, "allowed: (0, 1]");
  expect_error([] { (void)pool::tokens_for_budget(1000, 0.5, 0); }, "bytes_per_token");
}

}  // namespace
