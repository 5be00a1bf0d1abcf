// typed_view<T, Rank>: a non-owning, statically typed and ranked view with strides in elements.
// It is a plain aggregate, cheap to pass by value to CUDA kernels, and performs no checks (the
// checked conversion from a runtime tensor_view is tensor_view::as<T, Rank>()).
#pragma once

#include <cstdint>

#include "lightcore/core/macros.hpp"

namespace lightcore {

template <class T, int Rank>
struct typed_view {
  static_assert(Rank >= 1, "typed_view needs rank >= 1; use a plain T* for scalars");
  using value_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  std::int64_t shape[Rank] = {};
  std::int64_t stride[Rank] = {};  // in elements

  LC_HOST_DEVICE constexpr std::int64_t size(int d) const { return shape[d]; }

  LC_HOST_DEVICE constexpr std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < Rank; ++d) n *= shape[d];
    return n;
  }

  template <class... I>
  LC_HOST_DEVICE constexpr std::int64_t offset(I... idx) const {
    static_assert(sizeof...(I) == Rank, "typed_view: one index per dimension");
    std::int64_t const i[] = {static_cast<std::int64_t>(idx)...};
    std::int64_t off = 0;
    for (int d = 0; d < Rank; ++d) off += i[d] * stride[d];
    return off;
  }

  template <class... I>
  LC_HOST_DEVICE constexpr T& operator()(I... idx) const {
    return data[offset(idx...)];
  }

  // The (Rank-1)-dimensional view at index i of the first dimension.
  LC_HOST_DEVICE constexpr typed_view<T, Rank - 1> operator[](std::int64_t i) const
      requires(Rank > 1) {
    typed_view<T, Rank - 1> r;
    r.data = data + i * stride[0];
    for (int d = 1; d < Rank; ++d) {
      r.shape[d - 1] = shape[d];
      r.stride[d - 1] = stride[d];
    }
    return r;
  }

  LC_HOST_DEVICE constexpr bool is_contiguous() const {
    std::int64_t expect = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (shape[d] != 1 && stride[d] != expect) return false;
      expect *= shape[d];
    }
    return true;
  }
};

}  // namespace lightcore
