// The driver's cuTensorMapEncodeTiled, which the TMA kernels build their tensor maps with, reached
// through the runtime (no link against the driver library) and looked up once per process.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::kernels::detail {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 const fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    LC_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                   cudaEnableDefault, &q));
    LC_CHECK(q == cudaDriverEntryPointSuccess && f != nullptr,
             "the CUDA driver has no cuTensorMapEncodeTiled (the TMA kernels need CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace lightcore::kernels::detail
