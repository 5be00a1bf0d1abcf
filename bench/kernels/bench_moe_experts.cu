// moe_experts (the routed experts after routing and alignment) per call, bf16 and FP8, at
// DeepSeek-R1's sizes (E 256, top-8, H 7168, I 2048) and V2-Lite's (E 64, top-6, H 2048, I 1408):
//  - decode-like T = 1..64: the floor is reading the hit experts' weights once (GB/s and
//    frac_of_hbm of those bytes);
//  - prefill-like T = 4096, 8192: TFLOP/s of the routed FLOPs (2 x T x top_k x 3 x H x I);
//  - the GEMM kernel forced either way (arg 3: 0 the dispatch's choice, 1 the mma.sync kernel, 2
//    the wgmma kernel; bf16 and FP8) to place the dispatch's token threshold;
//  - the baseline: the same MoE as a loop of per-expert kernels::gemm calls (cuBLASLt bf16, with
//    host-side counts: the baseline alone may sync), silu_and_mul and a weighted combine left out
//    (the baseline is charged the GEMMs only, which flatters it).
// Routing: uniform random distinct experts per token. R1 in bf16 needs 22 GB of weights: fits.
//   lightcore_bench_moe_experts [--benchmark_filter=...]
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "bench_common.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;
using kernels::moe_weight_format;

struct shape {
  std::int64_t experts, top_k, hidden, inter;
};
shape shape_of(std::int64_t model) {
  return model == 0 ? shape{256, 8, 7168, 2048} : shape{64, 6, 2048, 1408};
}

std::vector<std::int32_t> random_ids(std::int64_t tokens, shape s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> pool(std::size_t(s.experts)), ids;
  std::iota(pool.begin(), pool.end(), 0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    ids.insert(ids.end(), pool.begin(), pool.begin() + s.top_k);
  }
  return ids;
}

// The device state of one benchmark: random weights (never zero), inputs and alignment.
struct moe_setup {
  tensor<backend::cuda> hidden, ids, weights, gate_up, down, gu_s, dn_s, out, ws;
  tensor<backend::cuda> counts, offsets, sorted, blocks, total, inverse;
  std::vector<std::int32_t> host_ids;
  moe_setup(backend::cuda& gpu, backend::cuda::stream_type const& stream, shape s,
            std::int64_t tokens, moe_weight_format f, std::int64_t block_m) {
    bool const fp8 = f == moe_weight_format::fp8_block;
    dtype const wt = fp8 ? dtype::fp8_e4m3 : dtype::bf16;
    auto fill_random = [&](tensor<backend::cuda>& t) {
      // Random bf16 bit patterns of magnitude 2^-4..2^4 (fp8: each byte is some finite code).
      std::size_t const n = t.nbytes() / 2;
      std::size_t const chunk = std::size_t(64) << 20;
      auto const host = random_bf16(std::min(n, chunk), 7);
      for (std::size_t at = 0; at < n; at += chunk)
        gpu.copy(static_cast<bf16*>(t.data()) + at, host.data(), std::min(chunk, n - at) * 2,
                 stream);
    };
    gate_up = tensor<backend::cuda>(gpu, wt, {s.experts, 2 * s.inter, s.hidden});
    down = tensor<backend::cuda>(gpu, wt, {s.experts, s.hidden, s.inter});
    fill_random(gate_up);
    fill_random(down);
    if (fp8) {
      gu_s = tensor<backend::cuda>(
          gpu, dtype::f32,
          {s.experts, (2 * s.inter + 127) / 128, kernels::gemm_fp8_weight_scale_ld(s.hidden)});
      dn_s = tensor<backend::cuda>(
          gpu, dtype::f32,
          {s.experts, (s.hidden + 127) / 128, kernels::gemm_fp8_weight_scale_ld(s.inter)});
      gpu.fill(gu_s.data(), gu_s.numel(), 4, 0x3A800000u, stream);  // 2^-10
      gpu.fill(dn_s.data(), dn_s.numel(), 4, 0x3A800000u, stream);
    }
    hidden = tensor<backend::cuda>(gpu, dtype::bf16, {tokens, s.hidden});
    fill_random(hidden);
    host_ids = random_ids(tokens, s, 11);
    ids = tensor<backend::cuda>(gpu, dtype::i32, {tokens, s.top_k});
    gpu.copy(ids.data(), host_ids.data(), ids.nbytes(), stream);
    weights = tensor<backend::cuda>(gpu, dtype::f32, {tokens, s.top_k});
    gpu.fill(weights.data(), weights.numel(), 4, 0x3E000000u, stream);  // 0.125
    out = tensor<backend::cuda>(gpu, dtype::bf16, {tokens, s.hidden});
    ws = tensor<backend::cuda>(gpu, dtype::u8,
                               {kernels::moe_experts_workspace_bytes(
                                   tokens, s.top_k, s.experts, block_m, s.hidden, s.inter, f)});
    auto const cap = kernels::moe_align_capacity(tokens, s.top_k, s.experts, block_m);
    counts = tensor<backend::cuda>(gpu, dtype::i32, {s.experts});
    offsets = tensor<backend::cuda>(gpu, dtype::i32, {s.experts + 1});
    sorted = tensor<backend::cuda>(gpu, dtype::i32, {cap.sorted_rows});
    blocks = tensor<backend::cuda>(gpu, dtype::i32, {cap.blocks});
    total = tensor<backend::cuda>(gpu, dtype::i32, {1});
    inverse = tensor<backend::cuda>(gpu, dtype::i32, {tokens, s.top_k});
    kernels::moe_align(gpu, ids, s.experts, block_m, align(), stream);
    stream.synchronize();
  }
  kernels::moe_align_outputs align() const {
    return {counts, offsets, sorted, blocks, total, inverse};
  }
};

// args: model (0 R1, 1 V2-Lite), tokens, format (0 bf16, 1 fp8), kernel (0 the dispatch's
// choice, 1 mma.sync, 2 wgmma where it applies)
void bm_moe_experts(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  shape const s = shape_of(state.range(0));
  std::int64_t const tokens = state.range(1), block_m = 64;
  auto const f = state.range(2) == 0 ? moe_weight_format::bf16 : moe_weight_format::fp8_block;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  moe_setup m(gpu, stream, s, tokens, f, block_m);
  bool const fp8 = f == moe_weight_format::fp8_block;
  kernels::moe_expert_weights const w{m.gate_up, m.down, fp8 ? m.gu_s.view() : tensor_view{},
                                      fp8 ? m.dn_s.view() : tensor_view{}};
  // The checked params, as kernels::moe_experts makes them, with the kernel choice moved.
  kernels::moe_experts_params p = kernels::detail::make_moe_experts_params(
      gpu.where(), m.hidden, m.ids, m.weights, m.align(), block_m, w, m.out, m.ws);
  if (state.range(3) == 1) p.wgmma_min_tokens = std::int64_t(1) << 40;
  if (state.range(3) == 2) p.wgmma_min_tokens = 1;
  if (state.range(3) != 0) p.gemv_max_tokens = 0;  // a forced grouped GEMM at decode sizes too
  double const seconds = median_seconds(&state, gpu, stream, [&](int) {
    kernels::detail::moe_experts_cuda(p, gpu.where().index, stream.get());
  });
  std::set<std::int32_t> const hit(m.host_ids.begin(), m.host_ids.end());
  double const weight_bytes =
      double(hit.size()) * 3.0 * double(s.hidden * s.inter) * (fp8 ? 1.0 : 2.0);
  set_bandwidth_counters(state, weight_bytes, seconds);
  double const flops = 2.0 * double(tokens * s.top_k) * 3.0 * double(s.hidden * s.inter);
  state.counters["TFLOP/s"] = flops / seconds / 1e12;
  state.counters["experts_hit"] = double(hit.size());
}

// The baseline: per hit expert, cuBLASLt gate_up and down on its gathered rows (bf16).
void bm_moe_gemm_loop(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  shape const s = shape_of(state.range(0));
  std::int64_t const tokens = state.range(1);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  moe_setup m(gpu, stream, s, tokens, moe_weight_format::bf16, 64);
  std::vector<std::int64_t> count(std::size_t(s.experts), 0);
  for (std::int32_t e : m.host_ids) ++count[std::size_t(e)];
  std::int64_t const rows = tokens * s.top_k;
  tensor<backend::cuda> x(gpu, dtype::bf16, {rows, s.hidden});
  tensor<backend::cuda> h(gpu, dtype::bf16, {rows, 2 * s.inter});
  tensor<backend::cuda> y(gpu, dtype::bf16, {rows, s.hidden});
  tensor<backend::cuda> wsp(gpu, dtype::u8, {kernels::gemm_workspace_bytes});
  kernels::gemm_context<backend::cuda> ctx(gpu);
  auto const elem = [](tensor<backend::cuda> const& t, std::int64_t row, std::int64_t cols) {
    return static_cast<bf16*>(t.data()) + row * cols;
  };
  auto const run = [&] {
    std::int64_t at = 0;
    for (std::int64_t e = 0; e < s.experts; ++e) {
      std::int64_t const n = count[std::size_t(e)];
      if (n == 0) continue;
      auto* gu = static_cast<bf16*>(m.gate_up.data()) + e * 2 * s.inter * s.hidden;
      auto* dn = static_cast<bf16*>(m.down.data()) + e * s.hidden * s.inter;
      kernels::gemm(
          gpu, ctx, tensor_view(elem(x, at, s.hidden), dtype::bf16, {n, s.hidden}, gpu.where()),
          tensor_view(gu, dtype::bf16, {2 * s.inter, s.hidden}, gpu.where()),
          tensor_view(elem(h, at, 2 * s.inter), dtype::bf16, {n, 2 * s.inter}, gpu.where()), wsp,
          stream);
      kernels::gemm(gpu, ctx,
                    tensor_view(elem(h, at, 2 * s.inter), dtype::bf16, {n, s.inter},
                                {2 * s.inter, 1}, gpu.where()),
                    tensor_view(dn, dtype::bf16, {s.hidden, s.inter}, gpu.where()),
                    tensor_view(elem(y, at, s.hidden), dtype::bf16, {n, s.hidden}, gpu.where()),
                    wsp, stream);
      at += n;
    }
  };
  double const seconds = median_seconds(&state, gpu, stream, [&](int) { run(); });
  std::int64_t hit = 0;
  for (std::int64_t c : count) hit += c > 0 ? 1 : 0;
  set_bandwidth_counters(state, double(hit) * 3.0 * double(s.hidden * s.inter) * 2.0, seconds);
  state.counters["TFLOP/s"] =
      2.0 * double(rows) * 3.0 * double(s.hidden * s.inter) / seconds / 1e12;
}

void register_all() {
  register_hbm_copy();
  for (std::int64_t model : {0, 1}) {
    for (std::int64_t t : {1, 2, 4, 8, 16, 32, 64, 4096, 8192}) {
      for (std::int64_t f : {0, 1})
        timed(benchmark::RegisterBenchmark("BM_moe_experts", bm_moe_experts))
            ->Args({model, t, f, 0});
      timed(benchmark::RegisterBenchmark("BM_moe_gemm_loop", bm_moe_gemm_loop))->Args({model, t});
    }
    // bf16 decode sizes on the grouped GEMM, beside the dispatch's weight-streaming kernels.
    for (std::int64_t t : {1, 2, 4})
      timed(benchmark::RegisterBenchmark("BM_moe_experts", bm_moe_experts))->Args({model, t, 0, 1});
    // bf16 and FP8, each kernel forced, over the prefill sizes around the threshold.
    for (std::int64_t t : {256, 512, 1024, 2048, 4096, 8192})
      for (std::int64_t f : {0, 1})
        for (std::int64_t kernel : {1, 2})
          timed(benchmark::RegisterBenchmark("BM_moe_experts", bm_moe_experts))
              ->Args({model, t, f, kernel});
  }
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  lightcore::register_all();
  return lightcore::bench::run_benchmarks(argc, argv);
}
