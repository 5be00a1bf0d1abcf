// init: fills a tensor with seeded random values on its backend, without a host copy: the dummy
// weights of a model whose checkpoint is not at hand (benchmarks of real shapes). Element i of a
// tensor is T(mean + stddev * normalish(seed, tensor_id, i)), the same bits on the CPU and on the
// GPU (init_params.hpp has the formulas). bf16, f32 and fp8_e4m3 (the codes; block scales are an
// f32 tensor filled with their own mean and spread).
#pragma once

#include <cmath>
#include <cstdint>
#include <ostream>

#include "kernels/init/init_params.hpp"
#include "lightcore/backend/backend.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"

struct CUstream_st;  // what cudaStream_t points to; declared here so that no CUDA header is needed

namespace lightcore::kernels {

// What fills one tensor: the stream key's parts and the distribution before rounding to the dtype.
struct init_spec {
  std::uint64_t seed = 0;       // the run's seed
  std::uint64_t tensor_id = 0;  // which tensor (init_tensor_id(name)): independent streams
  float mean = 0.0f;            // of the values, before conversion to the tensor's dtype
  float stddev = 1.0f;          // of the values; 0 fills with `mean`
};

namespace detail {

void fill_random_cpu(tensor_view const& out, init_spec const& spec);
#if defined(LIGHTCORE_WITH_CUDA)
void fill_random_cuda(tensor_view const& out, init_spec const& spec, CUstream_st* stream);

// Defined in init.cuh, instantiated once per T in instantiations/.
template <class T>
void launch_fill_random(init_params<T> const& p, int num_sms, CUstream_st* stream);
#endif

inline void check_init_args(device where, tensor_view const& out, init_spec const& spec) {
  LC_CHECK(out.type() == dtype::bf16 || out.type() == dtype::f32 || out.type() == dtype::fp8_e4m3,
           "fill_random supports bf16, f32 and fp8_e4m3 tensors; got " << out.type());
  LC_CHECK(out.where() == where,
           "fill_random on " << where << " needs the tensor there; it is on " << out.where());
  LC_CHECK(out.is_contiguous(), "fill_random needs a contiguous tensor; got " << out);
  LC_CHECK(std::isfinite(spec.mean) && std::isfinite(spec.stddev) && spec.stddev >= 0.0f,
           "fill_random needs a finite mean and a finite stddev >= 0; got mean "
               << spec.mean << ", stddev " << spec.stddev);
  if (out.numel() == 0) return;
  // The kernel stores 16-byte vectors; tensors (backend allocations) are 256-byte aligned.
  LC_CHECK(out.data() != nullptr && reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0,
           "fill_random needs a 16-byte aligned tensor; got data at " << out.data());
}

}  // namespace detail

// out[i] = T(spec.mean + spec.stddev * normalish(key(spec.seed, spec.tensor_id), i)) for every
// element of a contiguous, 16-byte aligned bf16 / f32 / fp8_e4m3 tensor on the backend's device.
// The flat index counts elements in memory order, so a tensor's values do not depend on its shape.
// FP8 rounds with saturation to +-448. Ordered on `stream`.
template <Backend B>
void fill_random(B& backend, tensor_view const& out, init_spec const& spec,
                 [[maybe_unused]] typename B::stream_type const& stream) {
  detail::check_init_args(backend.where(), out, spec);
  if (out.numel() == 0) return;
  if constexpr (B::kind == device_kind::cpu) {
    detail::fill_random_cpu(out, spec);
  } else {
    static_assert(B::kind == device_kind::cuda, "fill_random: unknown backend kind");
#if defined(LIGHTCORE_WITH_CUDA)
    detail::fill_random_cuda(out, spec, stream.get());
#else
    static_assert(B::kind != device_kind::cuda,
                  "fill_random on backend::cuda needs lightcore built with CUDA");
#endif
  }
}

}  // namespace lightcore::kernels
