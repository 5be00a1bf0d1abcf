// silu_and_mul on the CUDA backend against the CPU reference: fresh random inputs, M in
// {1, 3, 257, 4096} times DeepSeek's intermediate sizes, padded and sliced views, output poisoned
// before each run and the padding checked untouched, CUDA-graph capture.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "activation_test_util.hpp"
#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/activation/activation.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::silu_and_mul;

// 0xFFFF is a negative NaN, which silu_and_mul never writes for finite inputs.
constexpr std::uint64_t poison_byte = 0xFF;
constexpr std::uint16_t poison_bits = 0xFFFF;

class SiluAndMulCudaTest : public test::cuda_test {};

// Runs silu_and_mul on the GPU on a [rows, 2 * cols] input with row stride in_stride into a
// [rows, cols] output with row stride out_stride, and compares with the CPU reference.
// Tolerance: the kernel uses expf (CUDA: at most 2 fp32 ulps off) where the reference uses
// std::exp, so the fp32 silu may differ in its last bits and, rarely (~1 in 2^15 elements), round
// to the neighbouring bf16; the product then differs by at most 2 bf16 ulps (silu's bf16 ulp is up
// to 2^-7 relative, the product's at least 2^-8). Allowed: every element within 2 ulps and at most
// 1e-3 of them not bit-identical (usually none are).
void check_against_cpu(std::int64_t rows, std::int64_t cols, std::int64_t in_stride,
                       std::int64_t out_stride, bool graph = false) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto const host_in = test::random_bf16(std::size_t(rows * in_stride), 12.0f, rng);
  tensor<backend::cuda> in(gpu, dtype::bf16, {rows, in_stride});
  tensor<backend::cuda> out(gpu, dtype::bf16, {rows, out_stride});
  gpu.copy(in.data(), host_in.data(), in.nbytes(), stream);
  gpu.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
  tensor_view const in_view = in.view().slice(1, 0, 2 * cols);
  tensor_view const out_view = out.view().slice(1, 0, cols);
  test::run_maybe_in_graph(stream, graph, [&] { silu_and_mul(gpu, in_view, out_view, stream); });
  std::vector<bf16> got(std::size_t(rows * out_stride));
  gpu.copy(got.data(), out.data(), out.nbytes(), stream);
  stream.synchronize();

  backend::cpu cpu;
  std::vector<bf16> want(std::size_t(rows * cols));
  silu_and_mul(cpu,
               tensor_view(const_cast<bf16*>(host_in.data()), dtype::bf16, {rows, 2 * cols},
                           {in_stride, 1}, device::cpu()),
               tensor_view(want.data(), dtype::bf16, {rows, cols}), cpu.make_stream());

  std::int64_t differ = 0, far = 0, clobbered = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < out_stride; ++c) {
      bf16 const g = got[std::size_t(r * out_stride + c)];
      if (c >= cols) {
        clobbered += g.bits != poison_bits;
        continue;
      }
      bf16 const w = want[std::size_t(r * cols + c)];
      if (g.bits == w.bits) continue;
      ++differ;
      if (g.bits == poison_bits || test::bf16_ulp_distance(g, w) > 2) {
        if (++far <= 8)
          ADD_FAILURE() << "[" << r << ", " << c << "] got 0x" << std::hex << g.bits << ", want 0x"
                        << w.bits;
      }
    }
  }
  EXPECT_EQ(far, 0) << "elements more than 2 bf16 ulps from the CPU reference (or unwritten)";
  EXPECT_LE(double(differ), 1e-3 * double(rows * cols)) << differ << " elements not bit-identical";
  EXPECT_EQ(clobbered, 0) << "elements written in the output's row padding";
}

using case_t = std::tuple<std::int64_t, std::int64_t>;  // rows, I

class SiluAndMulCuda : public SiluAndMulCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(SiluAndMulCuda, MatchesCpuReference) {
  auto const [rows, cols] = GetParam();
  check_against_cpu(rows, cols, 2 * cols, cols);
}

INSTANTIATE_TEST_SUITE_P(DeepSeekSizes, SiluAndMulCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 3, 257, 4096),
                                            ::testing::Values<std::int64_t>(18432, 2048, 10944,
                                                                            1408)),
                         [](::testing::TestParamInfo<case_t> const& info) {
                           return "M" + std::to_string(std::get<0>(info.param)) + "_I" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_F(SiluAndMulCudaTest, SmallAndPaddedViews) {
  check_against_cpu(5, 8, 16, 8);                // one vector per row
  check_against_cpu(7, 264, 2 * 264 + 16, 272);  // padded input and output rows
  check_against_cpu(70000, 16, 32, 24);  // more rows than gridDim.y allows: rows are strided
}

TEST_F(SiluAndMulCudaTest, CapturesIntoCudaGraph) { check_against_cpu(33, 2048, 4096, 2048, true); }

TEST_F(SiluAndMulCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<bf16> a(32), b(16);
  test::expect_error(
      [&] {
        silu_and_mul(gpu, tensor_view(a.data(), dtype::bf16, {2, 16}),
                     tensor_view(b.data(), dtype::bf16, {2, 8}), gpu.make_stream());
      },
      {"silu_and_mul on cuda:0 needs both views there", "input is on cpu"});
}

}  // namespace
}  // namespace lightcore
