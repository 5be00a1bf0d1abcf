// Programmatic dependent launch (PDL) for the kernels of a decode step: with it, the next
// kernel's blocks are scheduled while this one's last blocks still run, and wait on the device
// for its results, which hides most of the ~2-4 us gap between two short dependent kernels (a
// batch-1 decode step is ~20 of them per layer). Every kernel launched through launch_pdl calls
// pdl_enter() on every path, before it touches memory that a kernel before it may write, so that
// completion stays transitive: a kernel only finishes after the one before it finished. What no
// kernel writes (a model's weights) may be read or prefetched before it, which is how the decode
// kernels overlap their weights' latency with the kernel before them. LIGHTCORE_PDL=0 in the
// environment launches without the attribute (pdl_enter() is then a no-op), for comparison.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "lightcore/core/cuda_check.hpp"

namespace lightcore::kernels::detail {

// Lets the next kernel on the stream be scheduled now (it still waits for this grid to finish
// before it reads anything), then waits until the grid this one was launched after has finished
// and its writes are visible. Both are no-ops unless the launch asked for the overlap.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether launches ask for the overlap: on unless LIGHTCORE_PDL is "0" (read once).
inline bool pdl_enabled() {
  static bool const on = [] {
    char const* v = std::getenv("LIGHTCORE_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// The attribute that asks for the overlap (programmatic stream serialization).
inline cudaLaunchAttribute pdl_attribute() {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  a.val.programmaticStreamSerializationAllowed = 1;
  return a;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the overlap when enabled.
// The kernel must call pdl_enter() before its first access to memory that earlier kernels write.
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
                cudaStream_t stream, Args const&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr = pdl_attribute();
  cfg.attrs = &attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  LC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

// The same with thread-block clusters of `cluster` CTAs (each grid dimension a multiple of the
// cluster's).
template <class... Params, class... Args>
void launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
                        cudaStream_t stream, dim3 cluster, Args const&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2] = {};
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = cluster.x;
  attrs[0].val.clusterDim.y = cluster.y;
  attrs[0].val.clusterDim.z = cluster.z;
  attrs[1] = pdl_attribute();
  cfg.attrs = attrs;
  cfg.numAttrs = pdl_enabled() ? 2 : 1;
  LC_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

}  // namespace lightcore::kernels::detail
