// mla_kv_prepare on the CPU: it is rmsnorm, apply_rope and mla_write_kv in turn, leaves kv_a as
// it was, and refuses bad arguments with the ops' messages; W_UK absorbed into the last rows'
// q_nope against a double-precision product.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/rope.hpp"
#include "lightcore/backend/cpu.hpp"
#include "mla_kv_prepare_test_util.hpp"

namespace lightcore {
namespace {

using test::same_bits;

// Views over the case's own host buffers (which the op then writes), slots from its list.
kernels::mla_kv_prepare_args host_args(test::kv_prepare_case& c) {
  std::int64_t const t = c.tokens;
  kernels::mla_kv_prepare_args a;
  a.kv_a = tensor_view(c.kv_a.data(), dtype::bf16, {t, 576}, {c.kv_a_stride, 1}, device::cpu());
  a.norm_weight = tensor_view(c.gamma.data(), dtype::bf16, {512});
  a.eps = 1e-6f;
  a.q_rope = tensor_view(c.q.data(), dtype::bf16, {t, c.heads, c.q_dim}).slice(2, 128, 192);
  a.positions = tensor_view(c.token_positions.data(), dtype::i32, {t});
  a.cos_sin = tensor_view(c.cos_sin.data(), dtype::f32, {c.positions, 64});
  a.slots = kernels::kv_slots::list(tensor_view(c.slot_list.data(), dtype::i32, {t}));
  a.kv_cache = tensor_view(c.pool.data(), dtype::bf16, {c.slots, 576});
  return a;
}

TEST(MlaKvPrepareCpu, EqualsTheThreeOpsAndLeavesKvAAlone) {
  backend::cpu cpu;
  auto stream = cpu.make_stream();
  test::kv_prepare_case c(5, 3, 99);
  auto const got = test::run_kv_prepare(cpu, c, false);
  EXPECT_TRUE(same_bits(got.kv_a, c.kv_a));
  // The same by hand: norm into a latent buffer, rope a copy of the key and q, write the rows.
  std::int64_t const t = c.tokens;
  std::vector<bf16> latent(std::size_t(t * 512)), key(std::size_t(t * 64)), q = c.q;
  for (std::int64_t i = 0; i < t; ++i)
    for (std::int64_t j = 0; j < 64; ++j)
      key[std::size_t(i * 64 + j)] = c.kv_a[std::size_t(i * c.kv_a_stride + 512 + j)];
  kernels::rmsnorm(
      cpu, tensor_view(c.kv_a.data(), dtype::bf16, {t, 512}, {c.kv_a_stride, 1}, device::cpu()),
      tensor_view(c.gamma.data(), dtype::bf16, {512}),
      tensor_view(latent.data(), dtype::bf16, {t, 512}), 1e-6f, stream);
  auto cos_sin = c.cos_sin;
  auto positions = c.token_positions;
  kernels::apply_rope(
      cpu, tensor_view(q.data(), dtype::bf16, {t, c.heads, c.q_dim}).slice(2, 128, 192),
      tensor_view(key.data(), dtype::bf16, {t, 64}), tensor_view(positions.data(), dtype::i32, {t}),
      tensor_view(cos_sin.data(), dtype::f32, {c.positions, 64}), stream);
  EXPECT_TRUE(same_bits(got.q, q));
  std::int64_t bad = 0, written = 0;
  for (std::int64_t i = 0; i < t; ++i) {
    std::int32_t const s = c.slot_list[std::size_t(i)];
    if (s < 0) continue;  // the padding token
    ++written;
    for (std::int64_t j = 0; j < 576; ++j) {
      bf16 const want =
          j < 512 ? latent[std::size_t(i * 512 + j)] : key[std::size_t(i * 64 + j - 512)];
      bad += got.pool[std::size_t(s * 576 + j)].bits != want.bits;
    }
  }
  EXPECT_EQ(written, t - 1);
  EXPECT_EQ(bad, 0);
}

// W_UK absorbed into the last rows' q_nope (read before the rope, which touches only q_rope):
// each element close to a double product (test::absorb_misses), and the rest of the step exactly
// as without the absorb.
TEST(MlaKvPrepareCpu, AbsorbsWukIntoTheLastRows) {
  backend::cpu cpu;
  test::kv_prepare_case const c(5, 16, 21);
  auto const w = test::random_w_uk(16, 22);
  std::int64_t const rows = 3;
  auto const got = test::run_kv_prepare(cpu, c, false, &w, rows);
  auto const plain = test::run_kv_prepare(cpu, c, false);
  EXPECT_TRUE(same_bits(got.q, plain.q) && same_bits(got.pool, plain.pool));
  EXPECT_EQ(test::absorb_misses(c, w, rows, got.q_absorbed), 0);
}

TEST(MlaKvPrepareCpu, AbsorbRefusesBadShapes) {
  backend::cpu cpu;
  auto stream = cpu.make_stream();
  test::kv_prepare_case c(2, 16, 9);
  auto w = test::random_w_uk(16, 10);
  std::vector<bf16> out(2 * 16 * 512);
  auto a = host_args(c);
  tensor_view const qv(c.q.data(), dtype::bf16, {2, 16, c.q_dim});
  a.q_nope = qv.slice(2, 0, 128);
  a.w_uk = tensor_view(w.data(), dtype::bf16, {16, 128, 512});
  a.q_absorbed = tensor_view(out.data(), dtype::bf16, {2, 16, 512});
  {
    auto b = a;
    b.w_uk = tensor_view(w.data(), dtype::bf16, {8, 128, 512});
    test::expect_error([&] { kernels::mla_kv_prepare(cpu, b, stream); },
                       {"needs w_uk as [16, 128, 512]"});
  }
  {
    auto b = a;
    b.q_absorbed = tensor_view(out.data(), dtype::bf16, {1, 16, 512});
    test::expect_error([&] { kernels::mla_kv_prepare(cpu, b, stream); },
                       {"needs q_absorbed as [2, 16, 512]"});
  }
  {
    auto b = a;
    b.q_nope = qv.slice(2, 0, 64);
    test::expect_error([&] { kernels::mla_kv_prepare(cpu, b, stream); },
                       {"needs q_nope as [rows, heads, 128]"});
  }
}

TEST(MlaKvPrepareCpu, BadArgumentsAreRefused) {
  backend::cpu cpu;
  auto stream = cpu.make_stream();
  std::vector<bf16> buf(4096);
  kernels::mla_kv_prepare_args a;
  a.kv_a = tensor_view(buf.data(), dtype::bf16, {2, 512});
  test::expect_error([&] { kernels::mla_kv_prepare(cpu, a, stream); },
                     {"mla_kv_prepare needs kv_a [T, 576]"});
}

// A position outside the cos/sin cache, or a slot outside the pool, is refused before anything
// (q included) is written.
TEST(MlaKvPrepareCpu, OutOfRangePositionsAndSlotsWriteNothing) {
  backend::cpu cpu;
  auto stream = cpu.make_stream();
  test::kv_prepare_case c(4, 2, 7);
  for (int bad = 0; bad < 2; ++bad) {
    auto k = c;
    if (bad == 0)
      k.token_positions[2] = std::int32_t(c.positions);  // one past the cache
    else
      k.slot_list[3] = std::int32_t(c.slots);  // one past the pool
    auto const a = host_args(k);
    test::expect_error([&] { kernels::mla_kv_prepare(cpu, a, stream); },
                       {bad == 0 ? "outside the cos/sin cache" : "outside the pool"});
    EXPECT_TRUE(same_bits(k.q, c.q)) << "q roped before the refusal";
    EXPECT_TRUE(same_bits(k.pool, c.pool)) << "a row written before the refusal";
  }
}

}  // namespace
}  // namespace lightcore
