// The random-checkpoint tool end to end on the tiny config: every tensor of the layout read back
// with its shape and dtype, FP8 weights that dequantise to the drawn distribution, sharding,
// determinism by seed, and the executable itself when it is built.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io_test_util.hpp"
#include "lightcore/io/hf_config.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "models/deepseek_v3/checkpoint_layout.hpp"
#include "tools/random_checkpoint/random_checkpoint.hpp"

namespace lightcore {
namespace {

namespace ds = models::deepseek_v3;
using tools::weight_format;

// Every layout tensor is in the checkpoint with its dtype and shape, and nothing else is.
void expect_matches_layout(io::safetensors_checkpoint const& ckpt, io::model_config const& c) {
  auto const layout = ds::checkpoint_layout(c);
  EXPECT_EQ(ckpt.size(), layout.size());
  for (auto const& t : layout) {
    ASSERT_TRUE(ckpt.contains(t.name)) << t.name;
    tensor_view const v = ckpt.tensor(t.name);
    EXPECT_EQ(v.type(), t.type) << t.name;
    EXPECT_EQ(v.shape(), t.shape) << t.name;
  }
  for (auto const& shard : ckpt.shards()) EXPECT_EQ(shard.metadata().at("format"), "pt");
}

// Mean and standard deviation of a tensor, dequantised with its block scales when FP8.
std::pair<double, double> moments(io::safetensors_checkpoint const& ckpt, ds::tensor_spec const& t,
                                  std::int64_t block = 128) {
  double sum = 0, sq = 0;
  tensor_view const v = ckpt.tensor(t.name);
  std::int64_t const rows = v.size(0), cols = v.rank() > 1 ? v.size(1) : 1;
  bool const fp8 = t.type == dtype::fp8_e4m3;
  auto const scales =
      fp8 ? ckpt.tensor(t.name + "_scale_inv").as<float, 2>() : typed_view<float, 2>{};
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t k = 0; k < cols; ++k) {
      double x = 0;
      if (fp8) {
        x = float(v.as<fp8_e4m3, 2>()(r, k)) * double(scales(r / block, k / block));
      } else if (t.type == dtype::bf16) {
        x = v.rank() > 1 ? float(v.as<bf16, 2>()(r, k)) : float(v.as<bf16, 1>()(r));
      } else {
        x = v.as<float, 1>()(r);
      }
      sum += x;
      sq += x * x;
    }
  }
  double const n = double(rows * cols);
  double const mean = sum / n;
  return {mean, std::sqrt(std::max(0.0, sq / n - mean * mean))};
}

TEST(RandomCheckpoint, TinyFp8EndToEnd) {
  test::scratch_dir dir;
  tools::random_checkpoint_options opt;
  opt.config = test::config_fixture("tiny_deepseek_v3.json");
  opt.out = dir / "ckpt";
  opt.seed = 7;
  opt.shard_bytes = 2'000'000;  // several shards for a ~7 MB model
  auto const summary = tools::write_random_checkpoint(opt);
  EXPECT_GT(summary.shards, 2u);
  ASSERT_TRUE(summary.config.quantization.has_value());

  // The written config parses to the same model.
  auto const c = io::load_model_config(opt.out / "config.json");
  EXPECT_EQ(c.num_hidden_layers, 3);
  ASSERT_TRUE(c.quantization.has_value());

  io::safetensors_checkpoint const ckpt(opt.out);
  EXPECT_EQ(ckpt.shard_count(), summary.shards);
  expect_matches_layout(ckpt, c);
  for (auto const& shard : ckpt.shards())
    EXPECT_LE(std::filesystem::file_size(shard.path()), opt.shard_bytes + 4096)
        << shard.path() << " exceeds the shard size beyond its header";

  // Norms are ones; weights are drawn with std 0.02 and mean 0. With n >= 32768 draws the sample
  // std is within 2% of 0.02 (its relative standard error is about 1 / sqrt(2n) < 0.4%) and the
  // mean within 0.0005 (standard error 0.02 / sqrt(n) ~ 1.1e-4); FP8 rounding adds a relative
  // error of at most 2^-4 per element, with mean ~0.
  auto const layout = ds::checkpoint_layout(c);
  std::size_t drawn = 0;
  for (auto const& t : layout) {
    if (t.role == ds::tensor_role::norm) {
      auto const [mean, sd] = moments(ckpt, t);
      EXPECT_EQ(mean, 1.0) << t.name;
      EXPECT_EQ(sd, 0.0) << t.name;
    } else if (t.role != ds::tensor_role::block_scale && t.numel() >= 32768) {
      auto const [mean, sd] = moments(ckpt, t);
      EXPECT_NEAR(sd, 0.02, 0.02 * 0.02) << t.name;
      EXPECT_NEAR(mean, 0.0, 5e-4) << t.name;
      ++drawn;
    }
  }
  // Checked: 2 MoE layers x (16 experts + 1 shared) x 3 projections, the dense MLP's 3, 3 layers x
  // 5 attention projections, the embedding and lm_head; only the routers and biases are smaller.
  EXPECT_EQ(drawn, 2u * 17 * 3 + 3 + 3 * 5 + 2);
  // Every FP8 block uses the full e4m3 range: its largest code is +-448 (the block amax maps
  // there), so the scales are the amax / 448 they claim to be.
  auto const w = ckpt.tensor("model.layers.1.mlp.experts.3.gate_proj.weight").as<fp8_e4m3, 2>();
  for (std::int64_t rb = 0; rb < 2; ++rb) {
    for (std::int64_t kb = 0; kb < 2; ++kb) {
      float amax = 0;
      for (std::int64_t r = rb * 128; r < std::min<std::int64_t>(192, rb * 128 + 128); ++r)
        for (std::int64_t k = kb * 128; k < kb * 128 + 128; ++k)
          amax = std::max(amax, std::fabs(float(w(r, k))));
      EXPECT_EQ(amax, 448.0f) << "block " << rb << ", " << kb;
    }
  }
}

TEST(RandomCheckpoint, Fp8WeightsDequantiseToTheBf16Draws) {
  // The same seed draws the same values in both formats: the bf16 checkpoint holds them rounded
  // to bf16 (relative error <= 2^-9), the fp8 one quantised per 128x128 block. So each block's
  // scale * 448 is the bf16 values' amax within 2^-8, and each dequantised weight is its bf16
  // value within fp8's half-ulp (2^-4 relative), the scale's subnormal step (2^-9 * scale) and
  // the bf16 rounding.
  test::scratch_dir dir;
  tools::random_checkpoint_options opt;
  opt.config = test::config_fixture("tiny_deepseek_v3.json");
  opt.seed = 5;
  opt.out = dir / "fp8";
  opt.format = weight_format::fp8;
  auto const summary = tools::write_random_checkpoint(opt);
  opt.out = dir / "bf16";
  opt.format = weight_format::bf16;
  tools::write_random_checkpoint(opt);
  io::safetensors_checkpoint const q(dir / "fp8"), b(dir / "bf16");
  std::size_t checked = 0;
  for (auto const& t : ds::checkpoint_layout(summary.config)) {
    if (t.type != dtype::fp8_e4m3) continue;
    auto const codes = q.tensor(t.name).as<fp8_e4m3, 2>();
    auto const scales = q.tensor(t.name + "_scale_inv").as<float, 2>();
    auto const ref = b.tensor(t.name).as<bf16, 2>();
    for (std::int64_t rb = 0; rb < scales.shape[0]; ++rb) {
      for (std::int64_t kb = 0; kb < scales.shape[1]; ++kb) {
        float const s = scales(rb, kb);
        std::int64_t const r1 = std::min(codes.shape[0], rb * 128 + 128);
        std::int64_t const k1 = std::min(codes.shape[1], kb * 128 + 128);
        float amax = 0;
        for (std::int64_t r = rb * 128; r < r1; ++r) {
          for (std::int64_t k = kb * 128; k < k1; ++k) {
            float const want = float(ref(r, k));
            float const got = float(codes(r, k)) * s;
            amax = std::max(amax, std::fabs(want));
            ASSERT_LE(std::fabs(got - want),
                      0x1p-4f * std::fabs(want) + 0x1p-9f * s + 0x1p-8f * std::fabs(want))
                << t.name << " [" << r << ", " << k << "]";
          }
        }
        EXPECT_NEAR(s * 448.0f, amax, 0x1p-8f * amax) << t.name << " block " << rb << ", " << kb;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 500u);
}

TEST(RandomCheckpoint, Bf16IsDeterministicBySeed) {
  test::scratch_dir dir;
  tools::random_checkpoint_options opt;
  opt.config = test::config_fixture("tiny_deepseek_v3.json");
  opt.format = weight_format::bf16;
  opt.seed = 11;
  opt.out = dir / "a";
  tools::write_random_checkpoint(opt);
  opt.out = dir / "b";
  opt.shard_bytes = 1'000'000;  // other shard boundaries must not change the values
  tools::write_random_checkpoint(opt);
  opt.out = dir / "c";
  opt.seed = 12;
  tools::write_random_checkpoint(opt);

  auto const c = io::load_model_config(dir / "a" / "config.json");
  EXPECT_FALSE(c.quantization.has_value()) << "bf16 output must drop quantization_config";
  io::safetensors_checkpoint const a(dir / "a"), b(dir / "b"), other(dir / "c");
  EXPECT_EQ(a.shard_count(), 1u);
  EXPECT_GT(b.shard_count(), 1u);
  expect_matches_layout(a, c);
  std::size_t differing = 0;
  for (auto const& name : a.names()) {
    auto const x = a.bytes(name), y = b.bytes(name), z = other.bytes(name);
    ASSERT_EQ(x.size(), y.size()) << name;
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size()), 0) << name << " depends on sharding";
    if (std::memcmp(x.data(), z.data(), x.size()) != 0) ++differing;
  }
  // Every tensor but the norms (ones whatever the seed) changes with the seed.
  std::size_t norms = 0;
  for (auto const& t : ds::checkpoint_layout(c)) norms += t.role == ds::tensor_role::norm;
  EXPECT_EQ(differing, a.size() - norms);
}

TEST(RandomCheckpoint, Fp8FromABf16Config) {
  test::scratch_dir dir;
  tools::random_checkpoint_options opt;
  opt.config = test::config_fixture("deepseek_v2_lite.json");
  // V2-Lite in full would be 31 GB: shrink it, keeping q_lora_rank null and greedy routing.
  auto j = io::json::parse(test::read_text(opt.config));
  j["num_hidden_layers"] = 2;
  j["hidden_size"] = 128;
  j["vocab_size"] = 64;
  j["intermediate_size"] = 200;
  j["moe_intermediate_size"] = 64;
  j["n_routed_experts"] = 8;
  j["num_attention_heads"] = 2;
  opt.config = dir / "small_v2.json";
  test::write_bytes(opt.config, j.dump());
  opt.out = dir / "ckpt";
  opt.format = weight_format::fp8;
  tools::write_random_checkpoint(opt);
  auto const c = io::load_model_config(opt.out / "config.json");
  ASSERT_TRUE(c.quantization.has_value()) << "fp8 output must add quantization_config";
  EXPECT_FALSE(c.q_lora_rank.has_value());
  io::safetensors_checkpoint const ckpt(opt.out);
  expect_matches_layout(ckpt, c);
  EXPECT_EQ(ckpt.tensor("model.layers.0.self_attn.q_proj.weight").type(), dtype::fp8_e4m3);
  EXPECT_EQ(ckpt.tensor("model.layers.0.mlp.down_proj.weight_scale_inv").shape(), (dims{1, 2}));
}

TEST(RandomCheckpoint, BadInputs) {
  test::scratch_dir dir;
  tools::random_checkpoint_options opt;
  opt.out = dir / "x";
  opt.config = dir / "absent.json";
  EXPECT_THROW(tools::write_random_checkpoint(opt), error);
  opt.config = dir / "bad.json";
  test::write_bytes(opt.config, R"({"model_type": "llama"})");
  EXPECT_THROW(tools::write_random_checkpoint(opt), error);
  EXPECT_FALSE(std::filesystem::exists(opt.out / "config.json"))
      << "nothing may be written for a config that does not parse";
}

#if defined(LIGHTCORE_RANDOM_CHECKPOINT_EXE)
TEST(RandomCheckpoint, Executable) {
  test::scratch_dir dir;
  std::string const exe = LIGHTCORE_RANDOM_CHECKPOINT_EXE;
  std::string const cfg = test::config_fixture("tiny_deepseek_v3.json").string();
  std::string const out = (dir / "ckpt").string();
  std::string const log = (dir / "log.txt").string();
  std::string const cmd = "'" + exe + "' --config '" + cfg + "' --out '" + out +
                          "' --dtype fp8 --seed 3 --shard-bytes 3000000 > '" + log + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << test::read_text(log);
  EXPECT_NE(test::read_text(log).find("shard(s)"), std::string::npos) << test::read_text(log);
  io::safetensors_checkpoint const ckpt(dir / "ckpt");
  expect_matches_layout(ckpt, io::load_model_config(dir / "ckpt" / "config.json"));

  // Usage errors exit with 2 and say what was wrong.
  std::string const bad =
      "'" + exe + "' --config '" + cfg + "' --out '" + out + "' --dtype int4 > '" + log + "' 2>&1";
  int const rc = std::system(bad.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 2) << rc;
  EXPECT_NE(test::read_text(log).find("int4"), std::string::npos) << test::read_text(log);
}
#else
TEST(RandomCheckpoint, Executable) {
  GTEST_SKIP() << "random_checkpoint is not built (LIGHTCORE_BUILD_TOOLS=OFF)";
}
#endif

}  // namespace
}  // namespace lightcore
