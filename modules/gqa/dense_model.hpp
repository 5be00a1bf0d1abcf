// A dense decoder with grouped-query attention, composed from the kernels: embedding, per layer
// RMSNorm -> fused q|k|v projection -> GQA attention with partial rotary (attention.hpp) -> o
// projection -> fused residual-add RMSNorm -> SwiGLU MLP (gate|up GEMM, silu_and_mul, down), final
// norm and lm head. Seeded random weights (kernels/init). It satisfies pipeline::forward_model,
// so the generic executor (modules/common/executor.hpp) runs it under the engine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/activation/activation.hpp"
#include "kernels/embedding/embedding.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/init/init.hpp"
#include "kernels/norm/norm.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/pipeline/concepts.hpp"
#include "modules/gqa/attention.hpp"

namespace lightcore::modules::gqa {

struct dense_config {
  std::int64_t vocab_size = 300;      // token ids; default 300
  std::int64_t hidden_size = 128;     // model width; a multiple of 8; default 128
  std::int64_t layers = 2;            // decoder layers; default 2
  gqa_heads heads{};                  // 8 q heads, 2 kv heads, head_dim 128 by default
  std::int64_t intermediate = 256;    // MLP width; a multiple of 8; default 256
  double rope_theta = 10000.0;        // plain RoPE base over the first 64 dims of a head
  double rms_norm_eps = 1e-6;         // default 1e-6
  std::int64_t max_positions = 1024;  // rows of the cos/sin cache (longest sequence); 1024
  std::int64_t max_rows = 64;         // most requests in one forward (logits rows); 64
};

// bf16 weights, nn.Linear layout [out, in].
template <Backend B>
struct dense_layer_weights {
  tensor<B> input_norm;  // [hidden]
  tensor<B> qkv;         // [(q_heads + 2 kv_heads) * head_dim, hidden]
  tensor<B> o;           // [hidden, q_heads * head_dim]
  tensor<B> post_norm;   // [hidden]
  tensor<B> gate_up;     // [2 * intermediate, hidden]: gate rows, then up rows
  tensor<B> down;        // [hidden, intermediate]
};

template <Backend B>
struct dense_weights {
  dense_config config;
  tensor<B> embed;  // [vocab, hidden]
  std::vector<dense_layer_weights<B>> layers;
  tensor<B> norm;     // [hidden]
  tensor<B> lm_head;  // [vocab, hidden]
};

// Weights drawn from kernels::fill_random, each tensor its own stream keyed by its name. Linear
// layers have stddev 1/sqrt(in) (unit-variance outputs), norms 1 +- 0.1, the embedding 1 and the
// lm head 3/sqrt(hidden), so that logits spread by about 3 and greedy choices have margins.
template <Backend B>
dense_weights<B> random_dense_weights(B& backend, dense_config const& c, std::uint64_t seed) {
  LC_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.hidden_size % 8 == 0 && c.layers > 0 &&
               c.intermediate > 0 && c.intermediate % 8 == 0 && c.heads.kv_heads > 0 &&
               c.heads.q_heads % c.heads.kv_heads == 0 && c.max_positions > 0 && c.max_rows > 0,
           "dense_config: vocab, layers, heads, max_positions and max_rows must be positive, "
           "hidden and intermediate multiples of 8, q_heads a multiple of kv_heads");
  auto stream = backend.make_stream();
  auto make = [&](std::string const& name, dims shape, float mean, float stddev) {
    tensor<B> t(backend, dtype::bf16, shape);
    kernels::fill_random(backend, t.view(), {seed, kernels::init_tensor_id(name), mean, stddev},
                         stream);
    return t;
  };
  std::int64_t const h = c.hidden_size, i = c.intermediate;
  std::int64_t const qd = c.heads.q_heads * c.heads.head_dim;
  dense_weights<B> w;
  w.config = c;
  w.embed = make("embed", {c.vocab_size, h}, 0.0f, 1.0f);
  for (std::int64_t l = 0; l < c.layers; ++l) {
    std::string const p = "layers." + std::to_string(l) + ".";
    dense_layer_weights<B> lw;
    lw.input_norm = make(p + "input_norm", {h}, 1.0f, 0.1f);
    lw.qkv = make(p + "qkv", {c.heads.qkv_width(), h}, 0.0f, float(1.0 / std::sqrt(double(h))));
    lw.o = make(p + "o", {h, qd}, 0.0f, float(1.0 / std::sqrt(double(qd))));
    lw.post_norm = make(p + "post_norm", {h}, 1.0f, 0.1f);
    lw.gate_up = make(p + "gate_up", {2 * i, h}, 0.0f, float(1.0 / std::sqrt(double(h))));
    lw.down = make(p + "down", {h, i}, 0.0f, float(1.0 / std::sqrt(double(i))));
    w.layers.push_back(std::move(lw));
  }
  w.norm = make("norm", {h}, 1.0f, 0.1f);
  w.lm_head = make("lm_head", {c.vocab_size, h}, 0.0f, float(3.0 / std::sqrt(double(h))));
  stream.synchronize();
  return w;
}

template <Backend B>
class dense_model {
 public:
  using backend_type = B;
  using context = common::forward_context<B>;
  using step_type = pipeline::model_step;

  dense_model(B& backend, dense_weights<B> const& w) : backend_(&backend), w_(&w) {
    dense_config const& c = w.config;
    kernels::yarn_config y;  // factor 1: plain RoPE
    y.rope_theta = c.rope_theta;
    y.rotary_dim = kernels::rope_dim;
    y.factor = 1.0;
    y.max_position_embeddings = c.max_positions;
    std::vector<float> const cs = kernels::yarn_cos_sin_cache(y, c.max_positions);
    cos_sin_ = tensor<B>(backend, dtype::f32, {c.max_positions, kernels::rope_dim});
    logits_ = tensor<B>(backend, dtype::f32, {c.max_rows, c.vocab_size});
    auto stream = backend.make_stream();
    backend.copy(cos_sin_.data(), cs.data(), cs.size() * sizeof(float), stream);
    stream.synchronize();
  }

  dense_config const& config() const noexcept { return w_->config; }

  // Runs one step: writes the new tokens' KV (kv: one [slots, kv_width] bf16 pool per layer;
  // req_to_token [rows, columns] i32 on the device) and returns the f32 logits [steps, vocab] of
  // each step's last token, in the steps' order, valid until the next forward.
  // Prefill rows read their whole sequences' slots back from req_to_token (one wait on the stream
  // per step with prefill rows) to gather their KV for the varlen prefill kernel.
  tensor_view forward(context& ctx, std::vector<step_type> const& steps,
                      std::vector<tensor_view> const& kv, tensor_view const& req_to_token) {
    dense_config const& c = config();
    LC_CHECK(
        std::int64_t(kv.size()) == c.layers,
        "dense_model: forward needs one KV pool per layer (" << c.layers << "); got " << kv.size());
    LC_CHECK(!steps.empty() && std::int64_t(steps.size()) <= c.max_rows,
             "dense_model: a step carries 1.." << c.max_rows << " requests (max_rows); got "
                                               << steps.size());
    plan const p = make_plan(steps, req_to_token, ctx.stream);
    auto upload = [&](char const* role, std::vector<std::int32_t> const& v) {
      auto l = ctx.acquire(role, dtype::i32, {std::int64_t(v.size())});
      if (!v.empty()) backend_->copy(l.view().data(), v.data(), v.size() * 4, ctx.stream);
      return l;
    };
    auto d_ids = upload("gqa.ids", p.ids), d_pos = upload("gqa.positions", p.positions),
         d_rows = upload("gqa.token_req_rows", p.token_rows),
         d_slots = upload("gqa.prefill_slots", p.prefill_slots),
         d_cuq = upload("gqa.cu_seqlens_q", p.cu_q), d_cuk = upload("gqa.cu_seqlens_k", p.cu_k),
         d_drows = upload("gqa.decode_rows", p.decode_rows),
         d_dlens = upload("gqa.decode_lens", p.decode_lens);
    gqa_batch b;
    b.tokens = std::int64_t(p.ids.size());
    b.prefill_tokens = p.cu_q.back();
    b.prefill_kv_tokens = p.cu_k.back();
    b.positions = d_pos.view();
    b.token_req_rows = d_rows.view();
    b.req_to_token = req_to_token;
    b.prefill_slots = d_slots.view();
    b.cu_seqlens_q = d_cuq.view();
    b.cu_seqlens_k = d_cuk.view();
    b.decode_req_rows = d_drows.view();
    b.decode_seq_lens = d_dlens.view();
    b.cos_sin = cos_sin_.view();
    b.softmax_scale = float(1.0 / std::sqrt(double(c.heads.head_dim)));

    std::int64_t const t = b.tokens, h = c.hidden_size, r = std::int64_t(steps.size());
    auto residual = ctx.acquire("gqa.residual", dtype::bf16, {t, h});
    auto xn = ctx.acquire("gqa.normed", dtype::bf16, {t, h});
    auto delta = ctx.acquire("gqa.delta", dtype::bf16, {t, h});
    kernels::embedding(*backend_, d_ids.view(), w_->embed.view(), residual.view(),
                       {0, c.vocab_size}, ctx.stream);
    float const eps = float(c.rms_norm_eps);
    for (std::int64_t l = 0; l < c.layers; ++l) {
      dense_layer_weights<B> const& lw = w_->layers[std::size_t(l)];
      if (l == 0)
        kernels::rmsnorm(*backend_, residual.view(), lw.input_norm.view(), xn.view(), eps,
                         ctx.stream);
      else
        kernels::fused_add_rmsnorm(*backend_, residual.view(), delta.view(), lw.input_norm.view(),
                                   xn.view(), eps, ctx.stream);
      {
        auto qkv = ctx.acquire("gqa.qkv", dtype::bf16, {t, c.heads.qkv_width()});
        linear(ctx, xn.view(), lw.qkv.view(), qkv.view());
        auto attn = ctx.acquire("gqa.attn", dtype::bf16, {t, c.heads.q_heads, c.heads.head_dim});
        gqa_attention(ctx, c.heads, b, qkv.view(), kv[std::size_t(l)], attn.view());
        linear(ctx, attn.view().reshape({t, c.heads.q_heads * c.heads.head_dim}), lw.o.view(),
               delta.view());
      }
      kernels::fused_add_rmsnorm(*backend_, residual.view(), delta.view(), lw.post_norm.view(),
                                 xn.view(), eps, ctx.stream);
      auto gate_up = ctx.acquire("gqa.gate_up", dtype::bf16, {t, 2 * c.intermediate});
      linear(ctx, xn.view(), lw.gate_up.view(), gate_up.view());
      auto act = ctx.acquire("gqa.act", dtype::bf16, {t, c.intermediate});
      kernels::silu_and_mul(*backend_, gate_up.view(), act.view(), ctx.stream);
      linear(ctx, act.view(), lw.down.view(), delta.view());
    }
    kernels::fused_add_rmsnorm(*backend_, residual.view(), delta.view(), w_->norm.view(), xn.view(),
                               eps, ctx.stream);
    // The lm head reads each step's last token row, in the steps' order.
    auto head_in = ctx.acquire("gqa.head_in", dtype::bf16, {r, h});
    for (std::int64_t i = 0; i < r; ++i)
      backend_->copy(head_in.view().select(0, i).data(),
                     xn.view().select(0, p.last[std::size_t(i)]).data(), std::size_t(h) * 2,
                     ctx.stream);
    tensor_view const logits = logits_.view().slice(0, 0, r);
    linear(ctx, head_in.view(), w_->lm_head.view(), logits);
    return logits;
  }

 private:
  // The host part of a step: token rows laid out prefill requests first, then decode rows.
  struct plan {
    std::vector<std::int32_t> ids, positions, token_rows, prefill_slots, cu_q{0}, cu_k{0},
        decode_rows, decode_lens;
    std::vector<std::int64_t> last;  // each step's last token row
  };

  static bool is_decode(step_type const& s) {
    return !s.prefill && s.tokens.size() == 1 && s.cached > 0;
  }

  plan make_plan(std::vector<step_type> const& steps, tensor_view const& req_to_token,
                 typename B::stream_type const& stream) const {
    LC_CHECK(req_to_token.rank() == 2 && req_to_token.type() == dtype::i32 &&
                 req_to_token.stride(1) == 1,
             "dense_model: req_to_token must be [rows, columns] i32 with contiguous rows; got "
                 << req_to_token);
    std::vector<std::size_t> order;
    for (std::size_t s = 0; s < steps.size(); ++s)
      if (!is_decode(steps[s])) order.push_back(s);
    std::size_t const n_prefill = order.size();
    for (std::size_t s = 0; s < steps.size(); ++s)
      if (is_decode(steps[s])) order.push_back(s);
    plan p;
    p.last.resize(steps.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
      step_type const& s = steps[order[i]];
      std::int64_t const len = s.cached + std::int64_t(s.tokens.size());
      LC_CHECK(!s.tokens.empty() && s.cached >= 0 && len <= config().max_positions &&
                   len <= req_to_token.size(1) && s.req_row >= 0 &&
                   s.req_row < req_to_token.size(0),
               "dense_model: request "
                   << order[i] << " (" << s.tokens.size() << " new tokens after " << s.cached
                   << ", row " << s.req_row << ") must have new tokens, end within "
                   << "max_positions " << config().max_positions << " and req_to_token "
                   << req_to_token.shape());
      for (std::size_t j = 0; j < s.tokens.size(); ++j) {
        LC_CHECK(s.tokens[j] >= 0 && s.tokens[j] < config().vocab_size,
                 "dense_model: token id " << s.tokens[j] << " is outside the vocabulary [0, "
                                          << config().vocab_size << ")");
        p.ids.push_back(s.tokens[j]);
        p.positions.push_back(std::int32_t(s.cached + std::int64_t(j)));
        p.token_rows.push_back(s.req_row);
      }
      p.last[order[i]] = std::int64_t(p.ids.size()) - 1;
      if (i < n_prefill) {
        p.cu_q.push_back(std::int32_t(p.ids.size()));
        p.cu_k.push_back(p.cu_k.back() + std::int32_t(len));
        std::size_t const at = p.prefill_slots.size();
        p.prefill_slots.resize(at + std::size_t(len));
        backend_->copy(p.prefill_slots.data() + at, req_to_token.select(0, s.req_row).data(),
                       std::size_t(len) * 4, stream);
      } else {
        p.decode_rows.push_back(s.req_row);
        p.decode_lens.push_back(std::int32_t(len));
      }
    }
    if (n_prefill > 0) stream.synchronize();  // the slots read back above
    return p;
  }

  // out [M, N] = x [M, K] . w^T for an nn.Linear weight w [N, K] (bf16, fp32 accumulation).
  void linear(context& ctx, tensor_view const& x, tensor_view const& w,
              tensor_view const& out) const {
    if (x.size(0) == 0) return;
    auto ws = ctx.gemm_workspace();
    kernels::gemm(*backend_, ctx.gemm, x, w, out, ws.view(), ctx.stream,
                  kernels::gemm_weight_options());
  }

  B* backend_;
  dense_weights<B> const* w_;
  tensor<B> cos_sin_;
  tensor<B> logits_;  // [max_rows, vocab] f32
};

// The KV cache the model keeps in the engine's pool (pipeline::forward_model).
template <Backend B>
pipeline::kv_shape kv_shape_of(dense_model<B> const& m) {
  return {std::int32_t(m.config().layers), m.config().heads.kv_width()};
}

}  // namespace lightcore::modules::gqa
