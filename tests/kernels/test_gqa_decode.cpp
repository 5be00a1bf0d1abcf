// gqa_decode on the CPU backend: the fp32 reference against the double-precision definition for
// head dims 64 and 128 and groups 1, 2, 4, 8 (scattered slots over NaN-filled pools, mixed
// lengths, an empty row, padded slot rows, pages of four, scores large enough to need the max
// subtraction), decoding what gqa_write_kv wrote, the split plan, and the errors for bad
// arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/seed.hpp"
#include "convert_test_util.hpp"
#include "gqa_decode_test_util.hpp"
#include "kernels/attention/gqa_decode.hpp"
#include "lightcore/backend/cpu.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using test::gqa_batch;
using test::make_batch;

using kernels::gqa_decode_args;
using kernels::kv_layout;

struct decoded {
  std::vector<bf16> out;   // [batch, q_heads, dim]
  std::vector<float> lse;  // [batch, q_heads]
};

gqa_decode_args decode_args(gqa_batch& m, decoded& r, float scale) {
  r.out.assign(std::size_t(m.batch * m.q_heads * m.dim), test::nan_bf16());
  r.lse.assign(std::size_t(m.batch * m.q_heads), std::numeric_limits<float>::quiet_NaN());
  dims const pool_shape{m.slots, m.kv_heads, m.dim}, pool_strides{m.slot_stride, m.dim, 1};
  gqa_decode_args a;
  a.q = tensor_view(m.q.data(), dtype::bf16, {m.batch, m.q_heads, m.dim});
  a.k_cache = tensor_view(m.k.data(), dtype::bf16, pool_shape, pool_strides, device::cpu());
  a.v_cache = tensor_view(m.v.data(), dtype::bf16, pool_shape, pool_strides, device::cpu());
  a.req_to_token = tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns});
  a.req_rows = tensor_view(m.req_rows.data(), dtype::i32, {m.batch});
  a.seq_lens = tensor_view(m.seq_lens.data(), dtype::i32, {m.batch});
  a.out = tensor_view(r.out.data(), dtype::bf16, {m.batch, m.q_heads, m.dim});
  a.lse = tensor_view(r.lse.data(), dtype::f32, {m.batch, m.q_heads});
  a.softmax_scale = scale;
  return a;
}

template <class Layout = kv_layout<>>
decoded run_cpu(gqa_batch& m, float scale) {
  backend::cpu cpu;
  decoded r;
  auto const a = decode_args(m, r, scale);
  auto const plan = kernels::plan_gqa_decode(cpu, m.batch, m.q_heads, m.kv_heads, m.dim);
  kernels::gqa_decode<Layout>(cpu, a, plan, tensor_view(), cpu.make_stream());
  return r;
}

// The definition in double from the bf16 values, checked against the reference: relative L2 per
// (row, head) within 1e-2 (bf16 output rounding is 2^-9 relative; a wrong slot, head or scale
// gives errors of order 1, a NaN row fails), lse within 1e-4 relative, empty rows exactly 0, -inf.
void expect_matches_definition(gqa_batch const& m, decoded const& got, float scale) {
  std::int64_t const group = m.q_heads / m.kv_heads, d = m.dim;
  std::int64_t bad = 0;
  for (std::int64_t b = 0; b < m.batch; ++b) {
    auto const& slots = m.row_slots[std::size_t(b)];
    for (std::int64_t h = 0; h < m.q_heads; ++h) {
      std::size_t const row = std::size_t(b * m.q_heads + h);
      bf16 const* g = &got.out[row * std::size_t(d)];
      if (slots.empty()) {
        for (std::int64_t i = 0; i < d; ++i)
          if (!(float(g[i]) == 0.0f) && ++bad <= 8) ADD_FAILURE() << "row " << b << " not zero";
        if (!(std::isinf(got.lse[row]) && got.lse[row] < 0) && ++bad <= 8)
          ADD_FAILURE() << "row " << b << " (empty) lse " << got.lse[row];
        continue;
      }
      std::int64_t const off = (h / group) * d;
      bf16 const* q = &m.q[row * std::size_t(d)];
      std::vector<double> s(slots.size()), want(std::size_t(d), 0.0);
      double mx = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j < slots.size(); ++j) {
        bf16 const* k = &m.k[std::size_t(slots[j] * m.slot_stride + off)];
        double acc = 0;
        for (std::int64_t i = 0; i < d; ++i) acc += double(float(q[i])) * float(k[i]);
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      double l = 0;
      for (std::size_t j = 0; j < slots.size(); ++j) {
        double const e = std::exp(s[j] - mx);
        l += e;
        bf16 const* v = &m.v[std::size_t(slots[j] * m.slot_stride + off)];
        for (std::int64_t i = 0; i < d; ++i) want[std::size_t(i)] += e * float(v[i]);
      }
      for (auto& x : want) x /= l;
      double const err = test::relative_l2(g, want.data(), d);
      if (!(err <= 1e-2) && ++bad <= 8)
        ADD_FAILURE() << "row " << b << " head " << h << ": relative L2 error " << err;
      double const wl = mx + std::log(l);
      if (!(std::abs(got.lse[row] - wl) <= 1e-4 * (1 + std::abs(wl))) && ++bad <= 8)
        ADD_FAILURE() << "row " << b << " head " << h << ": lse " << got.lse[row] << ", want "
                      << wl;
    }
  }
  EXPECT_EQ(bad, 0);
}

struct shape {
  std::int64_t q_heads, kv_heads, dim;
};

TEST(GqaDecodeCpu, MatchesDoubleDefinitionForEveryGroupAndHeadDim) {
  auto rng = test::test_rng();
  for (shape const s : {shape{2, 2, 64}, shape{4, 2, 128}, shape{8, 2, 64}, shape{16, 2, 128},
                        shape{8, 1, 128}, shape{3, 3, 64}}) {
    SCOPED_TRACE(::testing::Message()
                 << "q_heads " << s.q_heads << ", kv_heads " << s.kv_heads << ", dim " << s.dim);
    auto m = make_batch({1, 7, 129, 0, 300, 64}, s.q_heads, s.kv_heads, s.dim, rng);
    float const scale = 1.0f / std::sqrt(float(s.dim));
    expect_matches_definition(m, run_cpu(m, scale), scale);
  }
}

TEST(GqaDecodeCpu, PaddedSlotRowsAndPagesOfFour) {
  auto rng = test::test_rng();
  auto m = make_batch({5, 33, 1, 18}, 8, 2, 64, rng, 2 * 64 + 24);
  expect_matches_definition(m, run_cpu(m, 0.125f), 0.125f);
  auto p = make_batch({5, 33, 1, 18}, 4, 4, 128, rng, 0, 4);
  expect_matches_definition(p, run_cpu<kv_layout<4>>(p, 0.09f), 0.09f);
}

TEST(GqaDecodeCpu, LargeScoresStayFinite) {
  // Scores of order 100: exp without the max subtracted would overflow fp32.
  auto rng = test::test_rng();
  auto m = make_batch({50, 200}, 4, 1, 64, rng);
  auto const r = run_cpu(m, 12.0f);
  expect_matches_definition(m, r, 12.0f);
  for (float x : r.lse) EXPECT_TRUE(std::isfinite(x));
}

TEST(GqaDecodeCpu, OnePositionGivesItsValueRow) {
  auto rng = test::test_rng();
  auto m = make_batch({1}, 4, 2, 64, rng);
  auto const r = run_cpu(m, 0.125f);
  std::int64_t const slot = m.row_slots[0][0];
  for (std::int64_t h = 0; h < 4; ++h)
    for (std::int64_t i = 0; i < 64; ++i)
      ASSERT_EQ(r.out[std::size_t(h * 64 + i)].bits,
                m.v[std::size_t(slot * m.slot_stride + (h / 2) * 64 + i)].bits)
          << "head " << h << " column " << i;
}

TEST(GqaDecodeCpu, DecodesWhatGqaWriteKvWrote) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto m = make_batch({9, 4}, 4, 2, 64, rng);
  // The same rows written by gqa_write_kv into fresh NaN pools, at the batch's slots.
  std::vector<bf16> k_new(m.k.size(), test::nan_bf16()), v_new = k_new, k_rows, v_rows;
  std::vector<std::int32_t> ids;
  for (auto const& row : m.row_slots)
    for (std::int64_t slot : row) {
      ids.push_back(std::int32_t(slot));
      auto const at = m.k.begin() + slot * m.slot_stride;
      k_rows.insert(k_rows.end(), at, at + 128);
      v_rows.insert(v_rows.end(), m.v.begin() + slot * m.slot_stride,
                    m.v.begin() + slot * m.slot_stride + 128);
    }
  std::int64_t const t = std::int64_t(ids.size());
  kernels::gqa_write_kv(cpu, tensor_view(k_rows.data(), dtype::bf16, {t, 2, 64}),
                        tensor_view(v_rows.data(), dtype::bf16, {t, 2, 64}),
                        kernels::kv_slots::list(tensor_view(ids.data(), dtype::i32, {t})),
                        tensor_view(k_new.data(), dtype::bf16, {m.slots, 2, 64}),
                        tensor_view(v_new.data(), dtype::bf16, {m.slots, 2, 64}),
                        cpu.make_stream());
  auto const want = run_cpu(m, 0.125f);
  m.k = k_new;
  m.v = v_new;
  auto const got = run_cpu(m, 0.125f);
  for (std::size_t i = 0; i < want.out.size(); ++i)
    ASSERT_EQ(got.out[i].bits, want.out[i].bits) << "element " << i;
}

TEST(GqaDecodeCpu, PlanDependsOnBatchAndHeadsOnly) {
  using kernels::plan_gqa_decode;
  // 128 rows x 8 kv heads = 1024 CTAs on 132 SMs x 2: no split.
  EXPECT_EQ(plan_gqa_decode(128, 32, 8, 128, 132).num_splits, 1);
  EXPECT_EQ(plan_gqa_decode(128, 32, 8, 128, 132).workspace_bytes, 0);
  // One row of 8 kv heads: split it to fill the SMs, within the limit.
  auto const one = plan_gqa_decode(1, 64, 8, 128, 132);
  EXPECT_GE(one.num_splits, 16);
  EXPECT_LE(one.num_splits, kernels::gqa_decode_max_splits);
  EXPECT_EQ(one.workspace_bytes,
            kernels::detail::gqa_decode_workspace_bytes(1, 64, 128, one.num_splits));
  EXPECT_GE(one.workspace_bytes, one.num_splits * 64 * (128 + 1) * 4);
  EXPECT_EQ(plan_gqa_decode(0, 32, 8, 128, 132).num_splits, 1);
  backend::cpu cpu;
  EXPECT_EQ(plan_gqa_decode(cpu, 7, 32, 8, 128).num_splits, 1);
  test::expect_error([] { plan_gqa_decode(4, 32, 0, 128, 132); }, {"positive q_heads, kv_heads"});
}

TEST(GqaDecodeCpu, RejectsBadArguments) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto m = make_batch({3, 5}, 8, 2, 64, rng);
  decoded r;
  auto a = decode_args(m, r, 0.125f);
  auto const plan = kernels::plan_gqa_decode(cpu, m.batch, m.q_heads, m.kv_heads, m.dim);
  auto const run = [&](gqa_decode_args const& args, kernels::gqa_decode_plan const& pl) {
    kernels::gqa_decode(cpu, args, pl, tensor_view(), cpu.make_stream());
  };
  {
    auto b = a;
    b.q = tensor_view(m.q.data(), dtype::f16, {2, 8, 64});
    test::expect_error([&] { run(b, plan); }, {"needs bf16 q, k_cache, v_cache and out", "f16"});
  }
  {
    auto b = a;  // head dim 32 (the first half of each row of a [2, 8, 64] buffer)
    b.q = a.q.slice(2, 0, 32);
    test::expect_error([&] { run(b, plan); }, {"supports head_dim 64 and 128; got 32"});
  }
  {
    auto b = a;  // 6 query heads over 4 kv heads
    b.q = a.q.slice(1, 0, 6);
    b.out = a.out.slice(1, 0, 6);
    b.k_cache = tensor_view(m.k.data(), dtype::bf16, {m.slots / 2, 4, 64});
    b.v_cache = tensor_view(m.v.data(), dtype::bf16, {m.slots / 2, 4, 64});
    test::expect_error([&] { run(b, plan); },
                       {"q_heads a multiple of kv_heads", "1..8", "got q_heads 6, kv_heads 4"});
  }
  {
    auto b = a;  // group 16: 16 query heads over one kv head
    std::vector<bf16> q16(2 * 16 * 64), o16(q16.size());
    b.q = tensor_view(q16.data(), dtype::bf16, {2, 16, 64});
    b.out = tensor_view(o16.data(), dtype::bf16, {2, 16, 64});
    b.lse = tensor_view();
    b.k_cache = tensor_view(m.k.data(), dtype::bf16, {m.slots, 1, 64}, {128, 64, 1}, device::cpu());
    b.v_cache = tensor_view(m.v.data(), dtype::bf16, {m.slots, 1, 64}, {128, 64, 1}, device::cpu());
    test::expect_error([&] { run(b, plan); }, {"group (q_heads / kv_heads) of 1..8", "q_heads 16"});
  }
  {
    auto b = a;
    b.v_cache = tensor_view(m.v.data(), dtype::bf16, {m.slots - 1, 2, 64});
    test::expect_error([&] { run(b, plan); }, {"k_cache and v_cache of one shape"});
  }
  {
    auto b = a;  // the kv heads of a slot not contiguous
    b.k_cache =
        tensor_view(m.k.data(), dtype::bf16, {m.slots / 2, 2, 64}, {256, 128, 1}, device::cpu());
    b.v_cache = b.k_cache;
    test::expect_error([&] { run(b, plan); }, {"kv heads of a slot contiguous"});
  }
  {
    auto b = a;
    b.out = a.out.slice(1, 0, 4);
    test::expect_error([&] { run(b, plan); }, {"needs out [2, 8, 64] like q"});
  }
  {
    auto b = a;  // q starting one element in: not 16-byte aligned
    b.q = tensor_view(m.q.data() + 1, dtype::bf16, {1, 8, 64});
    b.out = a.out.slice(0, 0, 1);
    b.lse = a.lse.slice(0, 0, 1);
    b.req_rows = a.req_rows.slice(0, 0, 1);
    b.seq_lens = a.seq_lens.slice(0, 0, 1);
    test::expect_error([&] { run(b, {1, 0}); }, {"16-byte aligned start"});
  }
  {
    auto b = a;
    b.lse = tensor_view(r.out.data(), dtype::bf16, {2, 8});
    test::expect_error([&] { run(b, plan); }, {"lse as a contiguous [2, 8] f32"});
  }
  test::expect_error(
      [&] {
        run(a, kernels::gqa_decode_plan{4, 0});
      },
      {"plan of 4 splits and 0 workspace bytes"});
  {
    auto b = a;
    b.softmax_scale = 0.0f;
    test::expect_error([&] { run(b, plan); }, {"finite positive softmax_scale"});
  }
  {
    auto b = a;
    b.req_rows = tensor_view(m.seq_lens.data(), dtype::i32, {3});
    test::expect_error([&] { run(b, plan); }, {"req_rows as a contiguous [2] i32"});
  }
  // A row longer than its table row: nothing is written.
  m.seq_lens[0] = std::int32_t(m.columns + 1);
  test::expect_error([&] { run(a, plan); }, {"batch row 0 has request row", "req_to_token is"});
  m.seq_lens[0] = 3;
  // A table entry that the lengths reach and that names no slot of the pools.
  m.table[std::size_t(m.req_rows[1] * m.columns + 4)] = std::int32_t(m.slots);
  test::expect_error([&] { run(a, plan); }, {"batch row 1 position 4", "outside the pools"});
  EXPECT_TRUE(std::isnan(float(r.out[0]))) << "the reference wrote before failing";
}

}  // namespace
}  // namespace lightcore
