// bf16 GEMM at decode sizes (M = 1, 4, 8): the weight-streaming kernels (gemm() routes M <= 4,
// k_by_n 2, to them) next to cuBLASLt (detail::gemm_cuda_cublaslt) for the same shape in the same
// run, on DeepSeek-V2-Lite's and R1's bf16 projections and MLA's per-head absorb (16 and 128 heads,
// [128, 512] per head, k_by_n for W_UK and n_by_k for W_UV). At these M the product is a stream of
// the weight, so the counters count the weight's bytes alone: GB/s and frac_of_hbm (of
// BM_hbm_copy, measured in this binary). Operands random (never zero), rotated over enough buffer
// sets that no call finds its weight in L2; CUDA-event timing of CUDA graphs of 16+ calls (as
// decode replays them), median per call.
//   lightcore_bench_gemv [--benchmark_filter=...]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/gemm/gemv_bf16_params.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

enum class path { gemv, cublaslt };

// state.range: M, N, K, batch, layout (0 n_by_k, 1 k_by_n).
void bm_gemv(benchmark::State& state, path which) {
  if (skip_without_gpu(state)) return;
  std::int64_t const m = state.range(0), n = state.range(1), k = state.range(2);
  std::int64_t const batch = state.range(3);
  auto const layout = state.range(4) == 0 ? kernels::b_layout::n_by_k : kernels::b_layout::k_by_n;
  double const weight_bytes = double(batch * n * k * 2);
  double const set_bytes = weight_bytes + double(batch * m * (k + n) * 2);
  int const sets = buffer_sets_for(set_bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  kernels::gemm_context<backend::cuda> ctx(gpu);
  auto const host_a = random_bf16(std::size_t(batch * m * k), 3);
  auto const host_b = random_bf16(std::size_t(batch * n * k), 5);
  dims const b_shape = layout == kernels::b_layout::n_by_k ? dims{batch, n, k} : dims{batch, k, n};
  std::vector<tensor<backend::cuda>> a, b, c;
  for (int i = 0; i < sets; ++i) {
    a.emplace_back(gpu, dtype::bf16, dims{batch, m, k});
    b.emplace_back(gpu, dtype::bf16, b_shape);
    c.emplace_back(gpu, dtype::bf16, dims{batch, m, n});
    gpu.copy(a.back().data(), host_a.data(), a.back().nbytes(), stream);
    gpu.copy(b.back().data(), host_b.data(), b.back().nbytes(), stream);
  }
  // Rank 2 for one matrix, as the model's linear layers call it.
  auto const view = [batch](tensor<backend::cuda> const& t) {
    return batch == 1 ? t.view().reshape({t.shape()[1], t.shape()[2]}) : t.view();
  };
  tensor<backend::cuda> workspace(gpu, dtype::u8, {kernels::gemm_workspace_bytes});
  kernels::gemm_options const opt{1.0f, 0.0f, layout};
  auto const enqueue = [&](int call) {
    auto const i = std::size_t(call % sets);
    if (which == path::gemv) {
      kernels::gemm(gpu, ctx, view(a[i]), view(b[i]), view(c[i]), workspace, stream, opt);
    } else {
      kernels::gemm_problem const p =
          kernels::detail::check_gemm_args(gpu.where(), view(a[i]), view(b[i]), view(c[i]), opt);
      kernels::detail::gemm_cuda_cublaslt(*ctx.state(), p, workspace.data(),
                                          std::int64_t(workspace.nbytes()), stream.get());
    }
  };
  for (int i = 0; i < sets; ++i) enqueue(i);  // plans outside the capture
  stream.synchronize();
  bool const streamed = ctx.stats().gemv_launches == sets;
  if ((which == path::gemv) != streamed) {
    state.SkipWithError(which == path::gemv ? "gemm() did not take the streaming kernels"
                                            : "cuBLASLt path took the streaming kernels");
    return;
  }
  // A graph of calls over the rotating sets is what is timed, as decode replays it.
  double const seconds = median_seconds_in_graph(&state, gpu, stream, std::max(16, sets), enqueue);
  set_bandwidth_counters(state, weight_bytes, seconds);
  state.counters["us_per_call"] = seconds * 1e6;
}

void bm_streaming(benchmark::State& state) { bm_gemv(state, path::gemv); }
void bm_cublaslt(benchmark::State& state) { bm_gemv(state, path::cublaslt); }

struct shape {
  std::int64_t n, k, batch, layout;
};

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  // V2-Lite: q_proj, kv_a, o_proj, shared experts' gate|up and down; R1: q_b, o_proj-like
  // 7168 x 2048; the absorb at 16 and 128 heads (W_UK [128, 512] k_by_n, W_UV [128, 512] n_by_k).
  std::vector<shape> const shapes = {{3072, 2048, 1, 0}, {576, 2048, 1, 0},  {2048, 2048, 1, 0},
                                     {5632, 2048, 1, 0}, {2048, 2816, 1, 0}, {24576, 1536, 1, 0},
                                     {7168, 2048, 1, 0}, {512, 128, 16, 1},  {128, 512, 16, 0},
                                     {512, 128, 128, 1}, {128, 512, 128, 0}};
  for (std::int64_t m : {1, 4, 8})
    for (shape const& s : shapes)
      for (auto [name, fn] : {std::pair{"BM_gemv_bf16", &bm_streaming},
                              std::pair{"BM_gemv_cublaslt", &bm_cublaslt}}) {
        // Token counts gemm() leaves to cuBLASLt (above gemm_gemv_bf16_max_m, or _kn_max_m for
        // k_by_n) are cuBLASLt's alone.
        std::int64_t const most =
            s.layout == 1 ? kernels::gemm_gemv_bf16_kn_max_m : kernels::gemm_gemv_bf16_max_m;
        if (fn == &bm_streaming && m > most) continue;
        bench::timed(benchmark::RegisterBenchmark(name, fn)
                         ->Args({m, s.n, s.k, s.batch, s.layout})
                         ->ArgNames({"M", "N", "K", "batch", "kn"}));
      }
  return bench::run_benchmarks(argc, argv);
}
