// How the MoE block places its routed experts over ranks, as compile-time policies: `local` (every
// expert on this device, whole), `tensor_parallel` (every expert on every rank, its intermediate
// split) and `expert_parallel` (experts split by rank; its interface, not yet its body).
// Also `no_communicator`, the forward's default: a tensor-parallel group of one.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/dist/communicator.hpp"
#include "lightcore/io/hf_config.hpp"
#include "modules/deepseek/linear.hpp"

namespace lightcore::modules::deepseek {

// The forward without a communicator: world 1, no collectives. A type of its own (not a
// Communicator that does nothing) so that the single-GPU forward compiles no collective at all.
struct no_communicator {};

// Whether C may serve as the forward's communicator on backend B.
template <class C, class B>
concept forward_communicator = std::same_as<C, no_communicator> ||
    (dist::Communicator<C>&& std::same_as<typename C::backend_type, B>);

// What the routed experts of this rank compute over, as a policy's dispatch hands it to them.
//  x       [N, H] bf16: the rows the local experts see (the batch's tokens, or the tokens other
//          ranks sent here)
//  ids     [N, k] i32: expert of each (row, slot), in [0, experts) of this rank's stack; a slot
//          whose expert lives elsewhere holds `experts` (moe_align drops it)
//  weights [N, k] f32: the router's weights of those slots
//  out     [N, H] bf16: where moe_experts writes the weighted sums
//  experts: the stack size on this rank (moe_align's expert count)
struct moe_dispatched {
  tensor_view x;
  tensor_view ids;
  tensor_view weights;
  tensor_view out;
  std::int64_t experts = 0;
};

// A dispatch policy P, built from the forward's communicator, provides the block's three hooks:
//   P::routed_experts(c)                       routed experts each rank holds (its stack size)
//   p.dispatch(ctx, x, ids, weights, out, c)   before the experts: moe_dispatched (the routing of
//                                              the batch, moved to where its experts are)
//   p.combine(ctx, d, out)                     after the experts: every token's routed sum in out
//   p.reduce(ctx, out, shared_out)             after the combine and the shared experts: out (and
//                                              shared_out when it is not empty) summed over the
//                                              ranks that hold partial products
//   P::folds_shared_experts                    whether shared experts folded into the stack (ids
//                                              past the routed ones) may run through it: true
//                                              when the rows stay on this rank
//   P::routes_in_place                         whether dispatch hands the experts the batch's own
//                                              rows and routing (x, ids, weights as given, the
//                                              stack of routed_experts(c)): routing and alignment
//                                              may then run together, before the dispatch
// so that moe_block keeps one shape whatever the placement.
namespace moe_dispatch {

// Every expert whole on this device: the experts read the batch and write `out` directly; nothing
// to move or sum. What a single GPU runs.
struct local {
  local() = default;
  explicit local(no_communicator&) {}

  static constexpr bool folds_shared_experts = true;
  static constexpr bool routes_in_place = true;

  static std::int64_t routed_experts(io::model_config const& c) { return c.n_routed_experts; }

  template <Backend B>
  moe_dispatched dispatch(forward_context<B>&, tensor_view const& x, tensor_view const& ids,
                          tensor_view const& weights, tensor_view const& out,
                          io::model_config const& c) {
    return {x, ids, weights, out, c.n_routed_experts};
  }
  template <Backend B>
  void combine(forward_context<B>&, moe_dispatched const&, tensor_view const&) {}
  template <Backend B>
  void reduce(forward_context<B>&, tensor_view const&, tensor_view const&) {}
};

// Every rank holds every expert with I / world of its intermediate (gate_up rows, down columns:
// weights.hpp). Routing is replicated (same router, same input on every rank), so each rank runs
// the same tokens through the same experts and gets a partial product; the shared experts' partial
// joins it, and one all-reduce sums the ranks' parts. The partials are bf16 (moe_experts and the
// accumulating down GEMM write bf16): the sum differs from world 1 by the rounding of each partial
// (<= 2^-9 of it) plus the rounding of the sum. `out` must hold only partial products, never the
// residual: the all-reduce would add it `world` times.
template <class C>
class tensor_parallel {
 public:
  explicit tensor_parallel(C& comm) : comm_(&comm) {}

  // The shared experts' parts are split like every expert's: each rank's partial joins the sum.
  static constexpr bool folds_shared_experts = true;
  static constexpr bool routes_in_place = true;

  static std::int64_t routed_experts(io::model_config const& c) { return c.n_routed_experts; }

  template <Backend B>
  moe_dispatched dispatch(forward_context<B>&, tensor_view const& x, tensor_view const& ids,
                          tensor_view const& weights, tensor_view const& out,
                          io::model_config const& c) {
    return {x, ids, weights, out, c.n_routed_experts};
  }
  template <Backend B>
  void combine(forward_context<B>&, moe_dispatched const&, tensor_view const&) {}

  // One collective for routed and shared parts: when shared_out (written separately, an FP8
  // shared down projection) directly follows out in memory, both go in one all-reduce.
  template <Backend B>
  void reduce(forward_context<B>& ctx, tensor_view const& out, tensor_view const& shared_out) {
    if (out.numel() == 0) return;
    if (shared_out.data() == nullptr) {
      comm_->all_reduce_sum(out, ctx.stream);
      return;
    }
    bool const adjacent = out.is_contiguous() && shared_out.is_contiguous() &&
                          shared_out.type() == out.type() && shared_out.shape() == out.shape() &&
                          static_cast<std::byte const*>(out.data()) + out.nbytes() ==
                              static_cast<std::byte const*>(shared_out.data());
    if (adjacent) {
      comm_->all_reduce_sum(
          tensor_view(out.data(), out.type(), {2, out.size(0), out.size(1)}, out.where()),
          ctx.stream);
      return;
    }
    comm_->all_reduce_sum(out, ctx.stream);
    comm_->all_reduce_sum(shared_out, ctx.stream);
  }

 private:
  C* comm_;
};

// Experts split by rank: rank r holds experts [r E/W, (r+1) E/W), whole. The hooks it will fill:
//  - dispatch: count each rank's (token, slot) pairs from the replicated routing, exchange the
//    counts, all_to_all_v the token rows (and their local expert ids and weights) to the ranks
//    holding their experts; the experts then run over the received rows into a receive-side out.
//  - combine: all_to_all_v the weighted sums back to the tokens' ranks and add each token's parts
//    into out (a token whose experts sit on several ranks comes back more than once).
//  - reduce: nothing for the routed part (each token's sum is whole after the combine); the
//    shared experts, if sharded like tensor parallelism, still need the all-reduce of their part.
// Not implemented yet: the loader has no expert-sharded layout (it shards every expert's
// intermediate), so building the policy throws.
template <class C>
class expert_parallel {
 public:
  explicit expert_parallel(C& comm) : comm_(&comm) {
    LC_THROW(
        "moe_dispatch::expert_parallel is not implemented yet (the weights loader has no "
        "expert-sharded layout); allowed: moe_dispatch::local or tensor_parallel");
  }

  static std::int64_t routed_experts(io::model_config const& c) { return c.n_routed_experts; }
  // Rows move to the ranks of their experts; shared experts run apart, on every rank.
  static constexpr bool folds_shared_experts = false;
  static constexpr bool routes_in_place = false;

  template <Backend B>
  moe_dispatched dispatch(forward_context<B>&, tensor_view const&, tensor_view const&,
                          tensor_view const&, tensor_view const&, io::model_config const&) {
    LC_THROW("moe_dispatch::expert_parallel::dispatch is not implemented yet");
  }
  template <Backend B>
  void combine(forward_context<B>&, moe_dispatched const&, tensor_view const&) {
    LC_THROW("moe_dispatch::expert_parallel::combine is not implemented yet");
  }
  template <Backend B>
  void reduce(forward_context<B>&, tensor_view const&, tensor_view const&) {
    LC_THROW("moe_dispatch::expert_parallel::reduce is not implemented yet");
  }

 private:
  [[maybe_unused]] C* comm_;
};

}  // namespace moe_dispatch

// The dispatch a forward over communicator C uses unless told otherwise: local on one rank,
// tensor_parallel over a group.
template <class C>
using default_moe_dispatch =
    std::conditional_t<std::same_as<C, no_communicator>, moe_dispatch::local,
                       moe_dispatch::tensor_parallel<C>>;

}  // namespace lightcore::modules::deepseek
