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
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/rope/rope.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

constexpr std::int64_t max_positions = 163840;  // DeepSeek-R1's max_position_embeddings
constexpr std::int64_t qk_head = 192, kv_row = 576;

// Fills a device bf16 buffer of n elements with normal-range values 2^-4 <= |x| < 2^4, random
// sign and mantissa, by repeating one random host chunk.
void fill_random_bf16(backend::cuda& gpu, void* dst, std::int64_t n, std::uint64_t seed,
                      backend::cuda::stream_type const& stream) {
  constexpr std::int64_t chunk = std::int64_t(1) << 22;
  splitmix64 rng{seed};
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

void bm_rope(benchmark::State& state, std::int64_t tokens, std::int64_t heads) {
  if (skip_without_gpu(state)) return;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  double const bytes = double(tokens) * double(heads + 1) * 64 * 2 * 2  // rope rows, read + write
                       + double(tokens) * 4                             // positions
                       + double(tokens) * 64 * 4;                       // cache rows
  int const sets = buffer_sets_for(bytes);

  std::vector<float> const host_cache =
      kernels::yarn_cos_sin_cache(kernels::yarn_config{}, max_positions);
  tensor<backend::cuda> cache(gpu, dtype::f32, {max_positions, 64});
  gpu.copy(cache.data(), host_cache.data(), cache.nbytes(), stream);
  splitmix64 rng{42};
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
  // Calls are numbered across samples, so that every buffer set takes its turn (T4096_H16 has 15).
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        auto const s = std::size_t(call % sets);
        kernels::apply_rope(gpu, q[s].view().slice(2, qk_head - 64, qk_head),
                            kv[s].view().slice(1, kv_row - 64, kv_row), pos[s], cache, stream);
      },
      call_numbering::running);
  set_bandwidth_counters(state, bytes, seconds);
  // A label, not a counter: every CSV row of a binary must carry the same counters.
  state.SetLabel("buffer_sets=" + std::to_string(sets));
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (std::int64_t tokens : {4096, 16384}) {
    for (std::int64_t heads : {128, 16}) {
      std::string const name = "BM_rope/T" + std::to_string(tokens) + "_H" + std::to_string(heads);
      bench::timed(benchmark::RegisterBenchmark(name.c_str(), bm_rope, tokens, heads));
    }
  }
  return bench::run_benchmarks(argc, argv);
}
