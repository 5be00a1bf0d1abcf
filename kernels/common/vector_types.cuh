// Register types shared by the kernel families: the word one vector access moves, and an element
// array that __builtin_bit_cast can move between element and word views.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lightcore::kernels::detail {

// The unsigned type that one load or store of Bytes bytes moves (4, 8 or 16: ld/st.global up to
// .v4.b32).
template <int Bytes>
struct vector_word;
template <>
struct vector_word<4> {
  using type = std::uint32_t;
};
template <>
struct vector_word<8> {
  using type = uint2;
};
template <>
struct vector_word<16> {
  using type = uint4;
};
template <int Bytes>
using vector_word_t = typename vector_word<Bytes>::type;

// N elements in registers; sizeof(reg_array<T, N>) == sizeof(vector_word_t<N * sizeof(T)>).
template <class T, int N>
struct reg_array {
  T v[N];
};

}  // namespace lightcore::kernels::detail
