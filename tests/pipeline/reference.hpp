// A naive fp32 forward of modules/gqa's dense decoder, plain loops over host copies of the
// weights, rounding to bf16 where the kernels store bf16 activations (norm outputs, the residual,
// projections, rotary, attention, MLP), so that what remains between the two is the order of
// fp32 sums and the rare rounding flip it causes.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/bf16.hpp"
#include "modules/gqa/dense_model.hpp"

namespace lightcore::test {

inline float round_bf16(float x) { return float(bf16(x)); }

// The toy dense decoder both pipeline suites run: vocab 300, hidden 128, 2 layers, 8 query heads
// over 2 KV heads of 128, 8 rows a step.
inline modules::gqa::dense_config tiny_dense_config() {
  modules::gqa::dense_config c;
  c.vocab_size = 300;
  c.hidden_size = 128;
  c.layers = 2;
  c.heads = {8, 2, 128};
  c.intermediate = 256;
  c.max_positions = 128;
  c.max_rows = 8;
  return c;
}

// n token ids below 300, a fixed function of the salt.
inline std::vector<std::int32_t> dense_prompt(std::int64_t n, std::int32_t salt) {
  std::vector<std::int32_t> p;
  for (std::int64_t i = 0; i < n; ++i) p.push_back(std::int32_t((i * 37 + salt * 101 + 5) % 300));
  return p;
}

template <class B>
std::vector<float> host_floats(B& backend, tensor<B> const& t) {
  std::vector<bf16> h(std::size_t(t.view().numel()));
  auto stream = backend.make_stream();
  backend.copy(h.data(), t.data(), h.size() * sizeof(bf16), stream);
  stream.synchronize();
  return std::vector<float>(h.begin(), h.end());
}

class reference_model {
 public:
  template <class B>
  reference_model(B& backend, modules::gqa::dense_weights<B> const& w) : c_(w.config) {
    embed_ = host_floats(backend, w.embed);
    norm_ = host_floats(backend, w.norm);
    lm_head_ = host_floats(backend, w.lm_head);
    for (auto const& l : w.layers)
      layers_.push_back({host_floats(backend, l.input_norm), host_floats(backend, l.qkv),
                         host_floats(backend, l.o), host_floats(backend, l.post_norm),
                         host_floats(backend, l.gate_up), host_floats(backend, l.down)});
  }

  // Logits [vocab] of the last token of `ids` (positions 0..n-1).
  std::vector<float> last_logits(std::vector<std::int32_t> const& ids) const {
    std::int64_t const n = std::int64_t(ids.size()), h = c_.hidden_size;
    std::int64_t const nq = c_.heads.q_heads, nkv = c_.heads.kv_heads, hd = c_.heads.head_dim;
    std::int64_t const width = c_.heads.qkv_width(), inter = c_.intermediate;
    std::vector<float> residual(std::size_t(n * h)), x(std::size_t(n * h)), delta(residual.size());
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t j = 0; j < h; ++j) residual[idx(t, j, h)] = embed_[idx(ids[t], j, h)];
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      layer const& w = layers_[l];
      if (l > 0) add(residual, delta);
      norm(residual, w.input_norm, x, n);
      std::vector<float> qkv = matmul(x, w.qkv, n, h, width);
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t hh = 0; hh < nq + nkv; ++hh) rotate(&qkv[idx(t, hh * hd, width)], t);
      std::vector<float> attn(std::size_t(n * nq * hd));
      float const scale = float(1.0 / std::sqrt(double(hd)));
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t hq = 0; hq < nq; ++hq) {
          std::int64_t const g = hq / (nq / nkv);  // the kv head of query head hq
          float const* q = &qkv[idx(t, hq * hd, width)];
          std::vector<float> s(std::size_t(t + 1));
          float mx = -INFINITY;
          for (std::int64_t u = 0; u <= t; ++u) {  // causal
            float const* k = &qkv[idx(u, (nq + g) * hd, width)];
            float d = 0;
            for (std::int64_t e = 0; e < hd; ++e) d += q[e] * k[e];
            s[std::size_t(u)] = d * scale;
            mx = std::max(mx, s[std::size_t(u)]);
          }
          float sum = 0;
          for (float& v : s) sum += (v = std::exp(v - mx));
          for (std::int64_t e = 0; e < hd; ++e) {
            float o = 0;
            for (std::int64_t u = 0; u <= t; ++u)
              o += s[std::size_t(u)] * qkv[idx(u, (nq + nkv + g) * hd + e, width)];
            attn[idx(t, hq * hd + e, nq * hd)] = round_bf16(o / sum);
          }
        }
      delta = matmul(attn, w.o, n, nq * hd, h);
      add(residual, delta);
      norm(residual, w.post_norm, x, n);
      std::vector<float> const gu = matmul(x, w.gate_up, n, h, 2 * inter);
      std::vector<float> act(std::size_t(n * inter));
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t j = 0; j < inter; ++j) {
          float const g = gu[idx(t, j, 2 * inter)], u = gu[idx(t, inter + j, 2 * inter)];
          act[idx(t, j, inter)] = round_bf16(g / (1.0f + std::exp(-g)) * u);
        }
      delta = matmul(act, w.down, n, inter, h);
    }
    add(residual, delta);
    norm(residual, norm_, x, n);
    std::vector<float> last(x.end() - h, x.end());
    std::vector<float> logits(std::size_t(c_.vocab_size));
    for (std::int64_t v = 0; v < c_.vocab_size; ++v) {
      float d = 0;
      for (std::int64_t j = 0; j < h; ++j) d += last[std::size_t(j)] * lm_head_[idx(v, j, h)];
      logits[std::size_t(v)] = d;  // f32 logits: no rounding
    }
    return logits;
  }

 private:
  struct layer {
    std::vector<float> input_norm, qkv, o, post_norm, gate_up, down;
  };

  static std::size_t idx(std::int64_t r, std::int64_t c, std::int64_t ld) {
    return std::size_t(r * ld + c);
  }
  // y [n, out] = x [n, in] . w^T, w [out, in]; rounded to bf16 like every projection's output.
  static std::vector<float> matmul(std::vector<float> const& x, std::vector<float> const& w,
                                   std::int64_t n, std::int64_t in, std::int64_t out) {
    std::vector<float> y(std::size_t(n * out));
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t o = 0; o < out; ++o) {
        float d = 0;
        for (std::int64_t i = 0; i < in; ++i) d += x[idx(t, i, in)] * w[idx(o, i, in)];
        y[idx(t, o, out)] = round_bf16(d);
      }
    return y;
  }
  static void add(std::vector<float>& residual, std::vector<float> const& delta) {
    for (std::size_t i = 0; i < residual.size(); ++i)
      residual[i] = round_bf16(residual[i] + delta[i]);
  }
  // RMSNorm with the kernel's rounding points: weight * bf16(x / rms), rounded.
  void norm(std::vector<float> const& x, std::vector<float> const& weight, std::vector<float>& out,
            std::int64_t n) const {
    std::int64_t const h = c_.hidden_size;
    for (std::int64_t t = 0; t < n; ++t) {
      double ss = 0;
      for (std::int64_t j = 0; j < h; ++j) ss += double(x[idx(t, j, h)]) * x[idx(t, j, h)];
      float const r = float(1.0 / std::sqrt(ss / double(h) + c_.rms_norm_eps));
      for (std::int64_t j = 0; j < h; ++j)
        out[idx(t, j, h)] = round_bf16(weight[std::size_t(j)] * round_bf16(x[idx(t, j, h)] * r));
    }
  }
  // The first 64 dims of a head at position p: pairs (2i, 2i + 1) rotated by p * theta^(-2i/64),
  // written de-interleaved (dim i and dim 32 + i) as DeepSeek's rope kernel writes them; q and k
  // are permuted alike, so q . k is the interleaved RoPE's.
  void rotate(float* x, std::int64_t p) const {
    constexpr int half = 32;
    float in[2 * half];
    for (int i = 0; i < 2 * half; ++i) in[i] = x[i];
    for (int i = 0; i < half; ++i) {
      double const angle = double(p) * std::pow(c_.rope_theta, -2.0 * i / (2.0 * half));
      float const cs = float(std::cos(angle)), sn = float(std::sin(angle));
      x[i] = round_bf16(in[2 * i] * cs - in[2 * i + 1] * sn);
      x[half + i] = round_bf16(in[2 * i + 1] * cs + in[2 * i] * sn);
    }
  }

  modules::gqa::dense_config c_;
  std::vector<float> embed_, norm_, lm_head_;
  std::vector<layer> layers_;
};

// Relative L2 distance of a from b.
inline double rel_l2(std::vector<float> const& a, std::vector<float> const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace lightcore::test
