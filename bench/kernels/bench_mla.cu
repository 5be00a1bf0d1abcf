// mla_decode (absorbed MLA decode over the latent cache) at batch 128, context 4096, for H = 16
// (DeepSeek-R1 at TP8: memory-bound) and H = 128 (TP1 or DP attention: compute-bound). Every
// row's 4096 slots are a random permutation of the pool (604 MB of latent rows, far beyond the 50
// MB L2), random bf16 values (never zeros); CUDA-event timing, median per call. Counters:
//   GB/s, frac_of_hbm   latent bytes read (batch * context * 576 * 2) over the time, and its
//                       fraction of a device-to-device cudaMemcpyAsync measured here (BM_hbm_copy)
//   TFLOP/s, frac_of_bf16_peak   2 * H * (576 + 512) * context per row, against the H100's
//                       measured bf16 dense GEMM ceiling (~790 TFLOP/s, docs/perf/ceilings.md)
//   splits              the KV splits per row of the plan
// The `contiguous` cases give each row consecutive slots instead (the same bytes, read as long
// runs): their gap to the shuffled case is what the row-by-row gather costs. H = 128 also runs at
// batch 8 (context 4096) and at context 512 (batch 128), where fixed costs weigh more.
//   lightcore_bench_mla [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

inline constexpr double bf16_dense_ceiling_tflops = 790.0;  // H100, ../shared/HOPPER.md

void bm_mla_decode(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const batch = state.range(0), context = state.range(1), heads = state.range(2);
  std::int64_t const width = kernels::mla_kv_width, latent = kernels::mla_latent_dim;
  std::int64_t const slots = batch * context;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();

  // The pool, filled from one 64 MiB block of random values copied over it.
  tensor<backend::cuda> pool(gpu, dtype::bf16, {slots, width});
  auto const chunk = random_bf16(std::size_t(32) << 20, 21);
  std::size_t const pool_elems = std::size_t(slots * width);
  for (std::size_t at = 0; at < pool_elems; at += chunk.size())
    gpu.copy(static_cast<bf16*>(pool.data()) + at, chunk.data(),
             std::min(chunk.size(), pool_elems - at) * sizeof(bf16), stream);
  std::vector<std::int32_t> table(static_cast<std::size_t>(slots)),
      rows(static_cast<std::size_t>(batch)),
      lens(static_cast<std::size_t>(batch), static_cast<std::int32_t>(context));
  std::iota(table.begin(), table.end(), 0);
  if (state.range(4) == 0) std::shuffle(table.begin(), table.end(), std::mt19937_64(22));
  std::iota(rows.begin(), rows.end(), 0);
  tensor<backend::cuda> table_d(gpu, dtype::i32, {batch, context});
  tensor<backend::cuda> rows_d(gpu, dtype::i32, {batch}), lens_d(gpu, dtype::i32, {batch});
  gpu.copy(table_d.data(), table.data(), table_d.nbytes(), stream);
  gpu.copy(rows_d.data(), rows.data(), rows_d.nbytes(), stream);
  gpu.copy(lens_d.data(), lens.data(), lens_d.nbytes(), stream);
  tensor<backend::cuda> q(gpu, dtype::bf16, {batch, heads, width});
  auto const q_host = random_bf16(std::size_t(batch * heads * width), 23);
  gpu.copy(q.data(), q_host.data(), q.nbytes(), stream);
  tensor<backend::cuda> out(gpu, dtype::bf16, {batch, heads, latent});
  tensor<backend::cuda> lse(gpu, dtype::f32, {batch, heads});
  auto plan = kernels::plan_mla_decode(gpu, batch, heads);
  if (state.range(3) > 0) {  // a forced split count, to see what the planner's choice costs
    plan.num_splits = int(state.range(3));
    plan.workspace_bytes = kernels::detail::mla_workspace_bytes(batch, heads, plan.num_splits);
  }
  tensor<backend::cuda> workspace(gpu, dtype::u8,
                                  {std::max<std::int64_t>(plan.workspace_bytes, 256)});
  stream.synchronize();

  kernels::mla_decode_args a;
  a.q_nope = q.view().slice(2, 0, latent);
  a.q_rope = q.view().slice(2, latent, width);
  a.kv_cache = pool;
  a.req_to_token = table_d;
  a.req_rows = rows_d;
  a.seq_lens = lens_d;
  a.out = out;
  a.lse = lse;
  // 1 / sqrt(192) times YaRN's mscale^2 (factor 40): the random scores then spread as in a model.
  a.softmax_scale = 0.1352f;
  double const seconds = median_seconds(
      &state, gpu, stream, [&](int) { kernels::mla_decode(gpu, a, plan, workspace, stream); });
  double const bytes = double(slots) * double(width) * sizeof(bf16);
  set_bandwidth_counters(state, bytes, seconds);
  double const tflops = double(batch) * 2.0 * double(heads) * double(width + latent) *
                        double(context) / seconds / 1e12;
  state.counters["TFLOP/s"] = tflops;
  state.counters["frac_of_bf16_peak"] = tflops / bf16_dense_ceiling_tflops;
  state.counters["splits"] = plan.num_splits;
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  // splits 0: the planner's choice; others forced.
  for (std::int64_t heads : {16, 128})
    for (std::int64_t splits : {0, 1, 2, 3, 4, 8})
      bench::timed(benchmark::RegisterBenchmark("BM_mla_decode", bm_mla_decode)
                       ->Args({128, 4096, heads, splits, 0})
                       ->ArgNames({"batch", "context", "H", "splits", "contiguous"}));
  bench::timed(benchmark::RegisterBenchmark("BM_mla_decode", bm_mla_decode)
                   ->Args({128, 4096, 16, 0, 1})
                   ->ArgNames({"batch", "context", "H", "splits", "contiguous"}));
  // H = 128 where a CTA's fixed costs weigh more: a small batch (many splits, then the merge) and
  // short contexts.
  std::pair<std::int64_t, std::int64_t> const fixed_cost_cases[] = {{8, 4096}, {128, 512}};
  for (auto const& [batch, context] : fixed_cost_cases)
    bench::timed(benchmark::RegisterBenchmark("BM_mla_decode", bm_mla_decode)
                     ->Args({batch, context, 128, 0, 0})
                     ->ArgNames({"batch", "context", "H", "splits", "contiguous"}));
  return bench::run_benchmarks(argc, argv);
}
