// Runtime element types (dtype) and their mapping to the C++ types that kernels template on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string_view>
#include <type_traits>

#include "lightcore/core/bf16.hpp"
#include "lightcore/core/fp16.hpp"
#include "lightcore/core/fp8.hpp"
#include "lightcore/core/macros.hpp"

namespace lightcore {

// Element types that tensors may hold. Kernels are chosen from a dtype in one dispatch place per
// kernel family (see dispatch_dtype below); nothing else switches on it.
enum class dtype : std::uint8_t {
  f32,
  bf16,
  f16,
  fp8_e4m3,
  i32,
  i64,
  u8,
};

inline constexpr std::size_t size_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::bf16: return 2;
    case dtype::f16: return 2;
    case dtype::fp8_e4m3: return 1;
    case dtype::i32: return 4;
    case dtype::i64: return 8;
    case dtype::u8: return 1;
  }
  return 0;
}

inline constexpr std::string_view name_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::bf16: return "bf16";
    case dtype::f16: return "f16";
    case dtype::fp8_e4m3: return "fp8_e4m3";
    case dtype::i32: return "i32";
    case dtype::i64: return "i64";
    case dtype::u8: return "u8";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& os, dtype t) { return os << name_of(t); }

// dtype_of<T>: the dtype tag of a C++ element type; a type without one does not compile.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr dtype value = dtype::f32;
};
template <>
struct dtype_of<bf16> {
  static constexpr dtype value = dtype::bf16;
};
template <>
struct dtype_of<fp16> {
  static constexpr dtype value = dtype::f16;
};
template <>
struct dtype_of<fp8_e4m3> {
  static constexpr dtype value = dtype::fp8_e4m3;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr dtype value = dtype::i32;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr dtype value = dtype::i64;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr dtype value = dtype::u8;
};

template <class T>
inline constexpr dtype dtype_v = dtype_of<std::remove_cv_t<T>>::value;

template <class T>
concept element = requires {
  dtype_of<std::remove_cv_t<T>>::value;
};

// The C++ type of a dtype, for the dispatch below.
template <dtype D>
struct type_of;
template <>
struct type_of<dtype::f32> {
  using type = float;
};
template <>
struct type_of<dtype::bf16> {
  using type = bf16;
};
template <>
struct type_of<dtype::f16> {
  using type = fp16;
};
template <>
struct type_of<dtype::fp8_e4m3> {
  using type = fp8_e4m3;
};
template <>
struct type_of<dtype::i32> {
  using type = std::int32_t;
};
template <>
struct type_of<dtype::i64> {
  using type = std::int64_t;
};
template <>
struct type_of<dtype::u8> {
  using type = std::uint8_t;
};
template <dtype D>
using type_of_t = typename type_of<D>::type;

}  // namespace lightcore
