// DeepSeek's feed-forward blocks: the dense gated MLP (first_k_dense_replace layers, and the
// shared experts) and the MoE block (route -> align -> routed experts, plus the shared experts).
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernels/activation/activation.hpp"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/io/hf_config.hpp"
#include "modules/deepseek/linear.hpp"
#include "modules/deepseek/moe_dispatch.hpp"

namespace lightcore::modules::deepseek {

// out [T, H] = down(silu(gate(x)) * up(x)); `accumulate` adds to out (bf16 down weights only).
// Under tensor parallelism (gate_up rows and down columns split) out is this rank's partial
// product, for the caller to all-reduce; it may be f32 when the down weight is bf16.
template <Backend B>
void dense_mlp(forward_context<B>& ctx, tensor_view const& x,
               models::deepseek_v3::mlp_weights const& w, tensor_view const& out,
               bool accumulate = false) {
  std::int64_t const t = x.size(0), inter = w.down.w.size(1);
  if (t == 0) return;
  auto gu = ctx.acquire("mlp.gate_up", dtype::bf16, {t, 2 * inter});
  linear(ctx, x, w.gate_up, gu.view());
  auto act = ctx.acquire("mlp.act", dtype::bf16, {t, inter});
  kernels::silu_and_mul(ctx.backend, gu.view(), act.view(), ctx.stream);
  gu.reset();
  linear(ctx, act.view(), w.down, out, accumulate);
}

inline kernels::moe_routing_config routing_config(io::model_config const& c) {
  kernels::moe_routing_config r;
  r.num_experts = c.n_routed_experts;
  r.top_k = c.num_experts_per_tok;
  r.n_group = c.n_group;
  r.topk_group = c.topk_group;
  r.scoring = c.scoring == io::scoring_func::sigmoid ? kernels::moe_scoring::sigmoid
                                                     : kernels::moe_scoring::softmax;
  r.group_select = c.topk == io::topk_method::noaux_tc ? kernels::moe_group_select::top2_sum
                   : c.topk == io::topk_method::group_limited_greedy
                       ? kernels::moe_group_select::max
                       : kernels::moe_group_select::none;
  r.norm_topk_prob = c.norm_topk_prob;
  r.routed_scaling_factor = float(c.routed_scaling_factor);
  return r;
}

// Rows per expert block of the grouped GEMMs (the kernel has 64 and 128).
inline constexpr std::int64_t moe_block_m = 64;

// The routed experts' weights as moe_experts takes them. The grouped GEMM needs the expert width
// I to be a multiple of 128; a narrower one (the tiny test models: 192) is padded once, at
// construction, with zero gate/up rows and zero down columns: silu(0) * 0 = 0, so the padded
// columns add exactly nothing. FP8 experts never need it (the loader dequantises those shapes);
// their block scales are handed over with the padded row width moe_experts expects.
template <Backend B>
class moe_experts_weights {
 public:
  moe_experts_weights(B& backend, models::deepseek_v3::moe_weights const& w) {
    std::int64_t const e = w.gate_up.w.size(0), inter = w.down.w.size(2), hidden = w.down.w.size(1);
    std::int64_t const padded = round_up(inter, kernels::moe_experts_dim_multiple);
    if (padded == inter || w.gate_up.fp8()) {
      weights_ = {w.gate_up.w, w.down.w, moe_scales(w.gate_up.scales), moe_scales(w.down.scales),
                  w.fused_shared};
      return;
    }
    gate_up_ = tensor<B>(backend, dtype::bf16, {e, 2 * padded, hidden});
    down_ = tensor<B>(backend, dtype::bf16, {e, hidden, padded});
    auto stream = backend.make_stream();
    backend.fill(gate_up_.data(), gate_up_.nbytes(), 1, 0, stream);
    backend.fill(down_.data(), down_.nbytes(), 1, 0, stream);
    std::size_t const row = std::size_t(hidden) * 2;
    for (std::int64_t x = 0; x < e; ++x) {
      // gate rows [0, I) -> [0, I), up rows [I, 2I) -> [P, P + I): contiguous blocks.
      auto const* src = static_cast<std::byte const*>(w.gate_up.w.select(0, x).data());
      auto* dst = static_cast<std::byte*>(gate_up_.view().select(0, x).data());
      backend.copy(dst, src, row * std::size_t(inter), stream);
      backend.copy(dst + row * std::size_t(padded), src + row * std::size_t(inter),
                   row * std::size_t(inter), stream);
      for (std::int64_t h = 0; h < hidden; ++h)
        backend.copy(down_.view().select(0, x).select(0, h).data(),
                     w.down.w.select(0, x).select(0, h).data(), std::size_t(inter) * 2, stream);
    }
    stream.synchronize();
    weights_ = {gate_up_.view(), down_.view(), {}, {}, w.fused_shared};
  }
  kernels::moe_expert_weights const& get() const noexcept { return weights_; }
  std::int64_t inter() const noexcept { return weights_.down.size(2); }

 private:
  // The loader's block scales [E, n, K/128] with row stride gemm_fp8_weight_scale_ld(K)
  // (weights.hpp) as moe_experts takes them: [E, n, ld] contiguous over the same memory (it reads
  // the first K/128 columns only). Empty for bf16.
  static tensor_view moe_scales(tensor_view const& s) {
    if (s.data() == nullptr) return s;
    std::int64_t const ld = kernels::gemm_fp8_weight_scale_ld(s.size(2) * 128);
    LC_CHECK(
        s.stride(2) == 1 && (s.size(1) == 1 || s.stride(1) == ld) && s.stride(0) == s.size(1) * ld,
        "moe_experts_weights: expert block scales " << s << " are not [E, n, K/128] with rows "
                                                    << ld << " apart, as weights.hpp lays "
                                                    << "them out");
    return tensor_view(s.data(), s.type(), {s.size(0), s.size(1), ld}, s.where());
  }

  tensor<B> gate_up_, down_;
  kernels::moe_expert_weights weights_;
};

// The MoE block of one layer: out [T, H] = routed experts' weighted sum + shared experts.
// Shared experts folded into the stack (moe_weights::fused_shared) run inside the grouped GEMMs.
// Otherwise, when the shared experts' down projection is FP8 (it cannot accumulate), their output
// goes to `shared_out` instead, for the caller to add; else shared_out is left untouched.
// `dispatch` (moe_dispatch.hpp) places the routed experts: it moves the routed rows to their
// experts before them, brings the sums back after them, and sums the ranks' partial products once
// the shared experts are in (tensor_parallel: out and shared_out hold the full sums on return).
// Under tensor parallelism out holds this rank's partial products only until that reduce: nothing
// else (the residual above all) may be in it.
template <Backend B, class Dispatch = moe_dispatch::local>
void moe_block(forward_context<B>& ctx, io::model_config const& c,
               models::deepseek_v3::moe_weights const& w, moe_experts_weights<B> const& experts,
               tensor_view const& x, tensor_view const& out, tensor_view const& shared_out,
               Dispatch&& dispatch = Dispatch{}) {
  // Shared experts folded into the stack (weights.hpp) ride along as the last slots of every
  // token: routing appends them with weight 1, and the grouped GEMMs run them with the routed.
  std::int64_t const fused = w.fused_shared;
  std::int64_t const t = x.size(0), e = c.n_routed_experts, k = c.num_experts_per_tok + fused;
  if constexpr (!std::remove_cvref_t<Dispatch>::folds_shared_experts)
    LC_CHECK(fused == 0,
             "moe_block: this dispatch policy moves routed rows between ranks and "
             "cannot run shared experts folded into the stack; allowed: weights "
             "loaded with layout_options::fuse_shared_experts = false");
  if (t == 0) return;
  auto logits = ctx.acquire("moe.logits", dtype::f32, {t, e});
  {
    auto ws = ctx.gemm_workspace();
    kernels::gemm(ctx.backend, ctx.gemm, x, w.router, logits.view(), ws.view(), ctx.stream,
                  kernels::gemm_weight_options());
  }
  auto ids = ctx.acquire("moe.topk_ids", dtype::i32, {t, k});
  auto weights = ctx.acquire("moe.topk_weights", dtype::f32, {t, k});
  kernels::moe_routing_config routing = routing_config(c);
  routing.shared_experts = fused;
  // The alignment's buffers for n rows of k slots over el stacked experts.
  using lease = typename forward_context<B>::lease;
  struct align_buffers {
    lease counts, offsets, sorted, blocks, total, inverse;
    kernels::moe_align_outputs views() const {
      return {counts.view(), offsets.view(), sorted.view(),
              blocks.view(), total.view(),   inverse.view()};
    }
  };
  auto const acquire_align = [&](std::int64_t n, std::int64_t el) {
    auto const cap = kernels::moe_align_capacity(n, k, el, moe_block_m);
    return align_buffers{ctx.acquire("moe.expert_counts", dtype::i32, {el}),
                         ctx.acquire("moe.expert_offsets", dtype::i32, {el + 1}),
                         ctx.acquire("moe.sorted_token_ids", dtype::i32, {cap.sorted_rows}),
                         ctx.acquire("moe.expert_of_block", dtype::i32, {cap.blocks}),
                         ctx.acquire("moe.total_padded", dtype::i32, {1}),
                         ctx.acquire("moe.inverse", dtype::i32, {n, k})};
  };
  // A dispatch that keeps the rows on this rank hands the experts the routing as it is: routing
  // and alignment then run together, before it (one launch on the GPU at decode sizes).
  using policy = std::remove_cvref_t<Dispatch>;
  std::optional<align_buffers> align;
  if constexpr (policy::routes_in_place) {
    std::int64_t const stack = policy::routed_experts(c) + fused;
    align.emplace(acquire_align(t, stack));
    kernels::moe_route_and_align(ctx.backend, logits.view(), w.router_bias, routing, ids.view(),
                                 weights.view(), stack, moe_block_m, align->views(), ctx.stream);
  } else {
    kernels::moe_route(ctx.backend, logits.view(), w.router_bias, routing, ids.view(),
                       weights.view(), ctx.stream);
  }
  logits.reset();
  moe_dispatched const d = dispatch.dispatch(ctx, x, ids.view(), weights.view(), out, c);
  std::int64_t const n = d.x.size(0), el = d.experts + fused;
  LC_CHECK(el == experts.get().gate_up.size(0), "moe_block: the dispatch hands the experts "
                                                    << el << " experts but this rank's stack "
                                                    << "holds " << experts.get().gate_up.size(0));
  if constexpr (policy::routes_in_place)
    LC_CHECK(n == t && d.ids.data() == ids.view().data(),
             "moe_block: a dispatch that routes in place must hand the experts the batch's own "
             "rows and routing");
  if (n > 0) {
    if (!align) {
      align.emplace(acquire_align(n, el));
      kernels::moe_align(ctx.backend, d.ids, el, moe_block_m, align->views(), ctx.stream);
    }
    auto const format = experts.get().gate_up.type() == dtype::fp8_e4m3
                            ? kernels::moe_weight_format::fp8_block
                            : kernels::moe_weight_format::bf16;
    auto ws = ctx.acquire("moe.workspace", dtype::u8,
                          {kernels::moe_experts_workspace_bytes(n, k, el, moe_block_m, x.size(1),
                                                                experts.inter(), format)});
    kernels::moe_experts(ctx.backend, d.x, d.ids, d.weights, align->views(), moe_block_m,
                         experts.get(), d.out, ws.view(), ctx.stream);
  }
  dispatch.combine(ctx, d, out);
  bool const fold = !w.shared || !w.shared->down.fp8();
  if (w.shared) dense_mlp(ctx, x, *w.shared, fold ? out : shared_out, fold);
  dispatch.reduce(ctx, out, fold ? tensor_view{} : shared_out);
}

}  // namespace lightcore::modules::deepseek
