// rope and YaRN against transformers itself: tests/data/deepseek/rope_golden.json holds, for
// DeepSeek-R1's and V2-Lite's rope_scaling, bf16-representable q [T, 3, 64] and k [T, 64], the
// positions, the cos/sin rows and the rotated q and k that transformers' DeepseekV3RotaryEmbedding
// and apply_rotary_pos_emb_interleave give (fp32), and DeepseekV3Attention's softmax scale
// (tools/deepseek_golden.py writes it).
// Bounds: the reference forms the angle p * inv_freq in fp32 (an error up to ~p * 2^-24 rad) where
// lightcore uses double, so cos/sin agree within 2e-6 + 2.4e-7 * p; the rotated values are rounded
// once to bf16 here (relative L2 ~2e-3), allowed 6e-3 up to position 4096 and 2e-2 beyond, where
// the reference's own angle error grows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/rope/rope.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/bf16.hpp"

namespace lightcore {
namespace {

nlohmann::json load_golden() {
  std::string const path = std::string(LIGHTCORE_TEST_DATA_DIR) + "/deepseek/rope_golden.json";
  std::ifstream in(path);
  if (!in) ADD_FAILURE() << "missing fixture " << path << " (tools/deepseek_golden.py)";
  return in ? nlohmann::json::parse(in) : nlohmann::json{};
}

kernels::yarn_config config_of(nlohmann::json const& c) {
  auto const& s = c.at("rope_scaling");
  kernels::yarn_config y;
  y.rope_theta = c.at("rope_theta").get<double>();
  y.factor = s.at("factor").get<double>();
  y.mscale = s.at("mscale").get<double>();
  y.mscale_all_dim = s.at("mscale_all_dim").get<double>();
  y.beta_fast = s.at("beta_fast").get<double>();
  y.beta_slow = s.at("beta_slow").get<double>();
  y.original_max_position_embeddings = s.at("original_max_position_embeddings").get<std::int64_t>();
  return y;
}

double relative_l2(std::vector<double> const& got, std::vector<double> const& want) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

TEST(RopeGolden, MatchesTransformers) {
  nlohmann::json const golden = load_golden();
  ASSERT_TRUE(golden.contains("cases"));
  auto const positions = golden.at("positions").get<std::vector<std::int32_t>>();
  std::int64_t const t = std::int64_t(positions.size()), h = golden.at("heads").get<std::int64_t>();
  ASSERT_GE(golden.at("cases").size(), 2u);
  for (auto const& [name, c] : golden.at("cases").items()) {
    SCOPED_TRACE(name);
    kernels::yarn_config const y = config_of(c);
    EXPECT_NEAR(kernels::yarn_softmax_scale(y, 192), c.at("softmax_scale").get<double>(),
                1e-6 * c.at("softmax_scale").get<double>());
    EXPECT_NEAR(kernels::yarn_attention_factor(y), c.at("attention_scaling").get<double>(), 1e-6);

    std::int64_t const max_positions = positions.back() + 1;
    std::vector<float> cache = kernels::yarn_cos_sin_cache(y, max_positions);
    auto const cos_ref = c.at("cos").get<std::vector<double>>();
    auto const sin_ref = c.at("sin").get<std::vector<double>>();
    for (std::int64_t i = 0; i < t; ++i) {
      double const tol = 2e-6 + 2.4e-7 * positions[std::size_t(i)];
      float const* row = cache.data() + std::int64_t(positions[std::size_t(i)]) * 64;
      for (int d = 0; d < 32; ++d) {
        // transformers' cos/sin rows are cat(freqs, freqs): the first half is each frequency once.
        ASSERT_NEAR(row[d], cos_ref[std::size_t(i * 64 + d)], tol)
            << "cos, position " << positions[std::size_t(i)];
        ASSERT_NEAR(row[32 + d], sin_ref[std::size_t(i * 64 + d)], tol)
            << "sin, position " << positions[std::size_t(i)];
      }
    }

    auto const q_in = c.at("q").get<std::vector<float>>();
    auto const k_in = c.at("k").get<std::vector<float>>();
    std::vector<bf16> q(q_in.size()), k(k_in.size());
    for (std::size_t i = 0; i < q.size(); ++i) {
      q[i] = bf16(q_in[i]);
      ASSERT_EQ(float(q[i]), q_in[i]) << "fixture input not bf16-representable";
    }
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = bf16(k_in[i]);
    std::vector<std::int32_t> pos = positions;
    backend::cpu cpu;
    kernels::apply_rope(
        cpu, tensor_view(q.data(), dtype::bf16, {t, h, 64}),
        tensor_view(k.data(), dtype::bf16, {t, 64}), tensor_view(pos.data(), dtype::i32, {t}),
        tensor_view(cache.data(), dtype::f32, {max_positions, 64}), cpu.make_stream());
    auto const q_ref = c.at("q_out").get<std::vector<double>>();
    auto const k_ref = c.at("k_out").get<std::vector<double>>();
    for (bool far : {false, true}) {
      std::vector<double> got, want;
      for (std::int64_t i = 0; i < t; ++i) {
        if ((positions[std::size_t(i)] > 4096) != far) continue;
        for (std::int64_t j = 0; j < h * 64; ++j) {
          got.push_back(float(q[std::size_t(i * h * 64 + j)]));
          want.push_back(q_ref[std::size_t(i * h * 64 + j)]);
        }
        for (std::int64_t j = 0; j < 64; ++j) {
          got.push_back(float(k[std::size_t(i * 64 + j)]));
          want.push_back(k_ref[std::size_t(i * 64 + j)]);
        }
      }
      ASSERT_FALSE(want.empty());
      EXPECT_LT(relative_l2(got, want), far ? 2e-2 : 6e-3)
          << (far ? "positions > 4096" : "positions <= 4096");
    }
  }
}

}  // namespace
}  // namespace lightcore
