// What the moe_experts tests share: the model shapes, random inputs on the host (hidden states,
// routing restricted to a set of hit experts, bf16 or FP8 block-scaled expert weights filled only
// for the hit experts), alignment on the CPU, and the comparison of two outputs.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/gemm/gemm_params.hpp"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp8.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {

struct moe_shape {
  std::int64_t experts, top_k, hidden, inter;
};
inline constexpr moe_shape v2_lite_shape{64, 6, 2048, 1408};
inline constexpr moe_shape r1_shape{256, 8, 7168, 2048};
inline constexpr moe_shape r1_tp8_shape{256, 8, 7168, 256};

// Host inputs of one moe_experts call. Weights are allocated for every expert but written only
// for the hit ones (untouched host pages cost nothing), so that R1's 256 experts fit a test.
struct moe_inputs {
  moe_shape shape;
  std::int64_t tokens = 0;
  kernels::moe_weight_format format = kernels::moe_weight_format::bf16;
  std::vector<std::int32_t> hit;  // the experts any token routes to
  std::vector<bf16> hidden;       // [T, H]
  std::vector<std::int32_t> ids;  // [T, top_k]
  std::vector<float> weights;     // [T, top_k]
  tensor<backend::cpu> gate_up, down, gate_up_scales, down_scales;
};

// Splitmix-style fast uniform values in [-1, 1): weight slices have up to 44M elements each.
struct fast_uniform {
  std::uint64_t state;
  float next() {
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    z ^= z >> 31;
    return float(std::int32_t(z >> 32)) * (1.0f / 2147483648.0f);
  }
};

// Fills expert e's [rows, cols] slice: bf16 values of magnitude ~1/sqrt(cols), or fp8 codes over
// the whole e4m3 range with block scales that bring them to the same magnitude.
inline void fill_expert(moe_inputs& in, tensor<backend::cpu>& w, tensor<backend::cpu>& s,
                        std::int64_t e, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  fast_uniform u{seed};
  float const mag = 1.0f / std::sqrt(float(cols));
  std::int64_t const base = e * rows * cols;
  if (in.format == kernels::moe_weight_format::bf16) {
    auto* p = static_cast<bf16*>(w.data()) + base;
    for (std::int64_t i = 0; i < rows * cols; ++i) p[i] = bf16(u.next() * mag);
    return;
  }
  auto* p = static_cast<fp8_e4m3*>(w.data()) + base;
  for (std::int64_t i = 0; i < rows * cols; ++i) p[i] = fp8_e4m3(u.next() * 448.0f);
  std::int64_t const blocks = (rows + 127) / 128, ld = s.view().size(2);
  auto* sp = static_cast<float*>(s.data()) + e * blocks * ld;
  for (std::int64_t i = 0; i < blocks * ld; ++i) sp[i] = (1.25f + 0.75f * u.next()) * mag / 448.0f;
}

// Random inputs: every token routes to top_k distinct experts of `hit_count` random ones (all of
// them where hit_count = experts); with `all_to_one`, expert hit[0] is in every token's choice.
inline moe_inputs make_moe_inputs(moe_shape shape, std::int64_t tokens,
                                  kernels::moe_weight_format format, std::int64_t hit_count,
                                  bool all_to_one, std::mt19937_64& rng) {
  backend::cpu cpu;
  moe_inputs in;
  in.shape = shape;
  in.tokens = tokens;
  in.format = format;
  std::int64_t const e = shape.experts, k = shape.top_k, h = shape.hidden, i = shape.inter;
  std::vector<std::int32_t> all(static_cast<std::size_t>(e));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  in.hit.assign(all.begin(), all.begin() + std::max(hit_count, k));

  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), weight(0.1f, 1.0f);
  in.hidden.resize(std::size_t(tokens * h));
  for (bf16& x : in.hidden) x = bf16(unit(rng));
  in.ids.resize(std::size_t(tokens * k));
  in.weights.resize(std::size_t(tokens * k));
  std::vector<std::int32_t> pool = in.hit;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin() + (all_to_one ? 1 : 0), pool.end(), rng);
    for (std::int64_t s = 0; s < k; ++s) {
      in.ids[std::size_t(t * k + s)] = pool[std::size_t(s)];
      in.weights[std::size_t(t * k + s)] = weight(rng);
    }
    // The forced expert in a random slot, not always the first.
    if (all_to_one) std::swap(in.ids[std::size_t(t * k)], in.ids[std::size_t(t * k + t % k)]);
  }

  bool const fp8 = format == kernels::moe_weight_format::fp8_block;
  dtype const wt = fp8 ? dtype::fp8_e4m3 : dtype::bf16;
  in.gate_up = tensor<backend::cpu>(cpu, wt, {e, 2 * i, h});
  in.down = tensor<backend::cpu>(cpu, wt, {e, h, i});
  if (fp8) {
    in.gate_up_scales = tensor<backend::cpu>(
        cpu, dtype::f32, {e, (2 * i + 127) / 128, kernels::gemm_fp8_weight_scale_ld(h)});
    in.down_scales = tensor<backend::cpu>(
        cpu, dtype::f32, {e, (h + 127) / 128, kernels::gemm_fp8_weight_scale_ld(i)});
  }
  std::uint64_t const seed = rng();
  for (std::int32_t x : in.hit) {
    fill_expert(in, in.gate_up, in.gate_up_scales, x, 2 * i, h, seed + 2 * std::uint64_t(x));
    fill_expert(in, in.down, in.down_scales, x, h, i, seed + 2 * std::uint64_t(x) + 1);
  }
  return in;
}

inline kernels::moe_expert_weights weight_views(moe_inputs const& in) {
  bool const fp8 = in.format == kernels::moe_weight_format::fp8_block;
  return {in.gate_up.view(), in.down.view(), fp8 ? in.gate_up_scales.view() : tensor_view{},
          fp8 ? in.down_scales.view() : tensor_view{}};
}

// moe_align's outputs on the CPU for ids [T, top_k].
struct host_align {
  std::vector<std::int32_t> counts, offsets, sorted, blocks, total, inverse;
  kernels::moe_align_outputs views(std::int64_t tokens, std::int64_t k) {
    return {tensor_view(counts.data(), dtype::i32, {std::int64_t(counts.size())}),
            tensor_view(offsets.data(), dtype::i32, {std::int64_t(offsets.size())}),
            tensor_view(sorted.data(), dtype::i32, {std::int64_t(sorted.size())}),
            tensor_view(blocks.data(), dtype::i32, {std::int64_t(blocks.size())}),
            tensor_view(total.data(), dtype::i32, {1}),
            tensor_view(inverse.data(), dtype::i32, {tokens, k})};
  }
};

inline host_align align_on_cpu(std::vector<std::int32_t>& ids, std::int64_t tokens, std::int64_t k,
                               std::int64_t experts, std::int64_t block_m) {
  backend::cpu cpu;
  auto const cap = kernels::moe_align_capacity(tokens, k, experts, block_m);
  host_align a{std::vector<std::int32_t>(std::size_t(experts)),
               std::vector<std::int32_t>(std::size_t(experts + 1)),
               std::vector<std::int32_t>(std::size_t(cap.sorted_rows)),
               std::vector<std::int32_t>(std::size_t(cap.blocks)),
               std::vector<std::int32_t>(1),
               std::vector<std::int32_t>(std::size_t(tokens * k))};
  kernels::moe_align(cpu, tensor_view(ids.data(), dtype::i32, {tokens, k}), experts, block_m,
                     a.views(tokens, k), cpu.make_stream());
  return a;
}

// out [T, H] by the CPU backend for the tokens `in` holds.
inline std::vector<bf16> moe_experts_on_cpu(moe_inputs& in, std::int64_t block_m) {
  backend::cpu cpu;
  std::int64_t const t = in.tokens, k = in.shape.top_k, h = in.shape.hidden;
  host_align a = align_on_cpu(in.ids, t, k, in.shape.experts, block_m);
  std::vector<bf16> out(std::size_t(t * h), bf16::quiet_nan());
  std::int64_t const bytes = kernels::moe_experts_workspace_bytes(t, k, in.shape.experts, block_m,
                                                                  h, in.shape.inter, in.format);
  tensor<backend::cpu> ws(cpu, dtype::u8, {std::max<std::int64_t>(bytes, 1)});
  kernels::moe_experts(cpu, tensor_view(in.hidden.data(), dtype::bf16, {t, h}),
                       tensor_view(in.ids.data(), dtype::i32, {t, k}),
                       tensor_view(in.weights.data(), dtype::f32, {t, k}), a.views(t, k), block_m,
                       weight_views(in), tensor_view(out.data(), dtype::bf16, {t, h}), ws.view(),
                       cpu.make_stream());
  return out;
}

// Compares got with want: every element finite, relative L2 error <= rel_l2, and no element
// further than elem_tol x rms(want) (a localised error that the L2 norm would dilute) plus one
// bf16 ulp of the element (2^-8 of it): the outputs are bf16, and when the GPU's fp32 sum and the
// reference differ in their last bits an element can round to the other neighbour, which for an
// element several times the rms is more than elem_tol x rms (seen: 0.2695 for 0.2715, rms 0.049).
inline void expect_close(std::vector<bf16> const& got, std::vector<double> const& want,
                         double rel_l2, double elem_tol, std::int64_t cols) {
  ASSERT_EQ(got.size(), want.size());
  double err = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const d = double(float(got[i])) - want[i];
    err += d * d;
    norm += want[i] * want[i];
  }
  double const rms = std::sqrt(norm / double(std::max<std::size_t>(got.size(), 1)));
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const g = float(got[i]);
    double const bound = elem_tol * rms + std::ldexp(std::fabs(want[i]), -8);
    if ((!std::isfinite(g) || std::fabs(g - want[i]) > bound) && ++bad <= 8)
      ADD_FAILURE() << "element [" << std::int64_t(i) / cols << ", " << std::int64_t(i) % cols
                    << "]: got " << g << ", want " << want[i] << " (rms " << rms << ")";
  }
  EXPECT_EQ(bad, 0);
  EXPECT_LE(std::sqrt(err / std::max(norm, 1e-30)), rel_l2);
}

inline std::vector<double> widen(std::vector<bf16> const& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = float(v[i]);
  return out;
}

}  // namespace lightcore::test
