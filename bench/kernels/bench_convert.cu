// convert against the HBM ceiling. Each pair casts 256 MiB of random source (never zeros), rotating
// between two buffer sets so that nothing stays in L2 (50 MiB on the H100), timed with CUDA events.
// Counters: GB/s (bytes read + written, from the median time per call) and frac_of_hbm, the
// fraction of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_convert [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::convert_pair;

constexpr std::size_t source_bytes = std::size_t(256) << 20;  // per buffer set
constexpr std::size_t copy_bytes = std::size_t(512) << 20;    // the ceiling's copy
constexpr int buffer_sets = 2;
// Calls between two events: the host runs ahead of the GPU, so the launch gap before the first
// call is spread over all of them.
constexpr int calls_per_iteration = 8;
constexpr int iterations = 50;
constexpr int warmup_iterations = 2;

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
    for (int i = 0; i < calls_per_iteration; ++i) enqueue(i);
    stop_.record(stream_);
    stop_.synchronize();
    return backend::cuda::elapsed_ms(start_, stop_) / 1e3 / calls_per_iteration;
  }

 private:
  backend::cuda::stream_type const& stream_;
  backend::cuda::event_type start_, stop_;
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

// Random normal floats, 2^-8 <= |x| < 2^8 with random sign and mantissa: never zero, in every
// target format's range (fp8 saturates only above 448), so no cast takes a trivial path.
class random_floats {
 public:
  explicit random_floats(std::uint64_t seed) : state_(seed) {}
  float next() {
    std::uint64_t z = (state_ += 0x9E37'79B9'7F4A'7C15ull);  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    z ^= z >> 31;
    auto const sign = std::uint32_t(z >> 63) << 31;
    auto const exponent = (127u - 8u + std::uint32_t(z >> 32) % 16u) << 23;
    auto const mantissa = std::uint32_t(z) & 0x7F'FFFFu;
    return __builtin_bit_cast(float, sign | exponent | mantissa);
  }

 private:
  std::uint64_t state_;
};

// Fills a contiguous device view of any dtype that f32 converts to with random_floats, in chunks
// (host -> f32 staging -> convert), so that the staging memory stays small.
void fill_random(backend::cuda& gpu, tensor_view const& dst, std::uint64_t seed,
                 backend::cuda::stream_type const& stream) {
  constexpr std::int64_t chunk = std::int64_t(1) << 24;
  random_floats rng(seed);
  std::vector<float> host(std::size_t(std::min(chunk, dst.numel())));
  tensor<backend::cuda> staging(gpu, dtype::f32, {std::int64_t(host.size())});
  for (std::int64_t begin = 0; begin < dst.numel(); begin += chunk) {
    std::int64_t const end = std::min(begin + chunk, dst.numel());
    for (std::int64_t i = 0; i < end - begin; ++i) host[std::size_t(i)] = rng.next();
    tensor_view const part = dst.slice(0, begin, end);
    if (dst.type() == dtype::f32) {
      gpu.copy(part.data(), host.data(), part.nbytes(), stream);
    } else {
      tensor_view const staged = staging.view().slice(0, 0, end - begin);
      gpu.copy(staged.data(), host.data(), staged.nbytes(), stream);
      kernels::convert(gpu, staged, part, stream);
    }
    stream.synchronize();  // the host buffer is refilled next
  }
}

// Device-to-device cudaMemcpyAsync of copy_bytes: GB/s read + written.
double measure_hbm_copy_gbps(benchmark::State* state) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const n = std::int64_t(copy_bytes / sizeof(float));
  tensor<backend::cuda> src(gpu, dtype::f32, {n});
  tensor<backend::cuda> dst(gpu, dtype::f32, {n});
  fill_random(gpu, src, 1, stream);
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

void bm_convert(benchmark::State& state, convert_pair pair) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const n = std::int64_t(source_bytes / size_of(pair.src));
  std::vector<tensor<backend::cuda>> src, dst;
  for (int k = 0; k < buffer_sets; ++k) {
    src.emplace_back(gpu, pair.src, dims{n});
    dst.emplace_back(gpu, pair.dst, dims{n});
    fill_random(gpu, src.back(), 100 + std::uint64_t(k), stream);
  }
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    kernels::convert(gpu, src[std::size_t(call % buffer_sets)],
                     dst[std::size_t(call % buffer_sets)], stream);
  });
  double const bytes = double(n) * double(size_of(pair.src) + size_of(pair.dst));
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
  for (kernels::convert_pair const p : kernels::convert_pairs) {
    std::string const name =
        "BM_convert/" + std::string(name_of(p.src)) + "_to_" + std::string(name_of(p.dst));
    benchmark::RegisterBenchmark(name.c_str(), bm_convert, p)
        ->UseManualTime()
        ->Iterations(iterations)
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
