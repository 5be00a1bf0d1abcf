// moe_route and moe_align per call, for T = 1..8192 tokens: routing at DeepSeek-R1's settings
// (256 experts, top-8 of the 4 best of 8 groups, sigmoid + bias) and V2-Lite's (64 experts,
// greedy top-6, softmax); alignment of R1's routed ids (top-8 of 256) to block_m 64 and 128.
// Inputs: random normal logits (never zeros) and the ids routed from them; rotated over up to
// max_sets buffer sets (enough to miss L2 at large T; at small T both kernels are bound by latency,
// and the logits come straight from the gate GEMM, so L2 hits are what a model sees there).
// CUDA-event timing, median per call (the time column, in microseconds). Counters: tokens/s,
// GB/s (routing: logits read + ids and weights written; alignment: ids read twice + every output
// element written) and frac_of_hbm, the fraction of a device-to-device copy (BM_hbm_copy).
//   lightcore_bench_moe [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "bench_common.hpp"
#include "kernels/moe/moe.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;
using kernels::moe_routing_config;

// Buffer sets at most: 256 MiB of rotation needs thousands of sets of a few KiB at T = 1, whose
// allocation would cost more than the benchmark; 64 sets of the largest case already exceed L2.
constexpr int max_sets = 64;

moe_routing_config config_of(std::int64_t index) {
  return index == 0 ? moe_routing_config::deepseek_v3() : moe_routing_config::deepseek_v2_lite();
}

std::vector<float> normal_logits(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<float> small_bias(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

void bm_route(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const tokens = state.range(0);
  auto const c = config_of(state.range(1));
  std::int64_t const e = c.num_experts, k = c.top_k;
  double const bytes = double(tokens) * double(e) * 4.0 + double(tokens * k) * 8.0;
  int const sets = std::min(max_sets, buffer_sets_for(bytes));
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const host_logits = normal_logits(tokens * e, 5);
  auto const host_bias = small_bias(e, 6);
  tensor<backend::cuda> bias(gpu, dtype::f32, {e});
  gpu.copy(bias.data(), host_bias.data(), bias.nbytes(), stream);
  bool const with_bias = c.scoring == kernels::moe_scoring::sigmoid;
  std::vector<tensor<backend::cuda>> logits, ids, weights;
  for (int s = 0; s < sets; ++s) {
    logits.emplace_back(gpu, dtype::f32, dims{tokens, e});
    ids.emplace_back(gpu, dtype::i32, dims{tokens, k});
    weights.emplace_back(gpu, dtype::f32, dims{tokens, k});
    gpu.copy(logits.back().data(), host_logits.data(), logits.back().nbytes(), stream);
  }
  stream.synchronize();
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        auto const s = std::size_t(call % sets);
        kernels::moe_route(gpu, logits[s], with_bias ? bias.view() : tensor_view{}, c, ids[s],
                           weights[s], stream);
      },
      call_numbering::running);
  set_bandwidth_counters(state, bytes, seconds);
  state.counters["tokens/s"] = double(tokens) / seconds;
}

void bm_align(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const tokens = state.range(0), block_m = state.range(1);
  auto const c = moe_routing_config::deepseek_v3();
  std::int64_t const e = c.num_experts, k = c.top_k;
  auto const cap = kernels::moe_align_capacity(tokens, k, e, block_m);
  double const rows = double(tokens * k);
  double const bytes = rows * 4.0 * 2.0 + rows * 4.0 + double(cap.sorted_rows + cap.blocks) * 4.0 +
                       double(2 * e + 2) * 4.0;
  int const sets = std::min(max_sets, buffer_sets_for(bytes));
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();

  // The ids a model would align: R1's routing of random logits, on the GPU.
  auto const host_logits = normal_logits(tokens * e, 7);
  auto const host_bias = small_bias(e, 8);
  tensor<backend::cuda> logits(gpu, dtype::f32, {tokens, e}), bias(gpu, dtype::f32, {e});
  tensor<backend::cuda> weights(gpu, dtype::f32, {tokens, k});
  gpu.copy(logits.data(), host_logits.data(), logits.nbytes(), stream);
  gpu.copy(bias.data(), host_bias.data(), bias.nbytes(), stream);

  struct outputs {
    tensor<backend::cuda> ids, counts, offsets, sorted, blocks, total, inverse;
  };
  std::vector<outputs> set;
  for (int s = 0; s < sets; ++s) {
    set.push_back({tensor<backend::cuda>(gpu, dtype::i32, {tokens, k}),
                   tensor<backend::cuda>(gpu, dtype::i32, {e}),
                   tensor<backend::cuda>(gpu, dtype::i32, {e + 1}),
                   tensor<backend::cuda>(gpu, dtype::i32, {cap.sorted_rows}),
                   tensor<backend::cuda>(gpu, dtype::i32, {cap.blocks}),
                   tensor<backend::cuda>(gpu, dtype::i32, {1}),
                   tensor<backend::cuda>(gpu, dtype::i32, {tokens, k})});
    kernels::moe_route(gpu, logits, bias, c, set.back().ids, weights, stream);
  }
  stream.synchronize();
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        auto& o = set[std::size_t(call % sets)];
        kernels::moe_align(gpu, o.ids, e, block_m,
                           {o.counts, o.offsets, o.sorted, o.blocks, o.total, o.inverse}, stream);
      },
      call_numbering::running);
  set_bandwidth_counters(state, bytes, seconds);
  state.counters["tokens/s"] = double(tokens) / seconds;
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  std::int64_t const token_counts[] = {1, 8, 64, 256, 1024, 4096, 8192};
  for (std::int64_t model : {0, 1}) {  // R1, V2-Lite
    for (std::int64_t tokens : token_counts) {
      bench::timed(benchmark::RegisterBenchmark(
                       model == 0 ? "BM_moe_route_r1" : "BM_moe_route_v2_lite", bm_route)
                       ->Args({tokens, model})
                       ->ArgNames({"T", "model"}));
    }
  }
  for (std::int64_t block_m : {64, 128}) {
    for (std::int64_t tokens : token_counts) {
      bench::timed(benchmark::RegisterBenchmark("BM_moe_align_r1", bm_align)
                       ->Args({tokens, block_m})
                       ->ArgNames({"T", "block_m"}));
    }
  }
  return bench::run_benchmarks(argc, argv);
}
