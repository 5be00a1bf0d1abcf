// FP8 block-scaled GEMM at decode sizes: the weight-streaming kernel (gemm_fp8_small_m_cuda) next
// to cuBLASLt (kernels::gemm_fp8_block) on DeepSeek-R1's projection shapes (N x K) at M = 4, 16,
// 64, 128. At these M the product is a stream of the weight, so the counters count the weight's
// bytes alone (N * K codes + its block scales): GB/s and frac_of_hbm (of BM_hbm_copy, measured in
// this binary). Operands random (never zero), rotated over enough buffer sets that no call finds
// its weight in L2; CUDA-event timing of CUDA graphs of 16+ calls (as decode replays them),
// median per call.
//   lightcore_bench_gemm_fp8_small_m [--benchmark_filter=...]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "kernels/gemm/fp8_small_m_params.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

// Random bytes that are finite fp8_e4m3 codes of magnitude 2^-3 .. 2^3 with random signs.
std::vector<std::uint8_t> random_fp8_codes(std::size_t n, std::uint64_t seed) {
  std::vector<std::uint8_t> v(n);
  splitmix64 rng{seed};
  for (auto& x : v) {
    std::uint64_t const z = rng.next();
    x = std::uint8_t(((z >> 63) << 7) | ((4u + (z >> 8) % 7u) << 3) | (z & 7u));
  }
  return v;
}

enum class path { small_m, cublaslt };

void bm_fp8(benchmark::State& state, path which) {
  if (skip_without_gpu(state)) return;
  std::int64_t const m = state.range(0), n = state.range(1), k = state.range(2);
  std::int64_t const nb = (n + 127) / 128, scale_ld = kernels::gemm_fp8_weight_scale_ld(k);
  double const weight_bytes = double(n * k) + double(nb * (k / 128) * 4);
  double const set_bytes = weight_bytes + double(m * k) + double(m * n * 2);
  int const sets = buffer_sets_for(set_bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  kernels::gemm_context<backend::cuda> ctx(gpu);
  auto const host_x = random_fp8_codes(std::size_t(m * k), 3);
  auto const host_w = random_fp8_codes(std::size_t(n * k), 5);
  std::vector<float> const host_xs(std::size_t(m * (k / 128)), 1.0f / 64);
  std::vector<float> const host_ws(std::size_t(nb * scale_ld), 1.0f / 256);
  std::vector<tensor<backend::cuda>> x, xs, w, ws, c;
  for (int i = 0; i < sets; ++i) {
    x.emplace_back(gpu, dtype::fp8_e4m3, dims{m, k});
    xs.emplace_back(gpu, dtype::f32, dims{k / 128, m});
    w.emplace_back(gpu, dtype::fp8_e4m3, dims{n, k});
    ws.emplace_back(gpu, dtype::f32, dims{nb, scale_ld});
    c.emplace_back(gpu, dtype::bf16, dims{m, n});
    gpu.copy(x.back().data(), host_x.data(), x.back().nbytes(), stream);
    gpu.copy(xs.back().data(), host_xs.data(), xs.back().nbytes(), stream);
    gpu.copy(w.back().data(), host_w.data(), w.back().nbytes(), stream);
    gpu.copy(ws.back().data(), host_ws.data(), ws.back().nbytes(), stream);
  }
  std::vector<kernels::gemm_problem> problems;
  for (int i = 0; i < sets; ++i)
    problems.push_back(kernels::detail::check_gemm_fp8_args(
        gpu.where(), x[std::size_t(i)], xs[std::size_t(i)], w[std::size_t(i)],
        ws[std::size_t(i)].view().slice(1, 0, k / 128), c[std::size_t(i)]));
  tensor<backend::cuda> workspace(gpu, dtype::u8, {kernels::gemm_workspace_bytes});
  auto const enqueue = [&](int call) {
    auto const i = std::size_t(call % sets);
    if (which == path::small_m)
      kernels::detail::gemm_fp8_small_m_cuda(problems[i], 0, stream.get());
    else
      kernels::gemm_fp8_block(gpu, ctx, x[i], xs[i], w[i], ws[i].view().slice(1, 0, k / 128), c[i],
                              workspace, stream);
  };
  for (int i = 0; i < sets; ++i) enqueue(i);  // cuBLASLt plans outside the capture
  stream.synchronize();
  // An eager launch here costs the host about as long as the kernel runs (~18 us on the H100
  // machine): a graph of calls over the rotating sets is what is timed, as decode replays it.
  double const seconds = median_seconds_in_graph(&state, gpu, stream, std::max(16, sets), enqueue);
  set_bandwidth_counters(state, weight_bytes, seconds);
}

void bm_small_m(benchmark::State& state) { bm_fp8(state, path::small_m); }
void bm_cublaslt(benchmark::State& state) { bm_fp8(state, path::cublaslt); }

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  // R1's projections: fused q_a + kv_a, q_b, kv_b, o_proj, a 4096-wide shard, the TP8 dense down
  // projection, kv_a alone.
  std::vector<std::pair<std::int64_t, std::int64_t>> const shapes = {
      {2112, 7168}, {24576, 1536}, {32768, 512}, {7168, 16384},
      {4096, 7168}, {7168, 2048},  {576, 7168}};
  for (std::int64_t m : {4, 16, 64, 128})
    for (auto [n, k] : shapes)
      for (auto [name, fn] :
           {std::pair{"BM_fp8_small_m", &bm_small_m}, std::pair{"BM_fp8_cublaslt", &bm_cublaslt}})
        bench::timed(
            benchmark::RegisterBenchmark(name, fn)->Args({m, n, k})->ArgNames({"M", "N", "K"}));
  return bench::run_benchmarks(argc, argv);
}
