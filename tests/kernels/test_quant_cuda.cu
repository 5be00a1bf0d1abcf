// quantize_per_token_group on the CUDA backend against the CPU reference: fresh random
// activations, M in {1, 3, 257, 4096} times DeepSeek's K (7168 hidden, 18432 and 2048
// intermediate), both scale layouts with the leading dimension padded to a multiple of 4, outputs
// poisoned before each run and the padding checked untouched, CUDA-graph capture.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/quant/quant.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "quant_test_util.hpp"

namespace lightcore {
namespace {

using kernels::quant_group_size;
using kernels::quantize_per_token_group;
using kernels::scale_layout;

// 0xFF: the fp8 code -NaN (the kernel writes only 0x7F for NaN) and the f32 NaN 0xFFFFFFFF (never
// a scale: amax ignores NaN), so nothing unwritten passes for a result.
constexpr std::uint64_t poison_byte = 0xFF;

class QuantCudaTest : public test::cuda_test {};

// Quantises random [rows, cols] activations on the GPU and on the CPU and compares.
// Tolerances: both sides compute the scale and its reciprocal in IEEE fp32 (no fast math) and
// share the formulas, so we expect bit-identical results. Allowed anyway: scales within 1 fp32
// ulp, and at most 1e-4 of the codes different (an ulp off the product changes the fp8 code only
// when it sits at an fp8 rounding boundary).
void check_against_cpu(std::int64_t rows, std::int64_t cols, scale_layout layout,
                       bool graph = false) {
  SCOPED_TRACE(::testing::Message() << "M " << rows << ", K " << cols << ", " << layout);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto host_x = test::random_activations(rows, cols, rng);
  std::int64_t const groups = cols / quant_group_size;
  std::int64_t const outer = layout == scale_layout::row_major ? rows : groups;
  std::int64_t const inner = layout == scale_layout::row_major ? groups : rows;
  std::int64_t const ld = (inner + 3) / 4 * 4;  // padded for TMA alignment

  tensor<backend::cuda> x(gpu, dtype::bf16, {rows, cols});
  tensor<backend::cuda> q(gpu, dtype::fp8_e4m3, {rows, cols});
  tensor<backend::cuda> s(gpu, dtype::f32, {outer, ld});
  gpu.copy(x.data(), host_x.data(), x.nbytes(), stream);
  gpu.fill(q.data(), q.nbytes(), 1, poison_byte, stream);
  gpu.fill(s.data(), s.nbytes(), 1, poison_byte, stream);
  tensor_view const s_view = s.view().slice(1, 0, inner);
  test::run_maybe_in_graph(stream, graph,
                           [&] { quantize_per_token_group(gpu, x, q, s_view, layout, stream); });
  std::vector<std::uint8_t> got_q(std::size_t(rows * cols));
  std::vector<std::uint32_t> got_s(std::size_t(outer * ld));
  gpu.copy(got_q.data(), q.data(), q.nbytes(), stream);
  gpu.copy(got_s.data(), s.data(), s.nbytes(), stream);
  stream.synchronize();

  backend::cpu cpu;
  std::vector<std::uint8_t> want_q(got_q.size());
  std::vector<std::uint32_t> want_s(std::size_t(outer * inner));
  quantize_per_token_group(cpu, tensor_view(host_x.data(), dtype::bf16, {rows, cols}),
                           tensor_view(want_q.data(), dtype::fp8_e4m3, {rows, cols}),
                           tensor_view(want_s.data(), dtype::f32, {outer, inner}), layout,
                           cpu.make_stream());

  std::int64_t scale_off = 0, scale_far = 0, clobbered = 0;
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::int64_t i = 0; i < ld; ++i) {
      std::uint32_t const g = got_s[std::size_t(o * ld + i)];
      if (i >= inner) {
        clobbered += g != 0xFFFF'FFFFu;
        continue;
      }
      std::uint32_t const w = want_s[std::size_t(o * inner + i)];
      if (g == w) continue;
      ++scale_off;
      // Positive finite scales: adjacent floats have adjacent encodings.
      if (std::llabs(std::int64_t(g) - std::int64_t(w)) > 1 && ++scale_far <= 8)
        ADD_FAILURE() << "scale [" << o << ", " << i << "] got " << std::bit_cast<float>(g)
                      << ", want " << std::bit_cast<float>(w);
    }
  }
  EXPECT_EQ(scale_far, 0) << "scales more than 1 fp32 ulp from the CPU reference";
  EXPECT_EQ(clobbered, 0) << "scales written in the padding of the leading dimension";
  std::int64_t code_off = 0;
  for (std::size_t i = 0; i < got_q.size(); ++i) {
    if (got_q[i] == want_q[i]) continue;
    if (++code_off <= 8)
      std::cout << "  code [" << i / std::size_t(cols) << ", " << i % std::size_t(cols)
                << "] got 0x" << std::hex << int(got_q[i]) << ", want 0x" << int(want_q[i])
                << std::dec << "\n";
    EXPECT_NE(got_q[i], 0xFF) << "code " << i << " left unwritten";
  }
  EXPECT_LE(double(code_off), 1e-4 * double(rows * cols)) << code_off << " codes differ";
  if (scale_off + code_off > 0)
    std::cout << "  " << scale_off << " scales and " << code_off << " codes not bit-identical\n";
}

using case_t = std::tuple<std::int64_t, std::int64_t, scale_layout>;  // M, K, layout

class QuantCuda : public QuantCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(QuantCuda, MatchesCpuReference) {
  auto const [rows, cols, layout] = GetParam();
  check_against_cpu(rows, cols, layout);
}

INSTANTIATE_TEST_SUITE_P(DeepSeekSizes, QuantCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 3, 257, 4096),
                                            ::testing::Values<std::int64_t>(7168, 18432, 2048),
                                            ::testing::Values(scale_layout::row_major,
                                                              scale_layout::k_major)),
                         [](::testing::TestParamInfo<case_t> const& info) {
                           return "M" + std::to_string(std::get<0>(info.param)) + "_K" +
                                  std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) == scale_layout::row_major ? "_row_major"
                                                                                      : "_k_major");
                         });

TEST_F(QuantCudaTest, SmallShapes) {
  for (scale_layout layout : {scale_layout::row_major, scale_layout::k_major}) {
    check_against_cpu(1, 128, layout);      // one group: a single half-warp does everything
    check_against_cpu(5, 384, layout);      // an odd number of groups (the last warp half idles)
    check_against_cpu(70001, 256, layout);  // more groups than one sweep of the grid
  }
}

TEST_F(QuantCudaTest, CapturesIntoCudaGraph) {
  check_against_cpu(33, 7168, scale_layout::k_major, true);
}

TEST_F(QuantCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<bf16> x(128);
  std::vector<std::uint8_t> q(128);
  std::vector<float> s(1);
  test::expect_error(
      [&] {
        quantize_per_token_group(gpu, tensor_view(x.data(), dtype::bf16, {1, 128}),
                                 tensor_view(q.data(), dtype::fp8_e4m3, {1, 128}),
                                 tensor_view(s.data(), dtype::f32, {1, 1}), scale_layout::row_major,
                                 gpu.make_stream());
      },
      {"quantize_per_token_group on cuda:0 needs every view there", "x is on cpu"});
}

}  // namespace
}  // namespace lightcore
