// The backend-independent part of building model_weights: which tensors a rank holds (shapes,
// dtypes, FP8 or dequantised), where each piece of each checkpoint tensor goes, and reading a
// checkpoint into them. weights_loader.hpp drives it with a backend's allocation and copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/hf_config.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "models/deepseek_v3/weights.hpp"

namespace lightcore::models::deepseek_v3::detail {

// A tensor the rank allocates, and how dummy mode fills it.
struct dest_tensor {
  std::string name;  // e.g. "model.layers.3.mlp.experts.gate_up.weight"
  dtype type = dtype::bf16;
  dims shape;
  weight_category category = weight_category::attention;
  float mean = 0.0f;    // dummy values: mean + stddev * normalish
  float stddev = 0.0f;  //
};

// Rows [r0, r1) and columns [c0, c1) of a checkpoint tensor (a 1-D tensor is one row), copied to
// a contiguous region of a destination: converted, dequantised or copied as FP8 codes with their
// block scales re-strided.
struct placement {
  std::string source;        // the checkpoint tensor
  std::string scale_source;  // its weight_scale_inv when it is FP8, else empty
  std::int64_t r0 = 0, r1 = 0, c0 = 0, c1 = 0;
  tensor_view dst;         // [r1 - r0, c1 - c0], contiguous
  tensor_view dst_scales;  // FP8 destinations: [ceil((r1 - r0) / 128), ld] contiguous, else empty
};

struct weights_plan {
  model_views views;
  memory_report memory;
  vocab_range vocab;
  std::vector<dest_tensor> dests;    // in allocation order
  std::vector<tensor_view> storage;  // the allocation of each dest
  std::map<std::string, std::vector<placement>, std::less<>> by_source;  // checkpoint name ->
};

// Allocates one destination on the backend and returns its (contiguous) view.
using allocate_fn = std::function<tensor_view(dest_tensor const&)>;
// Copies bytes from host memory to a destination; `src` may be reused when it returns.
using copy_fn = std::function<void(void* dst, void const* src, std::size_t bytes)>;

// The rank's tensors, allocated through `allocate`, and where every checkpoint tensor goes. Throws,
// before allocating anything, on a world size that does not divide the heads or an intermediate
// size, and on a split of an FP8 weight that is not on 128 boundaries.
weights_plan plan_weights(io::model_config const& c, tp_shard shard, layout_options layout,
                          allocate_fn const& allocate);

// Checks that the checkpoint holds every tensor of the config's layout with its dtype and shape;
// the error names the tensor, what it has and what is expected.
void check_checkpoint(io::safetensors_checkpoint const& checkpoint, io::model_config const& c,
                      std::string const& where);

// Reads the checkpoint into the plan's destinations: shard by shard, each tensor in file order,
// reporting progress after each tensor of the layout (MTP layers and other extra tensors are not
// read). An FP8 weight's scales (1/16384 of its bytes) are read with it.
void read_checkpoint(io::safetensors_checkpoint const& checkpoint, io::model_config const& c,
                     weights_plan const& plan, copy_fn const& copy, load_progress const& progress);

}  // namespace lightcore::models::deepseek_v3::detail
