// rope/yarn: the YaRN rotary parameters DeepSeek-V3/R1 use (inverse frequencies, the factor on
// cos/sin, the softmax-scale correction) and the host cos/sin cache that apply_rope reads. Host
// only, header-only, no CUDA. Mirrors Hugging Face transformers 5.x: `_compute_yarn_parameters`
// in modeling_rope_utils.py, and `yarn_get_mscale` plus `DeepseekV3Attention.__init__` in
// models/deepseek_v3/modeling_deepseek_v3.py. Everything is computed in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::kernels {

// config.json's "rope_theta" and "rope_scaling" of a YaRN model; the defaults are DeepSeek-V3/R1's.
struct yarn_config {
  double rope_theta = 10000.0;  // RoPE base (dimensionless), > 1
  int rotary_dim = 64;          // rotated dims per head (qk_rope_head_dim); even; apply_rope: 64
  double factor = 40.0;         // context extension factor s (dimensionless), > 0
  // Context length of pre-training (tokens): sets the correction range of find_correction_dim.
  std::int64_t original_max_position_embeddings = 4096;
  // Rotations over the original context: dims turning more than beta_fast times keep their
  // frequency (extrapolate), dims turning fewer than beta_slow times are divided by `factor`
  // (interpolate), a linear ramp in between. Both > 0.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  // YaRN "mscale" coefficients; 0 means absent (the reference's None: a falsy value takes the
  // other branch in _compute_yarn_parameters and in the attention's softmax scale).
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
  // An explicit "attention_factor" overrides the one derived from mscale; 0 means absent.
  double attention_factor = 0.0;
  // The reference floors/ceils the correction range ("truncate", default True).
  bool truncate = true;
  // Longest context (tokens) of the extended model: the default cos/sin cache length.
  std::int64_t max_position_embeddings = 163840;
};

inline void check_yarn_config(yarn_config const& c) {
  LC_CHECK(c.rotary_dim > 0 && c.rotary_dim % 2 == 0,
           "yarn rotary_dim " << c.rotary_dim << " is not allowed; it must be even and positive");
  LC_CHECK(c.rope_theta > 1.0, "yarn rope_theta " << c.rope_theta << " must be > 1");
  LC_CHECK(c.factor > 0.0, "yarn factor " << c.factor << " must be > 0");
  LC_CHECK(c.original_max_position_embeddings > 0, "yarn original_max_position_embeddings "
                                                       << c.original_max_position_embeddings
                                                       << " must be > 0");
  LC_CHECK(c.beta_fast > 0.0 && c.beta_slow > 0.0, "yarn beta_fast "
                                                       << c.beta_fast << " and beta_slow "
                                                       << c.beta_slow << " must both be > 0");
  LC_CHECK(c.mscale >= 0.0 && c.mscale_all_dim >= 0.0 && c.attention_factor >= 0.0,
           "yarn mscale " << c.mscale << ", mscale_all_dim " << c.mscale_all_dim
                          << " and attention_factor " << c.attention_factor
                          << " must be >= 0 (0: absent)");
}

// `yarn_get_mscale(scale, mscale)` (modeling_deepseek_v3.py; `get_mscale` inside
// _compute_yarn_parameters is the same function): 1 for scale <= 1, else 0.1 mscale ln(scale) + 1.
inline double yarn_get_mscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// `find_correction_dim`: the (fractional) dim index whose wavelength makes `num_rotations` turns
// over `max_positions` tokens: dim ln(max_positions / (2 pi num_rotations)) / (2 ln theta).
inline double yarn_correction_dim(double num_rotations, int dim, double theta,
                                  double max_positions) {
  return double(dim) * std::log(max_positions / (num_rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

struct yarn_range {
  double low;   // last dim index that keeps its frequency (ramp 0 up to here)
  double high;  // first dim index fully divided by factor (ramp 1 from here)
};

// `find_correction_range(beta_fast, beta_slow, dim, theta, original_max_position_embeddings,
// truncate)`: low from beta_fast floored, high from beta_slow ceiled, clamped to [0, dim - 1].
// Note the clamp is to dim - 1 (63), not dim / 2 - 1: the reference's, kept as is.
inline yarn_range yarn_correction_range(yarn_config const& c) {
  auto const max_pos = double(c.original_max_position_embeddings);
  double low = yarn_correction_dim(c.beta_fast, c.rotary_dim, c.rope_theta, max_pos);
  double high = yarn_correction_dim(c.beta_slow, c.rotary_dim, c.rope_theta, max_pos);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  return {std::max(low, 0.0), std::min(high, double(c.rotary_dim - 1))};
}

// The YaRN inverse frequencies [rotary_dim / 2] (radians per token), as _compute_yarn_parameters:
// pos_freq_i = theta^(2i / dim); ramp_i = clamp((i - low) / (high - low), 0, 1) (`linear_ramp_
// factor`, high nudged by 0.001 when equal to low); extrapolation weight 1 - ramp_i;
// inv_freq_i = ramp_i / (factor pos_freq_i) + (1 - ramp_i) / pos_freq_i.
// DeepSeek-V3: low 10, high 23; i <= 10 keep theta^(-2i/64), i >= 23 are divided by 40.
// The reference computes this in fp32; here it is double (differences ~1e-7 relative).
inline std::vector<double> yarn_inv_freq(yarn_config const& c) {
  check_yarn_config(c);
  yarn_range const r = yarn_correction_range(c);
  double const span = r.high == r.low ? 0.001 : r.high - r.low;
  std::vector<double> inv_freq(std::size_t(c.rotary_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    double const pos_freq = std::pow(c.rope_theta, double(2 * i) / double(c.rotary_dim));
    double const ramp = std::clamp((double(i) - r.low) / span, 0.0, 1.0);
    double const extrapolation = 1.0 - ramp;
    inv_freq[i] =
        (1.0 / (c.factor * pos_freq)) * (1.0 - extrapolation) + (1.0 / pos_freq) * extrapolation;
  }
  return inv_freq;
}

// The factor that multiplies cos and sin (the reference's `attention_scaling`, the second value
// _compute_yarn_parameters returns): an explicit attention_factor if given; else, when mscale and
// mscale_all_dim are both set (nonzero), get_mscale(factor, mscale) / get_mscale(factor,
// mscale_all_dim); else get_mscale(factor). DeepSeek-V3/R1 (both 1.0): exactly 1.
inline double yarn_attention_factor(yarn_config const& c) {
  check_yarn_config(c);
  if (c.attention_factor != 0.0) return c.attention_factor;
  if (c.mscale != 0.0 && c.mscale_all_dim != 0.0)
    return yarn_get_mscale(c.factor, c.mscale) / yarn_get_mscale(c.factor, c.mscale_all_dim);
  return yarn_get_mscale(c.factor);
}

// The softmax scale of DeepSeek's MLA (DeepseekV3Attention.__init__): qk_head_dim^-0.5, times m^2
// with m = yarn_get_mscale(factor, mscale_all_dim) when mscale_all_dim is set (nonzero).
// DeepSeek-V3/R1 (qk_head_dim 192 = 128 nope + 64 rope): 192^-0.5 (1 + 0.1 ln 40)^2 ~ 0.13523.
inline double yarn_softmax_scale(yarn_config const& c, int qk_head_dim) {
  check_yarn_config(c);
  LC_CHECK(qk_head_dim > 0, "yarn_softmax_scale: qk_head_dim " << qk_head_dim << " must be > 0");
  double scale = 1.0 / std::sqrt(double(qk_head_dim));
  if (c.mscale_all_dim != 0.0) {
    double const m = yarn_get_mscale(c.factor, c.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

// Floats in a cos/sin cache of `max_positions` rows: [max_positions, rotary_dim], each row
// [cos(p f_0) .. cos(p f_{d/2-1}), sin(p f_0) .. sin(p f_{d/2-1})] times the attention factor.
inline std::size_t yarn_cache_elements(yarn_config const& c, std::int64_t max_positions) {
  return std::size_t(max_positions) * std::size_t(c.rotary_dim);
}

// Fills `out` ([max_positions, rotary_dim] fp32, layout above) for positions 0 .. max_positions-1.
// The angle p * inv_freq_i, its cos and sin and the attention factor are computed in double and
// rounded to float once. (The reference forms the angle in fp32, which at p ~ 1.6e5 is off by up
// to ~0.02 rad, and then rounds cos/sin to the activation dtype (bf16); see rope.hpp.)
inline void yarn_fill_cos_sin_cache(yarn_config const& c, std::int64_t max_positions,
                                    std::span<float> out) {
  check_yarn_config(c);
  LC_CHECK(max_positions > 0,
           "yarn cos/sin cache: max_positions " << max_positions << " must be > 0");
  LC_CHECK(out.size() == yarn_cache_elements(c, max_positions),
           "yarn cos/sin cache of " << max_positions << " positions x " << c.rotary_dim << " needs "
                                    << yarn_cache_elements(c, max_positions) << " floats; got "
                                    << out.size());
  std::vector<double> const inv_freq = yarn_inv_freq(c);
  double const scale = yarn_attention_factor(c);
  std::size_t const half = inv_freq.size();
  for (std::int64_t p = 0; p < max_positions; ++p) {
    float* row = out.data() + std::size_t(p) * 2 * half;
    for (std::size_t i = 0; i < half; ++i) {
      double const angle = double(p) * inv_freq[i];
      row[i] = float(std::cos(angle) * scale);
      row[half + i] = float(std::sin(angle) * scale);
    }
  }
}

// The cache as a new host buffer.
inline std::vector<float> yarn_cos_sin_cache(yarn_config const& c, std::int64_t max_positions) {
  check_yarn_config(c);
  LC_CHECK(max_positions > 0,
           "yarn cos/sin cache: max_positions " << max_positions << " must be > 0");
  std::vector<float> out(yarn_cache_elements(c, max_positions));
  yarn_fill_cos_sin_cache(c, max_positions, out);
  return out;
}

}  // namespace lightcore::kernels
