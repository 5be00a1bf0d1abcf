// tensor_view: a non-owning view of device or host memory with a runtime dtype, rank (<= 6),
// shape and strides in elements. Views never allocate; owning storage is lightcore::tensor<B>.
// Slicing and transposing produce views of the same memory. Every misuse (bad dimension, index
// out of range, wrong dtype) throws lightcore::error naming the value and the allowed range.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>

#include "lightcore/core/device.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/typed_view.hpp"

namespace lightcore {

inline constexpr int max_rank = 6;

// A small fixed-capacity list of extents (shape or strides).
class dims {
 public:
  constexpr dims() = default;
  dims(std::initializer_list<std::int64_t> v) : dims(std::span<std::int64_t const>(v)) {}
  explicit dims(std::span<std::int64_t const> v) {
    LC_CHECK(v.size() <= max_rank,
             "rank " << v.size() << " exceeds lightcore's maximum rank " << max_rank);
    rank_ = static_cast<int>(v.size());
    for (int i = 0; i < rank_; ++i) v_[i] = v[i];
  }

  constexpr int rank() const noexcept { return rank_; }
  constexpr std::int64_t operator[](int i) const noexcept { return v_[i]; }
  constexpr std::int64_t& operator[](int i) noexcept { return v_[i]; }
  std::span<std::int64_t const> span() const noexcept { return {v_.data(), std::size_t(rank_)}; }
  constexpr std::int64_t product() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= v_[i];
    return n;
  }
  void push_back(std::int64_t x) {
    LC_CHECK(rank_ < max_rank, "rank would exceed lightcore's maximum rank " << max_rank);
    v_[rank_++] = x;
  }
  friend bool operator==(dims const& a, dims const& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.v_[i] != b.v_[i]) return false;
    return true;
  }
  friend std::ostream& operator<<(std::ostream& os, dims const& d) {
    os << '[';
    for (int i = 0; i < d.rank_; ++i) os << (i ? ", " : "") << d.v_[i];
    return os << ']';
  }

 private:
  std::array<std::int64_t, max_rank> v_{};
  int rank_ = 0;
};

// Row-major strides for a shape.
inline dims contiguous_strides(dims const& shape) {
  dims s = shape;
  std::int64_t acc = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

class tensor_view {
 public:
  tensor_view() = default;

  // A contiguous (row-major) view.
  tensor_view(void* data, dtype type, dims shape, device where = device::cpu())
      : tensor_view(data, type, shape, contiguous_strides(shape), where) {}

  tensor_view(void* data, dtype type, dims shape, dims strides, device where)
      : data_(data), type_(type), where_(where), shape_(shape), strides_(strides) {
    LC_CHECK(shape.rank() == strides.rank(),
             "shape " << shape << " and strides " << strides << " must have the same rank");
    for (int i = 0; i < shape.rank(); ++i)
      LC_CHECK(shape[i] >= 0,
               "negative extent " << shape[i] << " in dimension " << i << " of shape " << shape);
  }

  void* data() const noexcept { return data_; }
  dtype type() const noexcept { return type_; }
  device where() const noexcept { return where_; }
  int rank() const noexcept { return shape_.rank(); }
  dims const& shape() const noexcept { return shape_; }
  dims const& strides() const noexcept { return strides_; }
  std::int64_t numel() const noexcept { return shape_.product(); }
  std::size_t element_size() const noexcept { return size_of(type_); }
  // Bytes spanned by the elements (numel * element size for contiguous views).
  std::size_t nbytes() const noexcept { return std::size_t(numel()) * element_size(); }

  // Extent and stride of dimension d; negative d counts from the end (-1 is the last).
  std::int64_t size(int d) const { return shape_[normalize_dim(d)]; }
  std::int64_t stride(int d) const { return strides_[normalize_dim(d)]; }

  bool is_contiguous() const noexcept {
    std::int64_t expect = 1;
    for (int d = rank() - 1; d >= 0; --d) {
      if (shape_[d] != 1 && strides_[d] != expect) return false;
      expect *= shape_[d];
    }
    return true;
  }

  // Elements [begin, end) of dimension d; the result shares memory.
  tensor_view slice(int d, std::int64_t begin, std::int64_t end) const {
    int const n = normalize_dim(d);
    LC_CHECK(0 <= begin && begin <= end && end <= shape_[n],
             "slice [" << begin << ", " << end << ") of dimension " << n << " is out of range "
                       << "for shape " << shape_ << "; need 0 <= begin <= end <= " << shape_[n]);
    tensor_view r = *this;
    r.data_ = byte_offset(begin * strides_[n]);
    r.shape_[n] = end - begin;
    return r;
  }

  // Index i of dimension d, dropping that dimension.
  tensor_view select(int d, std::int64_t i) const {
    int const n = normalize_dim(d);
    LC_CHECK(0 <= i && i < shape_[n], "index " << i << " is out of range for dimension " << n
                                               << " of shape " << shape_ << " (size " << shape_[n]
                                               << ")");
    tensor_view r;
    r.data_ = byte_offset(i * strides_[n]);
    r.type_ = type_;
    r.where_ = where_;
    for (int k = 0; k < rank(); ++k) {
      if (k == n) continue;
      r.shape_.push_back(shape_[k]);
      r.strides_.push_back(strides_[k]);
    }
    return r;
  }

  tensor_view transpose(int a, int b) const {
    int const x = normalize_dim(a), y = normalize_dim(b);
    tensor_view r = *this;
    std::swap(r.shape_[x], r.shape_[y]);
    std::swap(r.strides_[x], r.strides_[y]);
    return r;
  }

  // The same elements under a new shape; one extent may be -1 (inferred). Contiguous views only.
  tensor_view reshape(dims shape) const {
    LC_CHECK(is_contiguous(), "reshape of a non-contiguous view (shape " << shape_ << ", strides "
                                                                         << strides_ << ")");
    int inferred = -1;
    std::int64_t known = 1;
    for (int i = 0; i < shape.rank(); ++i) {
      if (shape[i] == -1) {
        LC_CHECK(inferred < 0, "reshape to " << shape << ": at most one extent may be -1");
        inferred = i;
      } else {
        LC_CHECK(shape[i] >= 0, "reshape to " << shape << ": negative extent");
        known *= shape[i];
      }
    }
    if (inferred >= 0) {
      LC_CHECK(known > 0 && numel() % known == 0,
               "reshape of " << shape_ << " to " << shape << ": extents do not divide");
      shape[inferred] = numel() / known;
    }
    LC_CHECK(shape.product() == numel(), "reshape of " << shape_ << " (" << numel()
                                                       << " elements) to " << shape << " ("
                                                       << shape.product() << " elements)");
    return tensor_view(data_, type_, shape, where_);
  }

  // Checked conversion to a typed view; T must match the dtype and Rank the rank.
  template <element T, int Rank>
  typed_view<T, Rank> as() const {
    check_type<T>();
    LC_CHECK(rank() == Rank,
             "view of rank " << rank() << " (shape " << shape_ << ") requested as rank " << Rank);
    typed_view<T, Rank> v;
    v.data = static_cast<T*>(data_);
    for (int d = 0; d < Rank; ++d) {
      v.shape[d] = shape_[d];
      v.stride[d] = strides_[d];
    }
    return v;
  }

  // Checked typed pointer to the first element.
  template <element T>
  T* data_as() const {
    check_type<T>();
    return static_cast<T*>(data_);
  }

  friend std::ostream& operator<<(std::ostream& os, tensor_view const& v) {
    return os << "tensor_view(" << v.type_ << ", " << v.shape_ << ", strides " << v.strides_ << ", "
              << v.where_ << ')';
  }

 private:
  int normalize_dim(int d) const {
    int const r = rank();
    LC_CHECK(-r <= d && d < r, "dimension " << d << " is out of range for a view of rank " << r
                                            << " (allowed " << -r << " .. " << r - 1 << ")");
    return d < 0 ? d + r : d;
  }
  void* byte_offset(std::int64_t elements) const {
    return static_cast<std::byte*>(data_) + elements * std::int64_t(element_size());
  }
  template <class T>
  void check_type() const {
    LC_CHECK(dtype_v<T> == type_, "view holds " << type_ << " but was accessed as " << dtype_v<T>);
  }

  void* data_ = nullptr;
  dtype type_ = dtype::f32;
  device where_ = device::cpu();
  dims shape_;
  dims strides_;
};

}  // namespace lightcore
