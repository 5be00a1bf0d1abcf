// gemm on the CUDA backend (cuBLASLt) against the CPU backend on fresh random operands, over the
// projection shapes of DeepSeek-R1 and V2-Lite at M = 1, 3, 257: bf16 (f32 output for the lm
// head), strided-batched bf16 as MLA's absorb of W_UK and W_UV uses it (H = 128 and 16), and FP8
// with block scales (also checked against a double product of the dequantised operands, and at
// N = 576 and 2112, which are not multiples of 128). Outputs poisoned with NaN first; padding
// columns of C checked untouched; plans built once per shape; CUDA-graph capture. The algorithm
// selection: timed plans (and every candidate pinned in turn) match the CPU, a plan made inside a
// capture is timed at its next eager call, the switch off takes the first candidate.
// Bounds: both backends accumulate in fp32 in different orders and round to bf16 once, each
// ~1.1e-3 relative L2 from the exact product; their difference is allowed 4e-3 (f32 outputs
// 1e-4: the accumulation orders alone). FP8 against the double product: 1e-2 (bf16 rounding of
// C, plus the tensor cores' fp32 accumulation of FP8 products; measured ~2e-3).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "gemm_test_util.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::b_layout;
using kernels::gemm;
using kernels::gemm_autotune_options;
using kernels::gemm_context;
using kernels::gemm_fp8_block;
using kernels::gemm_options;
using kernels::gemm_stats;
using kernels::gemm_workspace_bytes;

constexpr double bf16_bound = 4e-3;
constexpr double f32_bound = 1e-4;
constexpr double fp8_exact_bound = 1e-2;
constexpr std::uint64_t poison_byte = 0xFF;  // bf16 and f32 NaN

class GemmCudaTest : public test::cuda_test {};

using test::download;
using test::upload;

// C [M, N] (row stride N + pad) = A [M, K] . B^T with B [N, K] bf16, on both backends.
// Returns the context's stats; `tune` is how it chooses algorithms.
gemm_stats check_bf16(
    std::int64_t m, std::int64_t n, std::int64_t k, dtype out, std::int64_t pad = 0,
    gemm_autotune_options const& tune = kernels::gemm_autotune_options_from_env()) {
  SCOPED_TRACE(::testing::Message() << "M " << m << ", N " << n << ", K " << k << ", C " << out
                                    << ", pad " << pad << ", pinned " << tune.pinned_candidate);
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu, tune);
  auto rng = test::test_rng();
  auto const a = test::random_normal_bf16(m * k, 1.0f, rng);
  auto const b = test::random_normal_bf16(n * k, 0.02f, rng);
  auto const da = upload(gpu, a, dtype::bf16, {m, k}, s);
  auto const db = upload(gpu, b, dtype::bf16, {n, k}, s);
  std::int64_t const ldc = n + pad;
  tensor<backend::cuda> dc(gpu, out, {m, ldc});
  tensor<backend::cuda> ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(dc.data(), dc.nbytes(), 1, poison_byte, s);
  tensor_view const c_view = dc.view().slice(1, 0, n);
  gemm(gpu, ctx, da, db, c_view, ws, s);

  backend::cpu cpu;
  gemm_context<backend::cpu> cpu_ctx(cpu);
  std::int64_t const es = std::int64_t(size_of(out));
  std::vector<std::byte> want(std::size_t(m * n * es));
  gemm(cpu, cpu_ctx, tensor_view(const_cast<bf16*>(a.data()), dtype::bf16, {m, k}),
       tensor_view(const_cast<bf16*>(b.data()), dtype::bf16, {n, k}),
       tensor_view(want.data(), out, {m, n}), {}, cpu.make_stream());

  std::vector<double> got_v, want_v;
  std::int64_t clobbered = 0;
  if (out == dtype::f32) {
    auto const got = download<float>(gpu, dc, s);
    auto const* w = reinterpret_cast<float const*>(want.data());
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        got_v.push_back(got[std::size_t(i * ldc + j)]);
        want_v.push_back(w[i * n + j]);
      }
      for (std::int64_t j = n; j < ldc; ++j)
        clobbered += !std::isnan(got[std::size_t(i * ldc + j)]);
    }
  } else {
    auto const got = download<bf16>(gpu, dc, s);
    auto const* w = reinterpret_cast<bf16 const*>(want.data());
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        got_v.push_back(float(got[std::size_t(i * ldc + j)]));
        want_v.push_back(float(w[i * n + j]));
      }
      for (std::int64_t j = n; j < ldc; ++j)
        clobbered += !std::isnan(float(got[std::size_t(i * ldc + j)]));
    }
  }
  EXPECT_LT(test::relative_l2(got_v, want_v), out == dtype::f32 ? f32_bound : bf16_bound);
  EXPECT_EQ(clobbered, 0) << "C's padding columns written";
  return ctx.stats();
}

// (N, K) of the linear layers: DeepSeek-R1 (hidden 7168, q_lora 1536, kv_lora 512, 128 heads,
// dense intermediate 18432) and V2-Lite (hidden 2048, no q_lora, 16 heads, intermediate 10944,
// whose K is not a multiple of 128).
using shape_t = std::tuple<std::int64_t, std::int64_t>;
std::vector<shape_t> const deepseek_linears = {
    {1536, 7168},  {24576, 1536}, {576, 7168},   {2112, 7168}, {32768, 512},
    {7168, 16384}, {36864, 7168}, {7168, 18432}, {3072, 2048}, {576, 2048},
    {4096, 512},   {2048, 2048},  {21888, 2048}, {2048, 10944}};

std::string case_name(std::int64_t m, shape_t nk) {
  return "M" + std::to_string(m) + "_N" + std::to_string(std::get<0>(nk)) + "_K" +
         std::to_string(std::get<1>(nk));
}

using bf16_case = std::tuple<std::int64_t, shape_t>;
class GemmBf16Cuda : public GemmCudaTest, public ::testing::WithParamInterface<bf16_case> {};

TEST_P(GemmBf16Cuda, MatchesCpu) {
  auto const [m, nk] = GetParam();
  check_bf16(m, std::get<0>(nk), std::get<1>(nk), dtype::bf16);
}

INSTANTIATE_TEST_SUITE_P(DeepSeekShapes, GemmBf16Cuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 3, 257),
                                            ::testing::ValuesIn(deepseek_linears)),
                         [](::testing::TestParamInfo<bf16_case> const& info) {
                           return case_name(std::get<0>(info.param), std::get<1>(info.param));
                         });

TEST_F(GemmCudaTest, LmHeadToF32) {
  check_bf16(1, 129280, 7168, dtype::f32);
  check_bf16(3, 102400, 2048, dtype::f32);
}

TEST_F(GemmCudaTest, PaddedOutputRowsAndOddSizes) {
  check_bf16(5, 200, 136, dtype::bf16, 8);
  check_bf16(7, 64, 520, dtype::f32, 4);
  check_bf16(1, 8, 8, dtype::bf16, 0);
}

// MLA's absorb, per head h over a [T, H, D] activation: q_nope[:, h, :128] . W_UK[h] ([128, 512],
// k_by_n) into [T, H, 512], then latent[:, h, :512] . W_UV[h]^T (W_UV [H, 128, 512], n_by_k) into
// [T, H, 128]. The head is the batch dimension of transposed views; q_nope sits inside a
// [T, H, 192] q (nope | rope), as the q projection writes it.
void check_absorb(std::int64_t t, std::int64_t h) {
  SCOPED_TRACE(::testing::Message() << "T " << t << ", H " << h);
  constexpr std::int64_t nope = 128, rope = 64, latent = 512, v_dim = 128;
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu);
  backend::cpu cpu;
  gemm_context<backend::cpu> cpu_ctx(cpu);
  auto rng = test::test_rng();
  auto const q = test::random_normal_bf16(t * h * (nope + rope), 1.0f, rng);
  auto const w_uk = test::random_normal_bf16(h * nope * latent, 0.05f, rng);
  auto const w_uv = test::random_normal_bf16(h * v_dim * latent, 0.05f, rng);
  auto const lat = test::random_normal_bf16(t * h * latent, 1.0f, rng);
  auto const dq = upload(gpu, q, dtype::bf16, {t, h, nope + rope}, s);
  auto const duk = upload(gpu, w_uk, dtype::bf16, {h, nope, latent}, s);
  auto const duv = upload(gpu, w_uv, dtype::bf16, {h, v_dim, latent}, s);
  auto const dlat = upload(gpu, lat, dtype::bf16, {t, h, latent}, s);
  tensor<backend::cuda> q_abs(gpu, dtype::bf16, {t, h, latent});
  tensor<backend::cuda> out(gpu, dtype::bf16, {t, h, v_dim});
  tensor<backend::cuda> ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(q_abs.data(), q_abs.nbytes(), 1, poison_byte, s);
  gpu.fill(out.data(), out.nbytes(), 1, poison_byte, s);
  auto by_head = [](tensor_view const& v) { return v.transpose(0, 1); };
  gemm(gpu, ctx, by_head(dq.view().slice(2, 0, nope)), duk, by_head(q_abs), ws, s,
       gemm_options{1.0f, 0.0f, b_layout::k_by_n});
  gemm(gpu, ctx, by_head(dlat), duv, by_head(out), ws, s,
       gemm_options{1.0f, 0.0f, b_layout::n_by_k});

  std::vector<bf16> want_abs(std::size_t(t * h * latent)), want_out(std::size_t(t * h * v_dim));
  auto host = [](auto const& v, dims shape) {
    return tensor_view(const_cast<bf16*>(v.data()), dtype::bf16, shape);
  };
  gemm(cpu, cpu_ctx, by_head(host(q, {t, h, nope + rope}).slice(2, 0, nope)),
       host(w_uk, {h, nope, latent}), by_head(host(want_abs, {t, h, latent})), {},
       cpu.make_stream(), gemm_options{1.0f, 0.0f, b_layout::k_by_n});
  gemm(cpu, cpu_ctx, by_head(host(lat, {t, h, latent})), host(w_uv, {h, v_dim, latent}),
       by_head(host(want_out, {t, h, v_dim})), {}, cpu.make_stream());
  EXPECT_LT(test::relative_l2(download<bf16>(gpu, q_abs, s), want_abs), bf16_bound) << "W_UK";
  EXPECT_LT(test::relative_l2(download<bf16>(gpu, out, s), want_out), bf16_bound) << "W_UV";
}

TEST_F(GemmCudaTest, StridedBatchedMlaAbsorb) {
  for (std::int64_t h : {128, 16})
    for (std::int64_t t : {1, 3, 257}) check_absorb(t, h);
}

// FP8 x [M, K] . w [N, K]^T with DeepSeek's scales, against the CPU backend everywhere and against
// a double product of the dequantised operands on a few rows.
gemm_stats check_fp8(
    std::int64_t m, std::int64_t n, std::int64_t k, bool graph = false,
    gemm_autotune_options const& tune = kernels::gemm_autotune_options_from_env()) {
  SCOPED_TRACE(::testing::Message() << "FP8 M " << m << ", N " << n << ", K " << k << ", pinned "
                                    << tune.pinned_candidate);
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu, tune);
  auto rng = test::test_rng();
  auto const x = test::random_fp8_activation(m, k, rng);
  auto const w = test::random_fp8_weight(n, k, rng);
  std::int64_t const nb = (n + 127) / 128;
  auto const dx = upload(gpu, x.codes, dtype::fp8_e4m3, {m, k}, s);
  auto const dxs = upload(gpu, x.scales, dtype::f32, {k / 128, m}, s);
  auto const dw = upload(gpu, w.codes, dtype::fp8_e4m3, {n, k}, s);
  std::int64_t const scale_ld = kernels::gemm_fp8_weight_scale_ld(k);
  auto const dws = upload(gpu, w.scales, dtype::f32, {nb, scale_ld}, s);
  tensor_view const dws_view = dws.view().slice(1, 0, k / 128);
  tensor<backend::cuda> dc(gpu, dtype::bf16, {m, n});
  tensor<backend::cuda> ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(dc.data(), dc.nbytes(), 1, poison_byte, s);
  test::run_maybe_in_graph(s, graph,
                           [&] { gemm_fp8_block(gpu, ctx, dx, dxs, dw, dws_view, dc, ws, s); });
  auto const got = download<bf16>(gpu, dc, s);

  backend::cpu cpu;
  gemm_context<backend::cpu> cpu_ctx(cpu);
  std::vector<bf16> want(std::size_t(m * n));
  gemm_fp8_block(cpu, cpu_ctx,
                 tensor_view(const_cast<fp8_e4m3*>(x.codes.data()), dtype::fp8_e4m3, {m, k}),
                 tensor_view(const_cast<float*>(x.scales.data()), dtype::f32, {k / 128, m}),
                 tensor_view(const_cast<fp8_e4m3*>(w.codes.data()), dtype::fp8_e4m3, {n, k}),
                 tensor_view(const_cast<float*>(w.scales.data()), dtype::f32, {nb, k / 128},
                             {scale_ld, 1}, device::cpu()),
                 tensor_view(want.data(), dtype::bf16, {m, n}), {}, cpu.make_stream());
  EXPECT_LT(test::relative_l2(got, want), bf16_bound) << "against the CPU backend";
  for (std::int64_t i : {std::int64_t(0), m / 2, m - 1}) {
    auto const exact = test::fp8_reference_row(x, w, m, n, k, i);
    std::vector<double> row(got.begin() + i * n, got.begin() + (i + 1) * n);
    EXPECT_LT(test::relative_l2(row, exact), fp8_exact_bound) << "row " << i << " against double";
  }
  return ctx.stats();
}

using fp8_case = std::tuple<std::int64_t, shape_t>;
class GemmFp8Cuda : public GemmCudaTest, public ::testing::WithParamInterface<fp8_case> {};

TEST_P(GemmFp8Cuda, MatchesCpuAndDouble) {
  auto const [m, nk] = GetParam();
  check_fp8(m, std::get<0>(nk), std::get<1>(nk));
}

// R1's FP8 projections: fused q_a + kv_a (2112), q_b, kv_b, o_proj, a TP-sharded o_proj (4096),
// the dense down projection at TP8, kv_a alone (576), and at TP8 the dense down (K 2304) and the
// experts' down (K 256), whose K/128 is not a multiple of 4. M: decode (4, the smallest cuBLASLt
// takes), a few rows, a prefill chunk.
INSTANTIATE_TEST_SUITE_P(
    R1Shapes, GemmFp8Cuda,
    ::testing::Combine(::testing::Values<std::int64_t>(4, 12, 260),
                       ::testing::Values(shape_t{2112, 7168}, shape_t{24576, 1536},
                                         shape_t{32768, 512}, shape_t{7168, 16384},
                                         shape_t{4096, 7168}, shape_t{7168, 2048},
                                         shape_t{576, 7168}, shape_t{7168, 2304},
                                         shape_t{4096, 256})),
    [](::testing::TestParamInfo<fp8_case> const& info) {
      return case_name(std::get<0>(info.param), std::get<1>(info.param));
    });

TEST_F(GemmCudaTest, Fp8OddShapes) {
  check_fp8(4096, 2112, 7168);
  check_fp8(8, 64, 128);
  check_fp8(4, 192, 384);  // K/128 = 3: the padded weight-scale stride
}

TEST_F(GemmCudaTest, CapturesIntoCudaGraph) {
  check_fp8(36, 2112, 7168, true);
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu);
  tensor<backend::cuda> a(gpu, dtype::bf16, {16, 256}), b(gpu, dtype::bf16, {64, 256});
  tensor<backend::cuda> c(gpu, dtype::bf16, {16, 64}), ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(a.data(), a.numel(), 2, 0x3F80, s);  // 1.0
  gpu.fill(b.data(), b.numel(), 2, 0x3F00, s);  // 0.5
  gpu.fill(c.data(), c.nbytes(), 1, poison_byte, s);
  test::run_in_graph(s, [&] { gemm(gpu, ctx, a, b, c, ws, s); });
  for (bf16 v : download<bf16>(gpu, c, s)) ASSERT_EQ(float(v), 128.0f);
}

TEST_F(GemmCudaTest, PlansOncePerShape) {
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu);
  tensor<backend::cuda> a(gpu, dtype::bf16, {64, 256}), b(gpu, dtype::bf16, {128, 256});
  tensor<backend::cuda> c(gpu, dtype::bf16, {64, 128}), ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(a.data(), a.numel(), 2, 0, s);
  gpu.fill(b.data(), b.numel(), 2, 0, s);
  for (int i = 0; i < 3; ++i) gemm(gpu, ctx, a, b, c, ws, s);
  EXPECT_EQ(ctx.stats().plans, 1);
  EXPECT_EQ(ctx.stats().heuristic_queries, 1);
  EXPECT_EQ(ctx.stats().launches, 3);
  gemm(gpu, ctx, a.view().slice(0, 0, 8), b, c.view().slice(0, 0, 8), ws, s);  // M 8: new plan
  EXPECT_EQ(ctx.stats().plans, 2);
  s.synchronize();
}

// The selection on: one heuristic query, the candidates timed once, the kept one matches the CPU;
// off: no timing. Then every candidate pinned in turn also matches (each is valid for the shape).
TEST_F(GemmCudaTest, TunedPlansMatchCpu) {
  gemm_autotune_options on;
  on.enabled = true;
  gemm_autotune_options off = on;
  off.enabled = false;
  gemm_stats const tuned = check_bf16(512, 2112, 7168, dtype::bf16, 0, on);
  EXPECT_EQ(tuned.plans, 1);
  EXPECT_EQ(tuned.heuristic_queries, 1);
  EXPECT_EQ(tuned.tuned_plans, 1) << "cuBLASLt offered a single bf16 algorithm";
  EXPECT_GE(tuned.candidates_timed, 2);
  EXPECT_LE(tuned.candidates_timed, on.max_candidates);
  EXPECT_EQ(tuned.tuning_deferred, 0);
  gemm_stats const first = check_bf16(512, 2112, 7168, dtype::bf16, 0, off);
  EXPECT_EQ(first.tuned_plans, 0);
  EXPECT_EQ(first.candidates_timed, 0);
  // Every candidate of a shape, pinned in turn.
  gemm_stats const counted = check_bf16(260, 576, 2048, dtype::f32, 8, on);
  EXPECT_EQ(counted.tuned_plans, 1);
  for (int i = 0; i < int(counted.candidates_timed); ++i) {
    gemm_autotune_options pinned = on;
    pinned.pinned_candidate = i;
    gemm_stats const st = check_bf16(260, 576, 2048, dtype::f32, 8, pinned);
    EXPECT_EQ(st.tuned_plans, 1);
    EXPECT_EQ(st.tuned_not_first, i != 0) << "candidate " << i << " was not the one kept";
  }
  // FP8 block-scaled: fewer algorithms may exist; whichever is kept matches CPU and double.
  for (auto [m, n, k] : {std::array<std::int64_t, 3>{256, 2112, 2048}, {260, 8192, 512}}) {
    gemm_stats const f = check_fp8(m, n, k, false, on);
    EXPECT_EQ(f.plans, 1);
    EXPECT_EQ(f.heuristic_queries, 1);
    EXPECT_LE(f.tuned_plans, 1);
    check_fp8(m, n, k, false, off);
    for (int i = 0; i < int(f.candidates_timed); ++i) {
      gemm_autotune_options pinned = on;
      pinned.pinned_candidate = i;
      check_fp8(m, n, k, false, pinned);
    }
  }
}

// A plan first made inside a graph capture takes the first candidate (nothing is timed or
// allocated there), and its next eager call times the candidates without a new heuristic query.
TEST_F(GemmCudaTest, CaptureDefersTuningToTheNextEagerCall) {
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_autotune_options on;
  on.enabled = true;
  gemm_context<backend::cuda> ctx(gpu, on);
  std::int64_t const m = 256, n = 512, k = 1024;
  tensor<backend::cuda> a(gpu, dtype::bf16, {m, k}), b(gpu, dtype::bf16, {n, k});
  tensor<backend::cuda> c(gpu, dtype::bf16, {m, n}), ws(gpu, dtype::u8, {gemm_workspace_bytes});
  gpu.fill(a.data(), a.numel(), 2, 0x3F80, s);  // 1.0
  gpu.fill(b.data(), b.numel(), 2, 0x3E80, s);  // 0.25
  gpu.fill(c.data(), c.nbytes(), 1, poison_byte, s);
  test::run_in_graph(s, [&] { gemm(gpu, ctx, a, b, c, ws, s); });
  for (bf16 v : download<bf16>(gpu, c, s)) ASSERT_EQ(float(v), 256.0f);
  gemm_stats st = ctx.stats();
  EXPECT_EQ(st.plans, 1);
  EXPECT_EQ(st.tuned_plans, 0);
  EXPECT_EQ(st.tuning_deferred, 1);
  test::run_in_graph(s, [&] { gemm(gpu, ctx, a, b, c, ws, s); });  // still captured: waits
  EXPECT_EQ(ctx.stats().tuning_deferred, 1);
  EXPECT_EQ(ctx.stats().tuned_plans, 0);
  gpu.fill(c.data(), c.nbytes(), 1, poison_byte, s);
  gemm(gpu, ctx, a, b, c, ws, s);
  for (bf16 v : download<bf16>(gpu, c, s)) ASSERT_EQ(float(v), 256.0f);
  st = ctx.stats();
  EXPECT_EQ(st.plans, 1);
  EXPECT_EQ(st.heuristic_queries, 1);
  EXPECT_EQ(st.tuned_plans, 1);
  EXPECT_EQ(st.launches, 3);
  // Timed once: later calls, captured or not, only launch.
  test::run_in_graph(s, [&] { gemm(gpu, ctx, a, b, c, ws, s); });
  gemm(gpu, ctx, a, b, c, ws, s);
  s.synchronize();
  EXPECT_EQ(ctx.stats().tuned_plans, 1);
  EXPECT_EQ(ctx.stats().candidates_timed, st.candidates_timed);
}

// Scratch larger than allowed: the first candidate, untimed, and still the right product.
TEST_F(GemmCudaTest, ScratchOverTheLimitKeepsFirstCandidate) {
  gemm_autotune_options small;
  small.enabled = true;
  small.max_scratch_bytes = 1 << 20;
  gemm_stats const st = check_bf16(128, 1024, 2048, dtype::bf16, 0, small);  // ~4.5 MB of scratch
  EXPECT_EQ(st.tuned_plans, 0);
  EXPECT_EQ(st.candidates_timed, 0);
  EXPECT_EQ(st.plans, 1);
}

TEST_F(GemmCudaTest, RejectsViewsOnTheHost) {
  backend::cuda gpu(0);
  gemm_context<backend::cuda> ctx(gpu);
  std::vector<bf16> a(64), b(64), c(64);
  EXPECT_THROW(gemm(gpu, ctx, tensor_view(a.data(), dtype::bf16, {2, 8}),
                    tensor_view(b.data(), dtype::bf16, {4, 8}),
                    tensor_view(c.data(), dtype::bf16, {2, 4}), {}, gpu.make_stream()),
               error);
}

}  // namespace
}  // namespace lightcore
