// config.json parsing: the published DeepSeek-R1, V3 and V2-Lite configs field by field, the
// transformers defaults of absent fields, is_moe_layer, and an error naming the field, the value
// and what is allowed for every kind of bad input.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "lightcore/io/hf_config.hpp"

namespace lightcore {
namespace {

using io::json;
using io::model_config;
using io::model_type;
using io::scoring_func;
using io::topk_method;

// The fields R1 and V3 share: their config.json files differ only in bookkeeping keys.
void expect_v3_architecture(model_config const& c) {
  EXPECT_EQ(c.type, model_type::deepseek_v3);
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.num_key_value_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.topk, topk_method::noaux_tc);
  EXPECT_EQ(c.scoring, scoring_func::sigmoid);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_EQ(c.rope_theta, 10000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->factor, 40.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_scaling->beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling->beta_slow, 1.0);
  EXPECT_EQ(c.rope_scaling->mscale, 1.0);
  EXPECT_EQ(c.rope_scaling->mscale_all_dim, 1.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{1});
  EXPECT_EQ(c.torch_dtype, dtype::bf16);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->block_n, 128);
  EXPECT_EQ(c.quantization->block_k, 128);
}

TEST(HfConfig, DeepSeekR1) {
  expect_v3_architecture(io::load_model_config(test::config_fixture("deepseek_r1.json")));
}

TEST(HfConfig, DeepSeekV3) {
  expect_v3_architecture(io::load_model_config(test::config_fixture("deepseek_v3.json")));
}

TEST(HfConfig, DeepSeekV2Lite) {
  auto const c = io::load_model_config(test::config_fixture("deepseek_v2_lite.json"));
  EXPECT_EQ(c.type, model_type::deepseek_v2);
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 10944);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_FALSE(c.q_lora_rank.has_value());  // null: q_proj, no query compression
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.n_routed_experts, 64);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.topk, topk_method::greedy);
  EXPECT_EQ(c.scoring, scoring_func::softmax);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_EQ(c.rope_theta, 10000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->factor, 40.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_scaling->beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling->beta_slow, 1.0);
  EXPECT_EQ(c.rope_scaling->mscale, 0.707);
  EXPECT_EQ(c.rope_scaling->mscale_all_dim, 0.707);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 100000);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{100001});
  EXPECT_EQ(c.torch_dtype, dtype::bf16);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_FALSE(c.quantization.has_value());
}

TEST(HfConfig, TinyFixture) {
  auto const c = io::load_model_config(test::config_fixture("tiny_deepseek_v3.json"));
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.q_lora_rank, 192);
  EXPECT_TRUE(c.quantization.has_value());
}

TEST(HfConfig, AbsentFieldsTakeTransformersDefaults) {
  // DeepseekV3Config's defaults are DeepSeek-V3's sizes; the fields transformers lacks take
  // DeepSeek's own defaults, the MTP count transformers' 0.
  auto const v3 = io::parse_model_config(R"({"model_type": "deepseek_v3"})");
  EXPECT_EQ(v3.vocab_size, 129280);
  EXPECT_EQ(v3.hidden_size, 7168);
  EXPECT_EQ(v3.num_hidden_layers, 61);
  EXPECT_EQ(v3.q_lora_rank, 1536);
  EXPECT_EQ(v3.max_position_embeddings, 4096);
  EXPECT_EQ(v3.topk, topk_method::noaux_tc);
  EXPECT_EQ(v3.scoring, scoring_func::sigmoid);
  EXPECT_EQ(v3.n_group, 8);
  EXPECT_EQ(v3.topk_group, 4);
  EXPECT_FALSE(v3.rope_scaling.has_value());
  EXPECT_FALSE(v3.quantization.has_value());
  EXPECT_EQ(v3.num_nextn_predict_layers, 0);
  EXPECT_EQ(v3.bos_token_id, 0);
  EXPECT_EQ(v3.eos_token_ids, std::vector<std::int64_t>{1});

  // DeepseekV2Config: Llama-like sizes; num_key_value_heads follows the heads; n_group and
  // topk_group null mean one group.
  auto const v2 = io::parse_model_config(
      R"({"model_type": "deepseek_v2", "num_experts_per_tok": 6, "num_attention_heads": 16})");
  EXPECT_EQ(v2.vocab_size, 32000);
  EXPECT_EQ(v2.hidden_size, 4096);
  EXPECT_EQ(v2.intermediate_size, 11008);
  EXPECT_EQ(v2.moe_intermediate_size, 1407);
  EXPECT_EQ(v2.num_hidden_layers, 32);
  EXPECT_EQ(v2.num_key_value_heads, 16);
  EXPECT_EQ(v2.n_routed_experts, 64);
  EXPECT_EQ(v2.n_shared_experts, 2);
  EXPECT_EQ(v2.n_group, 1);
  EXPECT_EQ(v2.topk_group, 1);
  EXPECT_EQ(v2.topk, topk_method::greedy);
  EXPECT_EQ(v2.scoring, scoring_func::softmax);
  EXPECT_FALSE(v2.norm_topk_prob);
  EXPECT_EQ(v2.routed_scaling_factor, 1.0);
  EXPECT_EQ(v2.first_k_dense_replace, 0);
  EXPECT_EQ(v2.max_position_embeddings, 2048);
  EXPECT_EQ(v2.bos_token_id, 1);
  EXPECT_EQ(v2.eos_token_ids, std::vector<std::int64_t>{2});
}

TEST(HfConfig, AlternativeSpellings) {
  auto const c = io::parse_model_config(R"({"model_type": "deepseek_v3", "dtype": "float16",
      "eos_token_id": [1, 7], "bos_token_id": null, "n_group": null, "topk_group": null,
      "num_experts_per_tok": 8,
      "rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  EXPECT_EQ(c.torch_dtype, dtype::f16);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{1, 7}));
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->factor, 4.0);
  // DeepSeek's YaRN defaults for the absent keys.
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_scaling->beta_fast, 32.0);
  EXPECT_EQ(c.rope_scaling->beta_slow, 1.0);
  EXPECT_EQ(c.rope_scaling->mscale, 1.0);
  EXPECT_EQ(c.rope_scaling->mscale_all_dim, 0.0);
}

TEST(HfConfig, MoeLayers) {
  auto const r1 = io::load_model_config(test::config_fixture("deepseek_r1.json"));
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_FALSE(io::is_moe_layer(r1, i)) << i;
  for (std::int64_t i = 3; i < 62; ++i) EXPECT_TRUE(io::is_moe_layer(r1, i)) << i;  // 61: MTP
  EXPECT_THROW((void)io::is_moe_layer(r1, 62), error);
  EXPECT_THROW((void)io::is_moe_layer(r1, -1), error);

  auto c = io::parse_model_config(R"({"model_type": "deepseek_v3", "num_hidden_layers": 8,
      "first_k_dense_replace": 1, "moe_layer_freq": 2})");
  std::vector<bool> moe;
  for (std::int64_t i = 0; i < 8; ++i) moe.push_back(io::is_moe_layer(c, i));
  EXPECT_EQ(moe, (std::vector<bool>{false, false, true, false, true, false, true, false}));
}

// The tiny fixture with one field replaced (or removed, for a null `value` and remove = true).
std::string tiny_with(std::string const& key, json const& value, bool remove = false) {
  json j = json::parse(test::read_text(test::config_fixture("tiny_deepseek_v3.json")));
  if (remove) {
    j.erase(key);
  } else if (key.find('.') != std::string::npos) {
    auto const dot = key.find('.');
    j[key.substr(0, dot)][key.substr(dot + 1)] = value;
  } else {
    j[key] = value;
  }
  return j.dump();
}

struct bad_case {
  char const* what;
  std::string text;
  std::vector<std::string> says;  // substrings the message must contain
};

TEST(HfConfig, ErrorsNameTheFieldTheValueAndWhatIsAllowed) {
  std::vector<bad_case> const cases = {
      {"not JSON", "{\"model_type\": ", {"not valid JSON"}},
      {"not an object", "[1, 2]", {"expected a JSON object"}},
      {"missing model_type", tiny_with("model_type", nullptr, true), {"model_type", "missing"}},
      {"unknown model_type",
       tiny_with("model_type", "llama"),
       {"model_type", "llama", "deepseek_v3", "deepseek_v2"}},
      {"string for an integer",
       tiny_with("hidden_size", "256"),
       {"hidden_size", "must be an integer", "\"256\""}},
      {"float for an integer",
       tiny_with("hidden_size", 256.0),
       {"hidden_size", "integer", "256.0"}},
      {"null for a non-nullable field", tiny_with("vocab_size", nullptr), {"vocab_size", "null"}},
      {"zero size", tiny_with("num_hidden_layers", 0), {"num_hidden_layers", "= 0", "positive"}},
      {"negative shared experts",
       tiny_with("n_shared_experts", -1),
       {"n_shared_experts", "-1", ">= 0"}},
      {"string for a number", tiny_with("rope_theta", "1e4"), {"rope_theta", "must be a number"}},
      {"integer for a boolean", tiny_with("norm_topk_prob", 1), {"norm_topk_prob", "boolean"}},
      {"topk_group > n_group", tiny_with("topk_group", 5), {"topk_group", "5", "n_group = 4"}},
      {"experts not divisible by groups",
       tiny_with("n_group", 3),
       {"n_routed_experts", "16", "n_group = 3"}},
      {"too many experts per token",
       tiny_with("num_experts_per_tok", 17),
       {"num_experts_per_tok", "17", "n_routed_experts = 16"}},
      {"more experts than the chosen groups hold",
       tiny_with("num_experts_per_tok", 9),
       {"num_experts_per_tok", "9", "topk_group = 2"}},
      {"unknown topk_method",
       tiny_with("topk_method", "random"),
       {"topk_method", "random", "noaux_tc", "greedy"}},
      {"unknown scoring_func",
       tiny_with("scoring_func", "tanh"),
       {"scoring_func", "tanh", "sigmoid"}},
      {"noaux_tc with softmax",
       tiny_with("scoring_func", "softmax"),
       {"noaux_tc", "softmax", "allowed"}},
      {"first_k_dense_replace beyond the layers",
       tiny_with("first_k_dense_replace", 4),
       {"first_k_dense_replace", "4", "num_hidden_layers = 3"}},
      {"odd rope dim", tiny_with("qk_rope_head_dim", 63), {"qk_rope_head_dim", "63", "even"}},
      {"unsupported rope_scaling type",
       tiny_with("rope_scaling.type", "linear"),
       {"rope_scaling", "type", "linear", "yarn"}},
      {"rope_scaling without factor",
       tiny_with("rope_scaling", json{{"type", "yarn"}}),
       {"rope_scaling", "factor", "missing"}},
      {"rope_scaling without type",
       tiny_with("rope_scaling", json{{"factor", 4}}),
       {"rope_scaling", "`type`", "missing"}},
      {"rope_scaling not an object", tiny_with("rope_scaling", "yarn"), {"rope_scaling", "object"}},
      {"unsupported quantisation method",
       tiny_with("quantization_config.quant_method", "awq"),
       {"quant_method", "awq", "fp8"}},
      {"unsupported fp8 format",
       tiny_with("quantization_config.fmt", "e5m2"),
       {"fmt", "e5m2", "e4m3"}},
      {"static activations",
       tiny_with("quantization_config.activation_scheme", "static"),
       {"activation_scheme", "static", "dynamic"}},
      {"block size other than 128x128",
       tiny_with("quantization_config.weight_block_size", json::array({64, 128})),
       {"weight_block_size", "[64, 128]", "[128, 128]"}},
      {"block size not a pair",
       tiny_with("quantization_config.weight_block_size", 128),
       {"weight_block_size", "two integers"}},
      {"unsupported torch_dtype",
       tiny_with("torch_dtype", "float64"),
       {"torch_dtype", "float64", "bfloat16"}},
      {"bad eos", tiny_with("eos_token_id", "</s>"), {"eos_token_id", "integer"}},
      {"other activation", tiny_with("hidden_act", "gelu"), {"hidden_act", "gelu", "silu"}},
      {"attention bias", tiny_with("attention_bias", true), {"attention_bias", "false"}},
      {"integer out of range",
       "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 18446744073709551615}",
       {"vocab_size", "does not fit"}},
      {"V2 without num_experts_per_tok",
       R"({"model_type": "deepseek_v2"})",
       {"num_experts_per_tok", "deepseek_v2", "no default"}},
  };
  for (auto const& c : cases) {
    try {
      (void)io::parse_model_config(c.text, "cfg.json");
      ADD_FAILURE() << c.what << ": parsed without an error";
    } catch (error const& e) {
      std::string const msg = e.message();
      for (auto const& s : c.says)
        EXPECT_NE(msg.find(s), std::string::npos)
            << c.what << ": message lacks \"" << s << "\": " << msg;
      EXPECT_EQ(msg.rfind("cfg.json", 0), 0u)
          << c.what << ": message does not name the file: " << msg;
    }
  }
}

TEST(HfConfig, MissingFileIsAnError) {
  EXPECT_THROW((void)io::load_model_config(test::data_dir() / "configs" / "absent.json"), error);
}

}  // namespace
}  // namespace lightcore
