// convert on the CUDA backend: every supported pair, sizes with odd tails, views sliced to start
// at unaligned elements, compared bit for bit with the CPU reference; output poisoned before each
// run and the elements around the destination view checked untouched.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::convert;
using kernels::convert_pair;

// The poison byte. 0xFF..FF is a negative NaN with every mantissa bit set, which no supported cast
// writes (NaNs come out positive and canonical; bf16 -> f32 keeps the sign and payload of a bf16
// NaN but its low 16 bits are zero), so an element left unwritten cannot pass for a result.
constexpr std::uint64_t poison_byte = 0xFF;
// Elements kept around the destination view, checked still poisoned afterwards.
constexpr std::int64_t guard = 32;

class ConvertCudaTest : public test::cuda_test {};

struct offsets {
  std::int64_t src;  // first element of the source view in its buffer
  std::int64_t dst;
};

// Converts n random elements on the GPU, src and dst views starting `off` elements into their
// buffers, and compares with the CPU reference on the same input.
void check_against_cpu(convert_pair pair, std::int64_t n, offsets off) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::size_t const ss = size_of(pair.src), ds = size_of(pair.dst);
  std::int64_t const src_total = off.src + n + guard, dst_total = off.dst + n + guard;

  auto rng = test::test_rng();
  std::vector<std::byte> host_src(std::size_t(src_total) * ss);
  test::fill_random(pair.src, host_src.data(), std::size_t(src_total), rng);

  tensor<backend::cuda> src(gpu, pair.src, {src_total});
  tensor<backend::cuda> dst(gpu, pair.dst, {dst_total});
  gpu.copy(src.data(), host_src.data(), host_src.size(), stream);
  gpu.fill(dst.data(), dst.nbytes(), 1, poison_byte, stream);
  convert(gpu, src.view().slice(0, off.src, off.src + n), dst.view().slice(0, off.dst, off.dst + n),
          stream);
  std::vector<std::byte> got(dst.nbytes());
  gpu.copy(got.data(), dst.data(), got.size(), stream);
  stream.synchronize();

  backend::cpu cpu;
  std::vector<std::byte> want(std::size_t(n) * ds);
  std::byte* const src_view = host_src.data() + std::size_t(off.src) * ss;
  convert(cpu, tensor_view(src_view, pair.src, {n}), tensor_view(want.data(), pair.dst, {n}),
          cpu.make_stream());

  EXPECT_EQ(test::bit_mismatches(got.data() + std::size_t(off.dst) * ds, want.data(),
                                 std::size_t(n), pair.dst, src_view, pair.src),
            "");
  std::int64_t clobbered = 0;
  for (std::int64_t i = 0; i < dst_total; ++i) {
    if (i >= off.dst && i < off.dst + n) continue;
    for (std::size_t b = 0; b < ds; ++b)
      clobbered += got[std::size_t(i) * ds + b] != std::byte(poison_byte);
  }
  EXPECT_EQ(clobbered, 0) << "bytes written outside the destination view";
}

using case_t = std::tuple<std::size_t, std::int64_t, offsets>;  // pair index, n, offsets

class ConvertCuda : public ConvertCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(ConvertCuda, MatchesCpuReferenceBitExactly) {
  auto const [pair_index, n, off] = GetParam();
  check_against_cpu(kernels::convert_pairs[pair_index], n, off);
}

std::string case_name(::testing::TestParamInfo<case_t> const& info) {
  auto const [pair_index, n, off] = info.param;
  convert_pair const p = kernels::convert_pairs[pair_index];
  return std::string(name_of(p.src)) + "_to_" + std::string(name_of(p.dst)) + "_n" +
         std::to_string(n) + "_at" + std::to_string(off.src) + "_" + std::to_string(off.dst);
}

auto all_pairs() {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < kernels::convert_pairs.size(); ++i) v.push_back(i);
  return ::testing::ValuesIn(v);
}

// Sizes: below one vector, around a vector (4 elements for the f32 pairs, 8 for bf16 <-> fp8),
// odd tails, and past one full sweep of the grid (132 SMs * 2048 threads * unroll * vector
// elements, at most ~8.7M), so that threads loop. Offsets: aligned; both views at element 1 (the
// vector path after a scalar head); src and dst misaligned differently (the all-scalar path).
INSTANTIATE_TEST_SUITE_P(Sizes, ConvertCuda,
                         ::testing::Combine(all_pairs(),
                                            ::testing::Values<std::int64_t>(1, 3, 8, 15, 16, 17, 33,
                                                                            1000, 4099, 65543),
                                            ::testing::Values(offsets{0, 0}, offsets{1, 1},
                                                              offsets{1, 0}, offsets{0, 3})),
                         case_name);

INSTANTIATE_TEST_SUITE_P(LargerThanOneSweep, ConvertCuda,
                         ::testing::Combine(all_pairs(), ::testing::Values<std::int64_t>(9'000'011),
                                            ::testing::Values(offsets{0, 0}, offsets{1, 1})),
                         case_name);

// Two-dimensional views (a [rows, cols] weight) go through the same flat kernel.
TEST_F(ConvertCudaTest, MatrixViewsMatchCpuReference) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  std::int64_t const rows = 129, cols = 7168;  // DeepSeek-V3's hidden size
  std::vector<float> host(std::size_t(rows * cols));
  test::fill_random(dtype::f32, host.data(), host.size(), rng);
  tensor<backend::cuda> src(gpu, dtype::f32, {rows, cols});
  tensor<backend::cuda> dst(gpu, dtype::fp8_e4m3, {rows, cols});
  gpu.copy(src.data(), host.data(), src.nbytes(), stream);
  gpu.fill(dst.data(), dst.nbytes(), 1, poison_byte, stream);
  convert(gpu, src, dst, stream);
  std::vector<std::uint8_t> got(std::size_t(rows * cols)), want(got.size());
  gpu.copy(got.data(), dst.data(), dst.nbytes(), stream);
  stream.synchronize();
  backend::cpu cpu;
  convert(cpu, tensor_view(host.data(), dtype::f32, {rows, cols}),
          tensor_view(want.data(), dtype::fp8_e4m3, {rows, cols}), cpu.make_stream());
  EXPECT_EQ(test::bit_mismatches(got.data(), want.data(), got.size(), dtype::fp8_e4m3, host.data(),
                                 dtype::f32),
            "");
}

// convert is safe to capture into a CUDA graph (decode runs as graphs): no allocation, no sync.
TEST_F(ConvertCudaTest, CapturesIntoCudaGraph) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  std::int64_t const n = 12345;
  std::vector<float> host(static_cast<std::size_t>(n));
  test::fill_random(dtype::f32, host.data(), host.size(), rng);
  tensor<backend::cuda> src(gpu, dtype::f32, {n});
  tensor<backend::cuda> dst(gpu, dtype::bf16, {n});
  gpu.copy(src.data(), host.data(), src.nbytes(), stream);
  gpu.fill(dst.data(), dst.nbytes(), 1, poison_byte, stream);
  stream.synchronize();

  test::run_in_graph(stream, [&] { convert(gpu, src, dst, stream); });
  std::vector<std::uint16_t> got(static_cast<std::size_t>(n)), want(got.size());
  gpu.copy(got.data(), dst.data(), dst.nbytes(), stream);
  stream.synchronize();

  backend::cpu cpu;
  convert(cpu, tensor_view(host.data(), dtype::f32, {n}),
          tensor_view(want.data(), dtype::bf16, {n}), cpu.make_stream());
  EXPECT_EQ(test::bit_mismatches(got.data(), want.data(), got.size(), dtype::bf16, host.data(),
                                 dtype::f32),
            "");
}

TEST_F(ConvertCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<float> a(8), b(8);
  test::expect_error(
      [&] {
        convert(gpu, tensor_view(a.data(), dtype::f32, {8}),
                tensor_view(b.data(), dtype::bf16, {8}), gpu.make_stream());
      },
      {"convert on cuda:0 needs both views there", "source is on cpu"});
}

}  // namespace
}  // namespace lightcore
