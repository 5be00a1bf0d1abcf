// write_random_checkpoint: a Hugging Face checkpoint (config.json, sharded *.safetensors and
// model.safetensors.index.json) of a DeepSeek-V3/V2 config filled with seeded random weights, so
// that engines without access to the real weights load exactly the same model, byte for byte.
//
// Values: linear weights, the embedding, lm_head, the router and its correction bias are drawn
// with standard deviation 0.02 (transformers' initializer_range); norm weights are ones. FP8
// weights are quantised per 128x128 block (scale = block amax / 448, stored as weight_scale_inv).
// The draw is an Irwin-Hall sum of four 16-bit uniforms from splitmix64, seeded by the seed and
// the tensor's name: integer arithmetic and exactly rounded float operations, so the bytes are the
// same on every platform and do not depend on shard boundaries. Tensors are generated in chunks of
// rows and streamed to the files, so memory stays at a few MB whatever the model's size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "lightcore/core/bf16.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/fp16.hpp"
#include "lightcore/core/fp8.hpp"
#include "lightcore/io/hf_config.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "lightcore/io/safetensors_writer.hpp"
#include "models/deepseek_v3/checkpoint_layout.hpp"

namespace lightcore::tools {

enum class weight_format : std::uint8_t { bf16, fp8 };

struct random_checkpoint_options {
  std::filesystem::path config;  // the config.json to build from
  std::filesystem::path out;     // output directory, created when missing
  // bf16: no quantization_config; fp8: DeepSeek's block-scaled FP8. Default: fp8 when the config
  // has a quantization_config, else bf16. The config.json written says which.
  std::optional<weight_format> format;
  std::uint64_t seed = 0;
  std::uint64_t shard_bytes = 5'000'000'000;  // per shard; transformers' default max_shard_size
};

struct random_checkpoint_summary {
  io::model_config config;  // as written to <out>/config.json
  std::size_t tensors = 0;
  std::size_t shards = 0;
  std::uint64_t data_bytes = 0;  // tensor bytes over all shards
};

namespace detail {

inline constexpr float init_std = 0.02f;              // transformers' initializer_range default
inline constexpr float fp8_max = 448.0f;              // largest finite e4m3 magnitude
inline constexpr float min_block_amax = 1e-10f;       // keeps an all-zero block's scale finite
inline constexpr std::size_t chunk_bytes = 8u << 20;  // float staging per chunk

// splitmix64: a tiny generator whose whole state is one integer, defined by integer arithmetic.
class value_stream {
 public:
  explicit value_stream(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
  // Mean 0, standard deviation 1, within +-2*sqrt(3): the sum of four uniforms on (0, 1) (exact
  // in float: 16-bit numerators) minus 2 has variance 1/3.
  float normalish() noexcept {
    std::uint64_t const r = next();
    std::uint32_t sum = 0;
    for (int i = 0; i < 4; ++i) sum += std::uint32_t((r >> (16 * i)) & 0xFFFF);
    float const u = (float(sum) + 2.0f) * 0x1p-16f;  // sum of four (k + 0.5) / 65536
    return (u - 2.0f) * 1.7320508f;
  }

 private:
  std::uint64_t state_;
};

// The generator seed of one tensor: FNV-1a of its name mixed with the checkpoint seed.
inline std::uint64_t tensor_seed(std::uint64_t seed, std::string_view name) {
  std::uint64_t h = 0xCBF2'9CE4'8422'2325ull;
  for (char const ch : name) h = (h ^ std::uint8_t(ch)) * 0x0000'0100'0000'01B3ull;
  return value_stream(h ^ seed).next();
}

inline void append_values(io::safetensors_writer& w, models::deepseek_v3::tensor_spec const& t,
                          std::vector<float> const& v) {
  std::vector<std::byte> bytes(v.size() * size_of(t.type));
  for (std::size_t i = 0; i < v.size(); ++i) {
    switch (t.type) {
      case dtype::f32: std::memcpy(&bytes[i * 4], &v[i], 4); break;
      case dtype::bf16: {
        std::uint16_t const b = bf16(v[i]).bits;
        std::memcpy(&bytes[i * 2], &b, 2);
        break;
      }
      case dtype::f16: {
        std::uint16_t const b = fp16(v[i]).bits;
        std::memcpy(&bytes[i * 2], &b, 2);
        break;
      }
      default: LC_THROW("random checkpoint: no generator for " << t.name << " of " << t.type);
    }
  }
  w.append(t.name, bytes);
}

// A tensor in torch_dtype (or f32): ones for norms, else normal-ish * init_std, row chunk by row
// chunk.
inline void write_plain(io::safetensors_writer& w, models::deepseek_v3::tensor_spec const& t,
                        std::uint64_t seed) {
  using models::deepseek_v3::tensor_role;
  value_stream rng(tensor_seed(seed, t.name));
  std::int64_t const cols = t.shape.rank() > 1 ? t.shape[t.shape.rank() - 1] : t.numel();
  std::int64_t const rows = cols == 0 ? 0 : t.numel() / cols;
  std::int64_t const chunk_rows = std::max<std::int64_t>(
      1, std::int64_t(chunk_bytes / sizeof(float)) / std::max<std::int64_t>(cols, 1));
  std::vector<float> v;
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    std::int64_t const n = std::min(chunk_rows, rows - r0) * cols;
    v.resize(std::size_t(n));
    for (auto& x : v) x = t.role == tensor_role::norm ? 1.0f : rng.normalish() * init_std;
    append_values(w, t, v);
  }
}

// An FP8 linear weight [N, K] and its weight_scale_inv [ceil(N/bn), ceil(K/bk)]: each row block
// of bn rows is drawn, quantised block by block and appended; the scales follow at the end.
inline void write_fp8_linear(io::safetensors_writer& w, models::deepseek_v3::tensor_spec const& t,
                             models::deepseek_v3::tensor_spec const& scale,
                             io::fp8_block_quantization const& q, std::uint64_t seed) {
  value_stream rng(tensor_seed(seed, t.name));
  std::int64_t const rows = t.shape[0], cols = t.shape[1];
  std::int64_t const col_blocks = scale.shape[1];
  std::vector<float> scales;
  scales.reserve(std::size_t(scale.numel()));
  std::vector<float> v;
  std::vector<std::byte> codes;
  for (std::int64_t r0 = 0; r0 < rows; r0 += q.block_n) {
    std::int64_t const n = std::min(q.block_n, rows - r0);
    v.resize(std::size_t(n * cols));
    for (auto& x : v) x = rng.normalish() * init_std;
    codes.resize(v.size());
    for (std::int64_t cb = 0; cb < col_blocks; ++cb) {
      std::int64_t const c0 = cb * q.block_k, c1 = std::min(cols, c0 + q.block_k);
      float amax = 0.0f;
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(v[r * cols + c]));
      float const s = std::max(amax, min_block_amax) / fp8_max;
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t c = c0; c < c1; ++c)
          codes[r * cols + c] = std::byte(fp8_e4m3(v[r * cols + c] / s).bits);
      scales.push_back(s);
    }
    w.append(t.name, codes);
  }
  w.append(scale.name, std::as_bytes(std::span(scales)));
}

// The config written with the checkpoint: the input with quantization_config added or removed
// to match `format`; everything else as given.
inline std::string output_config(std::string const& text, std::string const& where,
                                 std::optional<weight_format>& format) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (nlohmann::ordered_json::exception const& e) {
    LC_THROW(where << ": not valid JSON (" << e.what() << ")");
  }
  LC_CHECK(j.is_object(), where << ": expected a JSON object");
  bool const quantised = j.contains("quantization_config") && !j["quantization_config"].is_null();
  if (!format) format = quantised ? weight_format::fp8 : weight_format::bf16;
  if (*format == weight_format::bf16) {
    j.erase("quantization_config");
  } else if (!quantised) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  }
  return j.dump(2) + "\n";
}

}  // namespace detail

inline random_checkpoint_summary write_random_checkpoint(random_checkpoint_options const& opt) {
  namespace fs = std::filesystem;
  namespace ds = models::deepseek_v3;
  LC_CHECK(opt.shard_bytes > 0, "random checkpoint: shard size must be positive");
  std::ifstream in(opt.config, std::ios::binary);
  LC_CHECK(in.good(), "cannot open config " << opt.config << " for reading");
  std::ostringstream text;
  text << in.rdbuf();
  std::optional<weight_format> format = opt.format;
  std::string const config_text = detail::output_config(text.str(), opt.config.string(), format);

  random_checkpoint_summary summary;
  summary.config = io::parse_model_config(config_text, opt.config.string());
  std::vector<ds::tensor_spec> const layout = ds::checkpoint_layout(summary.config);

  // Shards: consecutive tensors up to shard_bytes, a weight and its scales never split (so that
  // one writer streams both); a unit larger than a shard gets a shard of its own.
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t filled = 0;
  for (std::size_t i = 0; i < layout.size();) {
    std::size_t const n =
        i + 1 < layout.size() && layout[i + 1].role == ds::tensor_role::block_scale ? 2 : 1;
    std::uint64_t bytes = 0;
    for (std::size_t k = i; k < i + n; ++k) bytes += layout[k].nbytes();
    if (filled > 0 && filled + bytes > opt.shard_bytes) {
      shards.emplace_back();
      filled = 0;
    }
    for (std::size_t k = i; k < i + n; ++k) shards.back().push_back(k);
    filled += bytes;
    i += n;
  }

  fs::create_directories(opt.out);
  {
    std::ofstream out(opt.out / "config.json", std::ios::binary | std::ios::trunc);
    out << config_text;
    out.close();
    LC_CHECK(out.good(), "cannot write " << opt.out / "config.json");
  }
  std::map<std::string, std::string> weight_map;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<io::safetensors_decl> decls;
    for (std::size_t k : shards[s]) {
      auto const dims = layout[k].shape.span();
      decls.push_back(
          {layout[k].name, io::st_dtype_of(layout[k].type), {dims.begin(), dims.end()}});
      weight_map.emplace(layout[k].name, file);
      summary.data_bytes += layout[k].nbytes();
    }
    // transformers refuses safetensors files without format metadata.
    io::safetensors_writer w(opt.out / file, decls, {{"format", "pt"}});
    for (std::size_t j = 0; j < shards[s].size(); ++j) {
      ds::tensor_spec const& t = layout[shards[s][j]];
      if (t.type == dtype::fp8_e4m3) {
        detail::write_fp8_linear(w, t, layout[shards[s][j + 1]], *summary.config.quantization,
                                 opt.seed);
        ++j;  // the scales were written with it
      } else {
        detail::write_plain(w, t, opt.seed);
      }
    }
    w.finish();
  }
  io::write_safetensors_index(opt.out / io::safetensors_index_name, weight_map, summary.data_bytes);
  summary.tensors = layout.size();
  summary.shards = shards.size();
  return summary;
}

}  // namespace lightcore::tools
