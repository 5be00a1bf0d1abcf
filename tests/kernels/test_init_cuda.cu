// init on the GPU: the CUDA kernel writes the CPU reference's bits for every dtype, at sizes with
// partial vectors, over poisoned memory, and inside a CUDA graph.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cuda.hpp"
#include "common/seed.hpp"
#include "kernels/init/init.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {
namespace {

class InitCuda : public cuda_test {};

std::vector<std::uint8_t> gpu_fill(backend::cuda& gpu, dtype t, std::int64_t n,
                                   kernels::init_spec const& s, bool graph) {
  tensor<backend::cuda> out(gpu, t, {n});
  auto stream = gpu.make_stream();
  gpu.fill(out.data(), out.nbytes(), 1, 0xA5, stream);  // poison: unwritten bytes show
  run_maybe_in_graph(stream, graph, [&] { kernels::fill_random(gpu, out, s, stream); });
  stream.synchronize();
  std::vector<std::uint8_t> host(out.nbytes());
  gpu.copy(host.data(), out.data(), host.size(), stream);
  stream.synchronize();
  return host;
}

std::vector<std::uint8_t> cpu_fill(dtype t, std::int64_t n, kernels::init_spec const& s) {
  backend::cpu cpu;
  tensor<backend::cpu> out(cpu, t, {n});
  kernels::fill_random(cpu, out, s, cpu.make_stream());
  auto const* p = static_cast<std::uint8_t const*>(out.data());
  return std::vector<std::uint8_t>(p, p + out.nbytes());
}

TEST_F(InitCuda, EqualsTheCpuReferenceBitForBit) {
  backend::cuda gpu(0);
  auto rng = test_rng();
  for (dtype const t : {dtype::bf16, dtype::f32, dtype::fp8_e4m3}) {
    for (std::int64_t const n : {1, 3, 8, 15, 16, 17, 4099, 1 << 20, (1 << 22) + 5}) {
      kernels::init_spec const s{rng(), rng(), t == dtype::f32 ? 1e-4f : 0.0f,
                                 t == dtype::fp8_e4m3 ? 112.0f : 0.02f};
      EXPECT_EQ(gpu_fill(gpu, t, n, s, n == 4099), cpu_fill(t, n, s)) << t << " n = " << n;
    }
  }
}

TEST_F(InitCuda, EmptyTensorAndBadInputs) {
  backend::cuda gpu(0);
  auto stream = gpu.make_stream();
  tensor<backend::cuda> empty(gpu, dtype::bf16, {0});
  EXPECT_NO_THROW(kernels::fill_random(gpu, empty, {}, stream));
  tensor<backend::cuda> t(gpu, dtype::f32, {64});
  tensor_view const misaligned(static_cast<float*>(t.data()) + 1, dtype::f32, {8}, gpu.where());
  EXPECT_THROW(kernels::fill_random(gpu, misaligned, {}, stream), error);
  backend::cpu cpu;
  tensor<backend::cpu> host(cpu, dtype::f32, {8});
  EXPECT_THROW(kernels::fill_random(gpu, host, {}, stream), error);
}

}  // namespace
}  // namespace lightcore::test
