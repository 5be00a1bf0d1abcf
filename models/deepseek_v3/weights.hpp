// The weights of a DeepSeek-V3/R1 or V2/V2-Lite model in the layout lightcore's modules use,
// for one tensor-parallel rank, as non-owning views into tensors on a backend. load_weights() and
// dummy_weights() (weights_loader.hpp) build a model_weights<B>; the modules read its views.
//
// Layout (N x K weights are nn.Linear's [out, in]; "local" sizes are this rank's share):
//  - linear_weight: w [N, K] bf16, or fp8_e4m3 with block scales [ceil(N/128), K/128] f32 whose
//    row stride is gemm_fp8_weight_scale_ld(K) (what gemm_fp8_block reads). Stacked experts add a
//    leading [E] to both.
//  - attention (MLA): with q_lora, q_a_proj and kv_a_proj_with_mqa fused into q_a_kv_a [q_lora +
//    kv_lora + rope, hidden] (one GEMM reads the hidden state once); without q_lora (V2-Lite),
//    q_proj's rows of the rank and kv_a_proj_with_mqa fused into q_kv_a [heads * (nope + rope) +
//    kv_lora + rope, hidden] for the same reason (bf16 weights; FP8 ones stay apart, as the
//    fused scale blocks would need the rank's q rows to be a multiple of 128), with q and kv_a
//    views of its rows. kv_b_proj split per head
//    into w_uk [heads, nope, kv_lora] and w_uv [heads, v, kv_lora], bf16 (dequantised from FP8).
//  - MLP: gate_up [2I, hidden] = [gate_proj; up_proj] (gate first, what silu_and_mul takes),
//    down [hidden, I]; routed experts stacked [E, 2I, hidden] and [E, hidden, I]. With
//    layout_options::fuse_shared_experts (the default) the shared experts' MLP, of intermediate
//    S x I, is cut into S experts of width I appended to the stack ([E + S, 2I, hidden]): the
//    MLP is a sum over its intermediate columns, so the S parts add up to it exactly, and one
//    grouped GEMM runs routed and shared experts together (moe_weights::fused_shared).
//  - Norm weights, the embedding and lm_head are bf16; the router keeps the checkpoint's dtype,
//    its correction bias is f32.
//
// An FP8 weight whose shape the FP8 GEMM cannot take (K not a multiple of 128) or whose fused
// parts do not meet on a 128-row boundary (q_lora or an intermediate size not a multiple of 128,
// as in the tiny test models) is dequantised to bf16 once at load; memory_report::dequantised
// lists them. DeepSeek-V3/R1's own shapes never need it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/hf_config.hpp"

namespace lightcore::models::deepseek_v3 {

// This process's place in tensor parallelism: rank in [0, world).
struct tp_shard {
  std::int64_t rank = 0;   // this rank; default 0
  std::int64_t world = 1;  // ranks sharing the model; default 1 (no parallelism)
};

// The vocabulary rows [start, end) this rank holds of embed_tokens and lm_head: ceil(vocab /
// world) rows per rank, the last rank fewer.
struct vocab_range {
  std::int64_t start = 0;
  std::int64_t end = 0;
  std::int64_t size() const noexcept { return end - start; }
};
vocab_range vocab_shard(io::model_config const& c, tp_shard shard);

// One linear layer (or a stack of them, one per expert) as the GEMMs take it.
struct linear_weight {
  tensor_view w;       // [N, K] or [E, N, K]; bf16 or fp8_e4m3
  tensor_view scales;  // fp8 only: [ceil(N/128), K/128] or [E, ceil(N/128), K/128] f32, row
                       // stride gemm_fp8_weight_scale_ld(K); empty (null data) for bf16
  bool fp8() const noexcept { return w.type() == dtype::fp8_e4m3; }
  // Expert e of a stack: the [N, K] weight and its [ceil(N/128), K/128] scales.
  linear_weight expert(std::int64_t e) const {
    return {w.select(0, e), fp8() ? scales.select(0, e) : tensor_view{}};
  }
};

// MLA. Heads are this rank's: heads / world.
struct attention_weights {
  linear_weight q_a_kv_a;  // q_lora models: [q_lora + kv_lora + rope, hidden], replicated
  tensor_view q_a_norm;    // q_lora models: [q_lora], replicated
  linear_weight q_b;       // q_lora models: [heads * (nope + rope), q_lora]
  linear_weight q_kv_a;    // no q_lora, bf16: [heads * (nope + rope) + kv_lora + rope, hidden]
  linear_weight q;         // no q_lora: [heads * (nope + rope), hidden] (q_kv_a's first rows)
  linear_weight kv_a;      // no q_lora: [kv_lora + rope, hidden], replicated (q_kv_a's last)
  tensor_view kv_a_norm;   // [kv_lora], replicated
  tensor_view w_uk;        // [heads, nope, kv_lora] bf16: kv_b_proj's key rows of each head
  tensor_view w_uv;        // [heads, v, kv_lora] bf16: kv_b_proj's value rows of each head
  linear_weight o;         // [hidden, heads * v]: the rank's columns; its output is a partial sum
};

// A gated MLP with intermediate size I (this rank's share).
struct mlp_weights {
  linear_weight gate_up;  // [2I, hidden]: rows [0, I) gate_proj, [I, 2I) up_proj
  linear_weight down;     // [hidden, I]: its output is a partial sum under tensor parallelism
};

struct moe_weights {
  tensor_view router;       // [E, hidden], bf16 or f32 as the checkpoint has it; replicated
  tensor_view router_bias;  // [E] f32 (noaux_tc) or empty; replicated
  linear_weight gate_up;    // [E + fused_shared, 2I, hidden], I = moe_intermediate_size / world
  linear_weight down;       // [E + fused_shared, hidden, I]
  // The shared experts, when they are not folded into the stack: one MLP of intermediate
  // moe_I * n_shared / world. Empty when n_shared_experts is 0 or fused_shared > 0.
  std::optional<mlp_weights> shared;
  // Shared experts folded into the stack after the E routed ones (n_shared_experts, or 0).
  std::int64_t fused_shared = 0;
};

struct layer_weights {
  tensor_view input_norm;           // [hidden]
  attention_weights attn;           //
  tensor_view post_attention_norm;  // [hidden]
  std::optional<mlp_weights> mlp;   // the first_k_dense_replace layers (and off-frequency ones)
  std::optional<moe_weights> moe;   // the other layers
};

struct model_views {
  tensor_view embed;  // [vocab_shard rows, hidden]
  std::vector<layer_weights> layers;
  tensor_view norm;     // [hidden]
  tensor_view lm_head;  // [vocab_shard rows, hidden]; the embedding's view when tied
};

// What the weights occupy, by what they are for.
enum class weight_category : std::uint8_t {
  embedding,       // embed_tokens
  attention,       // MLA projections (and their block scales)
  dense_mlp,       // the dense layers' MLP
  routed_experts,  // stacked routed experts
  shared_experts,  // shared experts
  router,          // router weight and correction bias
  norms,           // RMSNorm weights
  lm_head,         // lm_head (0 when tied)
};
inline constexpr int weight_category_count = 8;
char const* name_of(weight_category c) noexcept;

struct memory_report {
  std::uint64_t bytes[weight_category_count] = {};  // per category, allocation sizes
  std::vector<std::string> dequantised;  // FP8 checkpoint weights stored as bf16 (see the top)
  std::uint64_t total() const noexcept {
    std::uint64_t t = 0;
    for (auto const b : bytes) t += b;
    return t;
  }
  std::uint64_t operator[](weight_category c) const noexcept { return bytes[int(c)]; }
};
std::ostream& operator<<(std::ostream& os, memory_report const& r);

// Loading progress: bytes of the checkpoint's tensors read so far, of all to read, and the tensor
// just read. Called once per tensor, in the order the files hold them.
using load_progress =
    std::function<void(std::uint64_t done, std::uint64_t total, std::string const& tensor)>;

// Choices of layout that do not change what the model computes.
struct layout_options {
  // Shared experts as extra experts of the routed stack (see the top); false keeps them as a
  // separate dense MLP. Default true.
  bool fuse_shared_experts = true;
};

struct load_options {
  tp_shard shard;          // default: rank 0 of 1
  load_progress progress;  // default: none
  layout_options layout;   // default: shared experts fused
};

struct dummy_options {
  tp_shard shard;          // default: rank 0 of 1
  std::uint64_t seed = 0;  // the values' seed; equal seeds give equal bits on every backend
  layout_options layout;   // default: shared experts fused
};

// The weights of one rank on backend B: owns the tensors, hands out views.
template <Backend B>
class model_weights {
 public:
  model_weights() = default;
  model_weights(model_weights&&) noexcept = default;
  model_weights& operator=(model_weights&&) noexcept = default;

  io::model_config const& config() const noexcept { return config_; }
  tp_shard shard() const noexcept { return shard_; }
  vocab_range vocab() const noexcept { return vocab_; }
  model_views const& views() const noexcept { return views_; }
  layer_weights const& layer(std::int64_t i) const { return views_.layers.at(std::size_t(i)); }
  memory_report const& memory() const noexcept { return memory_; }

  // The loader's construction interface (weights_loader.hpp).
  struct builder;

 private:
  io::model_config config_;
  tp_shard shard_;
  vocab_range vocab_;
  model_views views_;
  memory_report memory_;
  std::vector<tensor<B>> storage_;
};

}  // namespace lightcore::models::deepseek_v3
