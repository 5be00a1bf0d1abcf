// The generic executor: any model satisfying pipeline::forward_model, run eagerly (no graphs) as
// the engine's executor: one forward over the step's rows, then the sampler (sampler.hpp). It owns
// the activation manager, the GEMM state and the stream; the model (and its weights) live outside.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <vector>

#include "kernels/gemm/gemm.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"
#include "lightcore/pipeline/concepts.hpp"
#include "lightcore/pipeline/pipeline.hpp"
#include "modules/common/sampler.hpp"

namespace lightcore::modules::common {

template <Backend B, pipeline::forward_model<B> M>
class executor {
 public:
  using backend_type = B;
  using model_type = M;
  using params_type = kernels::sampling_request;
  using row_type = engine::step_row<params_type>;

  executor(B& backend, M& model)
      : backend_(&backend),
        model_(&model),
        mem_(backend),
        gemm_(backend),
        stream_(backend.make_stream()),
        sampler_(backend, mem_) {}

  executor(executor const&) = delete;
  executor& operator=(executor const&) = delete;

  M& model() noexcept { return *model_; }
  memory::cache_tensor_manager<B>& memory() noexcept { return mem_; }
  typename B::stream_type const& stream() const noexcept { return stream_; }

  // Runs a step and waits for its results. kv: one pool per layer; req_to_token on the device.
  engine::step_output run(std::vector<row_type> const& rows, std::vector<tensor_view> const& kv,
                          tensor_view const& req_to_token) {
    if (rows.empty()) return sampler_.run(rows, {}, stream_, std::chrono::steady_clock::now());
    auto const t0 = std::chrono::steady_clock::now();
    steps_.clear();
    for (row_type const& r : rows)
      steps_.push_back(
          pipeline::step_type_t<M>{std::vector<std::int32_t>(r.tokens.begin(), r.tokens.end()),
                                   r.cached, r.req_row, r.prefill});
    typename M::context ctx{*backend_, stream_, gemm_, mem_};
    tensor_view const logits = model_->forward(ctx, steps_, kv, req_to_token);
    return sampler_.run(rows, logits, stream_, t0);
  }

 private:
  B* backend_;
  M* model_;
  memory::cache_tensor_manager<B> mem_;
  kernels::gemm_context<B> gemm_;
  typename B::stream_type stream_;
  sampler<B> sampler_;
  std::vector<pipeline::step_type_t<M>> steps_;
};

// The model policy of a pipeline whose model Model<B> runs on one device under the generic
// executor: pipeline::pipeline<eager_policy<modules::gqa::dense_model>, backend::cpu>.
template <template <class> class Model>
struct eager_policy {
  template <class B, class P>
  static constexpr bool supports = std::same_as<P, pipeline::parallel::single_device>;
  template <class B, class P>
  using model = Model<B>;
  template <class B, class P>
  using executor = common::executor<B, Model<B>>;
};

}  // namespace lightcore::modules::common
