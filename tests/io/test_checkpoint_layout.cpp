// The DeepSeek checkpoint layout: tensor counts, names, dtypes and shapes of R1 (FP8) and V2-Lite
// (bf16, q_lora_rank null) against sizes worked out by hand from the modeling code, and the
// parameter totals the model cards publish (R1: 671B without its 14B MTP module; V2-Lite: 15.7B).
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "io_test_util.hpp"
#include "lightcore/io/hf_config.hpp"
#include "models/deepseek_v3/checkpoint_layout.hpp"

namespace lightcore {
namespace {

namespace ds = models::deepseek_v3;
using ds::tensor_role;

std::map<std::string, ds::tensor_spec> by_name(std::vector<ds::tensor_spec> const& layout) {
  std::map<std::string, ds::tensor_spec> m;
  for (auto const& t : layout) EXPECT_TRUE(m.emplace(t.name, t).second) << "twice: " << t.name;
  return m;
}

void expect_tensor(std::map<std::string, ds::tensor_spec> const& m, std::string const& name,
                   dtype type, dims shape) {
  auto const it = m.find(name);
  ASSERT_NE(it, m.end()) << "missing " << name;
  EXPECT_EQ(it->second.type, type) << name;
  EXPECT_EQ(it->second.shape, shape) << name;
}

TEST(CheckpointLayout, DeepSeekR1) {
  auto const c = io::load_model_config(test::config_fixture("deepseek_r1.json"));
  auto const layout = ds::checkpoint_layout(c);
  auto const m = by_name(layout);
  // Per layer: 3 norms + q_a_layernorm + kv_a_layernorm, and 5 FP8 projections with scales (14);
  // dense MLP: 3 FP8 projections with scales (6); MoE: gate, bias, 256 experts and the shared
  // expert, 3 projections with scales each (2 + 257 * 6). Plus embedding, final norm, lm_head.
  std::size_t const expected = 1 + 61 * 14 + 3 * 6 + 58 * (2 + 257 * 6) + 2;
  EXPECT_EQ(layout.size(), expected);

  auto const fp8 = dtype::fp8_e4m3;
  expect_tensor(m, "model.embed_tokens.weight", dtype::bf16, {129280, 7168});
  expect_tensor(m, "model.norm.weight", dtype::bf16, {7168});
  expect_tensor(m, "lm_head.weight", dtype::bf16, {129280, 7168});
  std::string const a = "model.layers.0.self_attn.";
  expect_tensor(m, "model.layers.0.input_layernorm.weight", dtype::bf16, {7168});
  expect_tensor(m, a + "q_a_proj.weight", fp8, {1536, 7168});
  expect_tensor(m, a + "q_a_proj.weight_scale_inv", dtype::f32, {12, 56});
  expect_tensor(m, a + "q_a_layernorm.weight", dtype::bf16, {1536});
  expect_tensor(m, a + "q_b_proj.weight", fp8, {128 * 192, 1536});
  expect_tensor(m, a + "q_b_proj.weight_scale_inv", dtype::f32, {192, 12});
  // 512 + 64 = 576 rows: 4.5 blocks, so the scales round up to 5.
  expect_tensor(m, a + "kv_a_proj_with_mqa.weight", fp8, {576, 7168});
  expect_tensor(m, a + "kv_a_proj_with_mqa.weight_scale_inv", dtype::f32, {5, 56});
  expect_tensor(m, a + "kv_a_layernorm.weight", dtype::bf16, {512});
  expect_tensor(m, a + "kv_b_proj.weight", fp8, {128 * 256, 512});
  expect_tensor(m, a + "kv_b_proj.weight_scale_inv", dtype::f32, {256, 4});
  expect_tensor(m, a + "o_proj.weight", fp8, {7168, 128 * 128});
  expect_tensor(m, a + "o_proj.weight_scale_inv", dtype::f32, {56, 128});
  expect_tensor(m, "model.layers.0.post_attention_layernorm.weight", dtype::bf16, {7168});
  expect_tensor(m, "model.layers.2.mlp.gate_proj.weight", fp8, {18432, 7168});
  expect_tensor(m, "model.layers.2.mlp.up_proj.weight_scale_inv", dtype::f32, {144, 56});
  expect_tensor(m, "model.layers.2.mlp.down_proj.weight", fp8, {7168, 18432});
  EXPECT_EQ(m.count("model.layers.2.mlp.gate.weight"), 0u) << "layer 2 is dense";
  EXPECT_EQ(m.count("model.layers.3.mlp.gate_proj.weight"), 0u) << "layer 3 is MoE";
  expect_tensor(m, "model.layers.3.mlp.gate.weight", dtype::bf16, {256, 7168});
  expect_tensor(m, "model.layers.3.mlp.gate.e_score_correction_bias", dtype::f32, {256});
  expect_tensor(m, "model.layers.3.mlp.experts.0.gate_proj.weight", fp8, {2048, 7168});
  expect_tensor(m, "model.layers.60.mlp.experts.255.down_proj.weight", fp8, {7168, 2048});
  expect_tensor(m, "model.layers.60.mlp.experts.255.down_proj.weight_scale_inv", dtype::f32,
                {56, 16});
  expect_tensor(m, "model.layers.60.mlp.shared_experts.up_proj.weight", fp8, {2048, 7168});
  EXPECT_EQ(m.count("model.layers.61.input_layernorm.weight"), 0u) << "MTP layer included";
  EXPECT_EQ(m.count("model.layers.3.mlp.experts.256.up_proj.weight"), 0u);

  // Every FP8 weight is followed by its scales; nothing else is FP8.
  for (std::size_t i = 0; i < layout.size(); ++i) {
    if (layout[i].type != fp8) continue;
    ASSERT_LT(i + 1, layout.size());
    EXPECT_EQ(layout[i].role, tensor_role::linear) << layout[i].name;
    EXPECT_EQ(layout[i + 1].name, layout[i].name + "_scale_inv");
    EXPECT_EQ(layout[i + 1].role, tensor_role::block_scale);
  }
  // 671.03B: the published 671B of the main model (685B with the 14B MTP module).
  EXPECT_EQ(ds::parameter_count(layout), 671'026'419'200);
}

TEST(CheckpointLayout, DeepSeekV2Lite) {
  auto const c = io::load_model_config(test::config_fixture("deepseek_v2_lite.json"));
  auto const layout = ds::checkpoint_layout(c);
  auto const m = by_name(layout);
  // Per layer: 3 norms (input, kv_a, post-attention) and 4 projections (q_proj, kv_a, kv_b, o);
  // one dense layer; MoE: gate (no bias: greedy routing), 64 experts and the shared expert.
  std::size_t const expected = 1 + 27 * 7 + 1 * 3 + 26 * (1 + 65 * 3) + 2;
  EXPECT_EQ(layout.size(), expected);
  for (auto const& t : layout) {
    EXPECT_EQ(t.type, dtype::bf16) << t.name;  // no quantization_config
    EXPECT_EQ(t.name.find("q_a_proj"), std::string::npos) << t.name;
    EXPECT_EQ(t.name.find("e_score_correction_bias"), std::string::npos) << t.name;
  }
  expect_tensor(m, "model.embed_tokens.weight", dtype::bf16, {102400, 2048});
  expect_tensor(m, "model.layers.0.self_attn.q_proj.weight", dtype::bf16, {16 * 192, 2048});
  expect_tensor(m, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", dtype::bf16, {576, 2048});
  expect_tensor(m, "model.layers.0.self_attn.kv_b_proj.weight", dtype::bf16, {16 * 256, 512});
  expect_tensor(m, "model.layers.0.self_attn.o_proj.weight", dtype::bf16, {2048, 16 * 128});
  expect_tensor(m, "model.layers.0.mlp.down_proj.weight", dtype::bf16, {2048, 10944});
  expect_tensor(m, "model.layers.1.mlp.gate.weight", dtype::bf16, {64, 2048});
  expect_tensor(m, "model.layers.26.mlp.experts.63.gate_proj.weight", dtype::bf16, {1408, 2048});
  // Two shared experts: one MLP of twice the width.
  expect_tensor(m, "model.layers.1.mlp.shared_experts.gate_proj.weight", dtype::bf16, {2816, 2048});
  expect_tensor(m, "model.layers.1.mlp.shared_experts.down_proj.weight", dtype::bf16, {2048, 2816});
  expect_tensor(m, "lm_head.weight", dtype::bf16, {102400, 2048});
  // 15.71B: the published 15.7B.
  EXPECT_EQ(ds::parameter_count(layout), 15'706'484'224);
  EXPECT_EQ(ds::checkpoint_bytes(layout), 2 * 15'706'484'224ull);
}

TEST(CheckpointLayout, TiedEmbeddingsAndNoSharedExperts) {
  auto const c = io::parse_model_config(R"({"model_type": "deepseek_v3", "hidden_size": 256,
      "num_hidden_layers": 2, "first_k_dense_replace": 0, "n_shared_experts": 0,
      "tie_word_embeddings": true, "n_routed_experts": 8, "n_group": 2, "topk_group": 1,
      "num_experts_per_tok": 2, "vocab_size": 300})");
  auto const m = by_name(ds::checkpoint_layout(c));
  EXPECT_EQ(m.count("lm_head.weight"), 0u);
  EXPECT_EQ(m.count("model.layers.0.mlp.shared_experts.gate_proj.weight"), 0u);
  expect_tensor(m, "model.layers.1.mlp.experts.7.up_proj.weight", dtype::bf16, {2048, 256});
}

TEST(CheckpointLayout, TinyFixtureRoundsPartialBlocksUp) {
  auto const c = io::load_model_config(test::config_fixture("tiny_deepseek_v3.json"));
  auto const m = by_name(ds::checkpoint_layout(c));
  // q_lora_rank 192 and moe_intermediate_size 192: 1.5 blocks round up to 2.
  expect_tensor(m, "model.layers.0.self_attn.q_a_proj.weight_scale_inv", dtype::f32, {2, 2});
  expect_tensor(m, "model.layers.0.self_attn.q_b_proj.weight_scale_inv", dtype::f32, {6, 2});
  expect_tensor(m, "model.layers.1.mlp.experts.15.down_proj.weight_scale_inv", dtype::f32, {2, 2});
  expect_tensor(m, "model.layers.1.mlp.experts.15.down_proj.weight", dtype::fp8_e4m3, {256, 192});
  expect_tensor(m, "model.layers.2.mlp.gate.e_score_correction_bias", dtype::f32, {16});
  expect_tensor(m, "model.embed_tokens.weight", dtype::bf16, {1000, 256});
}

}  // namespace
}  // namespace lightcore
