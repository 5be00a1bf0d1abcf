// The pipeline<...> type: what it composes (model, executor, engine, params), the DeepSeek
// pipeline's engine being the server's, and every invalid combination refused. The refusals are
// checked through valid_pipeline and the per-axis concepts, which ask the questions the
// pipeline's static_asserts ask, so that this file compiles; naming the same combinations in
// pipeline<...> itself fails to compile with the messages quoted next to each check.
#include <gtest/gtest.h>

#include <concepts>
#include <cstdint>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/dist/inproc_communicator.hpp"
#include "lightcore/pipeline/pipeline.hpp"
#include "models/deepseek_v3/pipeline.hpp"
#include "modules/common/executor.hpp"
#include "modules/gqa/dense_model.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;
namespace pl = pipeline;
namespace ds = models::deepseek_v3;
using dense_policy = modules::common::eager_policy<modules::gqa::dense_model>;
using dense = pl::pipeline<dense_policy, cpu>;
using inproc = dist::inproc_communicator;

// The dense GQA pipeline on the CPU.
static_assert(pl::valid_pipeline<dense_policy, cpu>);
static_assert(std::same_as<dense::backend_type, cpu>);
static_assert(std::same_as<dense::model_type, modules::gqa::dense_model<cpu>>);
static_assert(std::same_as<dense::executor_type,
                           modules::common::executor<cpu, modules::gqa::dense_model<cpu>>>);
static_assert(std::same_as<dense::params_type, kernels::sampling_request>);
static_assert(std::same_as<dense::engine_type, engine::engine<cpu, dense::executor_type>>);
static_assert(std::same_as<dense::request_type, engine::request<kernels::sampling_request>>);
static_assert(std::same_as<dense::scheduler_type, pl::default_scheduler>);
static_assert(!dense::distributed);
static_assert(pl::forward_model<modules::gqa::dense_model<cpu>, cpu>);
static_assert(engine::executor<dense::executor_type>);

// DeepSeek: the engine the server and the generate CLI build today.
using deepseek = ds::deepseek_pipeline<cpu>;
static_assert(std::same_as<deepseek::engine_type, engine::engine<cpu, ds::executor<cpu>>>);
static_assert(std::same_as<deepseek::executor_type, ds::executor<cpu>>);
static_assert(std::same_as<deepseek::model_type, ds::model<cpu>>);
static_assert(pl::forward_model<ds::model<cpu>, cpu>);
// Tensor parallelism: model<B, C> with the tensor_parallel MoE dispatch, under the generic
// executor (one per rank).
using deepseek_tp = ds::deepseek_pipeline<cpu, pl::parallel::tensor_parallel<inproc>>;
static_assert(pl::valid_pipeline<ds::deepseek_policy, cpu, pl::parallel::tensor_parallel<inproc>>);
static_assert(std::same_as<deepseek_tp::model_type, ds::model<cpu, inproc>>);
static_assert(std::same_as<deepseek_tp::executor_type,
                           modules::common::executor<cpu, ds::model<cpu, inproc>>>);
static_assert(deepseek_tp::distributed);
// Another scheduler composes into the engine type.
using skip_head = sched::scheduler<sched::admit::conservative, sched::order::fcfs_skip_head>;
static_assert(std::same_as<
              pl::pipeline<dense_policy, cpu, pl::parallel::single_device, skip_head>::engine_type,
              engine::engine<cpu, dense::executor_type, skip_head>>);

// Refused combinations (each line: the concept, then pipeline<...>'s static_assert message).
// "the scheduler is not a sched::scheduler<Admission, Order, Chunk>"
static_assert(!pl::scheduler_policy<int>);
static_assert(!pl::valid_pipeline<dense_policy, cpu, pl::parallel::single_device, int>);
// "parallel::expert_parallel is not implemented yet ..."
static_assert(pl::parallel_policy<pl::parallel::expert_parallel<inproc>>);
static_assert(!pl::implemented_parallel<pl::parallel::expert_parallel<inproc>>);
static_assert(!pl::valid_pipeline<ds::deepseek_policy, cpu, pl::parallel::expert_parallel<inproc>>);
// "unknown parallel policy ..."
static_assert(!pl::parallel_policy<int>);
static_assert(!pl::valid_pipeline<dense_policy, cpu, int>);
// "the communicator is not a dist::Communicator on the pipeline's backend ...": the in-process
// communicator is on backend::cpu; any other backend, or a type that is no communicator, fails.
struct other_backend {};
struct not_a_communicator {
  using backend_type = cpu;
};
static_assert(pl::communicator_on<pl::parallel::tensor_parallel<inproc>, cpu>);
static_assert(!pl::communicator_on<pl::parallel::tensor_parallel<inproc>, other_backend>);
static_assert(!pl::communicator_on<pl::parallel::tensor_parallel<not_a_communicator>, cpu>);
static_assert(!pl::valid_pipeline<ds::deepseek_policy, cpu,
                                  pl::parallel::tensor_parallel<not_a_communicator>>);
// "B is not a backend ..."
static_assert(!pl::valid_pipeline<dense_policy, other_backend>);
// "the model policy has no model and executor for this backend and parallel policy ...": the
// dense model runs on one device only.
static_assert(!pl::valid_pipeline<dense_policy, cpu, pl::parallel::tensor_parallel<inproc>>);

// A model that is no forward_model: its forward returns nothing, and it has no kv_shape_of.
struct silent_model {
  using context = modules::common::forward_context<cpu>;
  using step_type = pl::model_step;
  void forward(context&, std::vector<step_type> const&, std::vector<tensor_view> const&,
               tensor_view const&) {}
};
template <class B>
using silent = silent_model;
static_assert(!pl::forward_model<silent_model, cpu>);
static_assert(!pl::valid_pipeline<modules::common::eager_policy<silent>, cpu>);
// Nor is a model whose context runs on another backend.
static_assert(!pl::context_on<modules::common::forward_context<cpu>, other_backend>);
// Steps the generic executor cannot build.
static_assert(pl::request_step<pl::model_step>);
static_assert(pl::request_step<ds::request_step>);
static_assert(!pl::request_step<int*>);

TEST(PipelineTypes, KvConfigTakesTheModelsLayout) {
  cpu backend;
  modules::gqa::dense_config c;
  c.layers = 3;
  c.heads = {8, 2, 64};
  auto const w = modules::gqa::random_dense_weights(backend, c, 1);
  dense::model_type const m(backend, w);
  memory::kv_pool_config const kv = dense::kv_config(m, 100, 4, 64);
  EXPECT_EQ(kv.layers, 3);
  EXPECT_EQ(kv.width, 2 * 2 * 64);  // k and v of every kv head
  EXPECT_EQ(kv.capacity, 100);
  EXPECT_EQ(kv.max_requests, 4);
  EXPECT_EQ(kv.max_tokens, 64);
  EXPECT_EQ(kv.type, dtype::bf16);
}

TEST(PipelineTypes, RandomWeightsRefuseBadConfigs) {
  cpu backend;
  modules::gqa::dense_config c;
  c.hidden_size = 100;  // not a multiple of 8
  EXPECT_THROW((void)modules::gqa::random_dense_weights(backend, c, 1), error);
  c = {};
  c.heads = {6, 4, 128};  // 6 q heads over 4 kv heads
  EXPECT_THROW((void)modules::gqa::random_dense_weights(backend, c, 1), error);
}

}  // namespace
}  // namespace lightcore::test
