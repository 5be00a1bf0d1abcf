// norm on the CUDA backend against the CPU reference: DeepSeek's hidden sizes (7168, 2048, 1536,
// 512) and odd ones, 1 to 4096 rows, contiguous and strided rows, plain and fused; outputs
// poisoned with NaN before each run and the padding between strided rows checked untouched.
//
// Tolerance. Both backends compute y = x * inv_rms in fp32 with the same formula (norm_params.hpp)
// and differ only in the order of the fp32 sum of squares: within (32 + 5 + 16) * 2^-24 of each
// other even in the worst case (per-thread, warp-shuffle and per-warp partial sums), so bf16(y)
// differs by at most one step, and only where a rounding boundary falls between the two fp32
// values (a fraction of ~1e-5 in practice, below 2^-17 / 2^-8 ~ 2e-3 at worst). One step of y
// moves w * y by less than two of its own ulps, so: every output within 2 ulps of the reference,
// at most 1% of them different (a misplaced rounding point changes ~1/4), relative L2 error below
// 4e-3 (every element one ulp off would give ~2^-8.5 = 2.8e-3). The residual add is one rounding
// of the same sum on both sides: bit for bit. A NaN anywhere fails.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/norm/norm.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

constexpr float deepseek_eps = 1e-6f;
// Negative NaN with every mantissa bit set: no norm result is a NaN, so an element left unwritten
// (or a NaN produced) cannot pass.
constexpr std::uint16_t poison_bits = 0xFFFF;
constexpr std::int64_t max_ulp_difference = 2;
constexpr double max_fraction_different = 1e-2;
constexpr double max_relative_l2 = 4e-3;

class NormCudaTest : public test::cuda_test {};

// bf16 rows around zero, each scaled by 2^s, s uniform in [-12, 8] (mean squares from below eps
// to ~6e4). Never all zeros.
std::vector<bf16> random_rows(std::int64_t rows, std::int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> scale(-12, 8);
  std::vector<bf16> v(std::size_t(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    int const s = scale(rng);
    for (std::int64_t c = 0; c < cols; ++c)
      v[std::size_t(r * cols + c)] = bf16(std::ldexp(normal(rng), s));
  }
  return v;
}

std::int64_t ulp_distance(bf16 a, bf16 b) {
  auto const ordered = [](bf16 v) {
    std::int64_t const mag = v.bits & 0x7FFF;
    return (v.bits & 0x8000) ? -mag : mag;
  };
  return std::llabs(ordered(a) - ordered(b));
}

// got vs want, both [rows, cols] packed: the statistics the tolerance above bounds.
void expect_close(std::vector<bf16> const& got, std::vector<bf16> const& want, char const* what) {
  std::int64_t nans = 0, different = 0, max_ulps = 0;
  double err2 = 0.0, ref2 = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(float(got[i])) || std::isnan(float(want[i]))) {
      if (++nans <= 5) ADD_FAILURE() << what << " element " << i << " is NaN";
      continue;
    }
    std::int64_t const d = ulp_distance(got[i], want[i]);
    different += d != 0;
    max_ulps = std::max(max_ulps, d);
    double const e = double(float(got[i])) - double(float(want[i]));
    err2 += e * e;
    ref2 += double(float(want[i])) * float(want[i]);
  }
  EXPECT_EQ(nans, 0) << what;
  EXPECT_LE(max_ulps, max_ulp_difference) << what;
  EXPECT_LE(double(different), max_fraction_different * double(got.size())) << what;
  EXPECT_LT(std::sqrt(err2 / std::max(ref2, 1e-300)), max_relative_l2) << what;
}

// A [rows, stride] device buffer holding `values` ([rows, cols] packed) in its first cols columns
// and poison elsewhere; view() is the [rows, cols] part.
struct strided_buffer {
  strided_buffer(backend::cuda& gpu, std::int64_t rows, std::int64_t cols, std::int64_t stride,
                 std::vector<bf16> const* values, backend::cuda::stream_type const& stream)
      : rows_(rows), cols_(cols), stride_(stride), storage(gpu, dtype::bf16, {rows, stride}) {
    std::vector<bf16> host(std::size_t(rows * stride), bf16::from_bits(poison_bits));
    if (values != nullptr)
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy_n(values->begin() + r * cols, cols, host.begin() + r * stride);
    gpu.copy(storage.data(), host.data(), storage.nbytes(), stream);
  }
  tensor_view view() const { return storage.view().slice(1, 0, cols_); }
  // The [rows, cols] part, packed; fails the test if the padding lost its poison.
  std::vector<bf16> read(backend::cuda& gpu, backend::cuda::stream_type const& stream) const {
    std::vector<bf16> host(std::size_t(rows_ * stride_)), packed(std::size_t(rows_ * cols_));
    gpu.copy(host.data(), storage.data(), storage.nbytes(), stream);
    stream.synchronize();
    std::int64_t clobbered = 0;
    for (std::int64_t r = 0; r < rows_; ++r) {
      for (std::int64_t c = cols_; c < stride_; ++c)
        clobbered += host[std::size_t(r * stride_ + c)].bits != poison_bits;
      std::copy_n(host.begin() + r * stride_, cols_, packed.begin() + r * cols_);
    }
    EXPECT_EQ(clobbered, 0) << "elements written in the padding between rows";
    return packed;
  }

  std::int64_t rows_, cols_, stride_;
  tensor<backend::cuda> storage;
};

using case_t = std::tuple<std::int64_t, std::int64_t, bool, bool>;  // H, rows, strided, fused

class NormCuda : public NormCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(NormCuda, MatchesCpuReference) {
  auto const [hidden, rows, strided, fused] = GetParam();
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto const x = random_rows(rows, hidden, rng);
  auto const r0 = random_rows(rows, hidden, rng);
  auto const w = random_rows(1, hidden, rng);
  // Strided: kv_a's [rows, 576] layout for H = 512, else differently padded rows per operand.
  std::int64_t const x_stride = !strided ? hidden : hidden == 512 ? 576 : hidden + 64;
  std::int64_t const out_stride = strided ? hidden + 8 : hidden;
  std::int64_t const r_stride = strided ? hidden + 24 : hidden;

  strided_buffer dx(gpu, rows, hidden, x_stride, &x, stream);
  strided_buffer dout(gpu, rows, hidden, out_stride, nullptr, stream);
  strided_buffer dr(gpu, rows, hidden, r_stride, &r0, stream);
  tensor<backend::cuda> dw(gpu, dtype::bf16, {hidden});
  gpu.copy(dw.data(), w.data(), dw.nbytes(), stream);
  if (fused) {
    kernels::fused_add_rmsnorm(gpu, dr.view(), dx.view(), dw, dout.view(), deepseek_eps, stream);
  } else {
    kernels::rmsnorm(gpu, dx.view(), dw, dout.view(), deepseek_eps, stream);
  }
  auto const got = dout.read(gpu, stream);
  auto const got_r = dr.read(gpu, stream);
  EXPECT_TRUE(dx.read(gpu, stream) == x) << "x was modified";

  backend::cpu cpu;
  auto r = r0;
  std::vector<bf16> want(x.size());
  tensor_view const hx(const_cast<bf16*>(x.data()), dtype::bf16, {rows, hidden});
  tensor_view const hw(const_cast<bf16*>(w.data()), dtype::bf16, {hidden});
  tensor_view const hout(want.data(), dtype::bf16, {rows, hidden});
  if (fused) {
    kernels::fused_add_rmsnorm(cpu, tensor_view(r.data(), dtype::bf16, {rows, hidden}), hx, hw,
                               hout, deepseek_eps, cpu.make_stream());
  } else {
    kernels::rmsnorm(cpu, hx, hw, hout, deepseek_eps, cpu.make_stream());
  }
  expect_close(got, want, "out");
  std::int64_t residual_mismatches = 0;
  for (std::size_t i = 0; i < r.size(); ++i) residual_mismatches += got_r[i].bits != r[i].bits;
  EXPECT_EQ(residual_mismatches, 0) << "residual elements differing from bf16(r + x)";
}

std::string case_name(::testing::TestParamInfo<case_t> const& info) {
  auto const [hidden, rows, strided, fused] = info.param;
  return std::string(fused ? "fused" : "plain") + "_H" + std::to_string(hidden) + "_M" +
         std::to_string(rows) + (strided ? "_strided" : "");
}

INSTANTIATE_TEST_SUITE_P(DeepSeek, NormCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(7168, 2048, 1536, 512),
                                            ::testing::Values<std::int64_t>(1, 3, 257, 4096),
                                            ::testing::Bool(), ::testing::Bool()),
                         case_name);

// Every bucket and its edges: one warp with 1 / 2 vectors per thread (8, 256, 264, 512), the
// plain norm's rows of 4 vectors per thread in one or two warps with several rows per block (520,
// 1032, 2040, 2056; fused, blocks of one row with a ragged last thread), blocks with a ragged last
// thread (4104, 8200), the widest row (16384).
INSTANTIATE_TEST_SUITE_P(OddSizes, NormCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(8, 256, 264, 520, 1032,
                                                                            2040, 2056, 4104, 8200,
                                                                            16384),
                                            ::testing::Values<std::int64_t>(3, 65),
                                            ::testing::Values(true), ::testing::Bool()),
                         case_name);

// out = x (the serving engines' in-place norm) gives what a separate output gives.
TEST_F(NormCudaTest, InPlaceMatchesOutOfPlace) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  std::int64_t const rows = 33, hidden = 7168;
  auto const x = random_rows(rows, hidden, rng);
  auto const w = random_rows(1, hidden, rng);
  strided_buffer a(gpu, rows, hidden, hidden, &x, stream);
  strided_buffer b(gpu, rows, hidden, hidden, nullptr, stream);
  tensor<backend::cuda> dw(gpu, dtype::bf16, {hidden});
  gpu.copy(dw.data(), w.data(), dw.nbytes(), stream);
  strided_buffer c(gpu, rows, hidden, hidden, &x, stream);
  kernels::rmsnorm(gpu, c.view(), dw, b.view(), deepseek_eps, stream);
  kernels::rmsnorm(gpu, a.view(), dw, a.view(), deepseek_eps, stream);
  auto const in_place = a.read(gpu, stream);
  auto const separate = b.read(gpu, stream);
  for (std::size_t i = 0; i < in_place.size(); ++i)
    ASSERT_EQ(in_place[i].bits, separate[i].bits) << "element " << i;
}

// The norm is safe to capture into a CUDA graph (decode runs as graphs): no allocation, no sync.
TEST_F(NormCudaTest, CapturesIntoCudaGraph) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  std::int64_t const rows = 7, hidden = 2048;
  auto const x = random_rows(rows, hidden, rng);
  auto const w = random_rows(1, hidden, rng);
  strided_buffer dx(gpu, rows, hidden, hidden, &x, stream);
  strided_buffer direct(gpu, rows, hidden, hidden, nullptr, stream);
  strided_buffer graphed(gpu, rows, hidden, hidden, nullptr, stream);
  tensor<backend::cuda> dw(gpu, dtype::bf16, {hidden});
  gpu.copy(dw.data(), w.data(), dw.nbytes(), stream);
  kernels::rmsnorm(gpu, dx.view(), dw, direct.view(), deepseek_eps, stream);
  stream.synchronize();

  test::run_in_graph(
      stream, [&] { kernels::rmsnorm(gpu, dx.view(), dw, graphed.view(), deepseek_eps, stream); });
  auto const got = graphed.read(gpu, stream);
  auto const want = direct.read(gpu, stream);
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i].bits, want[i].bits) << "element " << i;
}

TEST_F(NormCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<bf16> x(32), w(16), out(32);
  test::expect_error(
      [&] {
        kernels::rmsnorm(gpu, tensor_view(x.data(), dtype::bf16, {2, 16}),
                         tensor_view(w.data(), dtype::bf16, {16}),
                         tensor_view(out.data(), dtype::bf16, {2, 16}), deepseek_eps,
                         gpu.make_stream());
      },
      {"rmsnorm on cuda:0 needs x there", "it is on cpu"});
}

}  // namespace
}  // namespace lightcore
