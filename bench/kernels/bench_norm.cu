// rmsnorm and fused_add_rmsnorm against the HBM ceiling, at DeepSeek-V3/R1's hidden size (7168)
// and V2-Lite's (2048), 4096 and 16384 rows. Inputs are random bf16 (never zeros); buffer sets
// rotate so that at least 256 MiB is touched between two uses of one set, more than L2 (50 MiB on
// the H100) holds. Timed with CUDA events. Counters: GB/s (x (+ residual) read, out (+ residual)
// written, the weight read once; from the median time per call) and frac_of_hbm, the fraction of
// a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_norm [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/norm/norm.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

constexpr float deepseek_eps = 1e-6f;

// n random bf16 values, |x| in [2^-8, 2^8) with random sign and mantissa (splitmix64): never zero.
// Wider than bench::random_bf16 (2^-4 <= |x| < 2^4), and its exponent comes from other bits.
std::vector<bf16> random_bf16_wide(std::size_t n, std::uint64_t seed) {
  std::vector<bf16> v(n);
  splitmix64 rng{seed};
  for (auto& x : v) {
    std::uint64_t const z = rng.next();
    auto const sign = std::uint16_t((z >> 63) << 15);
    auto const exponent = std::uint16_t((127u - 8u + std::uint32_t(z >> 32) % 16u) << 7);
    auto const mantissa = std::uint16_t(z & 0x7Fu);
    x = bf16::from_bits(std::uint16_t(sign | exponent | mantissa));
  }
  return v;
}

// One call's operands: x, out and, fused, the residual.
struct norm_set {
  tensor<backend::cuda> x, out, residual;
};

void bm_norm(benchmark::State& state, bool fused, std::int64_t hidden, std::int64_t rows) {
  if (skip_without_gpu(state)) return;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::int64_t const n = rows * hidden;
  int const tensors_per_set = fused ? 3 : 2;
  std::size_t const set_bytes = std::size_t(n) * sizeof(bf16) * std::size_t(tensors_per_set);
  int const sets = buffer_sets_for(double(set_bytes));
  auto const host = random_bf16_wide(std::size_t(n), 100);
  auto const host_w = random_bf16_wide(std::size_t(hidden), 7);
  tensor<backend::cuda> weight(gpu, dtype::bf16, {hidden});
  gpu.copy(weight.data(), host_w.data(), weight.nbytes(), stream);
  std::vector<norm_set> buffers;
  for (int k = 0; k < sets; ++k) {
    norm_set s{tensor<backend::cuda>(gpu, dtype::bf16, {rows, hidden}),
               tensor<backend::cuda>(gpu, dtype::bf16, {rows, hidden}),
               tensor<backend::cuda>(gpu, dtype::bf16, {fused ? rows : 1, hidden})};
    gpu.copy(s.x.data(), host.data(), s.x.nbytes(), stream);
    if (fused) gpu.copy(s.residual.data(), host.data(), s.residual.nbytes(), stream);
    buffers.push_back(std::move(s));
  }
  stream.synchronize();
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        norm_set const& s = buffers[std::size_t(call % sets)];
        if (fused) {
          kernels::fused_add_rmsnorm(gpu, s.residual, s.x, weight, s.out, deepseek_eps, stream);
        } else {
          kernels::rmsnorm(gpu, s.x, weight, s.out, deepseek_eps, stream);
        }
      },
      call_numbering::running);  // every set takes its turn, also when there are more than 8
  // Per element: x read and out written, plus the residual read and written when fused.
  double const bytes = double(n) * double(sizeof(bf16)) * (fused ? 4.0 : 2.0) +
                       double(hidden) * double(sizeof(bf16));
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (bool const fused : {false, true}) {
    for (std::int64_t const hidden : {7168, 2048}) {
      for (std::int64_t const rows : {4096, 16384}) {
        std::string const name = std::string(fused ? "BM_fused_add_rmsnorm" : "BM_rmsnorm") + "/H" +
                                 std::to_string(hidden) + "/M" + std::to_string(rows);
        bench::timed(benchmark::RegisterBenchmark(name.c_str(), bm_norm, fused, hidden, rows));
      }
    }
  }
  return bench::run_benchmarks(argc, argv);
}
