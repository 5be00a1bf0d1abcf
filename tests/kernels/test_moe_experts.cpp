// moe_experts on the CPU backend against a double-precision loop over tokens and slots with the
// same rounding points (bf16 gate and up, silu_and_mul_value, FP8 quantisation of x and a, bf16 y,
// bf16 out): small shapes, bf16 and FP8, block_m 64 and 128, one expert taking every token, ids of
// other ranks; and the argument checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/seed.hpp"
#include "kernels/activation/activation_params.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/quant/quant_params.hpp"
#include "moe_experts_test_util.hpp"

namespace lightcore {
namespace {

using kernels::moe_weight_format;

// v quantised per 128 values and dequantised (the quant kernel's formulas).
void quantise(std::vector<double>& v) {
  for (std::size_t k0 = 0; k0 < v.size(); k0 += 128) {
    float amax = 0.0f;
    for (std::size_t k = k0; k < k0 + 128; ++k) amax = kernels::quant_amax(amax, float(v[k]));
    float const scale = kernels::quant_group_scale(amax);
    float const inv = kernels::quant_inverse_scale(scale);
    for (std::size_t k = k0; k < k0 + 128; ++k)
      v[k] = double(float(kernels::quant_value<fp8_e4m3>(float(v[k]), inv))) * double(scale);
  }
}

double weight_at(test::moe_inputs const& in, tensor<backend::cpu> const& w,
                 tensor<backend::cpu> const& s, std::int64_t e, std::int64_t row, std::int64_t col,
                 std::int64_t rows, std::int64_t cols) {
  std::int64_t const at = (e * rows + row) * cols + col;
  if (in.format == moe_weight_format::bf16) return float(static_cast<bf16 const*>(w.data())[at]);
  std::int64_t const ld = s.view().size(2), blocks = (rows + 127) / 128;
  float const scale =
      static_cast<float const*>(s.data())[(e * blocks + row / 128) * ld + col / 128];
  return double(float(static_cast<fp8_e4m3 const*>(w.data())[at])) * double(scale);
}

// The definition, token by token and slot by slot, in double.
std::vector<double> reference(test::moe_inputs const& in) {
  std::int64_t const t_count = in.tokens, k = in.shape.top_k, h = in.shape.hidden;
  std::int64_t const inter = in.shape.inter;
  bool const fp8 = in.format == moe_weight_format::fp8_block;
  std::vector<double> out(std::size_t(t_count * h));
  for (std::int64_t t = 0; t < t_count; ++t) {
    std::vector<double> x(static_cast<std::size_t>(h)), sum(static_cast<std::size_t>(h), 0.0);
    for (std::int64_t j = 0; j < h; ++j)
      x[std::size_t(j)] = float(in.hidden[std::size_t(t * h + j)]);
    if (fp8) quantise(x);
    for (std::int64_t s = 0; s < k; ++s) {
      std::int32_t const e = in.ids[std::size_t(t * k + s)];
      if (e < 0 || e >= in.shape.experts) continue;
      std::vector<double> a(static_cast<std::size_t>(inter));
      for (std::int64_t n = 0; n < inter; ++n) {
        double gate = 0.0, up = 0.0;
        for (std::int64_t j = 0; j < h; ++j) {
          gate += x[std::size_t(j)] *
                  weight_at(in, in.gate_up, in.gate_up_scales, e, n, j, 2 * inter, h);
          up += x[std::size_t(j)] *
                weight_at(in, in.gate_up, in.gate_up_scales, e, inter + n, j, 2 * inter, h);
        }
        a[std::size_t(n)] = float(kernels::silu_and_mul_value(bf16(float(gate)), bf16(float(up))));
      }
      if (fp8) quantise(a);
      double const w = in.weights[std::size_t(t * k + s)];
      for (std::int64_t j = 0; j < h; ++j) {
        double d = 0.0;
        for (std::int64_t n = 0; n < inter; ++n)
          d += a[std::size_t(n)] * weight_at(in, in.down, in.down_scales, e, j, n, h, inter);
        sum[std::size_t(j)] += float(bf16(float(d * w)));
      }
    }
    for (std::int64_t j = 0; j < h; ++j)
      out[std::size_t(t * h + j)] = float(bf16(float(sum[std::size_t(j)])));
  }
  return out;
}

struct cpu_case {
  std::int64_t tokens, block_m;
  moe_weight_format format;
  bool all_to_one;
};

class MoeExpertsCpu : public ::testing::TestWithParam<cpu_case> {};

// E 12, top-3, H 256, I 128 (two K blocks, one intermediate block): only 7 experts hit, so some
// experts get no row.
TEST_P(MoeExpertsCpu, MatchesDoublePrecisionLoop) {
  auto const c = GetParam();
  auto rng = test::test_rng();
  test::moe_shape const shape{12, 3, 256, 128};
  auto in = test::make_moe_inputs(shape, c.tokens, c.format, 7, c.all_to_one, rng);
  auto const got = test::moe_experts_on_cpu(in, c.block_m);
  // fp32 (Eigen) against double accumulation: the bf16 roundings of gate/up and y agree except
  // where a value lies within ~1e-6 of a rounding boundary; such a flip moves one output element
  // by about one bf16 ulp (FP8: rarely one fp8 code of a). 2e-3 relative L2, 3% of rms per element.
  test::expect_close(got, reference(in), 2e-3, 0.03, shape.hidden);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeExpertsCpu,
                         ::testing::Values(cpu_case{1, 64, moe_weight_format::bf16, false},
                                           cpu_case{5, 64, moe_weight_format::bf16, false},
                                           cpu_case{33, 128, moe_weight_format::bf16, true},
                                           cpu_case{1, 64, moe_weight_format::fp8_block, false},
                                           cpu_case{7, 128, moe_weight_format::fp8_block, false},
                                           cpu_case{33, 64, moe_weight_format::fp8_block, true}));

// Ids outside [0, E) (another rank's experts) add nothing; the others still do.
TEST(MoeExpertsCpuChecks, OtherRanksExpertsAddNothing) {
  auto rng = test::test_rng();
  auto in = test::make_moe_inputs({8, 2, 128, 128}, 9, moe_weight_format::bf16, 8, false, rng);
  for (std::size_t r = 0; r < in.ids.size(); r += 3) in.ids[r] = r % 2 == 0 ? -1 : 8 + int(r);
  auto const got = test::moe_experts_on_cpu(in, 64);
  test::expect_close(got, reference(in), 2e-3, 0.03, 128);
}

TEST(MoeExpertsCpuChecks, WorkspaceGrowsWithTokensAndFp8KeepsTheIntermediateInCodes) {
  auto const bf =
      kernels::moe_experts_workspace_bytes(64, 8, 256, 64, 7168, 2048, moe_weight_format::bf16);
  auto const f8 = kernels::moe_experts_workspace_bytes(64, 8, 256, 64, 7168, 2048,
                                                       moe_weight_format::fp8_block);
  // bf16: the intermediate (sorted rows x I x 2 bytes) and the routed outputs. FP8: the same
  // routed outputs, the hidden state's and the intermediate's codes (1 byte) and scales (4 bytes
  // per 128), and no bf16 intermediate (GEMM 1 quantises in its epilogue).
  auto const layout = [](moe_weight_format f) {
    auto const cap = kernels::moe_align_capacity(64, 8, 256, 64);
    return kernels::make_moe_experts_workspace_layout(64, 8, cap.sorted_rows, 7168, 2048, f);
  };
  EXPECT_GT(layout(moe_weight_format::bf16).routed_out, 0) << "after the bf16 intermediate";
  EXPECT_EQ(layout(moe_weight_format::fp8_block).routed_out, 0) << "no bf16 intermediate before it";
  EXPECT_LT(f8, bf);
  EXPECT_GT(
      kernels::moe_experts_workspace_bytes(65, 8, 256, 64, 7168, 2048, moe_weight_format::bf16),
      bf);
}

TEST(MoeExpertsCpuChecks, BadArgumentsAreRejected) {
  auto rng = test::test_rng();
  auto in = test::make_moe_inputs({8, 2, 128, 128}, 3, moe_weight_format::bf16, 8, false, rng);
  backend::cpu cpu;
  auto a = test::align_on_cpu(in.ids, 3, 2, 8, 64);
  std::vector<bf16> out(3 * 128);
  std::int64_t const bytes =
      kernels::moe_experts_workspace_bytes(3, 2, 8, 64, 128, 128, moe_weight_format::bf16);
  tensor<backend::cpu> ws(cpu, dtype::u8, {bytes});
  auto run = [&](std::int64_t block_m, tensor_view const& workspace, tensor_view const& o,
                 std::int64_t shared = 0) {
    auto w = test::weight_views(in);
    w.shared = shared;
    kernels::moe_experts(cpu, tensor_view(in.hidden.data(), dtype::bf16, {3, 128}),
                         tensor_view(in.ids.data(), dtype::i32, {3, 2}),
                         tensor_view(in.weights.data(), dtype::f32, {3, 2}), a.views(3, 2), block_m,
                         w, o, workspace, cpu.make_stream());
  };
  tensor_view const o(out.data(), dtype::bf16, {3, 128});
  EXPECT_NO_THROW(run(64, ws.view(), o));
  EXPECT_NO_THROW(run(64, ws.view(), o, 8));      // every expert of the stack shared: allowed
  EXPECT_THROW(run(64, ws.view(), o, 9), error);  // more shared experts than the stack holds
  EXPECT_THROW(run(64, ws.view(), o, -1), error);
  EXPECT_THROW(run(32, ws.view(), o), error);  // no tile for block_m 32
  EXPECT_THROW(run(64, tensor_view(ws.data(), dtype::u8, {bytes - 1}), o), error);  // too small
  EXPECT_THROW(run(64, ws.view(), tensor_view(out.data(), dtype::bf16, {3, 127})), error);
  EXPECT_THROW(kernels::moe_experts_workspace_bytes(3, 2, 8, 64, 100, 128, moe_weight_format::bf16),
               error);  // H not a multiple of 128
}

}  // namespace
}  // namespace lightcore
