// Varlen causal prefill attention: DeepSeek MLA prefill at 8 requests x 4096 new tokens, H = 128
// (the attention kernel alone at qk 192 / v 128 with the broadcast rope key, and the whole
// mla_prefill: latent gather from scattered slots, two decompression GEMMs, attention), and GQA at
// head dim 128, 64 query heads over 8 key heads (group 8), also with a 3072-token cached prefix
// before 1024 new tokens. Random bf16 values (never zeros); CUDA-event timing, median per call.
// The work is compute-bound (each key block is reused by every query tile of its request), so the
// inputs are not rotated. Counters:
//   TFLOP/s, frac_of_bf16_peak   causal FLOPs: per request, the sum over its queries of
//                       2 * Hq * (qk + v) * visible keys, against the H100's measured bf16 dense
//                       GEMM ceiling (~790 TFLOP/s, ../shared/HOPPER.md); the whole-path variant
//                       counts the attention's FLOPs only (the GEMMs are overhead to it)
//   lightcore_bench_attention [--benchmark_filter=...]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "bench_common.hpp"
#include "kernels/attention/attention.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;

inline constexpr double bf16_dense_ceiling_tflops = 790.0;  // H100, ../shared/HOPPER.md

tensor<backend::cuda> random_tensor(backend::cuda& gpu, dims shape, std::uint64_t seed,
                                    backend::cuda::stream_type const& stream) {
  tensor<backend::cuda> t(gpu, dtype::bf16, shape);
  auto const chunk = random_bf16(std::size_t(16) << 20, seed);  // 32 MiB copied over the tensor
  auto const n = std::size_t(t.numel());
  for (std::size_t at = 0; at < n; at += chunk.size())
    gpu.copy(static_cast<bf16*>(t.data()) + at, chunk.data(),
             std::min(chunk.size(), n - at) * sizeof(bf16), stream);
  return t;
}

tensor<backend::cuda> i32_tensor(backend::cuda& gpu, std::vector<std::int32_t> const& v,
                                 backend::cuda::stream_type const& stream) {
  tensor<backend::cuda> t(gpu, dtype::i32, {std::int64_t(v.size())});
  gpu.copy(t.data(), v.data(), t.nbytes(), stream);
  return t;
}

// Causal FLOPs of `batch` requests of `new_tokens` after `prefix` cached ones.
double causal_flops(std::int64_t batch, std::int64_t new_tokens, std::int64_t prefix,
                    std::int64_t heads, std::int64_t qk, std::int64_t vd) {
  double visible = 0;  // sum over a request's queries of the keys each sees
  for (std::int64_t i = 0; i < new_tokens; ++i) visible += double(prefix + i + 1);
  return double(batch) * 2.0 * double(heads) * double(qk + vd) * visible;
}

void set_flop_counters(benchmark::State& state, double flops, double seconds) {
  double const tflops = flops / seconds / 1e12;
  state.counters["TFLOP/s"] = tflops;
  state.counters["frac_of_bf16_peak"] = tflops / bf16_dense_ceiling_tflops;
}

// Args: batch, new tokens, prefix, Hq, Hk, head dim (qk = v).
void bm_gqa_prefill(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const batch = state.range(0), lq = state.range(1), prefix = state.range(2);
  std::int64_t const hq = state.range(3), hk = state.range(4), dim = state.range(5);
  std::int64_t const t = batch * lq, s = batch * (lq + prefix);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto q = random_tensor(gpu, {t, hq, dim}, 31, stream);
  auto k = random_tensor(gpu, {s, hk, dim}, 32, stream);
  auto v = random_tensor(gpu, {s, hk, dim}, 33, stream);
  std::vector<std::int32_t> cu_q(static_cast<std::size_t>(batch + 1));
  std::vector<std::int32_t> cu_k(static_cast<std::size_t>(batch + 1));
  for (std::int64_t b = 0; b <= batch; ++b) {
    cu_q[std::size_t(b)] = std::int32_t(b * lq);
    cu_k[std::size_t(b)] = std::int32_t(b * (lq + prefix));
  }
  auto cu_q_d = i32_tensor(gpu, cu_q, stream), cu_k_d = i32_tensor(gpu, cu_k, stream);
  tensor<backend::cuda> out(gpu, dtype::bf16, {t, hq, dim}), lse(gpu, dtype::f32, {t, hq});
  stream.synchronize();
  kernels::prefill_args a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.cu_seqlens_q = cu_q_d;
  a.cu_seqlens_k = cu_k_d;
  a.out = out;
  a.lse = lse;
  a.softmax_scale = 0.088f;  // 1 / sqrt(128)
  double const seconds =
      median_seconds(&state, gpu, stream, [&](int) { kernels::prefill_attention(gpu, a, stream); });
  set_flop_counters(state, causal_flops(batch, lq, prefix, hq, dim, dim), seconds);
}

// Args: batch, new tokens, prefix, H, whole (0: the attention kernel alone, 1: mla_prefill).
void bm_mla_prefill(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const batch = state.range(0), lq = state.range(1), prefix = state.range(2);
  std::int64_t const heads = state.range(3);
  bool const whole = state.range(4) != 0;
  std::int64_t const t = batch * lq, s = batch * (lq + prefix);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::vector<std::int32_t> cu_q(static_cast<std::size_t>(batch + 1));
  std::vector<std::int32_t> cu_k(static_cast<std::size_t>(batch + 1));
  for (std::int64_t b = 0; b <= batch; ++b) {
    cu_q[std::size_t(b)] = std::int32_t(b * lq);
    cu_k[std::size_t(b)] = std::int32_t(b * (lq + prefix));
  }
  auto cu_q_d = i32_tensor(gpu, cu_q, stream), cu_k_d = i32_tensor(gpu, cu_k, stream);
  auto q = random_tensor(gpu, {t, heads, 192}, 41, stream);
  tensor<backend::cuda> out(gpu, dtype::bf16, {t, heads, 128}), lse(gpu, dtype::f32, {t, heads});
  // The pool: every request's positions in a random permutation of the slots.
  std::int64_t const slots = s;
  auto pool = random_tensor(gpu, {slots, 576}, 42, stream);
  std::vector<std::int32_t> table(static_cast<std::size_t>(slots));
  std::vector<std::int32_t> rows(static_cast<std::size_t>(batch));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937_64(43));
  std::iota(rows.begin(), rows.end(), 0);
  tensor<backend::cuda> table_d(gpu, dtype::i32, {batch, lq + prefix});
  gpu.copy(table_d.data(), table.data(), table_d.nbytes(), stream);
  auto rows_d = i32_tensor(gpu, rows, stream);
  auto w_uk = random_tensor(gpu, {heads, 128, 512}, 44, stream);
  auto w_uv = random_tensor(gpu, {heads, 128, 512}, 45, stream);
  auto const layout = kernels::mla_prefill_workspace_layout(s, heads);
  tensor<backend::cuda> workspace(gpu, dtype::u8, {layout.bytes});
  kernels::gemm_context<backend::cuda> ctx(gpu);
  kernels::mla_prefill_args m;
  m.q = q;
  m.kv_cache = pool;
  m.req_to_token = table_d;
  m.req_rows = rows_d;
  m.cu_seqlens_q = cu_q_d;
  m.cu_seqlens_k = cu_k_d;
  m.w_uk = w_uk;
  m.w_uv = w_uv;
  m.out = out;
  m.lse = lse;
  m.kv_tokens = s;
  m.softmax_scale = 0.1352f;  // 1 / sqrt(192) times YaRN's mscale^2 (factor 40)
  // One whole run fills the workspace's k_nope, v and latent for the kernel-only variant, whose
  // random-valued latent gives realistic scores.
  kernels::mla_prefill(gpu, ctx, m, workspace, stream);
  stream.synchronize();
  auto* const base = static_cast<unsigned char*>(workspace.data());
  kernels::prefill_args a;
  a.q = q;
  a.k = tensor_view(base + layout.k_nope, dtype::bf16, {s, heads, 128}, gpu.where());
  a.k_rope =
      tensor_view(base + layout.latent, dtype::bf16, {s, 576}, gpu.where()).slice(1, 512, 576);
  a.v = tensor_view(base + layout.v, dtype::bf16, {s, heads, 128}, gpu.where());
  a.cu_seqlens_q = cu_q_d;
  a.cu_seqlens_k = cu_k_d;
  a.out = out;
  a.lse = lse;
  a.softmax_scale = m.softmax_scale;
  double const seconds = median_seconds(&state, gpu, stream, [&](int) {
    if (whole)
      kernels::mla_prefill(gpu, ctx, m, workspace, stream);
    else
      kernels::prefill_attention(gpu, a, stream);
  });
  set_flop_counters(state, causal_flops(batch, lq, prefix, heads, 192, 128), seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  for (std::int64_t whole : {0, 1})
    bench::timed(benchmark::RegisterBenchmark("BM_mla_prefill", bm_mla_prefill)
                     ->Args({8, 4096, 0, 128, whole})
                     ->ArgNames({"batch", "new", "prefix", "H", "whole"}));
  bench::timed(benchmark::RegisterBenchmark("BM_mla_prefill", bm_mla_prefill)
                   ->Args({8, 1024, 3072, 128, 0})
                   ->ArgNames({"batch", "new", "prefix", "H", "whole"}));
  for (std::int64_t prefix : {0, 3072})
    bench::timed(benchmark::RegisterBenchmark("BM_gqa_prefill", bm_gqa_prefill)
                     ->Args({8, prefix == 0 ? 4096 : 1024, prefix, 64, 8, 128})
                     ->ArgNames({"batch", "new", "prefix", "Hq", "Hk", "D"}));
  return bench::run_benchmarks(argc, argv);
}
