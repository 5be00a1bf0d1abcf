// gqa_decode (GQA paged decode attention) for kv_heads 8, head dim 128, q_heads 32 and 64
// (groups 4 and 8), batch {1, 32, 128}, context {1024, 4096}. Every row's slots are a random
// permutation of the pool; the pool holds several sets of rows (at least 256 MB, five times the
// L2) and each call reads the next set, so no call finds its KV in L2. Random bf16 values (never
// zeros); CUDA-event timing, median per call. Counters:
//   GB/s, frac_of_hbm   K and V bytes read (batch * context * kv_heads * 128 * 2 * 2) over the
//                       time, and its fraction of a device-to-device cudaMemcpyAsync measured here
//                       (BM_hbm_copy)
//   splits              the KV splits per row of the plan
//   lightcore_bench_gqa_decode [--benchmark_filter=...]
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "bench_common.hpp"
#include "kernels/attention/gqa_decode.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

inline constexpr std::int64_t kv_heads = 8, head_dim = 128;

void bm_gqa_decode(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const batch = state.range(0), context = state.range(1), q_heads = state.range(2);
  std::int64_t const width = kv_heads * head_dim;
  double const bytes = double(batch) * double(context) * double(width) * 2 * sizeof(bf16);
  int const sets = buffer_sets_for(bytes);
  std::int64_t const rows = batch * sets, slots = rows * context;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();

  // The pools, filled from one 64 MiB block of random values copied over them.
  tensor<backend::cuda> k(gpu, dtype::bf16, {slots, kv_heads, head_dim});
  tensor<backend::cuda> v(gpu, dtype::bf16, {slots, kv_heads, head_dim});
  auto const chunk = random_bf16(std::size_t(32) << 20, 31);
  std::size_t const pool_elems = std::size_t(slots * width);
  for (auto* pool : {&k, &v})
    for (std::size_t at = 0; at < pool_elems; at += chunk.size())
      gpu.copy(static_cast<bf16*>(pool->data()) + at, chunk.data(),
               std::min(chunk.size(), pool_elems - at) * sizeof(bf16), stream);
  // Table row r holds a slice of one permutation of all slots; set s uses rows s * batch ...
  std::vector<std::int32_t> table(static_cast<std::size_t>(slots)),
      row_ids(static_cast<std::size_t>(rows)),
      lens(static_cast<std::size_t>(batch), static_cast<std::int32_t>(context));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937_64(32));
  std::iota(row_ids.begin(), row_ids.end(), 0);
  tensor<backend::cuda> table_d(gpu, dtype::i32, {rows, context});
  tensor<backend::cuda> rows_d(gpu, dtype::i32, {rows}), lens_d(gpu, dtype::i32, {batch});
  gpu.copy(table_d.data(), table.data(), table_d.nbytes(), stream);
  gpu.copy(rows_d.data(), row_ids.data(), rows_d.nbytes(), stream);
  gpu.copy(lens_d.data(), lens.data(), lens_d.nbytes(), stream);
  tensor<backend::cuda> q(gpu, dtype::bf16, {batch, q_heads, head_dim});
  auto const q_host = random_bf16(std::size_t(batch * q_heads * head_dim), 33);
  gpu.copy(q.data(), q_host.data(), q.nbytes(), stream);
  tensor<backend::cuda> out(gpu, dtype::bf16, {batch, q_heads, head_dim});
  tensor<backend::cuda> lse(gpu, dtype::f32, {batch, q_heads});
  auto const plan = kernels::plan_gqa_decode(gpu, batch, q_heads, kv_heads, head_dim);
  tensor<backend::cuda> workspace(gpu, dtype::u8,
                                  {std::max<std::int64_t>(plan.workspace_bytes, 256)});
  stream.synchronize();

  kernels::gqa_decode_args a;
  a.q = q;
  a.k_cache = k;
  a.v_cache = v;
  a.req_to_token = table_d;
  a.seq_lens = lens_d;
  a.out = out;
  a.lse = lse;
  // random_bf16's values reach 16 in magnitude: a small scale keeps the softmax spread out.
  a.softmax_scale = 1.0f / (64.0f * std::sqrt(float(head_dim)));
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        a.req_rows = rows_d.view().slice(0, (call % sets) * batch, (call % sets + 1) * batch);
        kernels::gqa_decode(gpu, a, plan, workspace, stream);
      },
      call_numbering::running);
  set_bandwidth_counters(state, bytes, seconds);
  state.counters["splits"] = plan.num_splits;
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (std::int64_t q_heads : {32, 64})
    for (std::int64_t context : {1024, 4096})
      for (std::int64_t batch : {1, 32, 128})
        bench::timed(benchmark::RegisterBenchmark("BM_gqa_decode", bm_gqa_decode)
                         ->Args({batch, context, q_heads})
                         ->ArgNames({"batch", "context", "q_heads"}));
  return bench::run_benchmarks(argc, argv);
}
