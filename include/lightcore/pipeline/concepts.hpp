// What a pipeline asks of a model: a forward over the requests of one step on a backend that
// returns the last-token logits, and the shape of its KV cache (layers, elements per token slot),
// which sizes the engine's kv_pool. The generic executor (modules/common/executor.hpp) and the
// pipeline<...> type (pipeline.hpp) are written against these concepts only.
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lightcore::pipeline {

// One request of a step, as a model's forward takes it.
struct model_step {
  std::vector<std::int32_t> tokens;  // new token ids; one after a cached prefix: a decode row
  std::int64_t cached = 0;           // tokens of this request already in the pool (positions)
  std::int32_t req_row = 0;          // its row in req_to_token
  bool prefill = false;              // a prompt chunk (even of one token), not a decode row
};

// The KV cache a model keeps in the engine's kv_pool: one [slots, width] tensor per layer.
struct kv_shape {
  std::int32_t layers = 0;  // KV tensors (one per attention layer)
  std::int64_t width = 0;   // elements per token slot (MLA: 576; GQA: k and v of every kv head)
};

// Types a model is asked about. The primary template reads the model's members; a model without
// them (one written before these concepts) gets a specialisation next to its pipeline.
template <class M>
struct model_traits {
  using step_type = typename M::step_type;  // aggregate {tokens, cached, req_row, prefill}
};
template <class M>
using step_type_t = typename model_traits<M>::step_type;

// A request step the generic executor can build from an engine row.
template <class S>
concept request_step = requires(std::vector<std::int32_t> tokens) {
  S{std::move(tokens), std::int64_t{}, std::int32_t{}, bool{}};
};

// A context the generic executor can build: {backend, stream, gemm state, activation manager}
// whose backend is B.
template <class Ctx, class B>
concept context_on = std::same_as<std::remove_cvref_t<decltype(std::declval<Ctx&>().backend)>, B>;

// A model M whose forward runs on backend B:
//   M::context                         see context_on
//   model_traits<M>::step_type         see request_step
//   m.forward(ctx, steps, kv, table)   writes the steps' KV (one pool per layer, req_to_token on
//                                      the device) and returns f32 logits [steps, vocab] of each
//                                      step's last token, valid until the next forward
//   kv_shape_of(m) -> kv_shape         found by argument-dependent lookup
template <class M, class B>
concept forward_model = Backend<B> && requires {
  typename M::context;
} && context_on<typename M::context, B> && request_step<step_type_t<M>> &&
    requires(M& m, M const& cm, typename M::context& ctx, std::vector<step_type_t<M>> const& steps,
             std::vector<tensor_view> const& kv, tensor_view const& table) {
  { m.forward(ctx, steps, kv, table) } -> std::same_as<tensor_view>;
  { kv_shape_of(cm) } -> std::same_as<kv_shape>;
};

}  // namespace lightcore::pipeline
