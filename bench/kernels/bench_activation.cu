// silu_and_mul against the HBM ceiling, at DeepSeek-R1's sizes (I = 18432 dense, 2048 MoE) for
// M = 4096 and 16384 tokens. Inputs are random bf16 (never zeros), rotated over enough buffer sets
// that each call's working set misses L2 (50 MiB on the H100); CUDA-event timing, median per call.
// Counters: GB/s (bytes read + written: 2 * M * I * 2 + M * I * 2) and frac_of_hbm, the fraction
// of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_activation [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/activation/activation.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

constexpr std::size_t copy_bytes = std::size_t(512) << 20;      // the ceiling's copy
constexpr std::size_t rotation_bytes = std::size_t(256) << 20;  // touched before a buffer repeats
constexpr int calls_per_iteration = 8;
constexpr int iterations = 50;
constexpr int warmup_iterations = 2;

double median(std::vector<double> v) {
  auto const mid = v.begin() + std::ptrdiff_t(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

// The median seconds per call of `calls_per_iteration` calls bracketed by two events, after a
// warm-up; with a State its iterations are the samples, else `iterations` samples.
template <class Enqueue>
double median_seconds(benchmark::State* state, backend::cuda& gpu,
                      backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
  auto start = gpu.make_event(), stop = gpu.make_event();
  auto const sample = [&] {
    start.record(stream);
    for (int i = 0; i < calls_per_iteration; ++i) enqueue(i);
    stop.record(stream);
    stop.synchronize();
    return backend::cuda::elapsed_ms(start, stop) / 1e3 / calls_per_iteration;
  };
  for (int i = 0; i < warmup_iterations; ++i) sample();
  std::vector<double> seconds;
  if (state != nullptr) {
    for (auto _ : *state) {
      seconds.push_back(sample());
      state->SetIterationTime(seconds.back());
    }
  } else {
    for (int i = 0; i < iterations; ++i) seconds.push_back(sample());
  }
  return median(std::move(seconds));
}

// n random bf16 values, 2^-4 <= |x| < 2^4 with random sign and mantissa (splitmix64): never zero.
std::vector<bf16> random_bf16(std::size_t n, std::uint64_t seed) {
  std::vector<bf16> v(n);
  std::uint64_t s = seed;
  for (auto& x : v) {
    std::uint64_t z = (s += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    z ^= z >> 31;
    auto const exponent = std::uint16_t((127u - 4u + (z >> 8) % 8u) << 7);
    x = bf16::from_bits(std::uint16_t((z >> 63) << 15) | exponent | std::uint16_t(z & 0x7Fu));
  }
  return v;
}

double measure_hbm_copy_gbps(benchmark::State* state) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const n = std::int64_t(copy_bytes / sizeof(bf16));
  tensor<backend::cuda> src(gpu, dtype::bf16, {n});
  tensor<backend::cuda> dst(gpu, dtype::bf16, {n});
  auto const host = random_bf16(std::size_t(n), 1);
  gpu.copy(src.data(), host.data(), copy_bytes, stream);
  double const seconds = median_seconds(state, gpu, stream, [&](int) {
    LC_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice,
                                  stream.get()));
  });
  return 2.0 * double(copy_bytes) / seconds / 1e9;
}

std::optional<double> hbm_copy_gbps;  // BM_hbm_copy's result, or measured alone when filtered out

double ceiling_gbps() {
  if (!hbm_copy_gbps) hbm_copy_gbps = measure_hbm_copy_gbps(nullptr);
  return *hbm_copy_gbps;
}

void bm_hbm_copy(benchmark::State& state) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  hbm_copy_gbps = measure_hbm_copy_gbps(&state);
  state.counters["GB/s"] = *hbm_copy_gbps;
  state.counters["frac_of_hbm"] = 1.0;
  state.SetBytesProcessed(std::int64_t(2 * copy_bytes) * state.iterations());
}

void bm_silu_and_mul(benchmark::State& state) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  std::int64_t const rows = state.range(0), cols = state.range(1);
  double const bytes = double(rows * cols) * 3.0 * sizeof(bf16);
  int const sets = std::max(2, int(double(rotation_bytes) / bytes) + 1);
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
  double const gbps = bytes / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["frac_of_hbm"] = gbps / ceiling_gbps();
  state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  benchmark::RegisterBenchmark("BM_hbm_copy", bm_hbm_copy)
      ->UseManualTime()
      ->Iterations(iterations)
      ->Unit(benchmark::kMicrosecond);
  for (std::int64_t rows : {4096, 16384}) {
    for (std::int64_t cols : {18432, 2048}) {
      benchmark::RegisterBenchmark("BM_silu_and_mul", bm_silu_and_mul)
          ->Args({rows, cols})
          ->ArgNames({"M", "I"})
          ->UseManualTime()
          ->Iterations(iterations)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
