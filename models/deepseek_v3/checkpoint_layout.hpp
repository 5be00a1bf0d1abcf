// The tensors of a Hugging Face DeepSeek-V3/R1 or V2/V2-Lite checkpoint, derived from its
// config: exact names, dtypes and shapes, in the order of the modules (embedding, layer by layer,
// final norm, lm_head). A loader checks a checkpoint against it; the random-checkpoint tool writes
// it. MTP layers (index >= num_hidden_layers) are not part of it.
//
// Shapes follow transformers' modeling_deepseek_v3.py / modeling_deepseek_v2.py (and DeepSeek's
// modeling_deepseek.py, which agrees): an nn.Linear(in, out) stores weight [out, in]. Dtypes
// follow DeepSeek's FP8 release when the config has quantization_config: every linear layer of
// attention and MLP (dense, shared and routed experts) is F8_E4M3 with an F32
// "<name>.weight_scale_inv" [ceil(out / 128), ceil(in / 128)] beside it, the dequantisation
// multiplier of each 128x128 block; norms, the router, the embedding and lm_head stay in
// torch_dtype (bf16), and the router's e_score_correction_bias is F32 (a float32 buffer in the
// modeling code). Without quantization_config every weight is torch_dtype.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/hf_config.hpp"

namespace lightcore::models::deepseek_v3 {

// What a tensor is; a loader and a random initialiser both switch on it.
enum class tensor_role : std::uint8_t {
  embedding,    // model.embed_tokens.weight
  norm,         // RMSNorm weights (ones at initialisation)
  linear,       // nn.Linear weight [out, in]
  block_scale,  // weight_scale_inv of the linear listed just before it
  router,       // mlp.gate.weight [n_routed_experts, hidden]
  router_bias,  // mlp.gate.e_score_correction_bias [n_routed_experts]
  lm_head,      // lm_head.weight [vocab, hidden]
};

struct tensor_spec {
  std::string name;
  dtype type = dtype::bf16;
  dims shape;
  tensor_role role = tensor_role::linear;
  std::int64_t layer = -1;  // decoder layer, -1 outside the layers

  std::int64_t numel() const noexcept { return shape.product(); }
  std::uint64_t nbytes() const noexcept { return std::uint64_t(numel()) * size_of(type); }
};

namespace detail {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

class layout_builder {
 public:
  explicit layout_builder(io::model_config const& c) : c_(c) {}

  void add(std::string name, dims shape, tensor_role role, std::int64_t layer,
           dtype type_override) {
    out_.push_back({std::move(name), type_override, shape, role, layer});
  }
  void add(std::string name, dims shape, tensor_role role, std::int64_t layer = -1) {
    add(std::move(name), shape, role, layer, c_.torch_dtype);
  }
  void norm(std::string name, std::int64_t width, std::int64_t layer) {
    add(std::move(name), {width}, tensor_role::norm, layer);
  }
  // nn.Linear(in, out, bias=False): weight [out, in], FP8 plus block scales when quantised.
  void linear(std::string const& prefix, std::int64_t out, std::int64_t in, std::int64_t layer) {
    if (!c_.quantization) {
      add(prefix + ".weight", {out, in}, tensor_role::linear, layer);
      return;
    }
    add(prefix + ".weight", {out, in}, tensor_role::linear, layer, dtype::fp8_e4m3);
    add(prefix + ".weight_scale_inv",
        {ceil_div(out, c_.quantization->block_n), ceil_div(in, c_.quantization->block_k)},
        tensor_role::block_scale, layer, dtype::f32);
  }
  // DeepseekV3MLP / DeepseekV2MLP: gate_proj and up_proj [width, hidden], down_proj [hidden,
  // width].
  void mlp(std::string const& prefix, std::int64_t width, std::int64_t layer) {
    linear(prefix + ".gate_proj", width, c_.hidden_size, layer);
    linear(prefix + ".up_proj", width, c_.hidden_size, layer);
    linear(prefix + ".down_proj", c_.hidden_size, width, layer);
  }

  std::vector<tensor_spec> take() { return std::move(out_); }

 private:
  io::model_config const& c_;
  std::vector<tensor_spec> out_;
};

}  // namespace detail

// Every tensor of the checkpoint of `c`, MTP layers excluded.
inline std::vector<tensor_spec> checkpoint_layout(io::model_config const& c) {
  detail::layout_builder b(c);
  std::int64_t const h = c.hidden_size;
  std::int64_t const heads = c.num_attention_heads;
  // nn.Embedding(vocab_size, hidden_size)
  b.add("model.embed_tokens.weight", {c.vocab_size, h}, tensor_role::embedding);
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    std::string const p = "model.layers." + std::to_string(i);
    b.norm(p + ".input_layernorm.weight", h, i);
    // DeepseekV3Attention (MLA).
    std::string const a = p + ".self_attn";
    if (c.q_lora_rank) {
      // q_a_proj: Linear(hidden, q_lora_rank); q_a_layernorm: RMSNorm(q_lora_rank);
      // q_b_proj: Linear(q_lora_rank, heads * qk_head_dim).
      b.linear(a + ".q_a_proj", *c.q_lora_rank, h, i);
      b.norm(a + ".q_a_layernorm.weight", *c.q_lora_rank, i);
      b.linear(a + ".q_b_proj", heads * c.qk_head_dim(), *c.q_lora_rank, i);
    } else {
      // q_lora_rank null (V2-Lite): q_proj: Linear(hidden, heads * qk_head_dim).
      b.linear(a + ".q_proj", heads * c.qk_head_dim(), h, i);
    }
    // kv_a_proj_with_mqa: Linear(hidden, kv_lora_rank + qk_rope_head_dim): the latent KV and the
    // shared rope key; kv_a_layernorm: RMSNorm(kv_lora_rank).
    b.linear(a + ".kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, h, i);
    b.norm(a + ".kv_a_layernorm.weight", c.kv_lora_rank, i);
    // kv_b_proj: Linear(kv_lora_rank, heads * (qk_nope_head_dim + v_head_dim)).
    b.linear(a + ".kv_b_proj", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, i);
    // o_proj: Linear(heads * v_head_dim, hidden).
    b.linear(a + ".o_proj", h, heads * c.v_head_dim, i);
    b.norm(p + ".post_attention_layernorm.weight", h, i);

    if (!io::is_moe_layer(c, i)) {
      b.mlp(p + ".mlp", c.intermediate_size, i);  // DeepseekV3MLP(intermediate_size)
      continue;
    }
    // DeepseekV3MoE: the router (MoEGate / DeepseekV3TopkRouter) weight [experts, hidden] and,
    // for noaux_tc only, its float32 e_score_correction_bias [experts].
    b.add(p + ".mlp.gate.weight", {c.n_routed_experts, h}, tensor_role::router, i);
    if (c.topk == io::topk_method::noaux_tc)
      b.add(p + ".mlp.gate.e_score_correction_bias", {c.n_routed_experts}, tensor_role::router_bias,
            i, dtype::f32);
    // experts: DeepseekV3MLP(intermediate_size=moe_intermediate_size) each.
    for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
      b.mlp(p + ".mlp.experts." + std::to_string(e), c.moe_intermediate_size, i);
    // shared_experts: one DeepseekV3MLP of moe_intermediate_size * n_shared_experts.
    if (c.n_shared_experts > 0)
      b.mlp(p + ".mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts, i);
  }
  b.norm("model.norm.weight", h, -1);
  // lm_head: Linear(hidden, vocab); absent when tied to the embedding.
  if (!c.tie_word_embeddings) b.add("lm_head.weight", {c.vocab_size, h}, tensor_role::lm_head);
  return b.take();
}

// The parameters of a layout: every element but the block scales (which are not parameters of
// the model but of its FP8 storage).
inline std::int64_t parameter_count(std::span<tensor_spec const> layout) {
  std::int64_t n = 0;
  for (auto const& t : layout)
    if (t.role != tensor_role::block_scale) n += t.numel();
  return n;
}

// The bytes the layout's tensors occupy in safetensors files.
inline std::uint64_t checkpoint_bytes(std::span<tensor_spec const> layout) {
  std::uint64_t n = 0;
  for (auto const& t : layout) n += t.nbytes();
  return n;
}

}  // namespace lightcore::models::deepseek_v3
