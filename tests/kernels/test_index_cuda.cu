// copy_indexed and copy_rows on the GPU against the CPU, with random indices (repeated sources, a
// permutation of targets), and the skip of an out-of-range entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "common/cuda.hpp"
#include "kernels/index/index.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {
namespace {

using gpu_t = backend::cuda;

class CopyIndexedCuda : public cuda_test {};

TEST_F(CopyIndexedCuda, MatchesTheCpu) {
  gpu_t gpu(0);
  backend::cpu cpu;
  auto s = gpu.make_stream();
  auto cs = cpu.make_stream();
  std::mt19937 rng(5);
  for (std::int64_t const n : std::vector<std::int64_t>{1, 3, 257, 5000}) {
    std::vector<std::int32_t> dst(std::size_t(n + 100), -7), src(std::size_t(n / 2 + 1));
    for (auto& v : src) v = std::int32_t(rng() % 100000);
    std::vector<std::int32_t> to(dst.size());
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(to.begin(), to.end(), rng);
    to.resize(std::size_t(n));
    std::vector<std::int32_t> src_at(static_cast<std::size_t>(n));
    for (auto& v : src_at) v = std::int32_t(rng() % src.size());
    auto up = [&](std::vector<std::int32_t> const& v) {
      tensor<gpu_t> t(gpu, dtype::i32, {std::int64_t(v.size())});
      gpu.copy(t.data(), v.data(), v.size() * 4, s);
      return t;
    };
    auto d_dst = up(dst), d_to = up(to), d_src = up(src), d_from = up(src_at);
    kernels::copy_indexed(gpu, d_dst.view(), d_to.view(), d_src.view(), d_from.view(), s);
    auto cv = [](std::vector<std::int32_t>& v) {
      return tensor_view(v.data(), dtype::i32, {std::int64_t(v.size())}, device::cpu());
    };
    std::vector<std::int32_t> expected = dst;
    kernels::copy_indexed(cpu, cv(expected), cv(to), cv(src), cv(src_at), cs);
    std::vector<std::int32_t> got(dst.size());
    gpu.copy(got.data(), d_dst.data(), got.size() * 4, s);
    s.synchronize();
    EXPECT_EQ(got, expected) << "n = " << n;
  }
  // An entry outside the target is skipped on the GPU (the CPU throws).
  std::vector<std::int32_t> dst{0, 0}, to{1, 9}, values{5, 6};
  tensor<gpu_t> d_dst(gpu, dtype::i32, {2}), d_to(gpu, dtype::i32, {2}), d_v(gpu, dtype::i32, {2});
  gpu.copy(d_dst.data(), dst.data(), 8, s);
  gpu.copy(d_to.data(), to.data(), 8, s);
  gpu.copy(d_v.data(), values.data(), 8, s);
  kernels::copy_indexed(gpu, d_dst.view(), d_to.view(), d_v.view(), tensor_view{}, s);
  gpu.copy(dst.data(), d_dst.data(), 8, s);
  s.synchronize();
  EXPECT_EQ(dst, (std::vector<std::int32_t>{0, 5}));
}

// The rows of a KV layer (576 bf16) between shuffled slots of two pools, as PD moves them.
class CopyRowsCuda : public cuda_test {};

TEST_F(CopyRowsCuda, MatchesTheCpuOnScatteredSlots) {
  gpu_t gpu(0);
  backend::cpu cpu;
  auto s = gpu.make_stream();
  auto cs = cpu.make_stream();
  std::mt19937 rng(11);
  constexpr std::int64_t width = 576, src_rows = 3000, dst_rows = 2000;
  for (std::int64_t const n : std::vector<std::int64_t>{1, 7, 1500}) {
    std::vector<std::uint16_t> src(std::size_t(src_rows * width)),
        dst(std::size_t(dst_rows * width));
    for (auto& v : src) v = std::uint16_t(rng());
    for (auto& v : dst) v = std::uint16_t(rng());
    std::vector<std::int32_t> from(static_cast<std::size_t>(src_rows)),
        to(static_cast<std::size_t>(dst_rows));
    std::iota(from.begin(), from.end(), 0);
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(from.begin(), from.end(), rng);
    std::shuffle(to.begin(), to.end(), rng);
    from.resize(std::size_t(n));
    to.resize(std::size_t(n));
    tensor<gpu_t> d_src(gpu, dtype::bf16, {src_rows, width}),
        d_dst(gpu, dtype::bf16, {dst_rows, width});
    tensor<gpu_t> d_from(gpu, dtype::i32, {n}), d_to(gpu, dtype::i32, {n});
    gpu.copy(d_src.data(), src.data(), src.size() * 2, s);
    gpu.copy(d_dst.data(), dst.data(), dst.size() * 2, s);
    gpu.copy(d_from.data(), from.data(), from.size() * 4, s);
    gpu.copy(d_to.data(), to.data(), to.size() * 4, s);
    kernels::copy_rows(gpu, d_dst.view(), d_to.view(), d_src.view(), d_from.view(), s);
    std::vector<std::uint16_t> expected = dst, got(dst.size());
    kernels::copy_rows(cpu,
                       tensor_view(expected.data(), dtype::bf16, {dst_rows, width}, device::cpu()),
                       tensor_view(to.data(), dtype::i32, {n}, device::cpu()),
                       tensor_view(src.data(), dtype::bf16, {src_rows, width}, device::cpu()),
                       tensor_view(from.data(), dtype::i32, {n}, device::cpu()), cs);
    gpu.copy(got.data(), d_dst.data(), got.size() * 2, s);
    s.synchronize();
    EXPECT_TRUE(got == expected) << "n = " << n;
  }
}

}  // namespace
}  // namespace lightcore::test
