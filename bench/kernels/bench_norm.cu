// rmsnorm and fused_add_rmsnorm against the HBM ceiling, at DeepSeek-V3/R1's hidden size (7168)
// and V2-Lite's (2048), 4096 and 16384 rows. Inputs are random bf16 (never zeros); buffer sets
// rotate so that at least 256 MiB is touched between two uses of one set, more than L2 (50 MiB on
// the H100) holds. Timed with CUDA events. Counters: GB/s (x (+ residual) read, out (+ residual)
// written, the weight read once; from the median time per call) and frac_of_hbm, the fraction of
// a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_norm [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/norm/norm.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

constexpr std::size_t rotation_bytes = std::size_t(256) << 20;  // touched before a set recurs
constexpr std::size_t copy_bytes = std::size_t(512) << 20;      // the ceiling's copy
// Calls between two events: the host runs ahead of the GPU, so the launch gap before the first
// call is spread over all of them.
constexpr int calls_per_iteration = 8;
constexpr int iterations = 50;
constexpr int warmup_iterations = 2;
constexpr float deepseek_eps = 1e-6f;

double median(std::vector<double> v) {
  auto const mid = v.begin() + std::ptrdiff_t(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

// Seconds per call of `calls_per_iteration` calls of enqueue(call index), bracketed by two events.
class call_timer {
 public:
  call_timer(backend::cuda& gpu, backend::cuda::stream_type const& stream)
      : stream_(stream), start_(gpu.make_event()), stop_(gpu.make_event()) {}

  template <class Enqueue>
  double seconds_per_call(Enqueue&& enqueue) {
    start_.record(stream_);
    for (int i = 0; i < calls_per_iteration; ++i) enqueue(call_++);
    stop_.record(stream_);
    stop_.synchronize();
    return backend::cuda::elapsed_ms(start_, stop_) / 1e3 / calls_per_iteration;
  }

 private:
  backend::cuda::stream_type const& stream_;
  backend::cuda::event_type start_, stop_;
  int call_ = 0;  // runs on across iterations, so that every buffer set takes its turn
};

// The median seconds per call after a warm-up. With a State, its iterations are the samples and
// each is reported to it; without one (the ceiling measured on its own), `iterations` samples.
template <class Enqueue>
double median_seconds(benchmark::State* state, backend::cuda& gpu,
                      backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
  call_timer timer(gpu, stream);
  for (int i = 0; i < warmup_iterations; ++i) timer.seconds_per_call(enqueue);
  std::vector<double> seconds;
  if (state != nullptr) {
    for (auto _ : *state) {
      seconds.push_back(timer.seconds_per_call(enqueue));
      state->SetIterationTime(seconds.back());
    }
  } else {
    for (int i = 0; i < iterations; ++i) seconds.push_back(timer.seconds_per_call(enqueue));
  }
  return median(std::move(seconds));
}

// n random bf16 values, |x| in [2^-8, 2^8) with random sign and mantissa (splitmix64): never zero.
std::vector<bf16> random_bf16(std::size_t n, std::uint64_t seed) {
  std::vector<bf16> v(n);
  for (auto& x : v) {
    std::uint64_t z = (seed += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    z ^= z >> 31;
    auto const sign = std::uint16_t((z >> 63) << 15);
    auto const exponent = std::uint16_t((127u - 8u + std::uint32_t(z >> 32) % 16u) << 7);
    auto const mantissa = std::uint16_t(z & 0x7Fu);
    x = bf16::from_bits(std::uint16_t(sign | exponent | mantissa));
  }
  return v;
}

// Device-to-device cudaMemcpyAsync of copy_bytes: GB/s read + written.
double measure_hbm_copy_gbps(benchmark::State* state) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const n = std::int64_t(copy_bytes / sizeof(bf16));
  tensor<backend::cuda> src(gpu, dtype::bf16, {n});
  tensor<backend::cuda> dst(gpu, dtype::bf16, {n});
  auto const host = random_bf16(std::size_t(n), 1);
  gpu.copy(src.data(), host.data(), src.nbytes(), stream);
  double const seconds = median_seconds(state, gpu, stream, [&](int) {
    LC_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice,
                                  stream.get()));
  });
  return 2.0 * double(copy_bytes) / seconds / 1e9;
}

// The ceiling, once per process: BM_hbm_copy's result, or measured alone when it was filtered out.
std::optional<double> hbm_copy_gbps;

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

// One call's operands: x, out and, fused, the residual.
struct norm_set {
  tensor<backend::cuda> x, out, residual;
};

void bm_norm(benchmark::State& state, bool fused, std::int64_t hidden, std::int64_t rows) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::int64_t const n = rows * hidden;
  int const tensors_per_set = fused ? 3 : 2;
  std::size_t const set_bytes = std::size_t(n) * sizeof(bf16) * std::size_t(tensors_per_set);
  int const sets = int(std::max<std::size_t>(2, (rotation_bytes + set_bytes - 1) / set_bytes));
  auto const host = random_bf16(std::size_t(n), 100);
  auto const host_w = random_bf16(std::size_t(hidden), 7);
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
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    norm_set const& s = buffers[std::size_t(call % sets)];
    if (fused) {
      kernels::fused_add_rmsnorm(gpu, s.residual, s.x, weight, s.out, deepseek_eps, stream);
    } else {
      kernels::rmsnorm(gpu, s.x, weight, s.out, deepseek_eps, stream);
    }
  });
  // Per element: x read and out written, plus the residual read and written when fused.
  double const bytes = double(n) * double(sizeof(bf16)) * (fused ? 4.0 : 2.0) +
                       double(hidden) * double(sizeof(bf16));
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
  for (bool const fused : {false, true}) {
    for (std::int64_t const hidden : {7168, 2048}) {
      for (std::int64_t const rows : {4096, 16384}) {
        std::string const name = std::string(fused ? "BM_fused_add_rmsnorm" : "BM_rmsnorm") + "/H" +
                                 std::to_string(hidden) + "/M" + std::to_string(rows);
        benchmark::RegisterBenchmark(name.c_str(), bm_norm, fused, hidden, rows)
            ->UseManualTime()
            ->Iterations(iterations)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
