// The GEMMs of a DeepSeek layer through cuBLASLt: bf16 and FP8 block-scaled on DeepSeek-R1's
// projection shapes (N x K), at M = 4096 (prefill: compute-bound, TFLOP/s against the bf16 peak
// measured here) and M = 1..128 (decode: the weight bytes dominate, GB/s against the HBM copy
// ceiling), and the strided-batched absorb of MLA (128 heads). Operands random (never zero),
// rotated over enough buffer sets that no call finds its weight in L2; CUDA-event timing, median
// per call. Counters on every row: TFLOP/s, frac_of_bf16_peak (of BM_bf16_peak, an 8192^3 bf16
// GEMM measured in this binary), GB/s (operand bytes read + output written once) and frac_of_hbm
// (of BM_hbm_copy). The last argument, tune, is how the algorithm is chosen: 0 cuBLASLt's first
// heuristic answer, 1 the fastest of its first candidates timed at plan time (gemm_autotune.hpp);
// M = 4096 and 128 run both, the peak too (its best is the ceiling). Counters candidates (timed)
// and not_first (1: the timing kept another than the first answer), plan_ms (the first call,
// planning and timing included, host wall time).
//   lightcore_bench_gemm [--benchmark_filter=...]
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/gemm/gemm.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;
using kernels::gemm_workspace_bytes;

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

std::optional<double> bf16_peak_tflops;

// The context of a benchmark row: the selection as its `tune` argument says.
kernels::gemm_autotune_options tune_options(std::int64_t tune) {
  kernels::gemm_autotune_options o;
  o.enabled = tune != 0;
  return o;
}

void set_tune_counters(benchmark::State& state, kernels::gemm_stats const& st, double plan_s) {
  state.counters["candidates"] = double(st.candidates_timed);
  state.counters["not_first"] = double(st.tuned_not_first);
  state.counters["plan_ms"] = plan_s * 1e3;
}

void set_gemm_counters(benchmark::State& state, double flops, double bytes, double seconds) {
  set_bandwidth_counters(state, bytes, seconds);
  double const tflops = flops / seconds / 1e12;
  state.counters["TFLOP/s"] = tflops;
  state.counters["frac_of_bf16_peak"] = bf16_peak_tflops ? tflops / *bf16_peak_tflops : 0.0;
}

// One bf16 or FP8 linear layer C[M, N] = X[M, K] . W[N, K]^T.
void bm_linear(benchmark::State& state, bool fp8) {
  if (skip_without_gpu(state)) return;
  std::int64_t const m = state.range(0), n = state.range(1), k = state.range(2);
  std::int64_t const es = fp8 ? 1 : 2, nb = (n + 127) / 128;
  double const weight_bytes = double(n * k * es) + (fp8 ? double(nb * (k / 128) * 4) : 0.0);
  double const bytes = weight_bytes + double(m * k * es) + double(m * n * 2) +
                       (fp8 ? double(m * (k / 128) * 4) : 0.0);
  int const sets = buffer_sets_for(bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  kernels::gemm_context<backend::cuda> ctx(gpu, tune_options(state.range(3)));
  dtype const t = fp8 ? dtype::fp8_e4m3 : dtype::bf16;
  std::vector<tensor<backend::cuda>> x, xs, w, ws, c;
  auto const host_x = fp8 ? random_fp8_codes(std::size_t(m * k), 3) : std::vector<std::uint8_t>();
  auto const host_w = fp8 ? random_fp8_codes(std::size_t(n * k), 5) : std::vector<std::uint8_t>();
  auto const host_xb = fp8 ? std::vector<bf16>() : random_bf16(std::size_t(m * k), 3);
  auto const host_wb = fp8 ? std::vector<bf16>() : random_bf16(std::size_t(n * k), 5);
  std::vector<float> const host_xs(std::size_t(m * (k / 128)), 1.0f / 64);
  std::int64_t const scale_ld = kernels::gemm_fp8_weight_scale_ld(k);
  std::vector<float> const host_ws(std::size_t(nb * scale_ld), 1.0f / 256);
  for (int i = 0; i < sets; ++i) {
    x.emplace_back(gpu, t, dims{m, k});
    w.emplace_back(gpu, t, dims{n, k});
    c.emplace_back(gpu, dtype::bf16, dims{m, n});
    gpu.copy(x.back().data(), fp8 ? static_cast<void const*>(host_x.data()) : host_xb.data(),
             x.back().nbytes(), stream);
    gpu.copy(w.back().data(), fp8 ? static_cast<void const*>(host_w.data()) : host_wb.data(),
             w.back().nbytes(), stream);
    if (fp8) {
      xs.emplace_back(gpu, dtype::f32, dims{k / 128, m});
      ws.emplace_back(gpu, dtype::f32, dims{nb, scale_ld});
      gpu.copy(xs.back().data(), host_xs.data(), xs.back().nbytes(), stream);
      gpu.copy(ws.back().data(), host_ws.data(), ws.back().nbytes(), stream);
    }
  }
  tensor<backend::cuda> workspace(gpu, dtype::u8, {gemm_workspace_bytes});
  stream.synchronize();
  auto const call = [&](int number) {
    auto const i = std::size_t(number % sets);
    if (fp8)
      kernels::gemm_fp8_block(gpu, ctx, x[i], xs[i], w[i], ws[i].view().slice(1, 0, k / 128), c[i],
                              workspace, stream);
    else
      kernels::gemm(gpu, ctx, x[i], w[i], c[i], workspace, stream);
  };
  // The first call plans (and with tune 1 times the candidates): its cost, outside the samples.
  auto const t0 = std::chrono::steady_clock::now();
  call(0);
  stream.synchronize();
  double const plan_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double const seconds = median_seconds(&state, gpu, stream, call, call_numbering::running);
  set_gemm_counters(state, 2.0 * double(m) * double(n) * double(k), bytes, seconds);
  set_tune_counters(state, ctx.stats(), plan_s);
}

void bm_bf16(benchmark::State& state) { bm_linear(state, false); }
void bm_fp8(benchmark::State& state) { bm_linear(state, true); }

// The matrix ceiling: a square bf16 GEMM large enough to saturate the tensor cores.
// The best of the rows (tune 0 and 1) is the ceiling the later rows refer to.
void bm_bf16_peak(benchmark::State& state) {
  bm_linear(state, false);
  bf16_peak_tflops = std::max(bf16_peak_tflops.value_or(0.0), state.counters["TFLOP/s"].value);
  state.counters["frac_of_bf16_peak"] = state.counters["TFLOP/s"].value / *bf16_peak_tflops;
}

// The HBM ceiling, with this binary's other counters (a CSV row needs every column).
void bm_hbm_copy_row(benchmark::State& state) {
  bm_hbm_copy(state);
  state.counters["TFLOP/s"] = 0.0;
  state.counters["frac_of_bf16_peak"] = 0.0;
  set_tune_counters(state, {}, 0.0);
}

// MLA's absorb per head: q_nope [T, H, 128] . W_UK [H, 128, 512] -> [T, H, 512].
void bm_absorb(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const t = state.range(0), h = state.range(1), d = 128, latent = 512;
  double const bytes = double(t * h * d + h * d * latent + t * h * latent) * 2;
  int const sets = buffer_sets_for(bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  kernels::gemm_context<backend::cuda> ctx(gpu);
  auto const host_q = random_bf16(std::size_t(t * h * d), 7);
  auto const host_w = random_bf16(std::size_t(h * d * latent), 9);
  std::vector<tensor<backend::cuda>> q, w, out;
  for (int i = 0; i < sets; ++i) {
    q.emplace_back(gpu, dtype::bf16, dims{t, h, d});
    w.emplace_back(gpu, dtype::bf16, dims{h, d, latent});
    out.emplace_back(gpu, dtype::bf16, dims{t, h, latent});
    gpu.copy(q.back().data(), host_q.data(), q.back().nbytes(), stream);
    gpu.copy(w.back().data(), host_w.data(), w.back().nbytes(), stream);
  }
  tensor<backend::cuda> workspace(gpu, dtype::u8, {gemm_workspace_bytes});
  stream.synchronize();
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        auto const i = std::size_t(call % sets);
        kernels::gemm(gpu, ctx, q[i].view().transpose(0, 1), w[i], out[i].view().transpose(0, 1),
                      workspace, stream, {1.0f, 0.0f, kernels::b_layout::k_by_n});
      },
      call_numbering::running);
  set_gemm_counters(state, 2.0 * double(t * h * d * latent), bytes, seconds);
  set_tune_counters(state, ctx.stats(), 0.0);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::timed(benchmark::RegisterBenchmark("BM_hbm_copy", bm_hbm_copy_row));
  for (std::int64_t tune : {0, 1})
    bench::timed(benchmark::RegisterBenchmark("BM_bf16_peak", bm_bf16_peak)
                     ->Args({8192, 8192, 8192, tune})
                     ->ArgNames({"M", "N", "K", "tune"}));
  // R1's projections: fused q_a + kv_a, q_b, kv_b, o_proj, o_proj at TP4 / a 4096-wide shard,
  // the dense down projection at TP8; and kv_a alone. Before/after the selection at M = 4096
  // (prefill) and 128 (a large decode batch); the smaller M with the selection only.
  std::vector<std::pair<std::int64_t, std::int64_t>> const shapes = {
      {2112, 7168}, {24576, 1536}, {32768, 512}, {7168, 16384},
      {4096, 7168}, {7168, 2048},  {576, 7168}};
  for (std::int64_t m : {4096, 128, 64, 16, 4}) {
    std::vector<std::int64_t> const tunes =
        m == 4096 || m == 128 ? std::vector<std::int64_t>{0, 1} : std::vector<std::int64_t>{1};
    for (auto [n, k] : shapes) {
      for (auto [name, fn] :
           {std::pair{"BM_gemm_bf16", &bm_bf16}, std::pair{"BM_gemm_fp8_block", &bm_fp8}})
        for (std::int64_t tune : tunes)
          bench::timed(benchmark::RegisterBenchmark(name, fn)
                           ->Args({m, n, k, tune})
                           ->ArgNames({"M", "N", "K", "tune"}));
    }
  }
  for (std::int64_t t : {1, 64, 256, 4096})
    bench::timed(benchmark::RegisterBenchmark("BM_absorb_w_uk", bm_absorb)
                     ->Args({t, 128})
                     ->ArgNames({"T", "H"}));
  return bench::run_benchmarks(argc, argv);
}
