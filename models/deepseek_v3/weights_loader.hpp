// Building a rank's model_weights<B> on a backend: from a Hugging Face checkpoint (single
// model.safetensors or sharded with model.safetensors.index.json; bf16 or FP8 block-scaled) or,
// without one, as seeded random "dummy" weights filled on the device (benchmarks of real shapes).
// The layout, sharding and FP8 rules are those of weights.hpp.
#pragma once

#include <cstddef>
#include <filesystem>
#include <utility>
#include <vector>

#include "kernels/init/init.hpp"
#include "kernels/init/init_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/io/hf_config.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "models/deepseek_v3/weights.hpp"
#include "models/deepseek_v3/weights_plan.hpp"

namespace lightcore::models::deepseek_v3 {

template <Backend B>
struct model_weights<B>::builder {
  // Plans the rank's tensors, allocating them on `backend`; the plan keeps where each checkpoint
  // tensor goes, the weights keep the memory and the views.
  static std::pair<model_weights<B>, detail::weights_plan> allocate(B& backend,
                                                                    io::model_config const& c,
                                                                    tp_shard shard,
                                                                    layout_options layout) {
    model_weights<B> m;
    m.config_ = c;
    m.shard_ = shard;
    auto& storage = m.storage_;
    detail::weights_plan plan =
        detail::plan_weights(c, shard, layout, [&](detail::dest_tensor const& d) -> tensor_view {
          storage.emplace_back(backend, d.type, d.shape);
          return storage.back().view();
        });
    m.vocab_ = plan.vocab;
    m.views_ = plan.views;
    m.memory_ = plan.memory;
    return {std::move(m), std::move(plan)};
  }
};

// Loads the weights of rank `options.shard` from `checkpoint` (a directory, an index .json or one
// .safetensors file) for config `c`. The checkpoint must hold every tensor of
// checkpoint_layout(c) with its dtype and shape (errors name the tensor); extra tensors (MTP
// layers) are ignored. Each shard is read once, in file order; options.progress sees every byte
// of the layout's tensors. Returns when the weights are on the device.
template <Backend B>
model_weights<B> load_weights(B& backend, io::model_config const& c,
                              std::filesystem::path const& checkpoint,
                              load_options const& options = {}) {
  io::safetensors_checkpoint const files(checkpoint);
  detail::check_checkpoint(files, c, checkpoint.string());
  auto [weights, plan] =
      model_weights<B>::builder::allocate(backend, c, options.shard, options.layout);
  auto stream = backend.make_stream();
  detail::read_checkpoint(
      files, c, plan,
      [&](void* dst, void const* src, std::size_t bytes) {
        backend.copy(dst, src, bytes, stream);
        stream.synchronize();  // the host staging buffer is reused by the next piece
      },
      options.progress);
  return std::move(weights);
}

// The same from a checkpoint directory with its config.json.
template <Backend B>
model_weights<B> load_weights(B& backend, std::filesystem::path const& directory,
                              load_options const& options = {}) {
  return load_weights(backend, io::load_model_config(directory / "config.json"), directory,
                      options);
}

// Weights of config `c` for rank `options.shard` with seeded random values, filled on the
// backend's device (no host copy, no checkpoint): linear weights, embedding, lm_head, router and
// its bias with std 0.02, norms ones, FP8 codes with std 112 and block scales near 0.02 / 112.
// Each tensor's values depend on the seed and its name alone, so the same seed gives the same bits
// on every backend, and replicated tensors are equal on every rank. FP8 follows the config's
// quantization_config as a checkpoint would.
template <Backend B>
model_weights<B> dummy_weights(B& backend, io::model_config const& c,
                               dummy_options const& options = {}) {
  auto [weights, plan] =
      model_weights<B>::builder::allocate(backend, c, options.shard, options.layout);
  auto stream = backend.make_stream();
  for (std::size_t i = 0; i < plan.dests.size(); ++i) {
    detail::dest_tensor const& d = plan.dests[i];
    kernels::fill_random(backend, plan.storage[i],
                         {options.seed, kernels::init_tensor_id(d.name), d.mean, d.stddev}, stream);
  }
  stream.synchronize();
  return std::move(weights);
}

}  // namespace lightcore::models::deepseek_v3
