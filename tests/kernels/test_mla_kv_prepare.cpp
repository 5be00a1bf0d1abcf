// mla_kv_prepare on the CPU: it is rmsnorm, apply_rope and mla_write_kv in turn, leaves kv_a as
// it was, and refuses bad arguments with the ops' messages.
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

bool same_bits(std::vector<bf16> const& a, std::vector<bf16> const& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].bits != b[i].bits) return false;
  return true;
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
  std::int64_t const t = c.tokens;
  for (int bad = 0; bad < 2; ++bad) {
    auto q = c.q;
    auto pool = c.pool;
    auto positions = c.token_positions;
    auto slots = c.slot_list;
    auto kv_a = c.kv_a;
    auto gamma = c.gamma;
    auto cos_sin = c.cos_sin;
    if (bad == 0)
      positions[2] = std::int32_t(c.positions);  // one past the cache
    else
      slots[3] = std::int32_t(c.slots);  // one past the pool
    kernels::mla_kv_prepare_args a;
    a.kv_a = tensor_view(kv_a.data(), dtype::bf16, {t, 576}, {c.kv_a_stride, 1}, device::cpu());
    a.norm_weight = tensor_view(gamma.data(), dtype::bf16, {512});
    a.eps = 1e-6f;
    a.q_rope = tensor_view(q.data(), dtype::bf16, {t, c.heads, c.q_dim}).slice(2, 128, 192);
    a.positions = tensor_view(positions.data(), dtype::i32, {t});
    a.cos_sin = tensor_view(cos_sin.data(), dtype::f32, {c.positions, 64});
    a.slots = kernels::kv_slots::list(tensor_view(slots.data(), dtype::i32, {t}));
    a.kv_cache = tensor_view(pool.data(), dtype::bf16, {c.slots, 576});
    test::expect_error([&] { kernels::mla_kv_prepare(cpu, a, stream); },
                       {bad == 0 ? "outside the cos/sin cache" : "outside the pool"});
    EXPECT_TRUE(same_bits(q, c.q)) << "q roped before the refusal";
    EXPECT_TRUE(same_bits(pool, c.pool)) << "a row written before the refusal";
  }
}

}  // namespace
}  // namespace lightcore
