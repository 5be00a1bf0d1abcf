// DeepSeek-V3/R1 (and V2/V2-Lite) as a pipeline<...>: deepseek_pipeline<B> composes the model,
// its executor (decode graphs on CUDA included) and the engine's default scheduler into the very
// engine type the server and the generate CLI build (engine::engine<B, executor<B>>).
// Under parallel::tensor_parallel<C> the model is model<B, C> (the MoE blocks summed by the
// tensor_parallel dispatch) run by the generic eager executor (modules/common/executor.hpp), one
// per rank; the decode-graph executor is world 1 only.
//
//   using p = deepseek_v3::deepseek_pipeline<backend::cuda>;
//   p::executor_type exec(gpu, weights, options, max_rows);
//   p::engine_type engine(gpu, exec, config);
#pragma once

#include <cstdint>

#include "kernels/mla/mla.hpp"
#include "lightcore/pipeline/pipeline.hpp"
#include "models/deepseek_v3/executor.hpp"
#include "models/deepseek_v3/model.hpp"
#include "modules/common/executor.hpp"

namespace lightcore::pipeline {
// The model predates model_traits: its steps are request_step.
template <Backend B, class C, class D>
struct model_traits<models::deepseek_v3::model<B, C, D>> {
  using step_type = models::deepseek_v3::request_step;
};
}  // namespace lightcore::pipeline

namespace lightcore::models::deepseek_v3 {

// One 576-wide latent row per token slot and layer (kernels/mla/kv_cache.hpp).
template <Backend B, class C, class D>
pipeline::kv_shape kv_shape_of(model<B, C, D> const& m) {
  return {std::int32_t(m.config().num_hidden_layers), kernels::mla_kv_width};
}

namespace detail {
template <class B, class P>
struct deepseek_parts;  // no parts: the combination is not supported
template <class B>
struct deepseek_parts<B, pipeline::parallel::single_device> {
  using model_type = model<B>;
  using executor_type = executor<B>;
};
template <class B, class C>
struct deepseek_parts<B, pipeline::parallel::tensor_parallel<C>> {
  using model_type = model<B, C, modules::deepseek::moe_dispatch::tensor_parallel<C>>;
  using executor_type = modules::common::executor<B, model_type>;
};
}  // namespace detail

// The model policy (pipeline::model_policy_for).
struct deepseek_policy {
  template <class B, class P>
  static constexpr bool supports = requires {
    typename detail::deepseek_parts<B, P>::model_type;
  };
  template <class B, class P>
  using model = typename detail::deepseek_parts<B, P>::model_type;
  template <class B, class P>
  using executor = typename detail::deepseek_parts<B, P>::executor_type;
};

template <class B, class Parallel = pipeline::parallel::single_device,
          class Scheduler = pipeline::default_scheduler>
using deepseek_pipeline = pipeline::pipeline<deepseek_policy, B, Parallel, Scheduler>;

}  // namespace lightcore::models::deepseek_v3
