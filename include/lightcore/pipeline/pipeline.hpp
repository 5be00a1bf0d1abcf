// pipeline<Model, Backend, Parallel, Scheduler>: a serving pipeline as one type. A model policy
// (what forward runs, which executor drives it), a backend, a parallel policy (one device, or
// tensor parallelism over a communicator, with the MoE dispatch that goes with it) and a
// scheduler compose into the executor and engine types; an invalid combination fails to compile
// with a static_assert that names the problem. valid_pipeline<...> asks the same questions as a
// concept, for code (and tests) that must not fail hard.
//
//   using p = pipeline::pipeline<my_model_policy, backend::cpu>;
//   p::model_type model(cpu, weights);
//   p::executor_type exec(cpu, model);
//   p::engine_type engine(cpu, exec, config);
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "lightcore/backend/backend.hpp"
#include "lightcore/dist/communicator.hpp"
#include "lightcore/engine/engine.hpp"
#include "lightcore/engine/step.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/pipeline/concepts.hpp"
#include "lightcore/sched/scheduler.hpp"

namespace lightcore::pipeline {

// Parallel policies: where the model's ranks live and how they meet.
namespace parallel {
struct single_device {};  // world 1: no collective compiled in
// Ranks of a tensor-parallel group over communicator C (dist::Communicator on the pipeline's
// backend): heads and MLP columns sharded, MoE experts' partials summed (tensor_parallel dispatch).
template <class C>
struct tensor_parallel {
  using communicator_type = C;
};
// Experts placed on ranks and tokens sent to them (all_to_all_v). Declared so that a pipeline can
// name it; rejected: the weights loader has no expert-sharded layout yet.
template <class C>
struct expert_parallel {
  using communicator_type = C;
};
}  // namespace parallel

// The engine's default scheduler (what engine::engine uses unless told otherwise).
using default_scheduler = sched::scheduler<sched::admit::conservative, sched::order::strict_fcfs>;

namespace detail {
template <class S>
struct is_scheduler : std::false_type {};
template <class A, class O, class C>
struct is_scheduler<sched::scheduler<A, O, C>> : std::true_type {};

template <class P>
struct parallel_kind {
  static constexpr bool known = false, expert = false, has_communicator = false;
};
template <>
struct parallel_kind<parallel::single_device> {
  static constexpr bool known = true, expert = false, has_communicator = false;
};
template <class C>
struct parallel_kind<parallel::tensor_parallel<C>> {
  static constexpr bool known = true, expert = false, has_communicator = true;
};
template <class C>
struct parallel_kind<parallel::expert_parallel<C>> {
  static constexpr bool known = true, expert = true, has_communicator = true;
};
}  // namespace detail

// A sched::scheduler<Admission, Order, Chunk>.
template <class S>
concept scheduler_policy = detail::is_scheduler<S>::value;

// One of the parallel policies above.
template <class P>
concept parallel_policy = detail::parallel_kind<P>::known;

// A parallel policy whose communicator (if any) is a dist::Communicator on backend B.
template <class P, class B>
concept communicator_on = parallel_policy<P> &&
    (!detail::parallel_kind<P>::has_communicator ||
     (dist::Communicator<typename P::communicator_type> &&
      std::same_as<typename P::communicator_type::backend_type, B>));

// A parallel policy with an implementation.
template <class P>
concept implemented_parallel = parallel_policy<P> && !detail::parallel_kind<P>::expert;

// A model policy MP composes on backend B under parallel policy P:
//   MP::supports<B, P>       whether it has a model and an executor for them
//   MP::model<B, P>          the forward (pipeline::forward_model on B)
//   MP::executor<B, P>       what the engine drives (engine::executor)
template <class MP, class B, class P>
concept model_policy_for = requires {
  { MP::template supports<B, P> } -> std::convertible_to<bool>;
}
&&MP::template supports<B, P>&& forward_model<typename MP::template model<B, P>, B>&&
    engine::executor<typename MP::template executor<B, P>>;

// Every check of pipeline<MP, B, P, S>, as a concept.
template <class MP, class B, class P = parallel::single_device, class S = default_scheduler>
concept valid_pipeline = Backend<B> && scheduler_policy<S> && implemented_parallel<P> &&
    communicator_on<P, B> && model_policy_for<MP, B, P>;

template <class ModelPolicy, class B, class Parallel = parallel::single_device,
          class Scheduler = default_scheduler>
struct pipeline {
  static_assert(Backend<B>, "pipeline: B is not a backend; allowed: backend::cpu, backend::cuda");
  static_assert(scheduler_policy<Scheduler>,
                "pipeline: the scheduler is not a sched::scheduler<Admission, Order, Chunk>");
  static_assert(parallel_policy<Parallel>,
                "pipeline: unknown parallel policy; allowed: parallel::single_device, "
                "parallel::tensor_parallel<C>");
  static_assert(implemented_parallel<Parallel>,
                "pipeline: parallel::expert_parallel is not implemented yet (the weights loader "
                "has no expert-sharded layout); allowed: single_device, tensor_parallel<C>");
  static_assert(communicator_on<Parallel, B>,
                "pipeline: the communicator is not a dist::Communicator on the pipeline's backend "
                "(its backend_type differs from B)");
  static_assert(model_policy_for<ModelPolicy, B, Parallel>,
                "pipeline: the model policy has no model and executor for this backend and "
                "parallel policy (ModelPolicy::supports<B, Parallel> is false, or its model is "
                "not a pipeline::forward_model / its executor not an engine::executor)");

  using backend_type = B;
  using model_policy = ModelPolicy;
  using parallel_type = Parallel;
  using scheduler_type = Scheduler;
  using model_type = typename ModelPolicy::template model<B, Parallel>;
  using executor_type = typename ModelPolicy::template executor<B, Parallel>;
  using params_type = typename executor_type::params_type;
  using engine_type = engine::engine<B, executor_type, Scheduler>;
  using request_type = typename engine_type::request_type;
  static constexpr bool distributed = detail::parallel_kind<Parallel>::has_communicator;

  // The engine's KV pool for `model`: its layers and slot width, with the pool's sizes.
  static memory::kv_pool_config kv_config(model_type const& model, std::int64_t capacity,
                                          std::int32_t max_requests, std::int64_t max_tokens) {
    kv_shape const s = kv_shape_of(model);
    memory::kv_pool_config c;
    c.layers = s.layers;
    c.width = s.width;
    c.capacity = capacity;
    c.max_requests = max_requests;
    c.max_tokens = max_tokens;
    return c;
  }
};

}  // namespace lightcore::pipeline
