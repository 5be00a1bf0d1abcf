// A Hugging Face config.json for DeepSeek-V3/R1 (model_type "deepseek_v3") and DeepSeek-V2 /
// V2-Lite ("deepseek_v2") as a plain model_config, checked field by field: a wrong type, a
// missing required field, an unsupported choice or values that contradict each other is a
// lightcore::error naming the field, the value and what is allowed.
//
// Absent fields take the defaults of transformers' DeepseekV3Config / DeepseekV2Config (written
// "default V3 / V2" below). Fields those classes do not have (topk_method, scoring_func,
// moe_layer_freq, num_nextn_predict_layers, the yarn parameters) take the defaults of DeepSeek's
// own configuration_deepseek.py / modeling_deepseek.py, or what transformers' modeling hard-codes;
// each comment says which. Keys lightcore does not use (architectures, auto_map, use_cache, ...)
// are ignored.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/io/json_fields.hpp"

namespace lightcore::io {

// config.json's model_type.
enum class model_type : std::uint8_t { deepseek_v2, deepseek_v3 };

// How the router picks a token's experts.
enum class topk_method : std::uint8_t {
  greedy,                // top-k over all experts (V2-Lite)
  group_limited_greedy,  // top-k within the topk_group groups of highest max score (V2)
  noaux_tc,              // groups ranked by the sum of their top-2 biased scores (V3/R1)
};

// How router logits become scores.
enum class scoring_func : std::uint8_t { softmax, sigmoid };

inline std::string_view name_of(model_type t) noexcept {
  return t == model_type::deepseek_v2 ? "deepseek_v2" : "deepseek_v3";
}
inline std::string_view name_of(topk_method t) noexcept {
  switch (t) {
    case topk_method::greedy: return "greedy";
    case topk_method::group_limited_greedy: return "group_limited_greedy";
    case topk_method::noaux_tc: return "noaux_tc";
  }
  return "?";
}
inline std::string_view name_of(scoring_func s) noexcept {
  return s == scoring_func::softmax ? "softmax" : "sigmoid";
}
inline std::ostream& operator<<(std::ostream& os, model_type t) { return os << name_of(t); }
inline std::ostream& operator<<(std::ostream& os, topk_method t) { return os << name_of(t); }
inline std::ostream& operator<<(std::ostream& os, scoring_func s) { return os << name_of(s); }

// rope_scaling {"type": "yarn", ...}: YaRN context extension of the rope part of q and k.
// Absent keys take the defaults of DeepSeek's DeepseekV3YarnRotaryEmbedding (modeling_deepseek.py).
struct yarn_scaling {
  double factor = 1.0;  // context extension factor (V3: 40, 4096 -> 163840 positions); required
  std::int64_t original_max_position_embeddings = 4096;  // positions of pre-training; default 4096
  double beta_fast = 32.0;      // rotations per context at which correction starts; default 32
  double beta_slow = 1.0;       // rotations per context at which correction ends; default 1
  double mscale = 1.0;          // attention-scale factor coefficient; default 1
  double mscale_all_dim = 0.0;  // its counterpart for all dims (softmax scale); default 0
};

// quantization_config {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
// "weight_block_size": [128, 128]}: DeepSeek's block-scaled FP8 weights. Nothing else is accepted:
// lightcore's FP8 GEMMs take exactly 128x128 weight blocks and per-token dynamic activations.
struct fp8_block_quantization {
  std::int64_t block_n = 128;  // output rows per weight scale (weight_block_size[0])
  std::int64_t block_k = 128;  // input columns per weight scale (weight_block_size[1])
};

// A DeepSeek-V2/V3 configuration. Sizes are element counts; "default V3 / V2" as above.
struct model_config {
  model_type type = model_type::deepseek_v3;  // model_type; required
  std::int64_t vocab_size = 129280;           // tokens; default 129280 / 32000
  std::int64_t hidden_size = 7168;            // model width; default 7168 / 4096
  std::int64_t intermediate_size = 18432;     // dense MLP width; default 18432 / 11008
  std::int64_t moe_intermediate_size = 2048;  // width of one expert; default 2048 / 1407
  std::int64_t num_hidden_layers = 61;        // decoder layers, MTP excluded; default 61 / 32
  std::int64_t num_attention_heads = 128;     // default 128 / 32
  // Unused by MLA (every head reads the shared latent); kept as given. Default 128 / heads.
  std::int64_t num_key_value_heads = 128;
  // Rank of the query compression; nullopt (JSON null, V2-Lite): q_proj instead of
  // q_a_proj/q_b_proj. Default 1536 / 1536.
  std::optional<std::int64_t> q_lora_rank = 1536;
  std::int64_t kv_lora_rank = 512;      // latent KV width; default 512 / 512
  std::int64_t qk_nope_head_dim = 128;  // per-head q/k width without rope; default 128 / 128
  std::int64_t qk_rope_head_dim = 64;   // per-head q/k width with rope, even; default 64 / 64
  std::int64_t v_head_dim = 128;        // per-head value width; default 128 / 128
  std::int64_t n_routed_experts = 256;  // default 256 / 64
  std::int64_t n_shared_experts = 1;    // experts every token uses; default 1 / 2
  // Routed experts per token. Default 8 / none: required for deepseek_v2.
  std::int64_t num_experts_per_tok = 8;
  // Expert groups; n_routed_experts % n_group == 0. Default 8 / null, and null means 1.
  std::int64_t n_group = 8;
  // Groups a token's experts may come from; 1 <= topk_group <= n_group. Default 4 / null (1).
  std::int64_t topk_group = 4;
  // Default noaux_tc (what transformers' DeepseekV3 hard-codes) / greedy (DeepseekV2Config).
  topk_method topk = topk_method::noaux_tc;
  // sigmoid with noaux_tc, softmax with the greedy methods (the only pairs DeepSeek's reference
  // code implements). Default sigmoid / softmax (transformers hard-codes both).
  scoring_func scoring = scoring_func::sigmoid;
  bool norm_topk_prob = true;              // renormalise the top-k weights; default true / false
  double routed_scaling_factor = 2.5;      // multiplies the routed output; default 2.5 / 1.0
  std::int64_t first_k_dense_replace = 3;  // leading layers with a dense MLP; default 3 / 0
  // Every moe_layer_freq-th layer from first_k_dense_replace on is MoE. Default 1 (DeepSeek's
  // config class; transformers has no such field and behaves as 1).
  std::int64_t moe_layer_freq = 1;
  std::int64_t max_position_embeddings = 4096;  // positions; default 4096 / 2048
  double rope_theta = 10000.0;                  // rope base; default 10000 / 10000
  std::optional<yarn_scaling> rope_scaling;     // nullopt: plain rope; default null / null
  double rms_norm_eps = 1e-6;                   // default 1e-6 / 1e-6
  bool tie_word_embeddings = false;  // lm_head shares embed_tokens; default false / false
  std::optional<std::int64_t> bos_token_id = 0;   // default 0 / 1; null allowed
  std::vector<std::int64_t> eos_token_ids = {1};  // eos_token_id, an integer or a list; 1 / 2
  // torch_dtype (or dtype): "bfloat16", "float16" or "float32"; the dtype of the unquantised
  // weights. Absent: bf16, as DeepSeek ships (transformers leaves it unset).
  dtype torch_dtype = dtype::bf16;
  // Multi-token-prediction layers stored after the decoder layers (V3: 1). Default 0: transformers
  // knows no MTP layers (DeepSeek's own V3 config class defaults to 1).
  std::int64_t num_nextn_predict_layers = 0;
  std::optional<fp8_block_quantization> quantization;  // quantization_config; absent: none

  // q and k width per head (nope + rope): 192 for V3 and V2.
  std::int64_t qk_head_dim() const noexcept { return qk_nope_head_dim + qk_rope_head_dim; }
};

// Whether decoder layer `layer` has a routed MoE MLP (else a dense MLP), as DeepSeek's
// modeling_deepseek.py decides: layer >= first_k_dense_replace and layer % moe_layer_freq == 0.
// MTP layers (num_hidden_layers <= layer < num_hidden_layers + num_nextn_predict_layers) follow
// the same rule.
inline bool is_moe_layer(model_config const& c, std::int64_t layer) {
  std::int64_t const layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  LC_CHECK(0 <= layer && layer < layers, "is_moe_layer: layer " << layer << " is out of range; "
                                                                << "allowed 0 .. " << layers - 1);
  return c.n_routed_experts > 0 && layer >= c.first_k_dense_replace &&
         layer % c.moe_layer_freq == 0;
}

// The defaults of transformers' DeepseekV3Config (deepseek_v3) or DeepseekV2Config
// (deepseek_v2), as listed in model_config.
inline model_config default_model_config(model_type type) {
  model_config c;
  c.type = type;
  if (type == model_type::deepseek_v3) return c;
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.moe_intermediate_size = 1407;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.n_routed_experts = 64;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 0;  // no default: required
  c.n_group = 1;
  c.topk_group = 1;
  c.topk = topk_method::greedy;
  c.scoring = scoring_func::softmax;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0;
  c.first_k_dense_replace = 0;
  c.max_position_embeddings = 2048;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

namespace detail {

inline void check_positive(json_fields const& f, std::string_view key, std::int64_t v) {
  LC_CHECK(v > 0, f.field(key) << " = " << v << " must be positive");
}
inline void check_non_negative(json_fields const& f, std::string_view key, std::int64_t v) {
  LC_CHECK(v >= 0, f.field(key) << " = " << v << " must be >= 0");
}
inline void check_positive(json_fields const& f, std::string_view key, double v) {
  LC_CHECK(v > 0, f.field(key) << " = " << v << " must be positive");
}

inline yarn_scaling parse_rope_scaling(json const& v, std::string const& where) {
  json_fields const f(v, where + ": rope_scaling");
  // DeepSeek writes "type"; newer transformers write "rope_type".
  std::string const key = !f.has("type") && f.has("rope_type") ? "rope_type" : "type";
  std::string const type = f.string(key);
  LC_CHECK(type == "yarn", f.field(key) << " = \"" << type << "\" is not supported; allowed: "
                                        << "\"yarn\" (or rope_scaling null)");
  yarn_scaling y;
  y.factor = f.number("factor");
  LC_CHECK(y.factor >= 1.0, f.field("factor")
                                << " = " << y.factor << " must be >= 1 (YaRN extends the context)");
  y.original_max_position_embeddings =
      f.integer("original_max_position_embeddings", y.original_max_position_embeddings);
  check_positive(f, "original_max_position_embeddings", y.original_max_position_embeddings);
  y.beta_fast = f.number("beta_fast", y.beta_fast);
  y.beta_slow = f.number("beta_slow", y.beta_slow);
  LC_CHECK(y.beta_fast > y.beta_slow && y.beta_slow > 0,
           f.where() << ": beta_fast = " << y.beta_fast << ", beta_slow = " << y.beta_slow
                     << "; need beta_fast > beta_slow > 0");
  y.mscale = f.number("mscale", y.mscale);
  y.mscale_all_dim = f.number("mscale_all_dim", y.mscale_all_dim);
  LC_CHECK(y.mscale >= 0 && y.mscale_all_dim >= 0,
           f.where() << ": mscale = " << y.mscale << ", mscale_all_dim = " << y.mscale_all_dim
                     << "; both must be >= 0");
  return y;
}

inline fp8_block_quantization parse_quantization(json const& v, std::string const& where) {
  json_fields const f(v, where + ": quantization_config");
  std::string const method = f.string("quant_method");
  LC_CHECK(method == "fp8", f.field("quant_method") << " = \"" << method << "\" is not supported; "
                                                    << "allowed: \"fp8\" (block-scaled e4m3)");
  std::string const fmt = f.string("fmt", "e4m3");
  LC_CHECK(fmt == "e4m3", f.field("fmt")
                              << " = \"" << fmt << "\" is not supported; allowed: \"e4m3\"");
  std::string const scheme = f.string("activation_scheme", "dynamic");
  LC_CHECK(scheme == "dynamic", f.field("activation_scheme")
                                    << " = \"" << scheme
                                    << "\" is not supported; allowed: \"dynamic\" (per-token "
                                       "scales computed at run time)");
  fp8_block_quantization q;
  if (json const* b = f.find("weight_block_size")) {
    bool const two_ints = b->is_array() && b->size() == 2 && (*b)[0].is_number_integer() &&
                          (*b)[1].is_number_integer();
    if (!two_ints) f.type_error("weight_block_size", *b, "an array of two integers");
    q.block_n = json_to_int64((*b)[0]).value_or(0);
    q.block_k = json_to_int64((*b)[1]).value_or(0);
  }
  LC_CHECK(q.block_n == 128 && q.block_k == 128, f.field("weight_block_size")
                                                     << " = [" << q.block_n << ", " << q.block_k
                                                     << "] is not supported; allowed: [128, 128]");
  return q;
}

inline std::vector<std::int64_t> parse_eos(json_fields const& f, std::vector<std::int64_t> dflt) {
  json const* v = f.find("eos_token_id");
  if (v == nullptr) return dflt;
  if (v->is_null()) return {};
  if (v->is_number_integer()) return {f.integer("eos_token_id")};
  if (!v->is_array()) f.type_error("eos_token_id", *v, "an integer, a list of integers or null");
  std::vector<std::int64_t> ids;
  for (json const& e : *v) {
    auto const id = json_to_int64(e);
    if (!id) f.type_error("eos_token_id", *v, "an integer, a list of integers or null");
    ids.push_back(*id);
  }
  return ids;
}

// The cross-field rules: each names both fields and what is allowed.
inline void check_consistency(model_config const& c, json_fields const& f) {
  LC_CHECK(c.qk_rope_head_dim % 2 == 0, f.field("qk_rope_head_dim")
                                            << " = " << c.qk_rope_head_dim
                                            << " must be even (rope rotates pairs)");
  LC_CHECK(c.first_k_dense_replace <= c.num_hidden_layers,
           f.field("first_k_dense_replace")
               << " = " << c.first_k_dense_replace << " exceeds num_hidden_layers = "
               << c.num_hidden_layers << "; allowed 0 .. " << c.num_hidden_layers);
  LC_CHECK(c.topk_group <= c.n_group,
           f.field("topk_group") << " = " << c.topk_group << " exceeds n_group = " << c.n_group
                                 << "; allowed 1 <= topk_group <= n_group");
  LC_CHECK(c.n_routed_experts % c.n_group == 0,
           f.field("n_routed_experts")
               << " = " << c.n_routed_experts << " is not a multiple of n_group = " << c.n_group
               << "; experts must split evenly into groups");
  LC_CHECK(c.num_experts_per_tok <= c.n_routed_experts,
           f.field("num_experts_per_tok") << " = " << c.num_experts_per_tok
                                          << " exceeds n_routed_experts = " << c.n_routed_experts
                                          << "; allowed 1 .. n_routed_experts");
  std::int64_t const per_group = c.n_routed_experts / c.n_group;
  if (c.topk != topk_method::greedy) {
    LC_CHECK(c.num_experts_per_tok <= c.topk_group * per_group,
             f.field("num_experts_per_tok")
                 << " = " << c.num_experts_per_tok << " exceeds the " << c.topk_group * per_group
                 << " experts of topk_group = " << c.topk_group << " groups of " << per_group
                 << " (n_routed_experts / n_group); topk_method " << c.topk
                 << " picks only from those");
  }
  if (c.topk == topk_method::noaux_tc) {
    LC_CHECK(per_group >= 2, f.where() << ": topk_method noaux_tc ranks groups by their top-2 "
                                       << "scores, so it needs at least 2 experts per group; got "
                                       << "n_routed_experts = " << c.n_routed_experts
                                       << ", n_group = " << c.n_group);
  }
  bool const pair_ok = (c.topk == topk_method::noaux_tc) == (c.scoring == scoring_func::sigmoid);
  LC_CHECK(pair_ok, f.where() << ": topk_method " << c.topk << " with scoring_func " << c.scoring
                              << " is not supported; allowed: noaux_tc with sigmoid, greedy or "
                                 "group_limited_greedy with softmax");
}

}  // namespace detail

// Parses config.json text; `where` names the file in messages.
inline model_config parse_model_config(std::string_view text,
                                       std::string const& where = "config.json") {
  json root;
  try {
    root = json::parse(text);
  } catch (json::exception const& e) {
    LC_THROW(where << ": not valid JSON (" << e.what() << ")");
  }
  json_fields const f(root, where);
  std::string const type = f.string("model_type");
  LC_CHECK(type == "deepseek_v3" || type == "deepseek_v2",
           f.field("model_type") << " = \"" << type << "\" is not supported; allowed: "
                                 << "\"deepseek_v3\" (V3, R1), \"deepseek_v2\" (V2, V2-Lite)");
  model_config c = default_model_config(type == "deepseek_v3" ? model_type::deepseek_v3
                                                              : model_type::deepseek_v2);
  bool const v2 = c.type == model_type::deepseek_v2;

  auto positive = [&](std::string_view key, std::int64_t& field) {
    field = f.integer(key, field);
    detail::check_positive(f, key, field);
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("moe_intermediate_size", c.moe_intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  // null or absent in DeepseekV2Config means "as many as the attention heads".
  c.num_key_value_heads = f.optional_integer("num_key_value_heads", std::nullopt)
                              .value_or(v2 ? c.num_attention_heads : c.num_key_value_heads);
  detail::check_positive(f, "num_key_value_heads", c.num_key_value_heads);
  c.q_lora_rank = f.optional_integer("q_lora_rank", c.q_lora_rank);
  if (c.q_lora_rank) detail::check_positive(f, "q_lora_rank", *c.q_lora_rank);
  positive("kv_lora_rank", c.kv_lora_rank);
  positive("qk_nope_head_dim", c.qk_nope_head_dim);
  positive("qk_rope_head_dim", c.qk_rope_head_dim);
  positive("v_head_dim", c.v_head_dim);
  positive("n_routed_experts", c.n_routed_experts);
  c.n_shared_experts = f.integer("n_shared_experts", c.n_shared_experts);
  detail::check_non_negative(f, "n_shared_experts", c.n_shared_experts);
  if (v2) {
    LC_CHECK(f.has("num_experts_per_tok"),
             f.field("num_experts_per_tok") << " is missing or null; deepseek_v2 has no default "
                                            << "for it: give the routed experts per token (>= 1)");
  }
  positive("num_experts_per_tok", c.num_experts_per_tok);
  c.n_group = f.optional_integer("n_group", c.n_group).value_or(1);
  detail::check_positive(f, "n_group", c.n_group);
  c.topk_group = f.optional_integer("topk_group", c.topk_group).value_or(1);
  detail::check_positive(f, "topk_group", c.topk_group);

  std::string const method = f.string("topk_method", std::string(name_of(c.topk)));
  if (method == "greedy") {
    c.topk = topk_method::greedy;
  } else if (method == "group_limited_greedy") {
    c.topk = topk_method::group_limited_greedy;
  } else if (method == "noaux_tc") {
    c.topk = topk_method::noaux_tc;
  } else {
    LC_THROW(f.field("topk_method") << " = \"" << method << "\" is not supported; allowed: "
                                    << "\"greedy\", \"group_limited_greedy\", \"noaux_tc\"");
  }
  std::string const scoring = f.string("scoring_func", std::string(name_of(c.scoring)));
  LC_CHECK(scoring == "softmax" || scoring == "sigmoid",
           f.field("scoring_func") << " = \"" << scoring << "\" is not supported; allowed: "
                                   << "\"softmax\", \"sigmoid\"");
  c.scoring = scoring == "softmax" ? scoring_func::softmax : scoring_func::sigmoid;
  c.norm_topk_prob = f.boolean("norm_topk_prob", c.norm_topk_prob);
  c.routed_scaling_factor = f.number("routed_scaling_factor", c.routed_scaling_factor);
  detail::check_positive(f, "routed_scaling_factor", c.routed_scaling_factor);
  c.first_k_dense_replace = f.integer("first_k_dense_replace", c.first_k_dense_replace);
  detail::check_non_negative(f, "first_k_dense_replace", c.first_k_dense_replace);
  positive("moe_layer_freq", c.moe_layer_freq);

  positive("max_position_embeddings", c.max_position_embeddings);
  c.rope_theta = f.number("rope_theta", c.rope_theta);
  detail::check_positive(f, "rope_theta", c.rope_theta);
  if (f.has("rope_scaling"))
    c.rope_scaling = detail::parse_rope_scaling(root["rope_scaling"], where);
  c.rms_norm_eps = f.number("rms_norm_eps", c.rms_norm_eps);
  detail::check_positive(f, "rms_norm_eps", c.rms_norm_eps);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", c.tie_word_embeddings);
  c.bos_token_id = f.optional_integer("bos_token_id", c.bos_token_id);
  c.eos_token_ids = detail::parse_eos(f, c.eos_token_ids);

  // transformers >= 4.56 writes "dtype"; DeepSeek's files say "torch_dtype".
  std::string const dtype_key = f.has("torch_dtype") ? "torch_dtype" : "dtype";
  if (f.has(dtype_key)) {
    std::string const name = f.string(dtype_key);
    if (name == "bfloat16") {
      c.torch_dtype = dtype::bf16;
    } else if (name == "float16") {
      c.torch_dtype = dtype::f16;
    } else if (name == "float32") {
      c.torch_dtype = dtype::f32;
    } else {
      LC_THROW(f.field(dtype_key) << " = \"" << name << "\" is not supported; allowed: "
                                  << "\"bfloat16\", \"float16\", \"float32\"");
    }
  }
  c.num_nextn_predict_layers = f.integer("num_nextn_predict_layers", c.num_nextn_predict_layers);
  detail::check_non_negative(f, "num_nextn_predict_layers", c.num_nextn_predict_layers);
  if (f.has("quantization_config"))
    c.quantization = detail::parse_quantization(root["quantization_config"], where);

  // Choices the modeling code has but DeepSeek's models do not use, refused rather than ignored.
  std::string const act = f.string("hidden_act", "silu");
  LC_CHECK(act == "silu", f.field("hidden_act")
                              << " = \"" << act << "\" is not supported; allowed: \"silu\"");
  LC_CHECK(!f.boolean("attention_bias", false),
           f.field("attention_bias") << " = true is not supported; allowed: false (DeepSeek's "
                                     << "projections have no bias)");
  detail::check_consistency(c, f);
  return c;
}

// Reads and parses a config.json file.
inline model_config load_model_config(std::filesystem::path const& path) {
  std::ifstream in(path, std::ios::binary);
  LC_CHECK(in.good(), "cannot open model config " << path << " for reading");
  std::ostringstream text;
  text << in.rdbuf();
  LC_CHECK(!in.bad(), "error reading model config " << path);
  return parse_model_config(text.str(), path.string());
}

}  // namespace lightcore::io
