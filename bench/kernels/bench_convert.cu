// convert against the HBM ceiling. Each pair casts 256 MiB of random source (never zeros), rotating
// between two buffer sets so that nothing stays in L2 (50 MiB on the H100), timed with CUDA events.
// Counters: GB/s (bytes read + written, from the median time per call) and frac_of_hbm, the
// fraction of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_convert [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/convert/convert.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;
using kernels::convert_pair;

constexpr std::size_t source_bytes = std::size_t(256) << 20;  // per buffer set
constexpr int buffer_sets = 2;

// Random normal floats, 2^-8 <= |x| < 2^8 with random sign and mantissa: never zero, in every
// target format's range (fp8 saturates only above 448), so no cast takes a trivial path.
class random_floats {
 public:
  explicit random_floats(std::uint64_t seed) : rng_{seed} {}
  float next() {
    std::uint64_t const z = rng_.next();
    auto const sign = std::uint32_t(z >> 63) << 31;
    auto const exponent = (127u - 8u + std::uint32_t(z >> 32) % 16u) << 23;
    auto const mantissa = std::uint32_t(z) & 0x7F'FFFFu;
    return __builtin_bit_cast(float, sign | exponent | mantissa);
  }

 private:
  splitmix64 rng_;
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

void bm_convert(benchmark::State& state, convert_pair pair) {
  if (skip_without_gpu(state)) return;
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
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (kernels::convert_pair const p : kernels::convert_pairs) {
    std::string const name =
        "BM_convert/" + std::string(name_of(p.src)) + "_to_" + std::string(name_of(p.dst));
    bench::timed(benchmark::RegisterBenchmark(name.c_str(), bm_convert, p));
  }
  return bench::run_benchmarks(argc, argv);
}
