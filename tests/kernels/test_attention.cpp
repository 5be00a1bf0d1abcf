// attention on the CPU backend: the fp32 prefill reference against the double-precision
// definition (ragged batches with prefixes, GQA groups 1/2/8 at head dims 64 and 128, MLA's
// (192, 128) with the broadcast rope key, padded T and S left untouched), MLA prefill (gather
// through a scattered req_to_token, decompression, attention) against the definition computed
// from the latent rows, and the errors for bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "attention_test_util.hpp"
#include "convert_test_util.hpp"
#include "kernels/attention/attention.hpp"
#include "lightcore/backend/cpu.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using kernels::prefill_args;
using test::prefill_batch;

struct host_outputs {
  std::vector<bf16> out;   // [T, hq, vd]
  std::vector<float> lse;  // [T, hq]
};

// The views of a batch (q, k, v contiguous; k_rope when the batch has one), outputs NaN first.
prefill_args host_args(prefill_batch& p, host_outputs& r) {
  r.out.assign(std::size_t(p.t * p.hq * p.vd), test::nan_bf16());
  r.lse.assign(std::size_t(p.t * p.hq), std::numeric_limits<float>::quiet_NaN());
  prefill_args a;
  a.q = tensor_view(p.q.data(), dtype::bf16, {p.t, p.hq, p.qk});
  a.k = tensor_view(p.k.data(), dtype::bf16, {p.s, p.hk, p.k_dim()});
  if (p.rope > 0) a.k_rope = tensor_view(p.k_rope.data(), dtype::bf16, {p.s, p.rope});
  a.v = tensor_view(p.v.data(), dtype::bf16, {p.s, p.hk, p.vd});
  a.cu_seqlens_q = tensor_view(p.cu_q.data(), dtype::i32, {p.batch + 1});
  a.cu_seqlens_k = tensor_view(p.cu_k.data(), dtype::i32, {p.batch + 1});
  a.out = tensor_view(r.out.data(), dtype::bf16, {p.t, p.hq, p.vd});
  a.lse = tensor_view(r.lse.data(), dtype::f32, {p.t, p.hq});
  a.softmax_scale = p.scale;
  return a;
}

struct variant {
  std::int64_t hq, hk, qk, vd;
  bool rope;
};

std::string variant_name(variant const& v) {
  return "Hq" + std::to_string(v.hq) + "_Hk" + std::to_string(v.hk) + "_D" + std::to_string(v.qk) +
         "_V" + std::to_string(v.vd) + (v.rope ? "_rope" : "");
}

class AttentionCpu : public ::testing::TestWithParam<variant> {};

// Tolerance: the reference accumulates in fp32 (relative errors ~1e-6 at these lengths) and rounds
// each output to bf16 once (at most 2^-9 relative per element): 5e-3 relative L2 per (row, head).
// lse stays fp32: 1e-4. A wrong key range, head or scale gives errors of order 0.1 to 1.
TEST_P(AttentionCpu, PrefillMatchesDoubleDefinition) {
  auto const v = GetParam();
  auto rng = test::test_rng();
  // Prefix 0 (plain causal), short and long prefixes, a single new token, tiles' edges.
  auto p = test::make_prefill_batch({1, 17, 70, 5, 64}, {0, 33, 100, 0, 130}, v.hq, v.hk, v.qk,
                                    v.vd, v.rope, rng, /*spare_q=*/3, /*spare_k=*/5);
  backend::cpu cpu;
  host_outputs r;
  kernels::prefill_attention(cpu, host_args(p, r), cpu.make_stream());
  test::expect_prefill_close(p, r.out, r.lse, test::prefill_double(p, test::all_rows(p)), 5e-3,
                             1e-4);
  for (std::int64_t i = p.cu_q.back() * p.hq * p.vd; i < p.t * p.hq * p.vd; ++i)
    ASSERT_TRUE(std::isnan(float(r.out[std::size_t(i)]))) << "padding row written at " << i;
}

INSTANTIATE_TEST_SUITE_P(
    Variants, AttentionCpu,
    ::testing::Values(variant{4, 4, 64, 64, false}, variant{8, 4, 64, 64, false},
                      variant{16, 2, 64, 64, false}, variant{4, 2, 128, 128, false},
                      variant{8, 1, 128, 128, false}, variant{4, 4, 192, 128, true},
                      variant{2, 2, 192, 128, false}),
    [](::testing::TestParamInfo<variant> const& param_info) {
      return variant_name(param_info.param);
    });

TEST(AttentionCpuErrors, PrefillRejectsBadArguments) {
  auto rng = test::test_rng();
  backend::cpu cpu;
  auto p = test::make_prefill_batch({3, 5}, {2, 0}, 4, 2, 64, 64, false, rng);
  host_outputs r;
  auto const a = host_args(p, r);
  auto const run = [&](prefill_args const& x) {
    kernels::prefill_attention(cpu, x, cpu.make_stream());
  };
  {
    auto b = a;
    b.v = b.v.slice(2, 0, 32);
    b.out = b.out.slice(2, 0, 32);
    test::expect_error([&] { run(b); },
                       {"(qk_dim, v_dim) (192, 128), (128, 128) and (64, 64)", "got (64, 32)"});
  }
  {
    auto b = a;
    b.q = tensor_view(p.q.data(), dtype::bf16, {p.t, 1, 64});
    b.out = tensor_view(r.out.data(), dtype::bf16, {p.t, 1, 64});
    b.lse = tensor_view();
    test::expect_error([&] { run(b); }, {"heads_q a multiple of heads_k", "got heads_q 1"});
  }
  {
    auto b = a;
    b.k_rope = tensor_view(p.k.data(), dtype::bf16, {p.s, 64});
    test::expect_error([&] { run(b); }, {"broadcast k_rope only with qk_dim 192"});
  }
  {
    auto b = a;
    b.softmax_scale = std::numeric_limits<float>::infinity();
    test::expect_error([&] { run(b); }, {"finite positive softmax_scale"});
  }
  {
    auto b = a;
    b.lse = tensor_view(r.out.data(), dtype::bf16, {p.t, p.hq});
    test::expect_error([&] { run(b); }, {"lse as a contiguous"});
  }
  // More new tokens than the sequence holds, then a decreasing cu_seqlens: nothing is written.
  auto cu_k = p.cu_k;
  p.cu_k = {0, 2, 9};
  test::expect_error([&] { run(a); }, {"request 0 has 3 new tokens but a sequence of 2"});
  p.cu_k = {0, 5, 4};
  test::expect_error([&] { run(a); }, {"cu_seqlens_k decreases at request 1"});
  p.cu_k = cu_k;
  p.cu_q[2] = std::int32_t(p.t + 1);
  test::expect_error([&] { run(a); }, {"cu_seqlens_q[batch] is 9, past the 8 rows"});
  EXPECT_TRUE(std::isnan(float(r.out[0]))) << "the reference wrote before failing";
}

// ---- MLA prefill ----

// A ragged MLA batch: the whole sequences' latent rows scattered in a pool (make_mla_batch: free
// slots NaN), q [T, H, 192], W_UK and W_UV [H, 128, 512] N(0, 1/512) so that k_nope and v are
// N(0, 1) like the latent.
struct mla_case {
  test::mla_batch pool;  // lengths = whole sequences
  std::vector<std::int32_t> lens_q, cu_q, cu_k;
  std::int64_t heads = 0, t = 0, kv_tokens = 0;
  std::vector<bf16> q, w_uk, w_uv;
  float scale = 0;
};

mla_case make_mla_case(std::vector<std::int32_t> const& lens_q,
                       std::vector<std::int32_t> const& prefix, std::int64_t heads,
                       std::int64_t spare_kv, std::mt19937_64& rng) {
  mla_case c;
  std::vector<std::int32_t> lens_k;
  c.lens_q = lens_q;
  c.cu_q.assign(1, 0);
  c.cu_k.assign(1, 0);
  for (std::size_t b = 0; b < lens_q.size(); ++b) {
    lens_k.push_back(lens_q[b] + prefix[b]);
    c.cu_q.push_back(c.cu_q.back() + lens_q[b]);
    c.cu_k.push_back(c.cu_k.back() + lens_k.back());
  }
  c.pool = test::make_mla_batch(lens_k, heads, rng);
  c.heads = heads;
  c.t = c.cu_q.back();
  c.kv_tokens = c.cu_k.back() + spare_kv;
  c.q = test::normal_bf16(std::size_t(c.t * heads * 192), 1.0f, rng);
  c.w_uk = test::normal_bf16(std::size_t(heads * 128 * 512), float(1.0 / std::sqrt(512.0)), rng);
  c.w_uv = test::normal_bf16(std::size_t(heads * 128 * 512), float(1.0 / std::sqrt(512.0)), rng);
  c.scale = test::deepseek_softmax_scale();
  return c;
}

// The definition from the latent rows, independently of the library's gather: the prefill batch
// whose k (nope), k_rope and v are the latent rows of each position's slot decompressed in double
// (then rounded to bf16, as the GEMM's output is).
prefill_batch mla_as_prefill(mla_case const& c) {
  prefill_batch p;
  p.batch = std::int64_t(c.lens_q.size());
  p.hq = p.hk = c.heads;
  p.qk = 192;
  p.vd = 128;
  p.rope = 64;
  p.t = c.t;
  p.s = c.cu_k.back();
  p.cu_q = c.cu_q;
  p.cu_k = c.cu_k;
  p.q = c.q;
  p.scale = c.scale;
  p.k.resize(std::size_t(p.s * c.heads * 128));
  p.v.resize(p.k.size());
  p.k_rope.resize(std::size_t(p.s * 64));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::size_t j = 0; j < c.pool.row_slots[std::size_t(b)].size(); ++j) {
      std::int64_t const row = c.cu_k[std::size_t(b)] + std::int64_t(j);
      bf16 const* lat = &c.pool.pool[std::size_t(c.pool.row_slots[std::size_t(b)][j] * 576)];
      for (std::int64_t d = 0; d < 64; ++d) p.k_rope[std::size_t(row * 64 + d)] = lat[512 + d];
      for (std::int64_t o = 0; o < c.heads * 128; ++o) {
        double k = 0, v = 0;
        for (std::int64_t d = 0; d < 512; ++d) {
          k += double(float(c.w_uk[std::size_t(o * 512 + d)])) * float(lat[d]);
          v += double(float(c.w_uv[std::size_t(o * 512 + d)])) * float(lat[d]);
        }
        p.k[std::size_t(row * c.heads * 128 + o)] = bf16(float(k));
        p.v[std::size_t(row * c.heads * 128 + o)] = bf16(float(v));
      }
    }
  }
  return p;
}

kernels::mla_prefill_args mla_host_args(mla_case& c, host_outputs& r) {
  r.out.assign(std::size_t(c.t * c.heads * 128), test::nan_bf16());
  r.lse.assign(std::size_t(c.t * c.heads), std::numeric_limits<float>::quiet_NaN());
  std::int64_t const batch = std::int64_t(c.lens_q.size());
  kernels::mla_prefill_args a;
  a.q = tensor_view(c.q.data(), dtype::bf16, {c.t, c.heads, 192});
  a.kv_cache = tensor_view(c.pool.pool.data(), dtype::bf16, {c.pool.slots, 576});
  a.req_to_token = tensor_view(c.pool.table.data(), dtype::i32, {c.pool.requests, c.pool.columns});
  a.req_rows = tensor_view(c.pool.req_rows.data(), dtype::i32, {batch});
  a.cu_seqlens_q = tensor_view(c.cu_q.data(), dtype::i32, {batch + 1});
  a.cu_seqlens_k = tensor_view(c.cu_k.data(), dtype::i32, {batch + 1});
  a.w_uk = tensor_view(c.w_uk.data(), dtype::bf16, {c.heads, 128, 512});
  a.w_uv = tensor_view(c.w_uv.data(), dtype::bf16, {c.heads, 128, 512});
  a.out = tensor_view(r.out.data(), dtype::bf16, {c.t, c.heads, 128});
  a.lse = tensor_view(r.lse.data(), dtype::f32, {c.t, c.heads});
  a.kv_tokens = c.kv_tokens;
  a.softmax_scale = c.scale;
  return a;
}

struct aligned_workspace {
  std::vector<unsigned char> bytes;
  tensor_view view;
  explicit aligned_workspace(std::int64_t n) : bytes(std::size_t(n + 256)) {
    auto const at = reinterpret_cast<std::uintptr_t>(bytes.data());
    view = tensor_view(bytes.data() + (256 - at % 256) % 256, dtype::u8, {n});
  }
};

// Tolerance: as the prefill reference's, plus k and v rounded to bf16 from fp32 sums on one side
// and double sums on the other (a rare one-ulp difference, 2^-8 relative, in single elements):
// 1e-2 relative L2 and 1e-3 on lse.
void check_mla_prefill(std::vector<std::int32_t> const& lens_q,
                       std::vector<std::int32_t> const& prefix, std::int64_t heads,
                       bool strided_weights) {
  auto rng = test::test_rng();
  auto c = make_mla_case(lens_q, prefix, heads, /*spare_kv=*/7, rng);
  backend::cpu cpu;
  kernels::gemm_context<backend::cpu> ctx(cpu);
  host_outputs r;
  auto a = mla_host_args(c, r);
  // Heads of W_UK and W_UV interleaved as in kv_b_proj ([H, 256, 512]): the batched GEMM path.
  std::vector<bf16> kv_b;
  if (strided_weights) {
    kv_b.resize(std::size_t(heads * 256 * 512));
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < 128 * 512; ++i) {
        kv_b[std::size_t(h * 256 * 512 + i)] = c.w_uk[std::size_t(h * 128 * 512 + i)];
        kv_b[std::size_t(h * 256 * 512 + 128 * 512 + i)] = c.w_uv[std::size_t(h * 128 * 512 + i)];
      }
    tensor_view const w(kv_b.data(), dtype::bf16, {heads, 256, 512});
    a.w_uk = w.slice(1, 0, 128);
    a.w_uv = w.slice(1, 128, 256);
  }
  aligned_workspace ws(kernels::mla_prefill_workspace_layout(c.kv_tokens, heads).bytes);
  kernels::mla_prefill(cpu, ctx, a, ws.view, cpu.make_stream());
  auto const p = mla_as_prefill(c);
  test::expect_prefill_close(p, r.out, r.lse, test::prefill_double(p, test::all_rows(p)), 1e-2,
                             1e-3);
  EXPECT_EQ(ctx.stats().launches, 2) << "one GEMM for k_nope, one for v";
}

TEST(MlaPrefillCpu, MatchesDefinitionH16) { check_mla_prefill({5, 1, 40}, {0, 70, 9}, 16, false); }

TEST(MlaPrefillCpu, InterleavedKvBProjHeads) { check_mla_prefill({3, 20}, {11, 0}, 16, true); }

TEST(MlaPrefillCpu, RejectsBadArguments) {
  auto rng = test::test_rng();
  auto c = make_mla_case({4, 2}, {3, 0}, 16, 0, rng);
  backend::cpu cpu;
  kernels::gemm_context<backend::cpu> ctx(cpu);
  host_outputs r;
  auto const a = mla_host_args(c, r);
  auto const bytes = kernels::mla_prefill_workspace_layout(c.kv_tokens, 16).bytes;
  aligned_workspace ws(bytes);
  auto const run = [&](kernels::mla_prefill_args const& x, tensor_view const& w) {
    kernels::mla_prefill(cpu, ctx, x, w, cpu.make_stream());
  };
  test::expect_error([&] { run(a, ws.view.slice(0, 0, bytes - 1)); }, {"u8 workspace of at least"});
  {
    auto b = a;
    b.kv_tokens = c.cu_k.back() - 1;  // fewer rows than the sequences hold
    test::expect_error([&] { run(b, ws.view); }, {"cu_seqlens_k (against kv_tokens)"});
  }
  {
    auto b = a;
    b.w_uv = b.w_uv.slice(1, 0, 64);
    test::expect_error([&] { run(b, ws.view); }, {"w_uk and w_uv bf16 [16, 128, 512]"});
  }
  // A table entry the lengths reach that names no slot of the pool: nothing is written.
  c.pool.table[std::size_t(c.pool.req_rows[1] * c.pool.columns + 1)] = std::int32_t(c.pool.slots);
  test::expect_error([&] { run(a, ws.view); }, {"request 1 position 1", "outside the pool"});
  EXPECT_TRUE(std::isnan(float(r.out[0]))) << "the reference wrote before failing";
}

}  // namespace
}  // namespace lightcore
