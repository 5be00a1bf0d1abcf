// The pieces every DeepSeek layer shares: the per-forward context (backend, stream, GEMM state,
// activation manager) and the linear layer over a bf16 or FP8 block-scaled weight.
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/gemm/gemm.hpp"
#include "kernels/quant/quant.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"
#include "models/deepseek_v3/weights.hpp"

namespace lightcore::modules::deepseek {

// What a layer needs to run: where, on which stream, with which GEMM state and activations.
template <Backend B>
struct forward_context {
  B& backend;
  typename B::stream_type const& stream;
  kernels::gemm_context<B>& gemm;
  memory::cache_tensor_manager<B>& mem;
  // Called with each layer's index once its attention is issued on the stream: the layer's KV
  // rows are written when the stream reaches that point. Null (the default): not called. The
  // prefill side of a PD deployment sends a prompt's KV layer by layer from here.
  std::function<void(std::int64_t)> const* after_layer_kv = nullptr;
  using lease = typename memory::cache_tensor_manager<B>::lease;

  lease acquire(std::string_view role, dtype type, dims shape) {
    return mem.acquire(role, type, shape);
  }
  // Zeros `v` (contiguous) on the stream.
  void zero(tensor_view const& v) { backend.fill(v.data(), v.nbytes(), 1, 0, stream); }
  lease gemm_workspace() {
    return mem.acquire("gemm.workspace", dtype::u8, {kernels::gemm_workspace_bytes});
  }
};

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// out [M, N] = x [M, K] . w^T for an nn.Linear weight w [N, K]. bf16 weights: one GEMM with fp32
// accumulation, out bf16 or f32, any row stride; `accumulate` adds to out (beta = 1, one rounding).
// FP8 weights: x is quantised per token per 128 columns (DeepSeek's dynamic activation scheme)
// and the block-scaled GEMM runs over M rounded up to gemm_fp8_m_multiple (the padding rows are
// not initialised: a GEMM row depends on its own row only, and theirs are dropped); out is bf16 and
// `accumulate` is not available (the FP8 GEMM has no beta).
template <Backend B>
void linear(forward_context<B>& ctx, tensor_view const& x,
            models::deepseek_v3::linear_weight const& w, tensor_view const& out,
            bool accumulate = false) {
  std::int64_t const m = x.size(0);
  if (m == 0) return;
  auto ws = ctx.gemm_workspace();
  if (!w.fp8()) {
    kernels::gemm_options opt;
    opt.beta = accumulate ? 1.0f : 0.0f;
    opt.b_constant = true;  // a weight
    kernels::gemm(ctx.backend, ctx.gemm, x, w.w, out, ws.view(), ctx.stream, opt);
    return;
  }
  LC_CHECK(!accumulate,
           "linear: an FP8 weight cannot accumulate into its output (the FP8 GEMM "
           "has no beta); allowed: accumulate with bf16 weights only");
  LC_CHECK(out.type() == dtype::bf16,
           "linear: an FP8 weight writes a bf16 output; got " << out.type());
  std::int64_t const k = x.size(1), n = w.w.size(0);
  std::int64_t const mp = round_up(m, kernels::gemm_fp8_m_multiple);
  auto xq = ctx.acquire("linear.x_fp8", dtype::fp8_e4m3, {mp, k});
  auto xs = ctx.acquire("linear.x_scales", dtype::f32, {k / 128, mp});
  kernels::quantize_per_token_group(ctx.backend, x, xq.view().slice(0, 0, m),
                                    xs.view().slice(1, 0, m), kernels::scale_layout::k_major,
                                    ctx.stream);
  bool const direct = mp == m;
  typename forward_context<B>::lease tmp;
  if (!direct) tmp = ctx.acquire("linear.out_padded", dtype::bf16, {mp, n});
  tensor_view const c = direct ? out : tmp.view();
  kernels::gemm_fp8_block(ctx.backend, ctx.gemm, xq.view(), xs.view(), w.w, w.scales, c, ws.view(),
                          ctx.stream);
  if (direct) return;
  std::size_t const row_bytes = std::size_t(n) * 2;
  if (out.stride(0) == n || m == 1) {
    ctx.backend.copy(out.data(), c.data(), row_bytes * std::size_t(m), ctx.stream);
    return;
  }
  // A strided output (padded heads) takes its rows one at a time; only small M gets here.
  for (std::int64_t i = 0; i < m; ++i)
    ctx.backend.copy(out.select(0, i).data(), c.select(0, i).data(), row_bytes, ctx.stream);
}

}  // namespace lightcore::modules::deepseek
