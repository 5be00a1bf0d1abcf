// DeepSeek-V3/V2 weights on the CPU backend: every fused, split, stacked and re-strided tensor
// against the checkpoint's own tensors, FP8 kept or dequantised as the rules say, errors naming the
// tensor, the progress callback, dummy mode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "models/deepseek_v3/checkpoint_layout.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "weights_reference.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;

struct load_case {
  char const* name;
  char const* config;
  std::optional<tools::weight_format> format;
  bool aligned;               // the FP8-aligned variant of the config
  std::uint64_t shard_bytes;  // large: a single shard
};

class WeightsLoad : public ::testing::TestWithParam<load_case> {};

TEST_P(WeightsLoad, EveryTensorMatchesTheCheckpoint) {
  load_case const& t = GetParam();
  temp_dir dir;
  auto const config =
      t.aligned ? derived_config(dir.path(), t.config, aligned_fp8_patch) : config_path(t.config);
  auto const summary = write_checkpoint(config, dir.path() / "ckpt", t.format, t.shard_bytes);
  cpu backend;
  auto const m = ds::load_weights(backend, dir.path() / "ckpt");
  ASSERT_EQ(m.views().layers.size(), std::size_t(summary.config.num_hidden_layers));
  checkpoint_reference const ref(dir.path() / "ckpt", m.config(), {});
  ref.expect_model(m.views());
  EXPECT_GT(m.memory().total(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, WeightsLoad,
    ::testing::Values(
        load_case{"v3_fp8", "tiny_deepseek_v3.json", tools::weight_format::fp8, false, 400'000},
        load_case{"v3_fp8_aligned", "tiny_deepseek_v3.json", tools::weight_format::fp8, true,
                  400'000},
        load_case{"v3_bf16", "tiny_deepseek_v3.json", tools::weight_format::bf16, false, 400'000},
        load_case{"v3_bf16_single_shard", "tiny_deepseek_v3.json", tools::weight_format::bf16,
                  false, 1ull << 40},
        load_case{"v2_bf16", "tiny_deepseek_v2.json", std::nullopt, false, 400'000}),
    [](auto const& p) { return std::string(p.param.name); });

// Which linear weights of the tiny V3 config stay FP8: those whose K is a multiple of 128 and whose
// fused parts meet on a 128-row boundary; q_lora = 192 and moe_intermediate_size = 192 are not.
TEST(Weights, Fp8KeptWhereTheGemmTakesItElseDequantised) {
  cpu backend;
  auto c = io::load_model_config(config_path("tiny_deepseek_v3.json"));
  auto const m = ds::dummy_weights(backend, c);
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    ds::layer_weights const& l = m.layer(i);
    EXPECT_FALSE(l.attn.q_a_kv_a.fp8()) << "q_lora 192: the kv_a rows would start mid-block";
    EXPECT_FALSE(l.attn.q_b.fp8()) << "K = q_lora = 192";
    EXPECT_TRUE(l.attn.o.fp8()) << "K = 4 heads * 128";
    EXPECT_EQ(l.attn.w_uk.type(), dtype::bf16);
    if (l.mlp) {
      EXPECT_TRUE(l.mlp->gate_up.fp8() && l.mlp->down.fp8()) << "intermediate 512";
    } else {
      EXPECT_FALSE(l.moe->gate_up.fp8() || l.moe->down.fp8()) << "moe intermediate 192";
      EXPECT_EQ(l.moe->fused_shared, c.n_shared_experts) << "shared experts folded by default";
    }
  }
  EXPECT_FALSE(m.memory().dequantised.empty());
  auto const& d = m.memory().dequantised;
  EXPECT_NE(std::find(d.begin(), d.end(), "model.layers.0.self_attn.q_a_kv_a"), d.end());

  temp_dir dir;
  auto const aligned =
      ds::dummy_weights(backend, io::load_model_config(derived_config(
                                     dir.path(), "tiny_deepseek_v3.json", aligned_fp8_patch)));
  EXPECT_TRUE(aligned.memory().dequantised.empty());
  for (auto const& l : aligned.views().layers) {
    EXPECT_TRUE(l.attn.q_a_kv_a.fp8() && l.attn.q_b.fp8() && l.attn.o.fp8());
    EXPECT_EQ(l.attn.q_a_kv_a.w.shape(), (dims{256 + 512 + 64, 256}));
    EXPECT_EQ(l.attn.q_a_kv_a.scales.shape(), (dims{7, 2}));  // ceil(832 / 128), 256 / 128
    EXPECT_EQ(l.attn.q_a_kv_a.scales.stride(0), 4);           // padded to 4 for cuBLASLt
    if (l.moe) {
      // 8 routed experts and the shared one folded in after them.
      EXPECT_EQ(l.moe->gate_up.w.shape(), (dims{9, 1024, 256}));
      EXPECT_EQ(l.moe->gate_up.scales.shape(), (dims{9, 8, 2}));
      EXPECT_EQ(l.moe->down.w.shape(), (dims{9, 256, 512}));
      EXPECT_EQ(l.moe->down.scales.shape(), (dims{9, 2, 4}));
    }
  }
}

TEST(Weights, MemoryReportAddsUpByCategory) {
  cpu backend;
  auto const c = io::load_model_config(config_path("tiny_deepseek_v3.json"));
  auto const m = ds::dummy_weights(backend, c);
  std::uint64_t sum = 0;
  for_each_view(m.views(), [&](std::string const&, tensor_view const&) {});
  for (auto const b : m.memory().bytes) sum += b;
  EXPECT_EQ(sum, m.memory().total());
  // The embedding is vocab x hidden bf16; routed experts dominate the rest.
  EXPECT_EQ(m.memory()[ds::weight_category::embedding], std::uint64_t(1000 * 256 * 2));
  EXPECT_EQ(m.memory()[ds::weight_category::lm_head], std::uint64_t(1000 * 256 * 2));
  // 2 MoE layers of 16 experts, bf16 (dequantised): 3 matrices of 192 x 256.
  EXPECT_EQ(m.memory()[ds::weight_category::routed_experts],
            std::uint64_t(2 * 16 * 3 * 192 * 256 * 2));
  EXPECT_GT(m.memory()[ds::weight_category::attention], 0u);
  EXPECT_GT(m.memory()[ds::weight_category::norms], 0u);
  std::ostringstream os;
  os << m.memory();
  EXPECT_NE(os.str().find("routed_experts"), std::string::npos);
}

TEST(Weights, ProgressSeesEveryByteInFileOrder) {
  temp_dir dir;
  auto const summary = write_checkpoint(config_path("tiny_deepseek_v3.json"), dir.path(),
                                        tools::weight_format::fp8, 300'000);
  ASSERT_GT(summary.shards, 3u);
  auto const layout = ds::checkpoint_layout(summary.config);
  std::vector<std::pair<std::uint64_t, std::string>> calls;
  std::uint64_t total = 0;
  cpu backend;
  ds::load_options o;
  o.progress = [&](std::uint64_t done, std::uint64_t all, std::string const& name) {
    calls.emplace_back(done, name);
    total = all;
  };
  ds::load_weights(backend, dir.path(), o);
  EXPECT_EQ(total, ds::checkpoint_bytes(layout));
  ASSERT_EQ(calls.size(), layout.size());
  EXPECT_EQ(calls.back().first, total);
  io::safetensors_checkpoint const ck(dir.path());
  std::set<std::string> seen;
  std::uint64_t prev = 0;
  std::pair<std::string, std::uint64_t> prev_pos{"", 0};
  for (auto const& [done, name] : calls) {
    EXPECT_EQ(done - prev, ck.entry(name).nbytes()) << name;
    prev = done;
    EXPECT_TRUE(seen.insert(name).second) << name << " reported twice";
    // File order: shard by shard, each by offset.
    std::pair<std::string, std::uint64_t> const pos{ck.shard_of(name).path().filename().string(),
                                                    ck.entry(name).begin};
    EXPECT_LT(prev_pos, pos) << name;
    prev_pos = pos;
  }
  for (auto const& t : layout) EXPECT_TRUE(seen.count(t.name)) << t.name << " never reported";
}

// A single-file checkpoint copied from `from` with one tensor dropped, reshaped or retyped.
void write_defective(io::safetensors_checkpoint const& from, std::filesystem::path const& to,
                     std::string const& victim, char const* defect) {
  std::vector<io::safetensors_decl> decls;
  for (std::string const& name : from.names()) {
    auto const& e = from.entry(name);
    if (name == victim && std::string(defect) == "missing") continue;
    io::safetensors_decl d{name, e.type, e.shape};
    if (name == victim && std::string(defect) == "shape")
      std::swap(d.shape.front(), d.shape.back());
    if (name == victim && std::string(defect) == "dtype") d.type = io::st_dtype::f16;
    decls.push_back(d);
  }
  std::filesystem::create_directories(to);
  io::safetensors_writer w(to / "model.safetensors", decls);
  for (auto const& d : decls) {
    auto const bytes = from.bytes(d.name);
    std::vector<std::byte> data(bytes.begin(), bytes.end());
    data.resize(std::size_t(io::detail::st_byte_size(d.shape, io::size_of(d.type)).value()));
    w.append(d.name, data);
  }
  w.finish();
}

TEST(Weights, CheckpointErrorsNameTheTensor) {
  temp_dir dir;
  auto const summary = write_checkpoint(config_path("tiny_deepseek_v3.json"), dir.path() / "ok",
                                        tools::weight_format::fp8);
  io::safetensors_checkpoint const ck(dir.path() / "ok");
  cpu backend;
  struct defect {
    char const* kind;
    char const* tensor;
    char const* says;
  };
  for (defect const d :
       {defect{"missing", "model.layers.1.self_attn.kv_b_proj.weight", "missing"},
        defect{"shape", "model.layers.0.mlp.down_proj.weight", "shape"},
        defect{"dtype", "model.norm.weight", "dtype"},
        defect{"missing", "model.layers.2.mlp.experts.15.up_proj.weight_scale_inv", "missing"}}) {
    auto const out =
        dir.path() / (std::string(d.kind) + std::to_string(std::hash<std::string>{}(d.tensor)));
    write_defective(ck, out, d.tensor, d.kind);
    try {
      ds::load_weights(backend, summary.config, out / "model.safetensors");
      ADD_FAILURE() << "a checkpoint with " << d.kind << " " << d.tensor << " was accepted";
    } catch (error const& e) {
      std::string const what = e.message();
      EXPECT_NE(what.find(d.tensor), std::string::npos) << what;
      EXPECT_NE(what.find(d.says), std::string::npos) << what;
    }
  }
  // The intact single file loads.
  write_defective(ck, dir.path() / "intact", "", "none");
  EXPECT_NO_THROW(ds::load_weights(backend, summary.config, dir.path() / "intact"));
}

TEST(Weights, DummyIsDeterministicAndSeeded) {
  cpu backend;
  for (char const* config : {"tiny_deepseek_v3.json", "tiny_deepseek_v2.json"}) {
    auto const c = io::load_model_config(config_path(config));
    std::uint64_t const seed = run_seed();
    auto const a = ds::dummy_weights(backend, c, {{}, seed, {}});
    auto const b = ds::dummy_weights(backend, c, {{}, seed, {}});
    auto const other = ds::dummy_weights(backend, c, {{}, seed + 1, {}});
    std::map<std::string, std::vector<std::uint8_t>> first;
    for_each_view(a.views(),
                  [&](std::string const& n, tensor_view const& v) { first[n] = logical_bytes(v); });
    std::map<std::string, tensor_view> second, third;
    for_each_view(b.views(), [&](std::string const& n, tensor_view const& v) { second[n] = v; });
    for_each_view(other.views(), [&](std::string const& n, tensor_view const& v) { third[n] = v; });
    ASSERT_EQ(first.size(), second.size());
    for (auto const& [name, bytes] : first) {
      // Every tensor was filled (allocations start zeroed more often than not).
      EXPECT_NE(std::count(bytes.begin(), bytes.end(), std::uint8_t{0}),
                std::ptrdiff_t(bytes.size()))
          << config << " " << name;
      EXPECT_EQ(bytes, logical_bytes(second.at(name))) << config << " " << name;
      bool const ones = name.find("norm") != std::string::npos;
      if (!ones) {
        EXPECT_NE(bytes, logical_bytes(third.at(name))) << config << " " << name;
      }
    }
    // Values: norms ones, scales positive, bf16 weights with std near 0.02.
    tensor_view const norm = a.views().norm;
    for (std::int64_t i = 0; i < norm.numel(); ++i)
      ASSERT_EQ(norm.data_as<bf16>()[i].bits, bf16(1.0f).bits);
    auto const& l = a.layer(0);
    if (l.attn.o.fp8()) {
      tensor_view const s = l.attn.o.scales;
      for (std::int64_t i = 0; i < s.size(0); ++i)
        for (std::int64_t j = 0; j < s.size(1); ++j)
          EXPECT_GT(s.data_as<float>()[i * s.stride(0) + j], 0.0f);
    }
    tensor_view const wuk = l.attn.w_uk;
    double sum2 = 0;
    for (std::int64_t i = 0; i < wuk.numel(); ++i) {
      double const x = float(wuk.data_as<bf16>()[i]);
      sum2 += x * x;
    }
    // 65536 draws: the sample std is within 1% of 0.02 with overwhelming probability.
    EXPECT_NEAR(std::sqrt(sum2 / double(wuk.numel())), 0.02, 0.02 * 0.02) << config;
  }
}

}  // namespace
}  // namespace lightcore::test
