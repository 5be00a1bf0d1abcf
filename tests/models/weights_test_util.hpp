// What the weights suites share: random checkpoints of the tiny configs in a temporary directory,
// derived configs, and walking every view of a model's weights.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/io/hf_config.hpp"
#include "models/deepseek_v3/weights.hpp"
#include "nlohmann/json.hpp"
#include "tools/random_checkpoint/random_checkpoint.hpp"

namespace lightcore::test {

namespace ds = models::deepseek_v3;

inline std::filesystem::path config_path(std::string const& name) {
  return std::filesystem::path(LIGHTCORE_TEST_DATA_DIR) / "configs" / name;
}

// A directory removed with everything in it when the object goes.
class temp_dir {
 public:
  temp_dir() {
    std::mt19937_64 rng(std::random_device{}());
    path_ = std::filesystem::temp_directory_path() / ("lightcore_weights_" + std::to_string(rng()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(temp_dir const&) = delete;
  temp_dir& operator=(temp_dir const&) = delete;
  std::filesystem::path const& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

// A copy of config `base` (tests/data/configs) with some fields replaced, written to `dir`.
inline std::filesystem::path derived_config(std::filesystem::path const& dir,
                                            std::string const& base, nlohmann::json const& patch) {
  std::ifstream in(config_path(base));
  nlohmann::json j = nlohmann::json::parse(in);
  j.merge_patch(patch);
  std::filesystem::create_directories(dir);
  std::filesystem::path const out = dir / ("derived_" + base);
  std::ofstream(out) << j.dump(2);
  return out;
}

// tiny_deepseek_v3 with FP8 shapes the FP8 GEMM takes as they are (q_lora and the intermediate
// sizes multiples of 128) and 8 heads, so that world 2 and 4 split every FP8 weight on 128
// boundaries; K/128 = 2 for the hidden size, so its scales are padded to 4 columns.
inline nlohmann::json const aligned_fp8_patch = {
    {"q_lora_rank", 256},       {"num_attention_heads", 8},
    {"num_key_value_heads", 8}, {"moe_intermediate_size", 512},
    {"n_routed_experts", 8},    {"n_group", 4},
    {"topk_group", 2},          {"num_experts_per_tok", 4}};

// Writes a random checkpoint of `config` into `dir` (several shards unless shard_bytes is large).
inline tools::random_checkpoint_summary write_checkpoint(std::filesystem::path const& config,
                                                         std::filesystem::path const& dir,
                                                         std::optional<tools::weight_format> format,
                                                         std::uint64_t shard_bytes = 400'000) {
  tools::random_checkpoint_options o;
  o.config = config;
  o.out = dir;
  o.format = format;
  o.seed = run_seed();
  o.shard_bytes = shard_bytes;
  return tools::write_random_checkpoint(o);
}

// Every view of a model's weights with a name (linear weights and their scales separately).
using view_visitor = std::function<void(std::string const& name, tensor_view const& v)>;

inline void for_each_linear(std::string const& name, ds::linear_weight const& l,
                            view_visitor const& f) {
  if (l.w.data() == nullptr) return;
  f(name + ".w", l.w);
  if (l.fp8()) f(name + ".scales", l.scales);
}

inline void for_each_view(ds::model_views const& m, view_visitor const& f) {
  f("embed", m.embed);
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    ds::layer_weights const& l = m.layers[i];
    std::string const p = "layer" + std::to_string(i) + ".";
    f(p + "input_norm", l.input_norm);
    f(p + "post_attention_norm", l.post_attention_norm);
    for_each_linear(p + "q_a_kv_a", l.attn.q_a_kv_a, f);
    if (l.attn.q_a_norm.data() != nullptr) f(p + "q_a_norm", l.attn.q_a_norm);
    for_each_linear(p + "q_b", l.attn.q_b, f);
    for_each_linear(p + "q", l.attn.q, f);
    for_each_linear(p + "kv_a", l.attn.kv_a, f);
    f(p + "kv_a_norm", l.attn.kv_a_norm);
    f(p + "w_uk", l.attn.w_uk);
    f(p + "w_uv", l.attn.w_uv);
    for_each_linear(p + "o", l.attn.o, f);
    if (l.mlp) {
      for_each_linear(p + "mlp.gate_up", l.mlp->gate_up, f);
      for_each_linear(p + "mlp.down", l.mlp->down, f);
    }
    if (l.moe) {
      f(p + "router", l.moe->router);
      if (l.moe->router_bias.data() != nullptr) f(p + "router_bias", l.moe->router_bias);
      for_each_linear(p + "experts.gate_up", l.moe->gate_up, f);
      for_each_linear(p + "experts.down", l.moe->down, f);
      if (l.moe->shared) {
        for_each_linear(p + "shared.gate_up", l.moe->shared->gate_up, f);
        for_each_linear(p + "shared.down", l.moe->shared->down, f);
      }
    }
  }
  f("norm", m.norm);
  f("lm_head", m.lm_head);
}

// The elements of a host view (any strides, rank <= 3), as bytes in logical order.
inline std::vector<std::uint8_t> logical_bytes(tensor_view const& v) {
  std::size_t const es = v.element_size();
  std::vector<std::uint8_t> out;
  out.reserve(std::size_t(v.numel()) * es);
  tensor_view const v3 =
      v.rank() == 3 ? v
      : v.rank() == 2
          ? tensor_view(v.data(), v.type(), {1, v.size(0), v.size(1)},
                        {0, v.stride(0), v.stride(1)}, v.where())
          : tensor_view(v.data(), v.type(), {1, 1, v.size(0)}, {0, 0, v.stride(0)}, v.where());
  auto const* base = static_cast<std::uint8_t const*>(v3.data());
  for (std::int64_t a = 0; a < v3.size(0); ++a)
    for (std::int64_t b = 0; b < v3.size(1); ++b)
      for (std::int64_t c = 0; c < v3.size(2); ++c) {
        std::int64_t const off = a * v3.stride(0) + b * v3.stride(1) + c * v3.stride(2);
        out.insert(out.end(), base + off * std::int64_t(es), base + (off + 1) * std::int64_t(es));
      }
  return out;
}

}  // namespace lightcore::test
