// Graph mode on a real GPU: CUDA graphs captured for 8 batch sizes (largest first) take their
// buffers from one shared pool; their total memory stays within 10% of the largest graph's alone,
// and replaying them in any order gives the right results (sharing never corrupts a replay).
// Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

namespace lc = lightcore;
using lc::backend::cuda;
using manager = lc::memory::cache_tensor_manager<cuda>;

namespace {

constexpr std::int64_t hidden = 4096;
constexpr int layers = 4;
constexpr int threads = 256;

// up[i, k*H + j] = x[i, j] * (k + 1) * scale
__global__ void __launch_bounds__(threads)
    expand(float const* x, float* up, std::int64_t rows, float scale) {
  std::int64_t const n = rows * 4 * hidden;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < n;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t const i = e / (4 * hidden), c = e % (4 * hidden);
    up[e] = x[i * hidden + c % hidden] * float(c / hidden + 1) * scale;
  }
}

// x[i, j] += 0.1 * tanh(sum_k up[i, k*H + j])
__global__ void __launch_bounds__(threads)
    reduce_add(float const* up, float* x, std::int64_t rows) {
  std::int64_t const n = rows * hidden;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < n;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t const i = e / hidden, j = e % hidden;
    float s = 0;
    for (int k = 0; k < 4; ++k) s += up[i * 4 * hidden + k * hidden + j];
    x[e] += 0.1f * tanhf(s);
  }
}

float layer_scale(int l) { return 0.5f + 0.25f * float(l); }

std::vector<float> reference(std::vector<float> x) {
  for (int l = 0; l < layers; ++l)
    for (float& v : x) {
      float const s = v * layer_scale(l) * (1 + 2 + 3 + 4);
      v += 0.1f * std::tanh(s);
    }
  return x;
}

// The forward of one batch: reads the persistent input, writes the persistent output; every
// other buffer is a lease that dies inside it.
void forward(manager& m, std::int64_t rows, cuda::stream_type const& s) {
  auto in = m.persistent("input", lc::dtype::f32, {rows, hidden});
  auto out = m.persistent("output", lc::dtype::f32, {rows, hidden});
  auto x = m.acquire<float>("residual", {rows, hidden});
  LC_CUDA_CHECK(
      cudaMemcpyAsync(x.data(), in.data(), in.nbytes(), cudaMemcpyDeviceToDevice, s.get()));
  for (int l = 0; l < layers; ++l) {
    auto up = m.acquire<float>("mlp.up", {rows, 4 * hidden});
    expand<<<264, threads, 0, s.get()>>>(x.as<float, 2>().data, up.as<float, 2>().data, rows,
                                         layer_scale(l));
    LC_CUDA_CHECK_LAUNCH();
    reduce_add<<<264, threads, 0, s.get()>>>(up.as<float, 2>().data, x.as<float, 2>().data, rows);
    LC_CUDA_CHECK_LAUNCH();
  }
  LC_CUDA_CHECK(
      cudaMemcpyAsync(out.data(), x.data(), out.nbytes(), cudaMemcpyDeviceToDevice, s.get()));
}

struct captured {
  std::int64_t rows;
  cudaGraphExec_t exec;
};

std::vector<captured> capture(manager& m, std::vector<std::int64_t> const& batches,
                              cuda::stream_type const& s) {
  std::vector<captured> out;
  for (std::int64_t rows : batches) {
    auto scope = m.graph_scope("bs" + std::to_string(rows));
    cudaGraph_t g = nullptr;
    LC_CUDA_CHECK(cudaStreamBeginCapture(s.get(), cudaStreamCaptureModeThreadLocal));
    forward(m, rows, s);
    LC_CUDA_CHECK(cudaStreamEndCapture(s.get(), &g));
    cudaGraphExec_t exec = nullptr;
    LC_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    LC_CUDA_CHECK(cudaGraphDestroy(g));
    out.push_back({rows, exec});
  }
  return out;
}

void destroy(std::vector<captured>& graphs) {
  for (auto& g : graphs) LC_CUDA_CHECK(cudaGraphExecDestroy(g.exec));
  graphs.clear();
}

std::size_t used_bytes(cuda& gpu) {
  gpu.synchronize();
  auto const m = gpu.memory();
  return m.total_bytes - m.free_bytes;
}

class CacheTensorManagerGraphs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible; GPU test skipped";
  }
};

TEST_F(CacheTensorManagerGraphs, EightGraphsShareThePoolOfTheLargest) {
  cuda gpu(0);
  auto s = gpu.make_stream();
  std::vector<std::int64_t> const batches{256, 128, 64, 32, 16, 8, 4, 2};

  std::size_t alone_pool = 0, alone_device = 0;
  {
    std::size_t const before = used_bytes(gpu);
    manager m(gpu);
    auto graphs = capture(m, {batches.front()}, s);
    alone_pool = m.stats().graph_pool.reserved_bytes;
    alone_device = used_bytes(gpu) - before;
    destroy(graphs);
  }

  std::size_t const before = used_bytes(gpu);
  manager m(gpu);
  auto graphs = capture(m, batches, s);
  std::size_t const all_pool = m.stats().graph_pool.reserved_bytes;
  std::size_t const all_device = used_bytes(gpu) - before;
  std::printf(
      "graph pool: largest alone %.1f MiB, all 8 graphs %.1f MiB; device memory: largest "
      "alone %.1f MiB, all 8 %.1f MiB\n%s",
      alone_pool / 1048576.0, all_pool / 1048576.0, alone_device / 1048576.0,
      all_device / 1048576.0, m.report().c_str());
  EXPECT_LE(double(all_pool), 1.10 * double(alone_pool));
  EXPECT_LE(double(all_device), 1.10 * double(alone_device));
  ASSERT_EQ(m.graphs().size(), batches.size());

  // Replay in a shuffled order, several rounds; each result read before the next replay.
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto in = m.persistent("input", lc::dtype::f32, {batches.front(), hidden});
  auto out = m.persistent("output", lc::dtype::f32, {batches.front(), hidden});
  std::vector<std::size_t> order(graphs.size());
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t gi : order) {
      std::int64_t const rows = graphs[gi].rows;
      std::vector<float> x(std::size_t(rows * hidden)), y(x.size());
      for (float& v : x) v = dist(rng);
      gpu.copy(in.data(), x.data(), x.size() * 4, s);
      gpu.fill(out.data(), y.size(), 4, 0x7fc00000u, s);  // poison: NaN
      LC_CUDA_CHECK(cudaGraphLaunch(graphs[gi].exec, s.get()));
      gpu.copy(y.data(), out.data(), y.size() * 4, s);
      s.synchronize();
      auto const want = reference(x);
      double err = 0, norm = 0;
      for (std::size_t k = 0; k < y.size(); ++k) {
        ASSERT_FALSE(std::isnan(y[k])) << "unwritten output at " << k << " for batch " << rows;
        err += (y[k] - want[k]) * double(y[k] - want[k]);
        norm += double(want[k]) * want[k];
      }
      // fp32 on both sides; only tanhf and summation order differ.
      EXPECT_LT(std::sqrt(err / norm), 1e-5) << "batch " << rows;
    }
  }
  destroy(graphs);
}

TEST_F(CacheTensorManagerGraphs, WithoutSharingGraphsPayForThemselves) {
  // What sharing saves, measured the same way: reuse off gives every graph its own memory.
  cuda gpu(0);
  auto s = gpu.make_stream();
  lc::memory::cache_tensor_manager_config c;
  c.reuse = false;
  manager m(gpu, c);
  auto graphs = capture(m, {256, 128, 64, 32, 16, 8, 4, 2}, s);
  manager alone(gpu);
  auto g1 = capture(alone, {256}, s);
  EXPECT_GT(double(m.stats().graph_pool.reserved_bytes),
            1.5 * double(alone.stats().graph_pool.reserved_bytes));
  destroy(graphs);
  destroy(g1);
}

}  // namespace
