// mla on the CPU backend: the fp32 decode reference against the double-precision definition
// (scattered slots, mixed lengths, H = 16 and 128, a row of length 0, page size 4), the KV writes
// (slot lists, req_to_token, padding, GQA) bit for bit, the split plan, and the errors for bad
// arguments; W_UV folded into the decode against a double-precision product.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/cpu.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using kernels::kv_layout;
using kernels::kv_slots;
using kernels::mla_decode_args;
using test::mla_batch;
using test::mla_latent;
using test::mla_rope;
using test::mla_width;

struct decoded {
  std::vector<bf16> out;   // [batch, heads, 512]
  std::vector<float> lse;  // [batch, heads]
};

// The views of a batch: q_nope and q_rope are the two parts of one [batch, heads, 576] q.
mla_decode_args decode_args(mla_batch& m, decoded& r, float scale) {
  r.out.assign(std::size_t(m.batch * m.heads * mla_latent), test::nan_bf16());
  r.lse.assign(std::size_t(m.batch * m.heads), std::numeric_limits<float>::quiet_NaN());
  tensor_view const q(m.q.data(), dtype::bf16, {m.batch, m.heads, mla_width});
  mla_decode_args a;
  a.q_nope = q.slice(2, 0, mla_latent);
  a.q_rope = q.slice(2, mla_latent, mla_width);
  a.kv_cache = tensor_view(m.pool.data(), dtype::bf16, {m.slots, mla_width}, {m.pool_stride, 1},
                           device::cpu());
  a.req_to_token = tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns});
  a.req_rows = tensor_view(m.req_rows.data(), dtype::i32, {m.batch});
  a.seq_lens = tensor_view(m.seq_lens.data(), dtype::i32, {m.batch});
  a.out = tensor_view(r.out.data(), dtype::bf16, {m.batch, m.heads, mla_latent});
  a.lse = tensor_view(r.lse.data(), dtype::f32, {m.batch, m.heads});
  a.softmax_scale = scale;
  return a;
}

template <class Layout = kv_layout<>>
decoded run_cpu(mla_batch& m, float scale) {
  backend::cpu cpu;
  decoded r;
  auto const a = decode_args(m, r, scale);
  auto const plan = kernels::plan_mla_decode(cpu, m.batch, m.heads);
  kernels::mla_decode<Layout>(cpu, a, plan, tensor_view(), cpu.make_stream());
  return r;
}

// Tolerance: the reference accumulates in fp32 (errors ~1e-5 of the terms' magnitudes for these
// sizes) and rounds each output to bf16 once (at most half an ulp, 2^-8 of the value); lse stays
// in fp32.
void expect_matches_definition(mla_batch const& m, decoded const& got, float scale) {
  auto const want = test::mla_decode_double(m, scale);
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < m.batch * m.heads * mla_latent; ++i) {
    double const w = want.out[std::size_t(i)], g = float(got.out[std::size_t(i)]);
    if (!(std::abs(g - w) <= std::ldexp(std::abs(w), -8) + 1e-4) && ++bad <= 8)
      ADD_FAILURE() << "out [" << i / (m.heads * mla_latent) << ", " << i / mla_latent % m.heads
                    << ", " << i % mla_latent << "] got " << g << ", want " << w;
  }
  EXPECT_EQ(bad, 0);
  for (std::int64_t i = 0; i < m.batch * m.heads; ++i) {
    double const w = want.lse[std::size_t(i)], g = got.lse[std::size_t(i)];
    if (std::isinf(w)) {
      EXPECT_TRUE(std::isinf(g) && g < 0) << "lse of an empty row " << i << " is " << g;
    } else {
      EXPECT_NEAR(g, w, 1e-4 * (1 + std::abs(w)))
          << "lse [" << i / m.heads << ", " << i % m.heads << "]";
    }
  }
}

TEST(MlaCpu, DecodeMatchesDoubleDefinition) {
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  for (std::int64_t heads : {16, 128}) {
    SCOPED_TRACE(::testing::Message() << "H " << heads);
    auto m = test::make_mla_batch({1, 2, 65, 17, 130}, heads, rng);
    expect_matches_definition(m, run_cpu(m, scale), scale);
  }
}

TEST(MlaCpu, DecodeWithPaddedPoolRowsAndAnEmptyRow) {
  auto rng = test::test_rng();
  float const scale = 0.07f;
  auto m = test::make_mla_batch({33, 0, 7}, 32, rng, 5, mla_width + 64);
  auto const r = run_cpu(m, scale);
  expect_matches_definition(m, r, scale);
  for (std::int64_t i = 0; i < m.heads * mla_latent; ++i)
    ASSERT_EQ(float(r.out[std::size_t(m.heads * mla_latent + i)]), 0.0f)
        << "empty row output " << i;
}

// Pages of 4 slots: the table holds page ids, position j lives in slot page * 4 + j % 4.
TEST(MlaCpu, DecodeThroughPagesOfFour) {
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  auto m = test::make_mla_batch({1, 4, 5, 23}, 16, rng, 9, mla_width, 4);
  EXPECT_NE(m.row_slots[3][4] / 4, m.row_slots[3][3] / 4) << "positions 3 and 4 share a page";
  expect_matches_definition(m, run_cpu<kv_layout<4>>(m, scale), scale);
}

TEST(MlaCpu, KvLayoutSlotArithmetic) {
  using four = kv_layout<4>;
  static_assert(kv_layout<>::page_size == 1 && four::page_size == 4);
  EXPECT_EQ(kv_layout<>::slot(17, 5), 17);
  EXPECT_EQ(four::table_column(9), 2);
  EXPECT_EQ(four::slot(3, 9), 13);  // page 3, offset 1
  EXPECT_EQ(four::table_columns(9), 3);
  std::int32_t table[2][3] = {{7, 2, 5}, {1, 0, 4}};
  kernels::req_to_token_view const t{&table[0][0], 2, 3, 3};
  EXPECT_EQ(t.slot<four>(1, 10), 4 * 4 + 2);
  EXPECT_EQ(t.slot<kv_layout<>>(0, 2), 5);
}

TEST(MlaCpu, DecodeRejectsBadArguments) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto m = test::make_mla_batch({3, 5}, 16, rng);
  decoded r;
  auto a = decode_args(m, r, 0.1f);
  auto const plan = kernels::plan_mla_decode(cpu, m.batch, m.heads);
  auto const run = [&](mla_decode_args const& args, kernels::mla_decode_plan const& pl) {
    kernels::mla_decode(cpu, args, pl, tensor_view(), cpu.make_stream());
  };
  {
    auto b = a;
    b.q_nope = b.q_nope.slice(1, 0, 8);
    b.q_rope = b.q_rope.slice(1, 0, 8);
    b.out = b.out.slice(1, 0, 8);
    b.lse = b.lse.slice(1, 0, 8);
    test::expect_error([&] { run(b, plan); }, {"heads a multiple of 16", "got heads 8"});
  }
  {
    auto b = a;
    b.lse = tensor_view(r.out.data(), dtype::bf16, {m.batch, m.heads});
    test::expect_error([&] { run(b, plan); }, {"lse as a contiguous [2, 16] f32"});
  }
  test::expect_error(
      [&] {
        run(a, kernels::mla_decode_plan{4, 0});
      },
      {"plan of 4 splits and 0 workspace bytes"});
  {
    auto b = a;
    b.softmax_scale = std::numeric_limits<float>::quiet_NaN();
    test::expect_error([&] { run(b, plan); }, {"finite positive softmax_scale"});
  }
  // W_UV folded in (FoldedWuvProjectsTheOutput): out or w_uv, shapes that fit.
  std::vector<bf16> w(16 * 128 * mla_latent), out_v(2 * 16 * 128);
  {
    auto b = a;
    b.out = tensor_view();
    test::expect_error([&] { run(b, plan); }, {"needs out, or w_uv and out_v"});
  }
  {
    auto b = a;
    b.out_v = tensor_view(out_v.data(), dtype::bf16, {2, 16, 128});
    test::expect_error([&] { run(b, plan); }, {"out_v without w_uv"});
  }
  {
    auto b = a;
    b.w_uv = tensor_view(w.data(), dtype::bf16, {16, 128, 256});
    b.out_v = tensor_view(out_v.data(), dtype::bf16, {2, 16, 128});
    test::expect_error([&] { run(b, plan); }, {"w_uv as [16, v_dim, 512]"});
  }
  {
    auto b = a;
    b.w_uv = tensor_view(w.data(), dtype::bf16, {16, 128, mla_latent});
    b.out_v = tensor_view(out_v.data(), dtype::bf16, {2, 16, 64});
    test::expect_error([&] { run(b, plan); }, {"out_v as [2, 16, 128]"});
  }
  // A table entry that the lengths reach and that names no slot of the pool: nothing is written.
  m.table[std::size_t(m.req_rows[1] * m.columns + 4)] = std::int32_t(m.slots);
  test::expect_error([&] { run(a, plan); }, {"batch row 1 position 4", "outside the pool"});
  EXPECT_TRUE(std::isnan(float(r.out[0]))) << "the reference wrote before failing";
}

// W_UV folded in: out_v is the projection of out as written (bf16), against a double-precision
// product: fp32 sums of 512 terms and one bf16 rounding, 2^-8 of the element plus 1e-5 of the sum
// of |terms| (fp32's worst case over 512 terms is 3e-5, its typical error 2e-6). The same call
// without out gives the same bits.
TEST(MlaCpu, FoldedWuvProjectsTheOutput) {
  constexpr std::int64_t v_dim = 128;
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto m = test::make_mla_batch({9, 0, 70}, 16, rng);
  decoded r;
  auto a = decode_args(m, r, test::deepseek_softmax_scale());
  auto w = test::normal_bf16(std::size_t(m.heads * v_dim * mla_latent), 0.05f, rng);
  std::vector<bf16> out_v(std::size_t(m.batch * m.heads * v_dim), test::nan_bf16());
  a.w_uv = tensor_view(w.data(), dtype::bf16, {m.heads, v_dim, mla_latent});
  a.out_v = tensor_view(out_v.data(), dtype::bf16, {m.batch, m.heads, v_dim});
  auto const plan = kernels::plan_mla_decode(cpu, m.batch, m.heads);
  EXPECT_TRUE(kernels::mla_decode_folds_w_uv(cpu, plan, 1000));
  kernels::mla_decode(cpu, a, plan, tensor_view(), cpu.make_stream());
  std::int64_t bad = 0;
  for (std::int64_t b = 0; b < m.batch; ++b) {
    for (std::int64_t h = 0; h < m.heads; ++h) {
      bf16 const* o = &r.out[std::size_t((b * m.heads + h) * mla_latent)];
      for (std::int64_t c = 0; c < v_dim; ++c) {
        double want = 0, scale = 0;
        for (std::int64_t k = 0; k < mla_latent; ++k) {
          double const t =
              double(float(o[k])) * double(float(w[std::size_t((h * v_dim + c) * mla_latent + k)]));
          want += t;
          scale += std::abs(t);
        }
        double const got = float(out_v[std::size_t((b * m.heads + h) * v_dim + c)]);
        if (!(std::abs(got - want) <= std::abs(want) / 256 + 1e-5 * scale) && ++bad <= 8)
          ADD_FAILURE() << "row " << b << " head " << h << " column " << c << ": " << got
                        << ", want " << want;
      }
    }
  }
  EXPECT_EQ(bad, 0);

  std::vector<bf16> again(out_v.size(), test::nan_bf16());
  auto b = a;
  b.out = tensor_view();
  b.lse = tensor_view();
  b.out_v = tensor_view(again.data(), dtype::bf16, {m.batch, m.heads, v_dim});
  kernels::mla_decode(cpu, b, plan, tensor_view(), cpu.make_stream());
  EXPECT_EQ(std::memcmp(again.data(), out_v.data(), again.size() * sizeof(bf16)), 0);
}

TEST(MlaCpu, PlanDependsOnBatchAndHeadsOnly) {
  using kernels::plan_mla_decode;
  // 128 tiles on 132 SMs: one wave, no split.
  EXPECT_EQ(plan_mla_decode(128, 16, 132).num_splits, 1);
  EXPECT_EQ(plan_mla_decode(128, 16, 132).workspace_bytes, 0);
  // One row: split it over most of the SMs.
  auto const one = plan_mla_decode(1, 128, 132);
  EXPECT_GE(one.num_splits, 32);
  EXPECT_LE(one.num_splits, kernels::mla_max_splits);
  EXPECT_EQ(one.workspace_bytes, kernels::detail::mla_workspace_bytes(1, 128, one.num_splits));
  EXPECT_GE(one.workspace_bytes, 1 * one.num_splits * 128 * (512 + 1) * 4);
  EXPECT_EQ(plan_mla_decode(0, 16, 132).num_splits, 1);
  EXPECT_EQ(kernels::plan_mla_decode(*std::make_unique<backend::cpu>(), 7, 16).num_splits, 1);
  test::expect_error([] { plan_mla_decode(4, 24, 132); }, {"heads a positive multiple of 16"});
}

// ---- KV writes ----

struct pool_case {
  std::int64_t tokens = 9, slots = 40;
  std::vector<bf16> latent, rope, pool;
  std::vector<std::int32_t> slot_ids;  // distinct, scattered, one -1 (padding)
};

pool_case make_pool_case(std::mt19937_64& rng) {
  pool_case c;
  c.latent = test::normal_bf16(std::size_t(c.tokens * mla_latent), 1.0f, rng);
  c.rope = test::normal_bf16(std::size_t(c.tokens * mla_rope), 1.0f, rng);
  c.pool.assign(std::size_t(c.slots * mla_width), test::nan_bf16());
  std::vector<std::int32_t> all(std::size_t(c.slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  c.slot_ids.assign(all.begin(), all.begin() + c.tokens);
  c.slot_ids[3] = -1;
  return c;
}

// Every token's row equals [latent | rope] bit for bit at its slot; every other row keeps its NaN.
void expect_rows_written(pool_case const& c, std::vector<std::int64_t> const& slot_of_token) {
  std::vector<std::int64_t> owner(std::size_t(c.slots), -1);
  for (std::int64_t t = 0; t < c.tokens; ++t)
    if (slot_of_token[std::size_t(t)] >= 0) owner[std::size_t(slot_of_token[std::size_t(t)])] = t;
  for (std::int64_t s = 0; s < c.slots; ++s) {
    bf16 const* row = &c.pool[std::size_t(s * mla_width)];
    std::int64_t const t = owner[std::size_t(s)];
    for (std::int64_t d = 0; d < mla_width; ++d) {
      std::uint16_t const want =
          t < 0 ? test::nan_bf16().bits
                : (d < mla_latent ? c.latent[std::size_t(t * mla_latent + d)]
                                  : c.rope[std::size_t(t * mla_rope + d - mla_latent)])
                      .bits;
      ASSERT_EQ(row[d].bits, want) << "slot " << s << " (token " << t << ") column " << d;
    }
  }
}

TEST(MlaCpu, WriteKvToSlotList) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto c = make_pool_case(rng);
  kernels::mla_write_kv(cpu, tensor_view(c.latent.data(), dtype::bf16, {c.tokens, mla_latent}),
                        tensor_view(c.rope.data(), dtype::bf16, {c.tokens, mla_rope}),
                        kv_slots::list(tensor_view(c.slot_ids.data(), dtype::i32, {c.tokens})),
                        tensor_view(c.pool.data(), dtype::bf16, {c.slots, mla_width}),
                        cpu.make_stream());
  expect_rows_written(c, {c.slot_ids.begin(), c.slot_ids.end()});
}

template <int Page>
void write_through_table(std::mt19937_64& rng) {
  backend::cpu cpu;
  auto c = make_pool_case(rng);
  // Token t at position t / 2 of request row 2 (t even) or t / 2 + 5 of row 1 (t odd), so
  // positions 0..8 of a 3-row table of distinct pages.
  std::int64_t const rows = 3, columns = (9 + Page - 1) / Page + (Page == 1 ? 3 : 0);
  std::vector<std::int32_t> table(std::size_t(rows * columns)), req(std::size_t(c.tokens)),
      pos(std::size_t(c.tokens));
  std::vector<std::int32_t> pages(std::size_t(c.slots / Page));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  std::copy_n(pages.begin(), table.size(), table.begin());
  std::vector<std::int64_t> want(std::size_t(c.tokens));
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    req[std::size_t(t)] = std::int32_t(2 - t % 2);
    pos[std::size_t(t)] = std::int32_t(t / 2 + (t % 2) * 5);
    want[std::size_t(t)] =
        std::int64_t(
            table[std::size_t(req[std::size_t(t)] * columns + pos[std::size_t(t)] / Page)]) *
            Page +
        pos[std::size_t(t)] % Page;
  }
  kernels::mla_write_kv<kv_layout<Page>>(
      cpu, tensor_view(c.latent.data(), dtype::bf16, {c.tokens, mla_latent}),
      tensor_view(c.rope.data(), dtype::bf16, {c.tokens, mla_rope}),
      kv_slots::table(tensor_view(table.data(), dtype::i32, {rows, columns}),
                      tensor_view(req.data(), dtype::i32, {c.tokens}),
                      tensor_view(pos.data(), dtype::i32, {c.tokens})),
      tensor_view(c.pool.data(), dtype::bf16, {c.slots, mla_width}), cpu.make_stream());
  expect_rows_written(c, want);
}

TEST(MlaCpu, WriteKvThroughReqToToken) {
  auto rng = test::test_rng();
  write_through_table<1>(rng);
  write_through_table<4>(rng);
}

TEST(MlaCpu, WriteKvRejectsSlotsOutsideThePool) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto c = make_pool_case(rng);
  c.slot_ids[5] = std::int32_t(c.slots);
  auto const before = c.pool;
  test::expect_error(
      [&] {
        kernels::mla_write_kv(
            cpu, tensor_view(c.latent.data(), dtype::bf16, {c.tokens, mla_latent}),
            tensor_view(c.rope.data(), dtype::bf16, {c.tokens, mla_rope}),
            kv_slots::list(tensor_view(c.slot_ids.data(), dtype::i32, {c.tokens})),
            tensor_view(c.pool.data(), dtype::bf16, {c.slots, mla_width}), cpu.make_stream());
      },
      {"token 5 goes to slot 40", "outside the pool of 40 slots"});
  EXPECT_EQ(std::memcmp(before.data(), c.pool.data(), before.size() * sizeof(bf16)), 0)
      << "rows were written before the error";
  test::expect_error(
      [&] {
        kernels::mla_write_kv(
            cpu, tensor_view(c.latent.data(), dtype::bf16, {c.tokens, 256}),
            tensor_view(c.rope.data(), dtype::bf16, {c.tokens, mla_rope}),
            kv_slots::list(tensor_view(c.slot_ids.data(), dtype::i32, {c.tokens})),
            tensor_view(c.pool.data(), dtype::bf16, {c.slots, mla_width}), cpu.make_stream());
      },
      {"latent as [9, 512] bf16"});
}

TEST(MlaCpu, GqaWriteKv) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  std::int64_t const tokens = 6, heads = 2, dim = 64, slots = 20, width = heads * dim;
  auto k = test::normal_bf16(std::size_t(tokens * width), 1.0f, rng);
  auto v = test::normal_bf16(std::size_t(tokens * width), 1.0f, rng);
  std::vector<bf16> kc(std::size_t(slots * width), test::nan_bf16()), vc = kc;
  std::vector<std::int32_t> ids = {7, 19, -1, 0, 3, 12};
  kernels::gqa_write_kv(cpu, tensor_view(k.data(), dtype::bf16, {tokens, heads, dim}),
                        tensor_view(v.data(), dtype::bf16, {tokens, heads, dim}),
                        kv_slots::list(tensor_view(ids.data(), dtype::i32, {tokens})),
                        tensor_view(kc.data(), dtype::bf16, {slots, heads, dim}),
                        tensor_view(vc.data(), dtype::bf16, {slots, heads, dim}),
                        cpu.make_stream());
  for (std::int64_t s = 0; s < slots; ++s) {
    auto const it = std::find(ids.begin(), ids.end(), std::int32_t(s));
    std::int64_t const t = it == ids.end() ? -1 : it - ids.begin();
    for (std::int64_t d = 0; d < width; ++d) {
      std::size_t const at = std::size_t(s * width + d);
      std::uint16_t const wk = t < 0 ? test::nan_bf16().bits : k[std::size_t(t * width + d)].bits;
      std::uint16_t const wv = t < 0 ? test::nan_bf16().bits : v[std::size_t(t * width + d)].bits;
      ASSERT_EQ(kc[at].bits, wk) << "k slot " << s << " column " << d;
      ASSERT_EQ(vc[at].bits, wv) << "v slot " << s << " column " << d;
    }
  }
}

}  // namespace
}  // namespace lightcore
