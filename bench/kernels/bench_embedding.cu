// embedding against the HBM ceiling: T = 16384 tokens of DeepSeek-R1 (H = 7168) with random ids
// over its 129280-id vocabulary, from the whole table (tp 1, 1.85 GB) and from one rank's eighth
// (tp 8: 1 id in 8 is a row copy, the rest write zeros). The output and ids rotate over two buffer
// sets; the table rows are random, so little repeats in L2. CUDA-event timing, median per call.
// Counters: GB/s (bytes read + written: rows copied * H * 2 + T * H * 2 + T * 4) and frac_of_hbm,
// the fraction of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_embedding [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kernels/embedding/embedding.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

constexpr std::size_t copy_bytes = std::size_t(512) << 20;  // the ceiling's copy
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

constexpr std::int64_t vocab = 129280;  // DeepSeek-V3/R1
constexpr int buffer_sets = 2;

void bm_embedding(benchmark::State& state) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  std::int64_t const tokens = state.range(0), hidden = state.range(1), tp = state.range(2);
  std::int64_t const shard_rows = vocab / tp;  // rank 0: ids [0, vocab / tp)
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  tensor<backend::cuda> table(gpu, dtype::bf16, {shard_rows, hidden});
  {
    auto const host = random_bf16(std::size_t(shard_rows * hidden), 13);
    gpu.copy(table.data(), host.data(), table.nbytes(), stream);
    stream.synchronize();
  }
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<std::int32_t> dist(0, std::int32_t(vocab - 1));
  std::vector<tensor<backend::cuda>> ids, out;
  std::int64_t copied = 0;  // rows copied per call, averaged over the sets
  for (int k = 0; k < buffer_sets; ++k) {
    std::vector<std::int32_t> host(static_cast<std::size_t>(tokens));
    for (auto& id : host) {
      id = dist(rng);
      copied += id < shard_rows;
    }
    ids.emplace_back(gpu, dtype::i32, dims{tokens});
    out.emplace_back(gpu, dtype::bf16, dims{tokens, hidden});
    gpu.copy(ids.back().data(), host.data(), ids.back().nbytes(), stream);
    stream.synchronize();
  }
  double const bytes =
      (double(copied) / buffer_sets + double(tokens)) * double(hidden) * 2.0 + double(tokens) * 4.0;
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    auto const k = std::size_t(call % buffer_sets);
    kernels::embedding(gpu, ids[k], table, out[k], kernels::vocab_shard{0, vocab}, stream);
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
  for (std::int64_t tp : {1, 8}) {
    benchmark::RegisterBenchmark("BM_embedding", bm_embedding)
        ->Args({16384, 7168, tp})
        ->ArgNames({"T", "H", "tp"})
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
