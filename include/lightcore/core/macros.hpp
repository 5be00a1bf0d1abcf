// Portability macros shared by host-only and CUDA translation units.
#pragma once

#if defined(__CUDACC__)
#define LC_HOST_DEVICE __host__ __device__
#define LC_DEVICE __device__
#else
#define LC_HOST_DEVICE
#define LC_DEVICE
#endif

// True while nvcc compiles the device side of a translation unit.
#if defined(__CUDA_ARCH__)
#define LC_DEVICE_PASS 1
#else
#define LC_DEVICE_PASS 0
#endif

#if defined(_MSC_VER)
#define LC_FORCEINLINE __forceinline
#else
#define LC_FORCEINLINE inline __attribute__((always_inline))
#endif
