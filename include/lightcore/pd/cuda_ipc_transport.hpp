// cuda_ipc_transport: a kv_transport between a prefill and a decode instance on one node. The
// decode instance exports its KV layer tensors as CUDA IPC handles; the prefill instance opens
// them and writes rows straight into the decode pool, ordered after the layer's compute through an
// event: one cudaMemcpyAsync per run of consecutive slot ids when there are few runs (a fresh
// pool), else one launch of a row-gathering copy kernel that the caller provides (a fragmented
// pool; kernels::detail::copy_rows_cuda), reading the transfer's slot lists uploaded once. No
// staging copy of the rows. A layer's completion is reported by a host function on a second
// stream, so that the copies of the next layers never wait for the host. Tested between two
// processes on one GPU (tests/pd/test_cuda_ipc_transport.cu), measured by
// bench/pd/bench_pd_transfer.cu.
//
// Available when CUDA is (LIGHTCORE_WITH_CUDA); elsewhere this header declares nothing.
#pragma once

#if defined(LIGHTCORE_WITH_CUDA)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
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
  // Queues on `stream` the copy of n rows of row_bytes: dst[dst_slots[k]] = src[src_slots[k]],
  // the slot lists on the device; pools of dst_rows and src_rows rows.
  using row_copier = void (*)(void* dst, std::int64_t dst_rows, std::int32_t const* dst_slots,
                              void const* src, std::int64_t src_rows, std::int32_t const* src_slots,
                              std::int64_t n, std::int64_t row_bytes, cudaStream_t stream);

  // src: the prefill pool's layers on this device; dst: the decode pool's, imported; compute:
  // the stream the forward writes the KV on (each copy waits for the work queued on it so far);
  // copier: the kernel for scattered slots (null: one cudaMemcpyAsync per run, always).
  cuda_ipc_transport(std::vector<tensor_view> src, imported_layers const& dst, cudaStream_t compute,
                     row_copier copier = nullptr)
      : src_(std::move(src)), dst_(&dst), compute_(compute), copier_(copier) {
    LC_CHECK(!src_.empty() && src_.size() == dst.layers(),
             "cuda_ipc_transport: " << src_.size() << " source layers and " << dst.layers()
                                    << " destination layers; they must be equal and >= 1");
    layout_ = {std::int32_t(src_.size()), src_[0].size(1), src_[0].type()};
    kv_layout const other{std::int32_t(dst.layers()), dst.width(), dst.type()};
    LC_CHECK(layout_ == other, "cuda_ipc_transport: the prefill pool is "
                                   << layout_ << ", the decode pool " << other);
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&notify_, cudaStreamNonBlocking));
    LC_CUDA_CHECK(cudaEventCreateWithFlags(&written_, cudaEventDisableTiming));
    LC_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  }
  cuda_ipc_transport(cuda_ipc_transport const&) = delete;
  cuda_ipc_transport& operator=(cuda_ipc_transport const&) = delete;
  ~cuda_ipc_transport() {
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(notify_);  // the completions point into callers' objects
    for (slot_upload& u : uploads_) {
      cudaFreeHost(u.host);
      cudaFree(u.device);
      cudaEventDestroy(u.used);
    }
    for (std::int32_t* h : retired_hosts_) cudaFreeHost(h);
    cudaEventDestroy(copied_);
    cudaEventDestroy(written_);
    cudaStreamDestroy(notify_);
    cudaStreamDestroy(copy_);
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t source_slots() const noexcept { return src_[0].size(0); }
  std::int64_t destination_slots() const noexcept { return dst_->slots(); }

  // Runs of consecutive slots up to which a layer is copied by one cudaMemcpyAsync per run;
  // beyond it by one row_copier launch (each cudaMemcpyAsync costs microseconds of launch, and
  // cudaMemcpyBatchAsync measured no faster for device-to-device rows).
  static constexpr std::size_t max_single_copies = 8;

  // Queues the copies of one layer on the copy stream behind the compute written so far, then
  // its completion as a host function on the notification stream. Not thread-safe: one caller.
  void submit(layer_copy job) {
    LC_CHECK(job.layer >= 0 && job.layer < layout_.layers,
             "cuda_ipc_transport: layer " << job.layer << " is out of range");
    LC_CHECK(job.src_slots.size() == job.dst_slots.size(),
             "cuda_ipc_transport: " << job.src_slots.size() << " source and "
                                    << job.dst_slots.size() << " destination slots");
    auto const* src = static_cast<unsigned char const*>(src_[std::size_t(job.layer)].data());
    auto* dst = static_cast<unsigned char*>(dst_->layer(std::size_t(job.layer)));
    std::size_t const row = layout_.row_bytes();
    std::size_t const n = job.src_slots.size();
    std::size_t runs = 0;
    for (std::size_t i = 1; i <= n; ++i)
      if (i == n || job.src_slots[i] != job.src_slots[i - 1] + 1 ||
          job.dst_slots[i] != job.dst_slots[i - 1] + 1)
        ++runs;
    LC_CUDA_CHECK(cudaEventRecord(written_, compute_));
    LC_CUDA_CHECK(cudaStreamWaitEvent(copy_, written_, 0));
    if (runs <= max_single_copies || copier_ == nullptr) {
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
    } else {
      slot_upload& u = upload(job.src_slots, job.dst_slots);
      copier_(dst, destination_slots(), u.device + n, src, source_slots(), u.device,
              std::int64_t(n), std::int64_t(row), copy_);
      LC_CUDA_CHECK(cudaEventRecord(u.used, copy_));
    }
    // The host function may not call CUDA; layer_copy::done only records and posts messages.
    LC_CUDA_CHECK(cudaEventRecord(copied_, copy_));
    LC_CUDA_CHECK(cudaStreamWaitEvent(notify_, copied_, 0));
    auto* owned = new layer_copy(std::move(job));
    cudaError_t const e = cudaLaunchHostFunc(
        notify_,
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
  // A transfer's slot lists on the device ([n] source then [n] destination ids), uploaded once
  // and reused by each layer of the transfer: the layers of one transfer name the same slots.
  struct slot_upload {
    std::int32_t* host = nullptr;    // pinned staging of the H2D copy
    std::int32_t* device = nullptr;  // [2 * capacity]
    std::size_t capacity = 0;        // slots per list
    std::size_t n = 0;               // slots per list now held
    cudaEvent_t used = nullptr;      // after the last copy that read `device`
  };

  // The device lists for this job. submit() runs on the prefill engine's thread between the
  // layers of a forward, so this never waits for the GPU: the transfers of one step interleave
  // their layers, each finds its own entry, and a new list takes an entry whose copies have all
  // finished, or a new entry (device memory stream-ordered on the copy stream).
  slot_upload& upload(std::span<std::int32_t const> src, std::span<std::int32_t const> dst) {
    std::size_t const n = src.size();
    for (slot_upload& u : uploads_)
      if (u.n == n && std::memcmp(u.host, src.data(), n * 4) == 0 &&
          std::memcmp(u.host + n, dst.data(), n * 4) == 0)
        return u;
    slot_upload* free = nullptr;
    for (slot_upload& u : uploads_) {
      cudaError_t const e = cudaEventQuery(u.used);
      if (e == cudaSuccess) {
        free = &u;
        break;
      }
      LC_CHECK(e == cudaErrorNotReady, "cuda_ipc_transport: " << cudaGetErrorString(e));
    }
    if (free == nullptr) {
      free = &uploads_.emplace_back();
      LC_CUDA_CHECK(cudaEventCreateWithFlags(&free->used, cudaEventDisableTiming));
    }
    slot_upload& u = *free;
    if (u.capacity < n) {
      // The old buffers' last reader has finished (or there are none): the device list goes
      // back in stream order; pinned memory is freed only at destruction (cudaFreeHost waits).
      if (u.device != nullptr) LC_CUDA_CHECK(cudaFreeAsync(u.device, copy_));
      if (u.host != nullptr) retired_hosts_.push_back(u.host);
      std::size_t const capacity = std::max<std::size_t>(n, 2 * u.capacity);
      u.host = nullptr;
      u.device = nullptr;
      LC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&u.host), 2 * capacity * 4));
      LC_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&u.device), 2 * capacity * 4, copy_));
      u.capacity = capacity;
    }
    std::memcpy(u.host, src.data(), n * 4);
    std::memcpy(u.host + n, dst.data(), n * 4);
    u.n = n;
    LC_CUDA_CHECK(cudaMemcpyAsync(u.device, u.host, 2 * n * 4, cudaMemcpyHostToDevice, copy_));
    return u;
  }

  std::vector<tensor_view> src_;  // per layer [source slots, width], this device
  imported_layers const* dst_;    // per layer [destination slots, width], the peer's device
  cudaStream_t compute_;
  row_copier copier_;
  cudaStream_t copy_ = nullptr;    // the copies, in submit order
  cudaStream_t notify_ = nullptr;  // the completions' host functions, behind copied_
  cudaEvent_t written_ = nullptr;  // re-recorded per layer: a wait takes its state when queued
  cudaEvent_t copied_ = nullptr;
  std::deque<slot_upload> uploads_;           // stable references while it grows
  std::vector<std::int32_t*> retired_hosts_;  // pinned staging outgrown, freed at destruction
  kv_layout layout_;
};

static_assert(kv_transport<cuda_ipc_transport>);

}  // namespace lightcore::pd

#endif  // LIGHTCORE_WITH_CUDA
