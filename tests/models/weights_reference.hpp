// An independent check of loaded weights against the checkpoint's own tensors: element by element
// with the layout rules written out plainly (fused parts, per-head splits, stacked experts, FP8
// codes and re-strided scales, dequantisation), for any tensor-parallel rank.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "models/deepseek_v3/weights.hpp"

namespace lightcore::test {

namespace ds = models::deepseek_v3;

// Rows [r0, r1), columns [c0, c1) of checkpoint weight `prefix`.weight.
struct ref_part {
  std::string prefix;
  std::int64_t r0, r1, c0, c1;
};

class checkpoint_reference {
 public:
  checkpoint_reference(std::filesystem::path const& path, io::model_config c, ds::tp_shard shard)
      : ck_(path), c_(std::move(c)), shard_(shard) {}

  // The bf16 bits a bf16 destination holds for element (r, k) of `name`: the value itself, or the
  // FP8 code times its block's scale rounded once.
  std::uint16_t bf16_bits(std::string const& name, std::int64_t r, std::int64_t k) const {
    tensor_view const t = ck_.tensor(name);
    std::int64_t const cols = t.rank() == 1 ? t.size(0) : t.size(1);
    std::int64_t const i = r * cols + k;
    switch (t.type()) {
      case dtype::bf16: return t.data_as<bf16>()[i].bits;
      case dtype::f32: return bf16(t.data_as<float>()[i]).bits;
      case dtype::fp8_e4m3: {
        std::string const scale_name = name.substr(0, name.size() - 6) + "weight_scale_inv";
        tensor_view const s = ck_.tensor(scale_name);
        float const scale = s.data_as<float>()[(r / 128) * s.size(1) + k / 128];
        return bf16(float(t.data_as<fp8_e4m3>()[i]) * scale).bits;
      }
      default: ADD_FAILURE() << name << " has unexpected dtype " << t.type(); return 0;
    }
  }

  // A plain (non-linear) destination: rows [r0, r0 + rows) of `name`, same dtype or bf16.
  void expect_plain(tensor_view const& dst, std::string const& name, std::int64_t r0 = 0) const {
    tensor_view const t = ck_.tensor(name);
    tensor_view const d = dst.rank() == 1 ? dst.reshape({1, dst.size(0)}) : dst;
    std::int64_t bad = 0;
    for (std::int64_t r = 0; r < d.size(0); ++r)
      for (std::int64_t k = 0; k < d.size(1); ++k) {
        std::int64_t const i = r * d.stride(0) + k;
        if (d.type() == dtype::f32) {
          std::int64_t const cols = t.rank() == 1 ? t.size(0) : t.size(1);
          float const want = t.type() == dtype::f32
                                 ? t.data_as<float>()[(r0 + r) * cols + k]
                                 : float(bf16::from_bits(bf16_bits(name, r0 + r, k)));
          bad += d.data_as<float>()[i] != want;
        } else {
          bad += d.data_as<bf16>()[i].bits != bf16_bits(name, r0 + r, k);
        }
      }
    EXPECT_EQ(bad, 0) << name << " into " << dst;
  }

  // A linear destination w [N, K] (+ scales) made of `parts` stacked by rows.
  void expect_linear(ds::linear_weight const& l, std::vector<ref_part> const& parts,
                     std::string const& what) const {
    ASSERT_EQ(l.w.rank(), 2) << what;
    std::int64_t row = 0, bad = 0, bad_scales = 0;
    std::int64_t const k_local = l.w.size(1);
    for (ref_part const& p : parts) {
      std::string const name = p.prefix + ".weight";
      tensor_view const t = ck_.tensor(name);
      ASSERT_EQ(p.c1 - p.c0, k_local) << what;
      for (std::int64_t r = p.r0; r < p.r1; ++r)
        for (std::int64_t k = p.c0; k < p.c1; ++k) {
          std::int64_t const i = (row + r - p.r0) * l.w.stride(0) + (k - p.c0);
          if (l.fp8())
            bad += l.w.data_as<fp8_e4m3>()[i].bits != t.data_as<fp8_e4m3>()[r * t.size(1) + k].bits;
          else
            bad += l.w.data_as<bf16>()[i].bits != bf16_bits(name, r, k);
        }
      if (l.fp8()) {
        EXPECT_EQ(row % 128, 0) << what << ": a fused part starts inside a scale block";
        EXPECT_EQ(l.scales.stride(0), kernels::gemm_fp8_weight_scale_ld(k_local)) << what;
        EXPECT_EQ(l.scales.size(1), k_local / 128) << what;
        tensor_view const s = ck_.tensor(p.prefix + ".weight_scale_inv");
        for (std::int64_t b = 0; b < (p.r1 - p.r0 + 127) / 128; ++b)
          for (std::int64_t j = 0; j < k_local / 128; ++j)
            bad_scales += l.scales.data_as<float>()[(row / 128 + b) * l.scales.stride(0) + j] !=
                          s.data_as<float>()[(p.r0 / 128 + b) * s.size(1) + p.c0 / 128 + j];
      }
      row += p.r1 - p.r0;
    }
    EXPECT_EQ(row, l.w.size(0)) << what;
    EXPECT_EQ(bad, 0) << what;
    EXPECT_EQ(bad_scales, 0) << what;
  }

  // Everything a rank holds, against the checkpoint.
  void expect_model(ds::model_views const& m) const {
    std::int64_t const w = shard_.world, r = shard_.rank, h = c_.hidden_size;
    std::int64_t const heads = c_.num_attention_heads / w, h0 = r * heads;
    std::int64_t const qk = c_.qk_head_dim(), nope = c_.qk_nope_head_dim, v = c_.v_head_dim;
    std::int64_t const kv = c_.kv_lora_rank, kv_a = kv + c_.qk_rope_head_dim;
    ds::vocab_range const vocab = ds::vocab_shard(c_, shard_);
    expect_plain(m.embed, "model.embed_tokens.weight", vocab.start);
    EXPECT_EQ(m.embed.size(0), vocab.size());
    for (std::int64_t i = 0; i < c_.num_hidden_layers; ++i) {
      ds::layer_weights const& l = m.layers[std::size_t(i)];
      std::string const p = "model.layers." + std::to_string(i), a = p + ".self_attn";
      expect_plain(l.input_norm, p + ".input_layernorm.weight");
      expect_plain(l.post_attention_norm, p + ".post_attention_layernorm.weight");
      if (c_.q_lora_rank) {
        std::int64_t const q = *c_.q_lora_rank;
        expect_linear(l.attn.q_a_kv_a,
                      {{a + ".q_a_proj", 0, q, 0, h}, {a + ".kv_a_proj_with_mqa", 0, kv_a, 0, h}},
                      a + " q_a_kv_a");
        expect_plain(l.attn.q_a_norm, a + ".q_a_layernorm.weight");
        expect_linear(l.attn.q_b, {{a + ".q_b_proj", h0 * qk, (h0 + heads) * qk, 0, q}},
                      a + " q_b");
      } else {
        expect_linear(l.attn.q, {{a + ".q_proj", h0 * qk, (h0 + heads) * qk, 0, h}}, a + " q");
        expect_linear(l.attn.kv_a, {{a + ".kv_a_proj_with_mqa", 0, kv_a, 0, h}}, a + " kv_a");
      }
      expect_plain(l.attn.kv_a_norm, a + ".kv_a_layernorm.weight");
      // kv_b_proj rows of head g: [g (nope + v), + nope) keys, then v values.
      ASSERT_EQ(l.attn.w_uk.shape(), (dims{heads, nope, kv}));
      ASSERT_EQ(l.attn.w_uv.shape(), (dims{heads, v, kv}));
      std::int64_t bad = 0;
      for (std::int64_t g = 0; g < heads; ++g)
        for (std::int64_t k = 0; k < kv; ++k) {
          std::int64_t const base = (h0 + g) * (nope + v);
          for (std::int64_t d = 0; d < nope; ++d)
            bad += l.attn.w_uk.as<bf16, 3>()(g, d, k).bits !=
                   bf16_bits(a + ".kv_b_proj.weight", base + d, k);
          for (std::int64_t d = 0; d < v; ++d)
            bad += l.attn.w_uv.as<bf16, 3>()(g, d, k).bits !=
                   bf16_bits(a + ".kv_b_proj.weight", base + nope + d, k);
        }
      EXPECT_EQ(bad, 0) << a << " kv_b_proj into w_uk / w_uv";
      expect_linear(l.attn.o, {{a + ".o_proj", 0, h, h0 * v, (h0 + heads) * v}}, a + " o");
      auto const expect_mlp = [&](ds::linear_weight const& gate_up, ds::linear_weight const& down,
                                  std::string const& prefix, std::int64_t width) {
        std::int64_t const local = width / w, i0 = r * local;
        expect_linear(gate_up,
                      {{prefix + ".gate_proj", i0, i0 + local, 0, h},
                       {prefix + ".up_proj", i0, i0 + local, 0, h}},
                      prefix + " gate_up");
        expect_linear(down, {{prefix + ".down_proj", 0, h, i0, i0 + local}}, prefix + " down");
      };
      ASSERT_EQ(l.mlp.has_value(), !io::is_moe_layer(c_, i));
      if (l.mlp) {
        expect_mlp(l.mlp->gate_up, l.mlp->down, p + ".mlp", c_.intermediate_size);
        continue;
      }
      ASSERT_TRUE(l.moe.has_value());
      expect_plain(l.moe->router, p + ".mlp.gate.weight");
      if (c_.topk == io::topk_method::noaux_tc)
        expect_plain(l.moe->router_bias, p + ".mlp.gate.e_score_correction_bias");
      else
        EXPECT_EQ(l.moe->router_bias.data(), nullptr);
      std::int64_t const e_count = c_.n_routed_experts, fused = l.moe->fused_shared;
      ASSERT_TRUE(fused == 0 || fused == c_.n_shared_experts) << p << ": " << fused;
      ASSERT_EQ(l.moe->gate_up.w.size(0), e_count + fused);
      ASSERT_EQ(l.moe->down.w.size(0), e_count + fused);
      for (std::int64_t e = 0; e < e_count; ++e)
        expect_mlp(l.moe->gate_up.expert(e), l.moe->down.expert(e),
                   p + ".mlp.experts." + std::to_string(e), c_.moe_intermediate_size);
      // Folded shared experts: stack entry E + j holds part j of this rank's share of the
      // shared MLP's intermediate, i.e. columns s0 + j * local .. of it.
      std::string const shared = p + ".mlp.shared_experts";
      std::int64_t const local = c_.moe_intermediate_size / w;
      for (std::int64_t j = 0; j < fused; ++j) {
        std::int64_t const i0 = r * local * c_.n_shared_experts + j * local;
        expect_linear(l.moe->gate_up.expert(e_count + j),
                      {{shared + ".gate_proj", i0, i0 + local, 0, h},
                       {shared + ".up_proj", i0, i0 + local, 0, h}},
                      shared + " folded " + std::to_string(j) + " gate_up");
        expect_linear(l.moe->down.expert(e_count + j),
                      {{shared + ".down_proj", 0, h, i0, i0 + local}},
                      shared + " folded " + std::to_string(j) + " down");
      }
      ASSERT_EQ(l.moe->shared.has_value(), c_.n_shared_experts > 0 && fused == 0);
      if (l.moe->shared)
        expect_mlp(l.moe->shared->gate_up, l.moe->shared->down, shared,
                   c_.moe_intermediate_size * c_.n_shared_experts);
    }
    expect_plain(m.norm, "model.norm.weight");
    if (!c_.tie_word_embeddings) expect_plain(m.lm_head, "lm_head.weight", vocab.start);
  }

  io::safetensors_checkpoint const& checkpoint() const noexcept { return ck_; }

 private:
  io::safetensors_checkpoint ck_;
  io::model_config c_;
  ds::tp_shard shard_;
};

}  // namespace lightcore::test
