// gemm on the CPU backend against double-precision products: bf16 with both B layouts, f32 and
// bf16 outputs, alpha and beta, padded leading dimensions, batches with strided (transposed)
// operands as MLA's absorb uses them; FP8 with DeepSeek's block scales, N not a multiple of 128;
// and the inputs it must refuse. Also the CPU side of the algorithm selection (gemm_autotune.hpp):
// the LIGHTCORE_GEMM_AUTOTUNE switch, the options' checks, the rule that picks among timed
// candidates and the plan-cache key.
// Bounds: the CPU path accumulates in fp32 (K <= 7168: relative error ~1e-6) and rounds once to
// C's type: bf16 has an 8-bit significand, so a relative L2 error of about 2^-9 / sqrt(3) ~ 1.1e-3
// is expected; 4e-3 is allowed. f32 outputs: 1e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "gemm_test_util.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/gemm/gemm_autotune.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore {
namespace {

using kernels::b_layout;
using kernels::gemm;
using kernels::gemm_context;
using kernels::gemm_fp8_block;
using kernels::gemm_options;

constexpr double bf16_bound = 4e-3;
constexpr double f32_bound = 1e-5;

struct bf16_case {
  std::int64_t m, n, k;
  b_layout layout;
  dtype out;
  float alpha, beta;
  std::int64_t pad;  // extra elements at the end of every row of A, B and C
};

class GemmCpuTest : public ::testing::TestWithParam<bf16_case> {};

TEST_P(GemmCpuTest, MatchesDoubleProduct) {
  auto const [m, n, k, layout, out, alpha, beta, pad] = GetParam();
  auto rng = test::test_rng();
  bool const nk = layout == b_layout::n_by_k;
  std::int64_t const b_rows = nk ? n : k, b_cols = nk ? k : n;
  std::int64_t const lda = k + pad, ldb = b_cols + pad, ldc = n + pad;
  auto const a = test::random_normal_bf16(m * lda, 1.0f, rng);
  auto const b = test::random_normal_bf16(b_rows * ldb, 0.05f, rng);
  auto const c0 = test::random_normal_bf16(m * ldc, 1.0f, rng);
  std::vector<float> c_f32(static_cast<std::size_t>(m * ldc));
  for (std::size_t i = 0; i < c_f32.size(); ++i) c_f32[i] = float(c0[i]);
  std::vector<bf16> c_bf16 = c0;
  void* c_data = out == dtype::f32 ? static_cast<void*>(c_f32.data()) : c_bf16.data();

  backend::cpu cpu;
  gemm_context<backend::cpu> ctx(cpu);
  tensor_view const va(const_cast<bf16*>(a.data()), dtype::bf16, {m, k}, {lda, 1}, device::cpu());
  tensor_view const vb(const_cast<bf16*>(b.data()), dtype::bf16, {b_rows, b_cols}, {ldb, 1},
                       device::cpu());
  tensor_view const vc(c_data, out, {m, n}, {ldc, 1}, device::cpu());
  gemm(cpu, ctx, va, vb, vc, {}, cpu.make_stream(), gemm_options{alpha, beta, layout});
  EXPECT_EQ(ctx.stats().launches, 1);

  std::vector<double> want, got;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (std::int64_t l = 0; l < k; ++l) {
        double const bv =
            nk ? double(b[std::size_t(j * ldb + l)]) : double(b[std::size_t(l * ldb + j)]);
        sum += double(a[std::size_t(i * lda + l)]) * bv;
      }
      std::size_t const at = std::size_t(i * ldc + j);
      want.push_back(alpha * sum + beta * double(c0[at]));
      got.push_back(out == dtype::f32 ? double(c_f32[at]) : double(c_bf16[at]));
    }
    // The padding of C is not written.
    for (std::int64_t j = n; j < ldc; ++j) {
      std::size_t const at = std::size_t(i * ldc + j);
      double const now = out == dtype::f32 ? double(c_f32[at]) : double(c_bf16[at]);
      ASSERT_EQ(now, double(float(c0[at]))) << "row " << i << " padding column " << j;
    }
  }
  EXPECT_LT(test::relative_l2(got, want), out == dtype::f32 ? f32_bound : bf16_bound);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmCpuTest,
    ::testing::Values(bf16_case{1, 1, 1, b_layout::n_by_k, dtype::bf16, 1.0f, 0.0f, 0},
                      bf16_case{3, 576, 256, b_layout::n_by_k, dtype::bf16, 1.0f, 0.0f, 0},
                      bf16_case{17, 130, 300, b_layout::k_by_n, dtype::bf16, 1.0f, 0.0f, 3},
                      bf16_case{5, 64, 1408, b_layout::n_by_k, dtype::f32, 1.0f, 0.0f, 8},
                      bf16_case{9, 33, 129, b_layout::k_by_n, dtype::f32, 0.5f, 1.0f, 1},
                      bf16_case{4, 100, 64, b_layout::n_by_k, dtype::bf16, -2.0f, 0.25f, 0}));

// beta = 0 never reads C: NaN there does not reach the result.
TEST(GemmCpu, BetaZeroIgnoresNaNInC) {
  std::vector<bf16> a(2 * 8, bf16(1.0f)), b(3 * 8, bf16(0.5f));
  std::vector<float> c(2 * 3, std::numeric_limits<float>::quiet_NaN());
  backend::cpu cpu;
  gemm_context<backend::cpu> ctx(cpu);
  gemm(cpu, ctx, tensor_view(a.data(), dtype::bf16, {2, 8}),
       tensor_view(b.data(), dtype::bf16, {3, 8}), tensor_view(c.data(), dtype::f32, {2, 3}), {},
       cpu.make_stream());
  for (float v : c) EXPECT_EQ(v, 4.0f);
}

// MLA's absorb: q_nope [T, H, 128] times W_UK [H, 128, 512] per head, written to [T, H, 512], with
// the head as the batch dimension of transposed views.
TEST(GemmCpu, StridedBatchAsMlaAbsorb) {
  std::int64_t const t = 5, h = 4, d = 128, latent = 64;
  auto rng = test::test_rng();
  auto const q = test::random_normal_bf16(t * h * d, 1.0f, rng);
  auto const w = test::random_normal_bf16(h * d * latent, 0.05f, rng);
  std::vector<float> out(std::size_t(t * h * latent), std::numeric_limits<float>::quiet_NaN());
  backend::cpu cpu;
  gemm_context<backend::cpu> ctx(cpu);
  tensor_view const vq =
      tensor_view(const_cast<bf16*>(q.data()), dtype::bf16, {t, h, d}).transpose(0, 1);
  tensor_view const vw(const_cast<bf16*>(w.data()), dtype::bf16, {h, d, latent});
  tensor_view const vo = tensor_view(out.data(), dtype::f32, {t, h, latent}).transpose(0, 1);
  gemm(cpu, ctx, vq, vw, vo, {}, cpu.make_stream(), gemm_options{1.0f, 0.0f, b_layout::k_by_n});
  std::vector<double> want, got;
  for (std::int64_t ti = 0; ti < t; ++ti)
    for (std::int64_t hi = 0; hi < h; ++hi)
      for (std::int64_t j = 0; j < latent; ++j) {
        double sum = 0.0;
        for (std::int64_t l = 0; l < d; ++l)
          sum += double(q[std::size_t((ti * h + hi) * d + l)]) *
                 double(w[std::size_t((hi * d + l) * latent + j)]);
        want.push_back(sum);
        got.push_back(out[std::size_t((ti * h + hi) * latent + j)]);
      }
  EXPECT_LT(test::relative_l2(got, want), f32_bound);
}

// FP8 with block scales against the double product of the dequantised operands, N = 576 and 2112
// as DeepSeek's kv_a_proj_with_mqa and fused q_a + kv_a have them (not multiples of 128).
TEST(GemmCpu, Fp8BlockMatchesDequantisedProduct) {
  for (auto [m, n, k] : {std::array<std::int64_t, 3>{4, 576, 512}, {8, 2112, 256}, {4, 128, 128}}) {
    SCOPED_TRACE(::testing::Message() << "M " << m << ", N " << n << ", K " << k);
    auto rng = test::test_rng();
    auto x = test::random_fp8_activation(m, k, rng);
    auto w = test::random_fp8_weight(n, k, rng);
    std::vector<bf16> c(std::size_t(m * n), bf16(std::numeric_limits<float>::quiet_NaN()));
    backend::cpu cpu;
    gemm_context<backend::cpu> ctx(cpu);
    std::int64_t const nb = (n + 127) / 128;
    gemm_fp8_block(cpu, ctx, tensor_view(x.codes.data(), dtype::fp8_e4m3, {m, k}),
                   tensor_view(x.scales.data(), dtype::f32, {k / 128, m}),
                   tensor_view(w.codes.data(), dtype::fp8_e4m3, {n, k}),
                   tensor_view(w.scales.data(), dtype::f32, {nb, k / 128},
                               {kernels::gemm_fp8_weight_scale_ld(k), 1}, device::cpu()),
                   tensor_view(c.data(), dtype::bf16, {m, n}), {}, cpu.make_stream());
    std::vector<double> want;
    for (std::int64_t i = 0; i < m; ++i) {
      auto const row = test::fp8_reference_row(x, w, m, n, k, i);
      want.insert(want.end(), row.begin(), row.end());
    }
    EXPECT_LT(test::relative_l2(c, want), bf16_bound);
  }
}

TEST(GemmCpu, RejectsBadInputs) {
  backend::cpu cpu;
  gemm_context<backend::cpu> ctx(cpu);
  auto const s = cpu.make_stream();
  std::vector<bf16> a(64 * 64), b(64 * 64), c(64 * 64);
  std::vector<float> cf(64 * 64);
  auto view = [](auto& v, dtype t, dims shape) { return tensor_view(v.data(), t, shape); };
  // shapes that do not agree
  EXPECT_THROW(gemm(cpu, ctx, view(a, dtype::bf16, {4, 8}), view(b, dtype::bf16, {6, 9}),
                    view(c, dtype::bf16, {4, 6}), {}, s),
               error);
  // f32 inputs
  EXPECT_THROW(gemm(cpu, ctx, view(cf, dtype::f32, {4, 8}), view(b, dtype::bf16, {6, 8}),
                    view(c, dtype::bf16, {4, 6}), {}, s),
               error);
  // mixed ranks
  EXPECT_THROW(gemm(cpu, ctx, view(a, dtype::bf16, {1, 4, 8}), view(b, dtype::bf16, {6, 8}),
                    view(c, dtype::bf16, {4, 6}), {}, s),
               error);
  // K = 0
  EXPECT_THROW(gemm(cpu, ctx, view(a, dtype::bf16, {4, 0}), view(b, dtype::bf16, {6, 0}),
                    view(c, dtype::bf16, {4, 6}), {}, s),
               error);
  // a column stride other than 1
  tensor_view const transposed = view(a, dtype::bf16, {8, 4}).transpose(0, 1);
  EXPECT_THROW(
      gemm(cpu, ctx, transposed, view(b, dtype::bf16, {6, 8}), view(c, dtype::bf16, {4, 6}), {}, s),
      error);
  // an unknown layout
  EXPECT_THROW(gemm(cpu, ctx, view(a, dtype::bf16, {4, 8}), view(b, dtype::bf16, {6, 8}),
                    view(c, dtype::bf16, {4, 6}), {}, s, gemm_options{1.0f, 0.0f, b_layout(7)}),
               error);
  std::vector<fp8_e4m3> q(64 * 256), wq(256 * 256);
  std::vector<float> xs(64), ws(64);
  auto fp8 = [&](std::int64_t m, std::int64_t n, std::int64_t k, dims xs_shape,
                 tensor_view w_scales, tensor_view c_view) {
    gemm_fp8_block(cpu, ctx, view(q, dtype::fp8_e4m3, {m, k}), view(xs, dtype::f32, xs_shape),
                   view(wq, dtype::fp8_e4m3, {n, k}), w_scales, c_view, {}, s);
  };
  // K not a multiple of 128
  EXPECT_THROW(fp8(4, 4, 96, {1, 4}, view(ws, dtype::f32, {1, 1}), view(c, dtype::bf16, {4, 4})),
               error);
  // M not a multiple of 4
  EXPECT_THROW(fp8(3, 4, 128, {1, 3}, view(ws, dtype::f32, {1, 1}), view(c, dtype::bf16, {3, 4})),
               error);
  // activation scales row-major [M, K/128] instead of k-major [K/128, M]
  EXPECT_THROW(fp8(4, 4, 256, {4, 2}, view(ws, dtype::f32, {1, 2}), view(c, dtype::bf16, {4, 4})),
               error);
  // weight scales missing the partial block of N = 130
  EXPECT_THROW(
      fp8(4, 130, 128, {1, 4}, view(ws, dtype::f32, {1, 1}), view(c, dtype::bf16, {4, 130})),
      error);
  // weight scales [2, 2] with row stride 2: K/128 must be padded to 4
  EXPECT_THROW(
      fp8(4, 256, 256, {2, 4}, view(ws, dtype::f32, {2, 2}), view(c, dtype::bf16, {4, 256})),
      error);
  // f32 output
  EXPECT_THROW(fp8(4, 4, 128, {1, 4}, view(ws, dtype::f32, {1, 1}), view(cf, dtype::f32, {4, 4})),
               error);
  // and the padded stride is accepted
  EXPECT_NO_THROW(fp8(4, 256, 256, {2, 4},
                      tensor_view(ws.data(), dtype::f32, {2, 2}, {4, 1}, device::cpu()),
                      view(c, dtype::bf16, {4, 256})));
  EXPECT_EQ(ctx.stats().launches, 1);
}

// The switch: the "on" words turn the selection on, unset, empty and the "off" words keep it off,
// anything else is refused with the allowed values in the message.
TEST(GemmAutotune, SwitchParsesOnOffAndRefusesOthers) {
  using kernels::parse_gemm_autotune_switch;
  EXPECT_FALSE(parse_gemm_autotune_switch(nullptr));
  for (char const* on : {"1", "on", "ON", "true", "True", "yes"})
    EXPECT_TRUE(parse_gemm_autotune_switch(on)) << on;
  for (char const* off : {"0", "off", "Off", "false", "FALSE", "no", ""})
    EXPECT_FALSE(parse_gemm_autotune_switch(off)) << off;
  for (char const* bad : {"2", "of", "disable", "0 ", "yess"}) {
    try {
      parse_gemm_autotune_switch(bad);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (error const& e) {
      std::string const what = e.what();
      EXPECT_NE(what.find("LIGHTCORE_GEMM_AUTOTUNE"), std::string::npos) << what;
      EXPECT_NE(what.find("allowed"), std::string::npos) << what;
    }
  }
}

// The environment is read when the options are made (and so when a context is made).
TEST(GemmAutotune, OptionsFollowTheEnvironment) {
  char const* const saved = std::getenv(kernels::gemm_autotune_env);
  std::string const saved_value = saved ? saved : "";
  ::setenv(kernels::gemm_autotune_env, "0", 1);
  EXPECT_FALSE(kernels::gemm_autotune_options_from_env().enabled);
  ::setenv(kernels::gemm_autotune_env, "on", 1);
  EXPECT_TRUE(kernels::gemm_autotune_options_from_env().enabled);
  ::setenv(kernels::gemm_autotune_env, "maybe", 1);
  EXPECT_THROW(kernels::gemm_autotune_options_from_env(), error);
  ::unsetenv(kernels::gemm_autotune_env);
  EXPECT_FALSE(kernels::gemm_autotune_options_from_env().enabled);
  if (saved) ::setenv(kernels::gemm_autotune_env, saved_value.c_str(), 1);
}

TEST(GemmAutotune, OptionsOutOfRangeAreRefused) {
  using kernels::gemm_autotune_options;
  EXPECT_NO_THROW(kernels::check_gemm_autotune_options(gemm_autotune_options{}));
  auto with = [](auto set) {
    gemm_autotune_options o;
    set(o);
    return o;
  };
  std::vector<gemm_autotune_options> const bad = {with([](auto& o) { o.max_candidates = 0; }),
                                                  with([](auto& o) { o.max_candidates = 33; }),
                                                  with([](auto& o) { o.warmup_calls = -1; }),
                                                  with([](auto& o) { o.timed_calls = 0; }),
                                                  with([](auto& o) { o.rounds = 0; }),
                                                  with([](auto& o) { o.rounds = 9; }),
                                                  with([](auto& o) { o.min_gain = -0.1; }),
                                                  with([](auto& o) { o.min_gain = 1.0; }),
                                                  with([](auto& o) { o.max_scratch_bytes = -1; }),
                                                  with([](auto& o) { o.pinned_candidate = -2; }),
                                                  with([](auto& o) { o.pinned_candidate = 8; })};
  for (auto const& o : bad) EXPECT_THROW(kernels::check_gemm_autotune_options(o), error);
  // A context checks them too, on every backend.
  backend::cpu cpu;
  EXPECT_THROW({ gemm_context<backend::cpu> ctx(cpu, bad.front()); }, error);
  kernels::gemm_autotune_options off;
  off.enabled = false;
  EXPECT_NO_THROW({ gemm_context<backend::cpu> ctx(cpu, off); });
  try {
    kernels::check_gemm_autotune_options(bad[2]);
  } catch (error const& e) {
    EXPECT_NE(std::string(e.what()).find("warmup_calls is -1; allowed 0..64"), std::string::npos)
        << e.what();
  }
}

// The choice: the fastest, ties to the lower index; the first heuristic answer unless beaten by
// min_gain; failed candidates (NaN, infinite, negative) never chosen.
TEST(GemmAutotune, ChoiceKeepsFastestWithTiesAndMargin) {
  using kernels::gemm_autotune_choice;
  double const nan = std::numeric_limits<double>::quiet_NaN();
  double const inf = std::numeric_limits<double>::infinity();
  using v = std::vector<double>;
  EXPECT_EQ(gemm_autotune_choice(v{}, 0.02), 0);
  EXPECT_EQ(gemm_autotune_choice(v{5.0}, 0.02), 0);
  EXPECT_EQ(gemm_autotune_choice(v{10.0, 8.0, 9.0}, 0.02), 1);
  EXPECT_EQ(gemm_autotune_choice(v{10.0, 8.0, 8.0, 8.0}, 0.02), 1) << "ties go to the lower index";
  EXPECT_EQ(gemm_autotune_choice(v{10.0, 9.9, 9.85}, 0.02), 0) << "1.5% faster is not enough";
  EXPECT_EQ(gemm_autotune_choice(v{10.0, 9.9, 9.85}, 0.0), 2);
  EXPECT_EQ(gemm_autotune_choice(v{10.0, 9.7}, 0.02), 1);
  EXPECT_EQ(gemm_autotune_choice(v{10.0, nan, 11.0, -1.0, inf}, 0.0), 0);
  EXPECT_EQ(gemm_autotune_choice(v{10.0, nan, 4.0, -1.0, inf}, 0.0), 2);
  // The first failed: the fastest usable one, whatever the margin.
  EXPECT_EQ(gemm_autotune_choice(v{nan, 7.0, 6.99}, 0.5), 2);
  EXPECT_EQ(gemm_autotune_choice(v{nan, nan}, 0.02), 0) << "nothing usable: the first";
  // Deterministic: the same times give the same answer every time.
  v const times{3.0, 2.0, 2.5, 2.0, 1.999};
  int const once = gemm_autotune_choice(times, 0.0);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(gemm_autotune_choice(times, 0.0), once);
  EXPECT_EQ(once, 4);
}

// The plan key: the same shape at other addresses of the same alignment is one plan; anything that
// changes the descriptors, the valid algorithms or their speed is another.
TEST(GemmAutotune, PlanKeySeparatesWhatChangesTheAlgorithm) {
  using kernels::gemm_workspace_bytes;
  using kernels::detail::gemm_plan_key_of;
  alignas(256) static std::byte pool[1 << 16];
  kernels::gemm_problem p;
  p.m = 64;
  p.n = 128;
  p.k = 256;
  p.a = pool;
  p.lda = 256;
  p.b = pool + 4096;
  p.ldb = 256;
  p.c = pool + 8192;
  p.ldc = 128;
  p.stride_a = 12345;  // ignored at batch 1
  auto const base = gemm_plan_key_of(p, gemm_workspace_bytes, false);
  auto same = p;
  same.a = pool + 256;
  same.b = pool + 2048;
  same.stride_a = 7;
  same.alpha = 3.0f;  // alpha is set per call
  EXPECT_EQ(gemm_plan_key_of(same, gemm_workspace_bytes, false), base);
  std::vector<kernels::gemm_problem> other(12, p);
  other[0].m = 65;
  other[1].n = 129;
  other[2].k = 512;
  other[3].lda = 264;
  other[4].c_type = dtype::f32;
  other[5].layout = kernels::b_layout::k_by_n;
  other[6].a = pool + 2;  // 2-byte aligned A: fewer algorithms are valid
  other[7].c = pool + 8192 + 16;
  other[8].beta = 1.0f;  // C is read
  other[9].a_scales = reinterpret_cast<float const*>(pool);
  other[10].batch = 2;
  other[10].stride_a = 64 * 256;
  other[11].ldb = 320;
  for (std::size_t i = 0; i < other.size(); ++i)
    EXPECT_NE(gemm_plan_key_of(other[i], gemm_workspace_bytes, false), base) << "variant " << i;
  EXPECT_NE(gemm_plan_key_of(p, 0, false), base) << "workspace";
  EXPECT_NE(gemm_plan_key_of(p, gemm_workspace_bytes, true), base) << "route";
  // Batched: the batch strides count, as they change the layouts.
  auto b1 = other[10], b2 = other[10];
  b2.stride_a = 64 * 256 + 64;
  EXPECT_NE(gemm_plan_key_of(b1, 0, false), gemm_plan_key_of(b2, 0, false));
  // The alignment fields hold the largest power of two, up to 256, dividing address and strides.
  auto const k6 = gemm_plan_key_of(other[6], 0, false);
  EXPECT_EQ(k6[kernels::detail::gemm_plan_key_align_a], 2);
  EXPECT_EQ(base[kernels::detail::gemm_plan_key_align_a], 256);
  EXPECT_EQ(base[kernels::detail::gemm_plan_key_align_c], 256);
  auto odd_ld = p;
  odd_ld.ldc = 129;  // 258-byte rows: 2-byte aligned
  EXPECT_EQ(gemm_plan_key_of(odd_ld, 0, false)[kernels::detail::gemm_plan_key_align_c], 2);
}

// The scratch an operand needs: its span from the first element, strides included.
TEST(GemmAutotune, OperandSpanCoversStrides) {
  using kernels::detail::gemm_operand_span;
  EXPECT_EQ(gemm_operand_span(1, 4, 8, 8, 999), 32);
  EXPECT_EQ(gemm_operand_span(1, 4, 8, 10, 0), 38);  // the last row's padding is not needed
  EXPECT_EQ(gemm_operand_span(3, 4, 8, 8, 32), 96);
  // MLA's absorb: q_nope [T = 5, H = 4, 128] of a [5, 4, 192] q, the head as the batch.
  EXPECT_EQ(gemm_operand_span(4, 5, 128, 4 * 192, 192), 3 * 192 + 4 * 4 * 192 + 128);
  EXPECT_EQ(gemm_operand_span(0, 4, 8, 8, 32), 0);
  EXPECT_EQ(gemm_operand_span(2, 0, 8, 8, 32), 0);
}

TEST(GemmCpu, ErrorSaysWhatWasWrong) {
  backend::cpu cpu;
  gemm_context<backend::cpu> ctx(cpu);
  std::vector<bf16> a(64), b(64), c(64);
  try {
    gemm(cpu, ctx, tensor_view(a.data(), dtype::bf16, {2, 8}),
         tensor_view(b.data(), dtype::bf16, {3, 4}), tensor_view(c.data(), dtype::bf16, {2, 3}), {},
         cpu.make_stream());
    FAIL() << "no error";
  } catch (error const& e) {
    EXPECT_NE(std::string(e.what()).find("shapes do not agree"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lightcore
