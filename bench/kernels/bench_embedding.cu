// embedding against the HBM ceiling: T = 16384 tokens of DeepSeek-R1 (H = 7168) with random ids
// over its 129280-id vocabulary, from the whole table (tp 1, 1.85 GB) and from one rank's eighth
// (tp 8: 1 id in 8 is a row copy, the rest write zeros). The output and ids rotate over two buffer
// sets; the table rows are random, so little repeats in L2. CUDA-event timing, median per call.
// Counters: GB/s (bytes read + written: rows copied * H * 2 + T * H * 2 + T * 4) and frac_of_hbm,
// the fraction of a device-to-device cudaMemcpyAsync measured in this binary (BM_hbm_copy).
//   lightcore_bench_embedding [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/embedding/embedding.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

constexpr std::int64_t vocab = 129280;  // DeepSeek-V3/R1
constexpr int buffer_sets = 2;

void bm_embedding(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
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
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (std::int64_t tp : {1, 8}) {
    bench::timed(benchmark::RegisterBenchmark("BM_embedding", bm_embedding)
                     ->Args({16384, 7168, tp})
                     ->ArgNames({"T", "H", "tp"}));
  }
  return bench::run_benchmarks(argc, argv);
}
