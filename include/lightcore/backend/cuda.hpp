// backend::cuda: device memory and ordered work on CUDA streams, through the runtime API only
// (host code: g++ compiles it; no kernel is needed). One object per device ordinal.
// Thread safety: allocate/deallocate/copy/fill/memory may be called from any thread (the CUDA
// runtime is thread-safe); a stream_type or event_type object must not be used by two threads
// at once.
#pragma once

#include <cuda.h>  // driver types for the memset entry points; libcuda is not linked
#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <utility>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::backend {

// Makes `ordinal` the current device for a scope and restores the previous one after.
class device_guard {
 public:
  explicit device_guard(int ordinal) {
    LC_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != ordinal) LC_CUDA_CHECK(cudaSetDevice(ordinal));
  }
  ~device_guard() { cudaSetDevice(previous_); }
  device_guard(device_guard const&) = delete;
  device_guard& operator=(device_guard const&) = delete;

 private:
  int previous_ = 0;
};

// Streaming multiprocessors of device `ordinal`, which sizes persistent and grid-stride launches.
// Queried once per device, then cached; thread-safe.
inline int multiprocessor_count(int ordinal) {
  static constexpr int max_devices = 64;
  static std::array<std::atomic<int>, max_devices> cache{};  // 0: not queried yet
  LC_CHECK(0 <= ordinal && ordinal < max_devices,
           "CUDA device ordinal " << ordinal << " is out of range; allowed 0.." << max_devices - 1);
  int n = cache[std::size_t(ordinal)].load(std::memory_order_relaxed);
  if (n == 0) {
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, ordinal));
    cache[std::size_t(ordinal)].store(n, std::memory_order_relaxed);
  }
  return n;
}

class cuda {
 public:
  static constexpr device_kind kind = device_kind::cuda;
  static constexpr std::size_t alignment = 256;  // cudaMalloc guarantees at least this

  // An owned non-blocking stream, or a borrowed handle (wrap()).
  class stream_type {
   public:
    stream_type() = default;
    static stream_type wrap(cudaStream_t s) noexcept { return stream_type(s, false); }
    stream_type(stream_type&& o) noexcept
        : s_(std::exchange(o.s_, nullptr)), owned_(std::exchange(o.owned_, false)) {}
    stream_type& operator=(stream_type&& o) noexcept {
      if (this != &o) {
        reset();
        s_ = std::exchange(o.s_, nullptr);
        owned_ = std::exchange(o.owned_, false);
      }
      return *this;
    }
    ~stream_type() { reset(); }

    cudaStream_t get() const noexcept { return s_; }
    void synchronize() const { LC_CUDA_CHECK(cudaStreamSynchronize(s_)); }

   private:
    friend class cuda;
    stream_type(cudaStream_t s, bool owned) noexcept : s_(s), owned_(owned) {}
    void reset() noexcept {
      if (owned_ && s_ != nullptr) cudaStreamDestroy(s_);
      s_ = nullptr;
      owned_ = false;
    }
    cudaStream_t s_ = nullptr;  // nullptr is the legacy default stream
    bool owned_ = false;
  };

  class event_type {
   public:
    event_type() = default;
    event_type(event_type&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    event_type& operator=(event_type&& o) noexcept {
      if (this != &o) {
        if (e_ != nullptr) cudaEventDestroy(e_);
        e_ = std::exchange(o.e_, nullptr);
      }
      return *this;
    }
    ~event_type() {
      if (e_ != nullptr) cudaEventDestroy(e_);
    }
    void record(stream_type const& s) { LC_CUDA_CHECK(cudaEventRecord(e_, s.get())); }
    void synchronize() const { LC_CUDA_CHECK(cudaEventSynchronize(e_)); }
    cudaEvent_t get() const noexcept { return e_; }

   private:
    friend class cuda;
    explicit event_type(cudaEvent_t e) noexcept : e_(e) {}
    cudaEvent_t e_ = nullptr;
  };

  explicit cuda(int ordinal = 0) : ordinal_(ordinal) {
    int const n = device_count();
    LC_CHECK(0 <= ordinal && ordinal < n,
             "CUDA device " << ordinal << " requested but " << n << " device(s) are visible");
  }

  // Visible CUDA devices; 0 (never an exception) when there is no driver or no device.
  static int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the error so later calls do not see it
      return 0;
    }
    return n;
  }

  device where() const noexcept { return device::cuda(ordinal_); }
  int ordinal() const noexcept { return ordinal_; }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    device_guard g(ordinal_);
    void* p = nullptr;
    // The memory outlives any graph being captured on this thread, so the allocation is safe
    // during a capture: switch this thread to relaxed capture mode around it, then restore.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    LC_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    cudaError_t const e = cudaMalloc(&p, bytes);
    LC_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (e != cudaSuccess) {
      cudaGetLastError();
      memory_info const m = memory();
      LC_THROW("cudaMalloc of " << bytes << " bytes on cuda:" << ordinal_ << " failed ("
                                << cudaGetErrorName(e) << "); " << m.free_bytes << " of "
                                << m.total_bytes << " bytes free");
    }
    return p;
  }

  void deallocate(void* p, std::size_t /*bytes*/) noexcept {
    if (p == nullptr) return;
    cudaError_t const e = cudaFree(p);
    // At process exit the runtime may already be gone; anything else is worth a line, since a
    // destructor cannot throw.
    if (e != cudaSuccess && e != cudaErrorCudartUnloading)
      std::fprintf(stderr, "lightcore: cudaFree failed: %s\n", cudaGetErrorString(e));
  }

  // Page-locked host memory: copies between it and the device run asynchronously to the host
  // (from pageable memory the runtime stages them first), so the host must not touch it until
  // the copy has run.
  void* allocate_host(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    device_guard g(ordinal_);
    void* p = nullptr;
    cudaError_t const e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) {
      cudaGetLastError();
      LC_THROW("cudaHostAlloc of " << bytes << " bytes failed (" << cudaGetErrorName(e) << ")");
    }
    return p;
  }

  void deallocate_host(void* p, std::size_t /*bytes*/) noexcept {
    if (p == nullptr) return;
    cudaError_t const e = cudaFreeHost(p);
    if (e != cudaSuccess && e != cudaErrorCudartUnloading)
      std::fprintf(stderr, "lightcore: cudaFreeHost failed: %s\n", cudaGetErrorString(e));
  }

  void copy(void* dst, void const* src, std::size_t bytes, stream_type const& s) const {
    if (bytes == 0) return;
    LC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s.get()));
  }

  // Element sizes 1, 2 and 4 become memset nodes (graph-capturable, no kernel); size 8 is
  // supported when both 4-byte halves of the pattern are equal (zero, all ones, ...).
  void fill(void* dst, std::size_t count, std::size_t elem_bytes, std::uint64_t pattern,
            stream_type const& s) const {
    if (count == 0) return;
    auto const ptr = reinterpret_cast<CUdeviceptr>(dst);
    auto const stream = reinterpret_cast<CUstream>(s.get());
    CUresult r = CUDA_SUCCESS;
    switch (elem_bytes) {
      case 1: LC_CUDA_CHECK(cudaMemsetAsync(dst, int(pattern & 0xff), count, s.get())); return;
      case 2:
        r = driver().memset_d16(ptr, static_cast<unsigned short>(pattern), count, stream);
        break;
      case 4:
        r = driver().memset_d32(ptr, static_cast<unsigned int>(pattern), count, stream);
        break;
      case 8:
        LC_CHECK((pattern >> 32) == (pattern & 0xffffffffu),
                 "8-byte fill on cuda needs equal 4-byte halves; got pattern 0x"
                     << std::hex << pattern << "; use a fill kernel for other values");
        r = driver().memset_d32(ptr, static_cast<unsigned int>(pattern), count * 2, stream);
        break;
      default:
        LC_THROW("fill element size " << elem_bytes << " is not supported; allowed: 1, 2, 4, 8");
    }
    LC_CHECK(r == CUDA_SUCCESS,
             "cuMemsetD" << elem_bytes * 8 << "Async failed with CUresult " << int(r));
  }

  stream_type make_stream() const {
    device_guard g(ordinal_);
    cudaStream_t s = nullptr;
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return stream_type(s, true);
  }

  event_type make_event() const {
    device_guard g(ordinal_);
    cudaEvent_t e = nullptr;
    LC_CUDA_CHECK(cudaEventCreate(&e));
    return event_type(e);
  }

  void synchronize() const {
    device_guard g(ordinal_);
    LC_CUDA_CHECK(cudaDeviceSynchronize());
  }

  memory_info memory() const {
    device_guard g(ordinal_);
    memory_info m;
    LC_CUDA_CHECK(cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
    return m;
  }

  static float elapsed_ms(event_type const& start, event_type const& end) {
    float ms = 0;
    LC_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), end.get()));
    return ms;
  }

 private:
  // Driver memsets reached through the runtime, so that nothing links libcuda directly (test
  // binaries then load on machines without a driver and skip their GPU tests).
  struct driver_api {
    using memset_d16_fn = CUresult (*)(CUdeviceptr, unsigned short, std::size_t, CUstream);
    using memset_d32_fn = CUresult (*)(CUdeviceptr, unsigned int, std::size_t, CUstream);
    memset_d16_fn memset_d16 = nullptr;
    memset_d32_fn memset_d32 = nullptr;
  };

  static driver_api const& driver() {
    static driver_api const api = [] {
      driver_api a;
      load(&a.memset_d16, "cuMemsetD16Async");
      load(&a.memset_d32, "cuMemsetD32Async");
      return a;
    }();
    return api;
  }

  template <class Fn>
  static void load(Fn* fn, char const* symbol) {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult status{};
    LC_CUDA_CHECK(cudaGetDriverEntryPointByVersion(symbol, &p, 12000, cudaEnableDefault, &status));
    LC_CHECK(status == cudaDriverEntryPointSuccess && p != nullptr,
             "the CUDA driver does not provide " << symbol);
    *fn = reinterpret_cast<Fn>(p);
  }

  int ordinal_ = 0;
};

static_assert(Backend<cuda>);

}  // namespace lightcore::backend
