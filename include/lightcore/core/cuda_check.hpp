// LC_CUDA_CHECK(call): throws lightcore::error naming the call, the CUDA error and file:line.
// LC_CUDA_CHECK_LAUNCH(): checks the last launch; with LIGHTCORE_DEBUG_SYNC it also waits for the
// kernel so that asynchronous faults are reported at the launch that caused them.
// Host code only; include where the CUDA runtime is available.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "lightcore/core/error.hpp"

namespace lightcore::detail {
[[noreturn]] inline void throw_cuda_error(cudaError_t e, char const* file, int line,
                                          char const* call) {
  throw_error(
      file, line, call,
      std::string("CUDA call failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
}  // namespace lightcore::detail

#define LC_CUDA_CHECK(call)                                                           \
  do {                                                                                \
    cudaError_t const lc_cuda_err_ = (call);                                          \
    if (lc_cuda_err_ != cudaSuccess) [[unlikely]]                                     \
      ::lightcore::detail::throw_cuda_error(lc_cuda_err_, __FILE__, __LINE__, #call); \
  } while (0)

#if defined(LIGHTCORE_DEBUG_SYNC)
#define LC_CUDA_CHECK_LAUNCH()              \
  do {                                      \
    LC_CUDA_CHECK(cudaGetLastError());      \
    LC_CUDA_CHECK(cudaDeviceSynchronize()); \
  } while (0)
#else
#define LC_CUDA_CHECK_LAUNCH() LC_CUDA_CHECK(cudaGetLastError())
#endif
