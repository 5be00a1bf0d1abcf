// silu_and_mul against the HBM ceiling, at DeepSeek-R1's sizes (I = 18432 dense, 2048 MoE) for
// M = 4096 and 16384 tokens. Inputs are random bf16 (never zeros), rotated over enough buffer sets
// that each call's working set misses L2 (50 MiB on the H100); CUDA-event timing, median per call.
// Counters: GB/s (bytes read + written: 2 * M * I * 2 + M * I * 2) and frac_of_hbm, the fraction
// of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_activation [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/activation/activation.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

void bm_silu_and_mul(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const rows = state.range(0), cols = state.range(1);
  double const bytes = double(rows * cols) * 3.0 * sizeof(bf16);
  int const sets = buffer_sets_for(bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const host = random_bf16(std::size_t(rows * 2 * cols), 7);
  std::vector<tensor<backend::cuda>> in, out;
  for (int k = 0; k < sets; ++k) {
    in.emplace_back(gpu, dtype::bf16, dims{rows, 2 * cols});
    out.emplace_back(gpu, dtype::bf16, dims{rows, cols});
    gpu.copy(in.back().data(), host.data(), in.back().nbytes(), stream);
  }
  stream.synchronize();
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    auto const k = std::size_t(call % sets);
    kernels::silu_and_mul(gpu, in[k], out[k], stream);
  });
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (std::int64_t rows : {4096, 16384}) {
    for (std::int64_t cols : {18432, 2048}) {
      bench::timed(benchmark::RegisterBenchmark("BM_silu_and_mul", bm_silu_and_mul)
                       ->Args({rows, cols})
                       ->ArgNames({"M", "I"}));
    }
  }
  return bench::run_benchmarks(argc, argv);
}
