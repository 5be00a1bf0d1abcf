// quantize_per_token_group against the HBM ceiling, at DeepSeek-R1's sizes (K = 7168 hidden,
// 18432 dense intermediate) for M = 4096 and 16384 tokens, both scale layouts. Inputs are random
// bf16 (never zeros), rotated over enough buffer sets that each call's working set misses L2 (50
// MiB on the H100); CUDA-event timing, median per call. Counters: GB/s (bytes read + written: M * K
// * 2 + M * K + M * K / 128 * 4) and frac_of_hbm, the fraction of a device-to-device
// cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_quant [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/quant/quant.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

void bm_quant(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const rows = state.range(0), cols = state.range(1);
  auto const layout = kernels::scale_layout(state.range(2));
  std::int64_t const groups = cols / kernels::quant_group_size;
  double const bytes = double(rows * cols) * (sizeof(bf16) + sizeof(fp8_e4m3)) +
                       double(rows * groups) * sizeof(float);
  int const sets = buffer_sets_for(bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const host = random_bf16(std::size_t(rows * cols), 11);
  dims const scale_shape =
      layout == kernels::scale_layout::row_major ? dims{rows, groups} : dims{groups, rows};
  std::vector<tensor<backend::cuda>> x, q, s;
  for (int k = 0; k < sets; ++k) {
    x.emplace_back(gpu, dtype::bf16, dims{rows, cols});
    q.emplace_back(gpu, dtype::fp8_e4m3, dims{rows, cols});
    s.emplace_back(gpu, dtype::f32, scale_shape);
    gpu.copy(x.back().data(), host.data(), x.back().nbytes(), stream);
  }
  stream.synchronize();
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    auto const k = std::size_t(call % sets);
    kernels::quantize_per_token_group(gpu, x[k], q[k], s[k], layout, stream);
  });
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (std::int64_t layout : {0, 1}) {  // scale_layout::row_major, k_major
    for (std::int64_t rows : {4096, 16384}) {
      for (std::int64_t cols : {7168, 18432}) {
        bench::timed(benchmark::RegisterBenchmark(
                         layout == 0 ? "BM_quant_row_major" : "BM_quant_k_major", bm_quant)
                         ->Args({rows, cols, layout})
                         ->ArgNames({"M", "K", "layout"}));
      }
    }
  }
  return bench::run_benchmarks(argc, argv);
}
