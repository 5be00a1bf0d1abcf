// tensor<B>: owning storage on backend B with a shape and dtype. Move-only; the memory is
// returned to the backend on destruction. Use view() to hand it to kernels and modules, which
// take tensor_view/typed_view and never own.
// Long-lived memory (weights, the KV pool) is a tensor<B>; per-forward activations come from the
// cache_tensor_manager instead.
#pragma once

#include <bit>
#include <cstring>
#include <utility>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/tensor_view.hpp"

namespace lightcore {

template <Backend B>
class tensor {
 public:
  tensor() = default;
  tensor(B& backend, dtype type, dims shape)
      : backend_(&backend), view_(nullptr, type, shape, backend.where()), bytes_(view_.nbytes()) {
    view_ = tensor_view(backend.allocate(bytes_), type, shape, backend.where());
  }
  tensor(tensor&& o) noexcept
      : backend_(std::exchange(o.backend_, nullptr)),
        view_(std::exchange(o.view_, {})),
        bytes_(std::exchange(o.bytes_, 0)) {}
  tensor& operator=(tensor&& o) noexcept {
    if (this != &o) {
      release();
      backend_ = std::exchange(o.backend_, nullptr);
      view_ = std::exchange(o.view_, {});
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  tensor(tensor const&) = delete;
  tensor& operator=(tensor const&) = delete;
  ~tensor() { release(); }

  tensor_view const& view() const noexcept { return view_; }
  operator tensor_view const&() const noexcept { return view_; }  // NOLINT: views are cheap
  void* data() const noexcept { return view_.data(); }
  dtype type() const noexcept { return view_.type(); }
  dims const& shape() const noexcept { return view_.shape(); }
  std::int64_t numel() const noexcept { return view_.numel(); }
  std::size_t nbytes() const noexcept { return bytes_; }
  template <element T, int Rank>
  typed_view<T, Rank> as() const {
    return view_.template as<T, Rank>();
  }

 private:
  void release() noexcept {
    if (backend_ != nullptr && view_.data() != nullptr) backend_->deallocate(view_.data(), bytes_);
    backend_ = nullptr;
  }

  B* backend_ = nullptr;
  tensor_view view_;
  std::size_t bytes_ = 0;
};

// Sets every element of a contiguous view to `value` (ordered on stream s).
template <Backend B, element T>
void fill(B& backend, tensor_view const& v, T value, typename B::stream_type const& s) {
  LC_CHECK(v.is_contiguous(), "fill needs a contiguous view; got " << v);
  LC_CHECK(v.type() == dtype_v<T>,
           "fill of a " << v.type() << " view with a " << dtype_v<T> << " value");
  std::uint64_t pattern = 0;
  std::memcpy(&pattern, &value, sizeof(T));
  backend.fill(v.data(), std::size_t(v.numel()), sizeof(T), pattern, s);
}

}  // namespace lightcore
