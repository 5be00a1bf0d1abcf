// gemm_fp8_small_m_cuda (the weight-streaming FP8 block-scaled kernel for M <= 128) against the CPU
// backend's gemm_fp8_block and against a double product of the dequantised operands, on fresh
// random operands: DeepSeek-R1's projection shapes at every token-tile count (M 4 .. 128), odd
// shapes (N = 16, 576, 2112, 4112; K/128 = 1, 3, 9; M not a power of two), strided x and C, output
// poisoned with NaN first and C's padding checked untouched, bit-identical results on a rerun
// (the K split sums in a fixed order) and through a CUDA graph, and the problems it refuses.
// Bounds (as in test_gemm_cuda.cu): against the CPU backend 4e-3 relative L2 (both accumulate in
// fp32 in different orders, ~1e-6, and round to bf16 once, ~1.1e-3 each); against the double
// product 1e-2 (bf16 rounding of C plus fp32 accumulation of the FP8 products).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "gemm_test_util.hpp"
#include "kernels/gemm/fp8_small_m_params.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::gemm_fp8_small_m_supported;
using kernels::gemm_problem;
using kernels::detail::check_gemm_fp8_args;
using kernels::detail::gemm_fp8_small_m_cuda;

constexpr double cpu_bound = 4e-3;
constexpr double exact_bound = 1e-2;
constexpr std::uint64_t poison_byte = 0xFF;  // bf16 NaN

class GemmFp8SmallMCuda : public test::cuda_test {};

using test::download;
using test::upload;

// How a case runs: x's row stride is K + x_pad, C's N + c_pad.
struct run_options {
  bool graph = false;
  std::int64_t x_pad = 0, c_pad = 0;
};

// The operands of one product on the device, and the problem the kernel is handed.
struct fp8_case {
  std::int64_t m, n, k;
  test::fp8_operand x, w;
  tensor<backend::cuda> dx, dxs, dw, dws, dc;
  gemm_problem problem;
};

fp8_case make_case(backend::cuda& gpu, backend::cuda::stream_type const& s, std::int64_t m,
                   std::int64_t n, std::int64_t k, run_options const& opt) {
  auto rng = test::test_rng();
  fp8_case c{m,
             n,
             k,
             test::random_fp8_activation(m, k, rng),
             test::random_fp8_weight(n, k, rng),
             {},
             {},
             {},
             {},
             {},
             {}};
  std::int64_t const ldx = k + opt.x_pad, ldc = n + opt.c_pad, nb = (n + 127) / 128;
  std::vector<fp8_e4m3> x_strided(std::size_t(m * ldx), fp8_e4m3::from_bits(0x7F));  // NaN gaps
  for (std::int64_t i = 0; i < m; ++i)
    std::memcpy(&x_strided[std::size_t(i * ldx)], &c.x.codes[std::size_t(i * k)], std::size_t(k));
  c.dx = upload(gpu, x_strided, dtype::fp8_e4m3, {m, ldx}, s);
  c.dxs = upload(gpu, c.x.scales, dtype::f32, {k / 128, m}, s);
  c.dw = upload(gpu, c.w.codes, dtype::fp8_e4m3, {n, k}, s);
  c.dws = upload(gpu, c.w.scales, dtype::f32, {nb, kernels::gemm_fp8_weight_scale_ld(k)}, s);
  c.dc = tensor<backend::cuda>(gpu, dtype::bf16, {m, ldc});
  gpu.fill(c.dc.data(), c.dc.nbytes(), 1, poison_byte, s);
  c.problem = check_gemm_fp8_args(gpu.where(), c.dx.view().slice(1, 0, k), c.dxs, c.dw,
                                  c.dws.view().slice(1, 0, k / 128), c.dc.view().slice(1, 0, n));
  return c;
}

// The CPU backend's product [m, n] of the case's operands.
std::vector<bf16> cpu_product(fp8_case const& c) {
  backend::cpu cpu;
  kernels::gemm_context<backend::cpu> ctx(cpu);
  std::int64_t const nb = (c.n + 127) / 128, scale_ld = kernels::gemm_fp8_weight_scale_ld(c.k);
  std::vector<bf16> want(std::size_t(c.m * c.n));
  kernels::gemm_fp8_block(
      cpu, ctx, tensor_view(const_cast<fp8_e4m3*>(c.x.codes.data()), dtype::fp8_e4m3, {c.m, c.k}),
      tensor_view(const_cast<float*>(c.x.scales.data()), dtype::f32, {c.k / 128, c.m}),
      tensor_view(const_cast<fp8_e4m3*>(c.w.codes.data()), dtype::fp8_e4m3, {c.n, c.k}),
      tensor_view(const_cast<float*>(c.w.scales.data()), dtype::f32, {nb, c.k / 128}, {scale_ld, 1},
                  device::cpu()),
      tensor_view(want.data(), dtype::bf16, {c.m, c.n}), {}, cpu.make_stream());
  return want;
}

// Runs the kernel on a fresh case and checks it; returns C as the kernel left it ([m, ldc]).
std::vector<bf16> check(std::int64_t m, std::int64_t n, std::int64_t k, run_options opt = {}) {
  SCOPED_TRACE(::testing::Message()
               << "M " << m << ", N " << n << ", K " << k << ", x pad " << opt.x_pad << ", C pad "
               << opt.c_pad << (opt.graph ? ", in a CUDA graph" : ""));
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  fp8_case c = make_case(gpu, s, m, n, k, opt);
  EXPECT_TRUE(gemm_fp8_small_m_supported(c.problem));
  test::run_maybe_in_graph(s, opt.graph, [&] { gemm_fp8_small_m_cuda(c.problem, 0, s.get()); });
  auto const raw = download<bf16>(gpu, c.dc, s);
  std::int64_t const ldc = n + opt.c_pad;
  std::vector<bf16> got(std::size_t(m * n));
  std::int64_t clobbered = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j)
      got[std::size_t(i * n + j)] = raw[std::size_t(i * ldc + j)];
    for (std::int64_t j = n; j < ldc; ++j)
      clobbered += !std::isnan(float(raw[std::size_t(i * ldc + j)]));
  }
  EXPECT_EQ(clobbered, 0) << "C's padding columns written";
  EXPECT_LT(test::relative_l2(got, cpu_product(c)), cpu_bound) << "against the CPU backend";
  for (std::int64_t i : {std::int64_t(0), m / 2, m - 1}) {
    auto const exact = test::fp8_reference_row(c.x, c.w, m, n, k, i);
    std::vector<double> row(got.begin() + i * n, got.begin() + (i + 1) * n);
    EXPECT_LT(test::relative_l2(row, exact), exact_bound) << "row " << i << " against double";
  }
  return raw;
}

using shape_t = std::tuple<std::int64_t, std::int64_t>;
using small_m_case = std::tuple<std::int64_t, shape_t>;
class GemmFp8SmallMShapes : public GemmFp8SmallMCuda,
                            public ::testing::WithParamInterface<small_m_case> {};

TEST_P(GemmFp8SmallMShapes, MatchesCpuAndDouble) {
  auto const [m, nk] = GetParam();
  check(m, std::get<0>(nk), std::get<1>(nk));
}

// R1's FP8 projections at decode (N x K): fused q_a + kv_a, q_b, kv_b, o_proj, a 4096-wide shard,
// the TP8 dense down projection, kv_a alone. M: one case per token-tile count (1, 2, 4, 8, 16
// tiles of 8), two of them not a multiple of 8.
INSTANTIATE_TEST_SUITE_P(
    R1Decode, GemmFp8SmallMShapes,
    ::testing::Combine(::testing::Values<std::int64_t>(4, 12, 32, 60, 128),
                       ::testing::Values(shape_t{2112, 7168}, shape_t{24576, 1536},
                                         shape_t{32768, 512}, shape_t{7168, 16384},
                                         shape_t{4096, 7168}, shape_t{7168, 2048},
                                         shape_t{576, 7168})),
    [](::testing::TestParamInfo<small_m_case> const& info) {
      shape_t const nk = std::get<1>(info.param);
      return "M" + std::to_string(std::get<0>(info.param)) + "_N" +
             std::to_string(std::get<0>(nk)) + "_K" + std::to_string(std::get<1>(nk));
    });

TEST_F(GemmFp8SmallMCuda, OddShapes) {
  check(4, 16, 128);      // one row tile, one K block: no split
  check(8, 48, 384);      // K/128 = 3: the weight scales' padded row stride
  check(100, 80, 256);    // a CTA with warps past N
  check(28, 576, 2304);   // K/128 = 18, N = 4.5 blocks of 128 rows
  check(44, 4112, 1152);  // N = 257 tiles of 16, a last block of 16 rows with its own scale
  check(124, 2112, 512);
  check(20, 7168, 256);  // TP8 experts' down projection: K/128 = 2
}

TEST_F(GemmFp8SmallMCuda, StridedActivationAndOutput) {
  check(12, 576, 7168, {false, 128, 8});  // x's gaps hold NaN codes: a stray read shows
  check(64, 2112, 1536, {false, 16, 64});
}

// The K split sums in rank order: two runs agree bit for bit, and so does a graph replay.
TEST_F(GemmFp8SmallMCuda, DeterministicAndCapturable) {
  struct shape {
    std::int64_t m, n, k;
  };
  for (shape const sh : {shape{4, 576, 7168}, shape{36, 2112, 7168}, shape{128, 1536, 7168}}) {
    std::int64_t const m = sh.m, n = sh.n, k = sh.k;
    SCOPED_TRACE(::testing::Message() << "M " << m << ", N " << n << ", K " << k);
    backend::cuda gpu(0);
    auto const s = gpu.make_stream();
    fp8_case c = make_case(gpu, s, m, n, k, {});
    gemm_fp8_small_m_cuda(c.problem, 0, s.get());
    auto const first = download<std::uint16_t>(gpu, c.dc, s);
    gpu.fill(c.dc.data(), c.dc.nbytes(), 1, poison_byte, s);
    gemm_fp8_small_m_cuda(c.problem, 0, s.get());
    EXPECT_EQ(download<std::uint16_t>(gpu, c.dc, s), first) << "rerun";
    gpu.fill(c.dc.data(), c.dc.nbytes(), 1, poison_byte, s);
    test::run_in_graph(s, [&] { gemm_fp8_small_m_cuda(c.problem, 0, s.get()); });
    EXPECT_EQ(download<std::uint16_t>(gpu, c.dc, s), first) << "graph";
    std::vector<bf16> got(first.size());
    std::memcpy(got.data(), first.data(), first.size() * sizeof(std::uint16_t));
    EXPECT_LT(test::relative_l2(got, cpu_product(c)), cpu_bound);
  }
}

TEST_F(GemmFp8SmallMCuda, InsideACudaGraph) { check(16, 2112, 7168, {true, 0, 0}); }

TEST_F(GemmFp8SmallMCuda, RefusesWhatItCannotTake) {
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  fp8_case c = make_case(gpu, s, 8, 64, 256, {});
  gemm_problem p = c.problem;
  p.m = 132;  // past 16 tiles of 8
  EXPECT_FALSE(gemm_fp8_small_m_supported(p));
  EXPECT_THROW(gemm_fp8_small_m_cuda(p, 0, s.get()), error);
  p = c.problem;
  p.n = 56;  // not a multiple of 16
  EXPECT_FALSE(gemm_fp8_small_m_supported(p));
  EXPECT_THROW(gemm_fp8_small_m_cuda(p, 0, s.get()), error);
  p = c.problem;
  p.a = static_cast<std::uint8_t const*>(p.a) + 8;  // x not 16-byte aligned
  EXPECT_FALSE(gemm_fp8_small_m_supported(p));
  EXPECT_THROW(gemm_fp8_small_m_cuda(p, 0, s.get()), error);
  p = c.problem;
  p.c_type = dtype::f32;
  EXPECT_FALSE(gemm_fp8_small_m_supported(p));
  EXPECT_THROW(gemm_fp8_small_m_cuda(p, 0, s.get()), error);
  EXPECT_TRUE(gemm_fp8_small_m_supported(c.problem));
  s.synchronize();
}

}  // namespace
}  // namespace lightcore
