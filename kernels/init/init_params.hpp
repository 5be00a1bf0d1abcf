// init: seeded random tensor contents without a checkpoint ("dummy weights"). Every element is a
// pure function of (seed, tensor id, index): a counter-based hash, so the CPU reference and the
// CUDA kernel write the same bits whatever the launch geometry, and any element can be recomputed
// on its own. The formulas both backends apply live here.
#pragma once

#include <cstdint>
#include <string_view>

#include "lightcore/core/macros.hpp"
#include "lightcore/core/rounding.hpp"

namespace lightcore::kernels {

// The splitmix64 increment (2^64 / golden ratio): consecutive counters land far apart.
inline constexpr std::uint64_t init_golden = 0x9E37'79B9'7F4A'7C15ull;

// splitmix64's finaliser: a bijective 64-bit mix in which every input bit affects every output
// bit; integer arithmetic only, so both backends agree trivially.
LC_HOST_DEVICE constexpr std::uint64_t init_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
  return z ^ (z >> 31);
}

// The key of one tensor's stream: the run's seed and the tensor's id mixed, so that tensors of one
// seed are independent and a new seed changes every tensor.
constexpr std::uint64_t init_key(std::uint64_t seed, std::uint64_t tensor_id) noexcept {
  return init_mix(seed ^ init_mix(tensor_id + init_golden));
}

// A stable tensor id from a name (FNV-1a, 64 bit), so that ids do not depend on load order.
constexpr std::uint64_t init_tensor_id(std::string_view name) noexcept {
  std::uint64_t h = 0xCBF2'9CE4'8422'2325ull;
  for (char const ch : name) h = (h ^ std::uint8_t(ch)) * 0x0000'0100'0000'01B3ull;
  return h;
}

// sqrt(3) rounded to fp32: scales the Irwin-Hall sum below to unit variance.
inline constexpr float init_sqrt3 = 1.7320508f;

// Element `index` of the stream `key`: mean 0, standard deviation 1, bounded by +-2 sqrt(3) (an
// Irwin-Hall sum of four 16-bit uniforms: bell-shaped, never an outlier that would saturate an FP8
// code). Everything before the last product is exact in fp32: the sum is below 2^18, the offsets
// and the power-of-two scale keep it within 24 bits.
LC_HOST_DEVICE inline float init_normalish(std::uint64_t key, std::uint64_t index) noexcept {
  std::uint64_t const r = init_mix(key + (index + 1) * init_golden);
  std::uint32_t sum = 0;
  for (int i = 0; i < 4; ++i) sum += std::uint32_t((r >> (16 * i)) & 0xFFFFu);
  float const u = (float(sum) + 2.0f) * 0x1p-16f;  // sum of four (k + 0.5) / 65536, in (0, 4)
  return mul_rn(u - 2.0f, init_sqrt3);
}

// mean + stddev * normalish, each operation rounded once.
LC_HOST_DEVICE inline float init_value(std::uint64_t key, std::uint64_t index, float mean,
                                       float stddev) noexcept {
  return add_rn(mul_rn(init_normalish(key, index), stddev), mean);
}

// out[i] = T(init_value(key, i, mean, stddev)) for i in [0, numel). Plain data: passed by value to
// the kernel.
template <class T>
struct init_params {
  T* out = nullptr;        // [numel], contiguous
  std::int64_t numel = 0;  // elements
  std::uint64_t key = 0;   // init_key(seed, tensor_id)
  float mean = 0.0f;       // of the values before conversion to T
  float stddev = 1.0f;     // of the values before conversion to T
};

}  // namespace lightcore::kernels
