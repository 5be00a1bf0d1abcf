// backend::cuda on a real device: allocation, copies, fills of each element size, events,
// allocation during stream capture, and the errors. Skips without a device.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace {

using lightcore::backend::cuda;

class BackendCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible; GPU test skipped";
  }
};

TEST_F(BackendCuda, FillsEachElementSizeAndCopiesBack) {
  cuda gpu(0);
  auto s = gpu.make_stream();
  std::size_t const n = (1 << 20) + 3;  // not a multiple of anything convenient
  void* d = gpu.allocate(n * 8);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(d) % cuda::alignment, 0u);
  std::vector<std::uint8_t> h(n * 8);

  gpu.fill(d, n, 2, 0xbeef, s);
  gpu.copy(h.data(), d, n * 2, s);
  s.synchronize();
  auto const* h16 = reinterpret_cast<std::uint16_t const*>(h.data());
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(h16[i], 0xbeef) << i;

  gpu.fill(d, n, 4, 0xdeadbeefu, s);
  gpu.copy(h.data(), d, n * 4, s);
  s.synchronize();
  auto const* h32 = reinterpret_cast<std::uint32_t const*>(h.data());
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(h32[i], 0xdeadbeefu) << i;

  gpu.fill(d, n, 8, 0xffffffffffffffffull, s);
  gpu.copy(h.data(), d, n * 8, s);
  s.synchronize();
  for (std::size_t i = 0; i < n * 8; ++i) ASSERT_EQ(h[i], 0xff) << i;
  EXPECT_THROW(gpu.fill(d, n, 8, 0x0000000100000002ull, s), lightcore::error);

  gpu.fill(d, n, 1, 0x5a, s);
  gpu.copy(h.data(), d, n, s);
  s.synchronize();
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(h[i], 0x5a) << i;
  gpu.deallocate(d, n * 8);
}

TEST_F(BackendCuda, RoundTripsRandomBytesThroughTheDevice) {
  cuda gpu(0);
  auto s = gpu.make_stream();
  std::mt19937 rng(std::random_device{}());
  std::vector<std::uint32_t> a(1 << 18), b(a.size(), 0);
  for (auto& x : a) x = rng();
  lightcore::tensor<cuda> t(gpu, lightcore::dtype::i32, {std::int64_t(a.size())});
  gpu.copy(t.data(), a.data(), t.nbytes(), s);
  gpu.copy(b.data(), t.data(), t.nbytes(), s);
  s.synchronize();
  EXPECT_EQ(a, b);
  EXPECT_EQ(t.view().where(), lightcore::device::cuda(0));
}

TEST_F(BackendCuda, EventsTimeWork) {
  cuda gpu(0);
  auto s = gpu.make_stream();
  auto start = gpu.make_event(), end = gpu.make_event();
  std::size_t const bytes = std::size_t{256} << 20;
  void* d = gpu.allocate(bytes);
  start.record(s);
  gpu.fill(d, bytes / 4, 4, 1, s);
  end.record(s);
  end.synchronize();
  EXPECT_GT(cuda::elapsed_ms(start, end), 0.0f);
  gpu.deallocate(d, bytes);
}

TEST_F(BackendCuda, AllocatesDuringStreamCapture) {
  cuda gpu(0);
  auto s = gpu.make_stream();
  LC_CUDA_CHECK(cudaStreamBeginCapture(s.get(), cudaStreamCaptureModeGlobal));
  void* d = gpu.allocate(1 << 20);  // would invalidate a global-mode capture if not relaxed
  gpu.fill(d, 1 << 18, 4, 7, s);
  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamEndCapture(s.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  LC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  LC_CUDA_CHECK(cudaGraphLaunch(exec, s.get()));
  std::vector<std::uint32_t> h(1 << 18);
  gpu.copy(h.data(), d, h.size() * 4, s);
  s.synchronize();
  for (auto x : h) ASSERT_EQ(x, 7u);
  LC_CUDA_CHECK(cudaGraphExecDestroy(exec));
  LC_CUDA_CHECK(cudaGraphDestroy(graph));
  gpu.deallocate(d, 1 << 20);
}

TEST_F(BackendCuda, ErrorsNameTheProblem) {
  int const n = cuda::device_count();
  try {
    cuda bad(n);
    FAIL() << "constructing a backend for a missing device did not throw";
  } catch (lightcore::error const& e) {
    EXPECT_NE(std::string(e.what()).find("visible"), std::string::npos) << e.what();
  }
  cuda gpu(0);
  auto const m = gpu.memory();
  try {
    gpu.allocate(m.total_bytes * 4);
    FAIL() << "an allocation of 4x the device memory did not throw";
  } catch (lightcore::error const& e) {
    EXPECT_NE(std::string(e.what()).find("cudaMalloc of"), std::string::npos) << e.what();
  }
  void* ok = gpu.allocate(1024);  // the failed allocation left no sticky error behind
  gpu.deallocate(ok, 1024);
}

}  // namespace
