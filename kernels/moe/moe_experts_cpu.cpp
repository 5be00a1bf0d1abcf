// moe experts: the CPU reference. Expert by expert, the rows routed to it are gathered and
// multiplied in fp32 (FP8: both operands dequantised, the activations quantised at the same
// points as on the GPU), each element summed in an order that does not depend on how many rows
// the expert got, with the rounding points of moe_experts_params.hpp; then every token sums its
// slots in slot order.
#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "kernels/activation/activation_params.hpp"
#include "kernels/common/cpu_matmul.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/quant/quant_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"

namespace lightcore::kernels::detail {
namespace {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Row `row` of m (bf16 values held as floats) quantised per 128 columns and dequantised in place,
// with quant_cpu's formulas: the values the FP8 GEMM sees.
void quantise_row(matrix& m, Eigen::Index row) {
  for (Eigen::Index k0 = 0; k0 < m.cols(); k0 += quant_group_size) {
    float amax = 0.0f;
    for (Eigen::Index k = k0; k < k0 + quant_group_size; ++k) amax = quant_amax(amax, m(row, k));
    float const scale = quant_group_scale(amax);
    float const inverse = quant_inverse_scale(scale);
    for (Eigen::Index k = k0; k < k0 + quant_group_size; ++k)
      m(row, k) = float(quant_value<fp8_e4m3>(m(row, k), inverse)) * scale;
  }
}

// Rows [j0, j1) of expert e's [rows, cols] weight slice widened to fp32 (FP8: times its block
// scales), into dst ([j1 - j0, cols]).
void expert_weight_rows(moe_experts_params const& p, void const* stacked, float const* scales,
                        std::int64_t scales_ld, std::int64_t e, std::int64_t rows,
                        std::int64_t cols, std::int64_t j0, std::int64_t j1, float* dst) {
  std::int64_t const base = e * rows * cols;
  if (p.format == moe_weight_format::bf16) {
    auto const* src = static_cast<bf16 const*>(stacked) + base;
    for (std::int64_t i = j0; i < j1; ++i)
      for (std::int64_t j = 0; j < cols; ++j) dst[(i - j0) * cols + j] = float(src[i * cols + j]);
  } else {
    auto const* src = static_cast<fp8_e4m3 const*>(stacked) + base;
    std::int64_t const blocks = (rows + 127) / 128;
    float const* s = scales + e * blocks * scales_ld;
    for (std::int64_t i = j0; i < j1; ++i)
      for (std::int64_t j = 0; j < cols; ++j)
        dst[(i - j0) * cols + j] = float(src[i * cols + j]) * s[(i / 128) * scales_ld + j / 128];
  }
}

// out [n, rows] = x [n, cols] . (expert e's [rows, cols] slice)^T, each element summed in a fixed
// order (kernels/common/cpu_matmul.hpp): a token's result does not depend on the other tokens
// routed to the same expert.
matrix expert_product(moe_experts_params const& p, matrix const& x, void const* stacked,
                      float const* scales, std::int64_t scales_ld, std::int64_t e,
                      std::int64_t rows, std::int64_t cols) {
  matrix out(x.rows(), rows);
  matmul_nt_fixed_order(x.data(), cols, x.rows(), rows, cols, out.data(), rows,
                        [&](std::int64_t j0, std::int64_t j1, float* dst) {
                          expert_weight_rows(p, stacked, scales, scales_ld, e, rows, cols, j0, j1,
                                             dst);
                        });
  return out;
}

}  // namespace

void moe_experts_cpu(moe_experts_params const& p) {
  std::int64_t const h = p.hidden_size, inter = p.inter, k = p.top_k;
  std::int64_t const rows = p.tokens * k;
  bool const fp8 = p.format == moe_weight_format::fp8_block;
  auto const* hidden = static_cast<bf16 const*>(p.hidden);

  // Each routed row's weighted expert output, bf16-rounded, as fp32; rows of other ranks' experts
  // stay unused.
  std::vector<float> y(static_cast<std::size_t>(rows * h), 0.0f);
  std::vector<bool> valid(static_cast<std::size_t>(rows), false);
  std::vector<std::vector<std::int64_t>> by_expert(static_cast<std::size_t>(p.experts));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int32_t const e = p.topk_ids[r];
    if (e >= 0 && e < p.experts) {
      by_expert[std::size_t(e)].push_back(r);
      valid[std::size_t(r)] = true;
    }
  }

  for (std::int64_t e = 0; e < p.experts; ++e) {
    auto const& list = by_expert[std::size_t(e)];
    if (list.empty()) continue;
    auto const n = Eigen::Index(list.size());
    matrix x(n, h);
    for (Eigen::Index i = 0; i < n; ++i) {
      bf16 const* src = hidden + (list[std::size_t(i)] / k) * p.hidden_ld;
      for (std::int64_t j = 0; j < h; ++j) x(i, j) = float(src[j]);
      if (fp8) quantise_row(x, i);
    }
    matrix const gate_up =  // [n, 2I]
        expert_product(p, x, p.gate_up, p.gate_up_scales, p.gate_up_scales_ld, e, 2 * inter, h);
    matrix a(n, inter);
    for (Eigen::Index i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < inter; ++j)
        a(i, j) = float(silu_and_mul_value(bf16(gate_up(i, j)), bf16(gate_up(i, inter + j))));
      if (fp8) quantise_row(a, i);
    }
    matrix const down =  // [n, H]
        expert_product(p, a, p.down, p.down_scales, p.down_scales_ld, e, h, inter);
    for (Eigen::Index i = 0; i < n; ++i) {
      std::int64_t const r = list[std::size_t(i)];
      float const weight = p.topk_weights[r];
      for (std::int64_t j = 0; j < h; ++j)
        y[std::size_t(r * h + j)] = float(bf16(down(i, j) * weight));
    }
  }

  auto* out = static_cast<bf16*>(p.out);
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (std::int64_t j = 0; j < h; ++j) {
      float sum = 0.0f;
      for (std::int64_t s = 0; s < k; ++s)
        if (valid[std::size_t(t * k + s)]) sum += y[std::size_t((t * k + s) * h + j)];
      out[t * p.out_ld + j] = bf16(sum);
    }
  }
}

}  // namespace lightcore::kernels::detail
