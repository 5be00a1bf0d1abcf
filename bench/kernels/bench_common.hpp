// The harness shared by the kernel microbenchmarks (bench_<family>.cu): CUDA-event timing, the
// median of the samples, random never-zero inputs, and the HBM ceiling, a device-to-device
// cudaMemcpyAsync of copy_bytes measured in the same binary (BM_hbm_copy), that the counters
// "GB/s" and "frac_of_hbm" refer to. Host code only; one translation unit per binary.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::bench {

inline constexpr std::size_t copy_bytes = std::size_t(512) << 20;  // the ceiling's copy
// Calls between two events: the host runs ahead of the GPU, so the launch gap before the first
// call is spread over all of them.
inline constexpr int calls_per_iteration = 8;
inline constexpr int iterations = 50;  // samples per benchmark, and of the ceiling measured alone
inline constexpr int warmup_iterations = 2;

// How median_seconds numbers the calls it passes to enqueue: per_sample restarts at 0 in every
// sample (0 .. calls_per_iteration - 1); running counts on across samples and the warm-up, so that
// every one of more than calls_per_iteration buffer sets takes its turn.
enum class call_numbering { per_sample, running };

// Bytes touched before a buffer set recurs: five times the H100's 50 MiB L2, so that no call
// finds its inputs in cache.
inline constexpr std::size_t rotation_bytes = std::size_t(256) << 20;

// How many buffer sets of `bytes_per_set` a benchmark rotates through: enough to touch
// rotation_bytes per sweep, and at least 2.
inline int buffer_sets_for(double bytes_per_set) {
  auto const per_set = static_cast<std::size_t>(bytes_per_set);
  return int(std::max<std::size_t>(2, (rotation_bytes + per_set - 1) / per_set));
}

// The median of v (the upper one of an even count).
inline double median(std::vector<double> v) {
  auto const mid = v.begin() + std::ptrdiff_t(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

// splitmix64: random bits for the inputs.
struct splitmix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
};

// n random bf16 values, 2^-4 <= |x| < 2^4 with random sign and mantissa (splitmix64): never zero.
inline std::vector<bf16> random_bf16(std::size_t n, std::uint64_t seed) {
  std::vector<bf16> v(n);
  splitmix64 rng{seed};
  for (auto& x : v) {
    std::uint64_t const z = rng.next();
    auto const exponent = std::uint16_t((127u - 4u + (z >> 8) % 8u) << 7);
    x = bf16::from_bits(std::uint16_t((z >> 63) << 15) | exponent | std::uint16_t(z & 0x7Fu));
  }
  return v;
}

// The median seconds per call of calls_per_iteration calls of enqueue(call number) bracketed by
// two events, after warmup_iterations samples; with a State its iterations are the samples, each
// reported to it as the manual time, else `iterations` samples.
template <class Enqueue>
double median_seconds(benchmark::State* state, backend::cuda& gpu,
                      backend::cuda::stream_type const& stream, Enqueue&& enqueue,
                      call_numbering numbering = call_numbering::per_sample) {
  auto start = gpu.make_event(), stop = gpu.make_event();
  int call = 0;
  auto const sample = [&] {
    if (numbering == call_numbering::per_sample) call = 0;
    start.record(stream);
    for (int i = 0; i < calls_per_iteration; ++i) enqueue(call++);
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

// The median seconds per call of enqueue(0) .. enqueue(calls - 1) captured into one CUDA graph
// and replayed (calls_per_iteration graphs per sample). Decode replays graphs, and an eager launch
// of a short kernel costs the host about as long as the kernel runs, so eager loops would time the
// host. Whatever enqueue() must plan (cuBLASLt algorithms) is planned before the capture.
template <class Enqueue>
double median_seconds_in_graph(benchmark::State* state, backend::cuda& gpu,
                               backend::cuda::stream_type const& stream, int calls,
                               Enqueue&& enqueue) {
  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) enqueue(i);
  LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  cudaError_t const instantiated = cudaGraphInstantiate(&exec, graph, 0);
  LC_CUDA_CHECK(cudaGraphDestroy(graph));
  LC_CUDA_CHECK(instantiated);
  double const seconds =
      median_seconds(state, gpu, stream,
                     [&](int) { LC_CUDA_CHECK(cudaGraphLaunch(exec, stream.get())); }) /
      calls;
  LC_CUDA_CHECK(cudaGraphExecDestroy(exec));
  return seconds;
}

// GB/s (read + written) of a device-to-device cudaMemcpyAsync of copy_bytes of random bf16.
inline double measure_hbm_copy_gbps(benchmark::State* state) {
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

// The ceiling, once per process: BM_hbm_copy's result, or measured alone when it was filtered out.
inline std::optional<double> hbm_copy_gbps;

// The ceiling in GB/s, measured on first use unless BM_hbm_copy ran.
inline double ceiling_gbps() {
  if (!hbm_copy_gbps) hbm_copy_gbps = measure_hbm_copy_gbps(nullptr);
  return *hbm_copy_gbps;
}

// True, after SkipWithError("no CUDA device"), when there is no GPU: the benchmark returns.
inline bool skip_without_gpu(benchmark::State& state) {
  if (backend::cuda::device_count() != 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

// Sets "GB/s" and "frac_of_hbm" (of ceiling_gbps()) and the bytes processed from the bytes one
// call reads + writes and its median seconds.
inline void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds) {
  double const gbps = bytes / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["frac_of_hbm"] = gbps / ceiling_gbps();
  state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
}

// BM_hbm_copy: measures the ceiling (kept for the other benchmarks), frac_of_hbm 1 by definition.
inline void bm_hbm_copy(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  hbm_copy_gbps = measure_hbm_copy_gbps(&state);
  state.counters["GB/s"] = *hbm_copy_gbps;
  state.counters["frac_of_hbm"] = 1.0;
  state.SetBytesProcessed(std::int64_t(2 * copy_bytes) * state.iterations());
}

// The settings every benchmark here runs with: manual (event) time, `iterations`, microseconds.
inline benchmark::internal::Benchmark* timed(benchmark::internal::Benchmark* b) {
  return b->UseManualTime()->Iterations(iterations)->Unit(benchmark::kMicrosecond);
}

// Registers BM_hbm_copy; call it first, so that the ceiling is measured before the kernels.
inline void register_hbm_copy() { timed(benchmark::RegisterBenchmark("BM_hbm_copy", bm_hbm_copy)); }

// Runs the registered benchmarks with the command line's flags: main's return value.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace lightcore::bench
