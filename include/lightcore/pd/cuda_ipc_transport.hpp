// cuda_ipc_transport: a kv_transport between a prefill and a decode instance on one node. The
// decode instance exports its KV layer tensors as CUDA IPC handles; the prefill instance opens
// them and writes rows straight into the decode pool with one cudaMemcpyAsync per run of
// consecutive slot ids, ordered after the layer's compute through an event; no kernel, no
// staging copy. Tested between two processes on one GPU (tests/pd/test_cuda_ipc_transport.cu).
//
// Available when CUDA is (LIGHTCORE_WITH_CUDA); elsewhere this header declares nothing.
#pragma once

#if defined(LIGHTCORE_WITH_CUDA)

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

// One exported layer tensor: the IPC handle's bytes and the tensor's row count. Travels from
// the decode instance to the prefill instance once, at link setup.
struct ipc_layer {
  std::array<char, sizeof(cudaIpcMemHandle_t)> handle{};
  std::int64_t slots = 0;
};

// Exports every layer tensor ([slots, width] each). Each must be the start of its own
// cudaMalloc allocation (kv_pool<backend::cuda> allocates each layer separately): an IPC handle
// names a whole allocation, and the importer maps it from its base.
inline std::vector<ipc_layer> export_layers(std::vector<tensor_view> const& layers) {
  std::vector<ipc_layer> out;
  out.reserve(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    tensor_view const& t = layers[l];
    LC_CHECK(t.where().kind == device_kind::cuda && t.rank() == 2 && t.is_contiguous(),
             "export_layers: layer " << l << " must be a contiguous [slots, width] CUDA tensor");
    cudaIpcMemHandle_t h;
    LC_CUDA_CHECK(cudaIpcGetMemHandle(&h, t.data()));
    ipc_layer e;
    std::memcpy(e.handle.data(), &h, sizeof h);
    e.slots = t.size(0);
    out.push_back(e);
  }
  return out;
}

// The decode pool's layers opened in the prefill process; closed when destroyed.
class imported_layers {
 public:
  imported_layers(std::vector<ipc_layer> const& layers, std::int64_t width, dtype type)
      : width_(width), type_(type) {
    ptrs_.reserve(layers.size());
    for (ipc_layer const& e : layers) {
      cudaIpcMemHandle_t h;
      std::memcpy(&h, e.handle.data(), sizeof h);
      void* p = nullptr;
      try {
        LC_CUDA_CHECK(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
      } catch (...) {
        close_all();
        throw;
      }
      ptrs_.push_back(p);
      slots_ = e.slots;
    }
  }
  imported_layers(imported_layers const&) = delete;
  imported_layers& operator=(imported_layers const&) = delete;
  ~imported_layers() { close_all(); }

  std::size_t layers() const noexcept { return ptrs_.size(); }
  std::int64_t slots() const noexcept { return slots_; }
  std::int64_t width() const noexcept { return width_; }
  dtype type() const noexcept { return type_; }
  void* layer(std::size_t l) const noexcept { return ptrs_[l]; }

 private:
  void close_all() noexcept {
    for (void* p : ptrs_) cudaIpcCloseMemHandle(p);  // best effort in teardown
    ptrs_.clear();
  }
  std::vector<void*> ptrs_;
  std::int64_t slots_ = 0;
  std::int64_t width_ = 0;
  dtype type_ = dtype::bf16;
};

class cuda_ipc_transport {
 public:
  // src: the prefill pool's layers on this device; dst: the decode pool's, imported; compute:
  // the stream the forward writes the KV on (each copy waits for the work queued on it so far).
  cuda_ipc_transport(std::vector<tensor_view> src, imported_layers const& dst, cudaStream_t compute)
      : src_(std::move(src)), dst_(&dst), compute_(compute) {
    LC_CHECK(!src_.empty() && src_.size() == dst.layers(),
             "cuda_ipc_transport: " << src_.size() << " source layers and " << dst.layers()
                                    << " destination layers; they must be equal and >= 1");
    layout_ = {std::int32_t(src_.size()), src_[0].size(1), src_[0].type()};
    kv_layout const other{std::int32_t(dst.layers()), dst.width(), dst.type()};
    LC_CHECK(layout_ == other, "cuda_ipc_transport: the prefill pool is "
                                   << layout_ << ", the decode pool " << other);
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    LC_CUDA_CHECK(cudaEventCreateWithFlags(&written_, cudaEventDisableTiming));
  }
  cuda_ipc_transport(cuda_ipc_transport const&) = delete;
  cuda_ipc_transport& operator=(cuda_ipc_transport const&) = delete;
  ~cuda_ipc_transport() {
    cudaStreamSynchronize(copy_);  // the completions point into callers' objects
    cudaEventDestroy(written_);
    cudaStreamDestroy(copy_);
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t source_slots() const noexcept { return src_[0].size(0); }
  std::int64_t destination_slots() const noexcept { return dst_->slots(); }

  // Queues the copies of one layer on the copy stream behind the compute written so far, then
  // the completion as a host function on the same stream. Not thread-safe: one caller thread.
  void submit(layer_copy job) {
    LC_CHECK(job.layer >= 0 && job.layer < layout_.layers,
             "cuda_ipc_transport: layer " << job.layer << " is out of range");
    LC_CHECK(job.src_slots.size() == job.dst_slots.size(),
             "cuda_ipc_transport: " << job.src_slots.size() << " source and "
                                    << job.dst_slots.size() << " destination slots");
    LC_CUDA_CHECK(cudaEventRecord(written_, compute_));
    LC_CUDA_CHECK(cudaStreamWaitEvent(copy_, written_, 0));
    auto const* src = static_cast<unsigned char const*>(src_[std::size_t(job.layer)].data());
    auto* dst = static_cast<unsigned char*>(dst_->layer(std::size_t(job.layer)));
    std::size_t const row = layout_.row_bytes();
    std::size_t const n = job.src_slots.size();
    for (std::size_t i = 0; i < n;) {
      std::int32_t const s = job.src_slots[i], d = job.dst_slots[i];
      std::size_t run = 1;
      while (i + run < n && job.src_slots[i + run] == s + std::int32_t(run) &&
             job.dst_slots[i + run] == d + std::int32_t(run))
        ++run;
      LC_CUDA_CHECK(cudaMemcpyAsync(dst + std::size_t(d) * row, src + std::size_t(s) * row,
                                    run * row, cudaMemcpyDeviceToDevice, copy_));
      i += run;
    }
    // The host function may not call CUDA; layer_copy::done only records and posts messages.
    auto* owned = new layer_copy(std::move(job));
    cudaError_t const e = cudaLaunchHostFunc(
        copy_,
        [](void* p) {
          std::unique_ptr<layer_copy> j(static_cast<layer_copy*>(p));
          j->done({});
        },
        owned);
    if (e != cudaSuccess) {
      std::unique_ptr<layer_copy> j(owned);
      LC_CUDA_CHECK(e);
    }
  }

 private:
  std::vector<tensor_view> src_;  // per layer [source slots, width], this device
  imported_layers const* dst_;    // per layer [destination slots, width], the peer's device
  cudaStream_t compute_;
  cudaStream_t copy_ = nullptr;
  cudaEvent_t written_ = nullptr;
  kv_layout layout_;
};

static_assert(kv_transport<cuda_ipc_transport>);

}  // namespace lightcore::pd

#endif  // LIGHTCORE_WITH_CUDA
