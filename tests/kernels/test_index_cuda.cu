// copy_indexed on the GPU against the CPU, with random indices (repeated sources, a permutation of
// targets), and the skip of an out-of-range entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/index/index.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {
namespace {

using gpu_t = backend::cuda;

TEST(CopyIndexedCuda, MatchesTheCpu) {
  if (gpu_t::device_count() == 0)
    GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
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

}  // namespace
}  // namespace lightcore::test
