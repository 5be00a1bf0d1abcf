// Helpers shared by the rope tests (CPU and CUDA): the reference's rotation written out
// independently of the kernels (transformers' apply_rotary_pos_emb_interleave, line by line), a
// bf16-faithful variant of it, and random inputs.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "lightcore/core/bf16.hpp"

namespace lightcore::test {

inline constexpr int rope_d = 64;  // rotated dims per row
inline constexpr int rope_half = rope_d / 2;

struct rope_row_reference {
  std::array<double, rope_d> value;      // the exact result, in the reference's output order
  std::array<double, rope_d> magnitude;  // |x' cos| + |rotate_half(x') sin|, for error bounds
};

// apply_rotary_pos_emb_interleave on one row x[64] with the cache row cs (cos[32], sin[32]):
//   x' = x.view(32, 2).transpose(-1, -2).reshape(64)   -> x'[j] = x[2j], x'[32 + j] = x[2j + 1]
//   rotate_half(x') = cat(-x'[32:], x'[:32])
//   cos = cat(freqs, freqs).cos(), sin likewise       -> cos[j] = cos[j + 32] = cs[j]
//   out = x' * cos + rotate_half(x') * sin             (left in the order of x')
// in double, from the same float cos/sin the kernel reads.
inline rope_row_reference hf_interleave_rope(bf16 const* x, float const* cs) {
  std::array<double, rope_d> xp{}, rot{}, cos_full{}, sin_full{};
  for (int j = 0; j < rope_half; ++j) {
    xp[j] = float(x[2 * j]);
    xp[rope_half + j] = float(x[2 * j + 1]);
  }
  for (int j = 0; j < rope_half; ++j) {
    rot[j] = -xp[rope_half + j];
    rot[rope_half + j] = xp[j];
  }
  for (int j = 0; j < rope_d; ++j) {
    cos_full[j] = cs[j % rope_half];
    sin_full[j] = cs[rope_half + j % rope_half];
  }
  rope_row_reference r{};
  for (int j = 0; j < rope_d; ++j) {
    r.value[j] = xp[j] * cos_full[j] + rot[j] * sin_full[j];
    r.magnitude[j] = std::abs(xp[j] * cos_full[j]) + std::abs(rot[j] * sin_full[j]);
  }
  return r;
}

// The same in the reference's own arithmetic: cos/sin rounded to bf16 (`cos.to(x.dtype)`), each
// product rounded to bf16, then the sum rounded (PyTorch's bf16 elementwise ops compute in float
// and round each result).
inline std::array<bf16, rope_d> hf_interleave_rope_bf16(bf16 const* x, float const* cs) {
  std::array<bf16, rope_d> out{};
  for (int j = 0; j < rope_d; ++j) {
    int const i = j % rope_half;
    bf16 const xp = j < rope_half ? x[2 * i] : x[2 * i + 1];
    bf16 const rot = j < rope_half ? bf16(-float(x[2 * i + 1])) : x[2 * i];
    bf16 const c = bf16(cs[i]), s = bf16(cs[rope_half + i]);
    bf16 const t1 = bf16(float(xp) * float(c)), t2 = bf16(float(rot) * float(s));
    out[j] = bf16(float(t1) + float(t2));
  }
  return out;
}

// Allowed |got - exact| for a bf16 output computed in fp32 and rounded once: half an ulp of bf16
// is at most 2^-8 |value| (8 significant bits), and the fp32 product and fma add at most
// 2^-24 each of the terms' magnitudes (bounded generously by 2^-20 here).
inline double rope_tolerance(double exact, double magnitude) {
  return std::ldexp(std::abs(exact), -8) + std::ldexp(magnitude, -20);
}

// n bf16 values from N(0, 1) (never all zeros; activations-like).
inline std::vector<bf16> random_bf16(std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<bf16> v(n);
  for (bf16& x : v) x = bf16(dist(rng));
  return v;
}

}  // namespace lightcore::test
