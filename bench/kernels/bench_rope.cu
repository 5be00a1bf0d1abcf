// apply_rope against the HBM ceiling, in DeepSeek-V3's layout: q [T, H, 192] bf16 with the rope
// part the last 64 of each head (a strided view), the latent rows [T, 576] with k_rope the last
// 64, random positions below R1's 163840 into a [163840, 64] f32 cos/sin cache. Random inputs
// (never zeros; the rotation keeps their norm, so repeated calls stay random), rotated over
// enough buffer sets that at least 256 MiB is touched per sweep (L2 is 50 MiB on the H100).
// Counters: GB/s from the median time per call, counting only the bytes the op touches:
//   q_rope and k_rope read + written (T (H + 1) 128 B each way; the 128 nope dims of q and the
//   512 latent dims in between are never read, so they are not counted), positions (4 B per
//   token) and one cache row read per token (256 B);
// and frac_of_hbm, the fraction of a device-to-device cudaMemcpyAsync measured in this binary
// (BM_hbm_copy). Target: >= 0.80.
//   lightcore_bench_rope [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/rope/rope.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

constexpr std::size_t copy_bytes = std::size_t(512) << 20;       // the ceiling's copy
constexpr std::size_t min_sweep_bytes = std::size_t(256) << 20;  // touched per buffer rotation
constexpr int calls_per_iteration = 8;
constexpr int iterations = 50;
constexpr int warmup_iterations = 2;
constexpr std::int64_t max_positions = 163840;  // DeepSeek-R1's max_position_embeddings
constexpr std::int64_t qk_head = 192, kv_row = 576;

double median(std::vector<double> v) {
  auto const mid = v.begin() + std::ptrdiff_t(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

// The median seconds per call of `calls_per_iteration` calls between two events, after a
// warm-up; with a State, each sample is reported to it.
template <class Enqueue>
double median_seconds(benchmark::State* state, backend::cuda& gpu,
                      backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
  auto start = gpu.make_event(), stop = gpu.make_event();
  auto sample = [&] {
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

// splitmix64: random bits for the inputs.
struct splitmix {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
};

// Fills a device bf16 buffer of n elements with normal-range values 2^-4 <= |x| < 2^4, random
// sign and mantissa, by repeating one random host chunk.
void fill_random_bf16(backend::cuda& gpu, void* dst, std::int64_t n, std::uint64_t seed,
                      backend::cuda::stream_type const& stream) {
  constexpr std::int64_t chunk = std::int64_t(1) << 22;
  splitmix rng{seed};
  std::vector<std::uint16_t> host(std::size_t(std::min(chunk, n)));
  for (auto& b : host) {
    std::uint64_t const z = rng.next();
    b = std::uint16_t((z >> 63) << 15 | (127u - 4u + (z >> 32) % 8u) << 7 | (z & 0x7Fu));
  }
  for (std::int64_t begin = 0; begin < n; begin += chunk) {
    std::int64_t const len = std::min(chunk, n - begin);
    gpu.copy(static_cast<std::uint16_t*>(dst) + begin, host.data(), std::size_t(len) * 2, stream);
  }
  stream.synchronize();
}

double measure_hbm_copy_gbps(benchmark::State* state) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const n = std::int64_t(copy_bytes / 2);
  tensor<backend::cuda> src(gpu, dtype::bf16, {n});
  tensor<backend::cuda> dst(gpu, dtype::bf16, {n});
  fill_random_bf16(gpu, src.data(), n, 1, stream);
  double const seconds = median_seconds(state, gpu, stream, [&](int) {
    LC_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice,
                                  stream.get()));
  });
  return 2.0 * double(copy_bytes) / seconds / 1e9;
}

std::optional<double> hbm_copy_gbps;  // BM_hbm_copy's result, or measured alone when filtered

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

void bm_rope(benchmark::State& state, std::int64_t tokens, std::int64_t heads) {
  if (backend::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  double const bytes = double(tokens) * double(heads + 1) * 64 * 2 * 2  // rope rows, read + write
                       + double(tokens) * 4                             // positions
                       + double(tokens) * 64 * 4;                       // cache rows
  int const sets = int(
      std::max<std::size_t>(2, (min_sweep_bytes + std::size_t(bytes) - 1) / std::size_t(bytes)));

  std::vector<float> const host_cache =
      kernels::yarn_cos_sin_cache(kernels::yarn_config{}, max_positions);
  tensor<backend::cuda> cache(gpu, dtype::f32, {max_positions, 64});
  gpu.copy(cache.data(), host_cache.data(), cache.nbytes(), stream);
  splitmix rng{42};
  std::vector<std::int32_t> host_pos(static_cast<std::size_t>(tokens));
  for (auto& p : host_pos) p = std::int32_t(rng.next() % std::uint64_t(max_positions));

  std::vector<tensor<backend::cuda>> q, kv, pos;
  for (int s = 0; s < sets; ++s) {
    q.emplace_back(gpu, dtype::bf16, dims{tokens, heads, qk_head});
    kv.emplace_back(gpu, dtype::bf16, dims{tokens, kv_row});
    pos.emplace_back(gpu, dtype::i32, dims{tokens});
    fill_random_bf16(gpu, q.back().data(), q.back().numel(), 100 + std::uint64_t(s), stream);
    fill_random_bf16(gpu, kv.back().data(), kv.back().numel(), 200 + std::uint64_t(s), stream);
    gpu.copy(pos.back().data(), host_pos.data(), pos.back().nbytes(), stream);
  }
  stream.synchronize();
  double const seconds = median_seconds(&state, gpu, stream, [&](int call) {
    auto const s = std::size_t(call % sets);
    kernels::apply_rope(gpu, q[s].view().slice(2, qk_head - 64, qk_head),
                        kv[s].view().slice(1, kv_row - 64, kv_row), pos[s], cache, stream);
  });
  double const gbps = bytes / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["frac_of_hbm"] = gbps / ceiling_gbps();
  state.counters["buffer_sets"] = sets;
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
  for (std::int64_t tokens : {4096, 16384}) {
    for (std::int64_t heads : {128, 16}) {
      std::string const name = "BM_rope/T" + std::to_string(tokens) + "_H" + std::to_string(heads);
      benchmark::RegisterBenchmark(name.c_str(), bm_rope, tokens, heads)
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
