// nccl_communicator: the Communicator for backend::cuda, one rank per GPU, over NCCL (2.28 is the
// reference version). Every operation is enqueued on the caller's stream and returns at once:
// all_reduce_sum, all_gather, reduce_scatter_sum and broadcast map to the NCCL collectives of the
// same name, all_to_all_v to a group of ncclSend/ncclRecv, barrier to a one-element all-reduce.
//
// A communicator is made from a unique id that rank 0 creates and every rank receives:
// nccl_id_exchange hands it over between threads of one process (one thread per GPU); processes
// will exchange the id's bytes through the shared-memory request table. NCCL does not check that
// ranks agree on sizes (a disagreement corrupts or hangs): the in-process communicator checks
// them, which is where CPU tests find such mistakes.
//
// Available when CUDA and NCCL are (the CMake target lightcore::nccl, LIGHTCORE_WITH_NCCL);
// elsewhere this header declares nothing.
#pragma once

#if defined(LIGHTCORE_WITH_CUDA) && __has_include(<nccl.h>)

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/dist/communicator.hpp"

namespace lightcore::detail {
[[noreturn]] inline void throw_nccl_error(ncclResult_t r, char const* file, int line,
                                          char const* call) {
  std::string message = std::string("NCCL call failed: ") + ncclGetErrorString(r);
  // NCCL keeps a more specific description of the last failure on this thread.
  if (char const* last = ncclGetLastError(nullptr); last != nullptr && *last != '\0')
    message += std::string(" (") + last + ")";
  throw_error(file, line, call, std::move(message));
}
}  // namespace lightcore::detail

// LC_NCCL_CHECK(call): throws lightcore::error naming the call, NCCL's error string and file:line.
#define LC_NCCL_CHECK(call)                                                           \
  do {                                                                                \
    ncclResult_t const lc_nccl_res_ = (call);                                         \
    if (lc_nccl_res_ != ncclSuccess) [[unlikely]]                                     \
      ::lightcore::detail::throw_nccl_error(lc_nccl_res_, __FILE__, __LINE__, #call); \
  } while (0)

namespace lightcore::dist {

// A fresh NCCL unique id (rank 0 makes it; every rank of the communicator needs the same one).
inline ncclUniqueId make_nccl_id() {
  ncclUniqueId id{};
  LC_NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

// Hands rank 0's unique id to the other ranks of one process (one thread per rank): rank 0 makes
// it, the others wait on a condition variable. If rank 0 fails to make it, every rank throws.
class nccl_id_exchange {
 public:
  ncclUniqueId get(int rank) {
    std::unique_lock lock(mutex_);
    if (rank == 0) {
      try {
        id_ = make_nccl_id();
      } catch (std::exception const& e) {
        failure_ = e.what();
        cv_.notify_all();
        throw;
      }
      cv_.notify_all();
      return *id_;
    }
    cv_.wait(lock, [&] { return id_.has_value() || !failure_.empty(); });
    LC_CHECK(id_.has_value(), "nccl_id_exchange: rank " << rank << " got no NCCL id because rank 0 "
                                                        << "failed to make it: " << failure_);
    return *id_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::optional<ncclUniqueId> id_;
  std::string failure_;
};

class nccl_communicator {
 public:
  using backend_type = backend::cuda;
  using stream_type = backend::cuda::stream_type;

  // Joins rank `rank` of `world_size` on `device`; blocks until every rank has joined (so ranks
  // of one process must call it from different threads).
  nccl_communicator(backend::cuda const& device, int rank, int world_size, ncclUniqueId const& id)
      : ordinal_(device.ordinal()), rank_(rank), world_(world_size) {
    LC_CHECK(world_size >= 1 && 0 <= rank && rank < world_size,
             "nccl_communicator: rank " << rank << " of world size " << world_size
                                        << "; need world size >= 1 and 0 <= rank < world size");
    backend::device_guard guard(ordinal_);
    LC_CUDA_CHECK(cudaMalloc(&barrier_word_, sizeof(float)));
    LC_CUDA_CHECK(cudaMemset(barrier_word_, 0, sizeof(float)));
    ncclResult_t const r = ncclCommInitRank(&comm_, world_size, id, rank);
    if (r != ncclSuccess) {
      cudaFree(barrier_word_);
      LC_NCCL_CHECK(r);
    }
  }

  nccl_communicator(nccl_communicator&& o) noexcept
      : comm_(std::exchange(o.comm_, nullptr)),
        barrier_word_(std::exchange(o.barrier_word_, nullptr)),
        ordinal_(o.ordinal_),
        rank_(o.rank_),
        world_(o.world_) {}
  nccl_communicator& operator=(nccl_communicator&& o) noexcept {
    if (this != &o) {
      reset();
      comm_ = std::exchange(o.comm_, nullptr);
      barrier_word_ = std::exchange(o.barrier_word_, nullptr);
      ordinal_ = o.ordinal_;
      rank_ = o.rank_;
      world_ = o.world_;
    }
    return *this;
  }
  nccl_communicator(nccl_communicator const&) = delete;
  nccl_communicator& operator=(nccl_communicator const&) = delete;
  ~nccl_communicator() { reset(); }

  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return world_; }
  int ordinal() const noexcept { return ordinal_; }
  ncclComm_t get() const noexcept { return comm_; }

  void all_reduce_sum(tensor_view const& x, stream_type const& s) {
    detail::check_buffer("all_reduce_sum", "x", x, where());
    detail::check_reducible("all_reduce_sum", x);
    backend::device_guard guard(ordinal_);
    LC_NCCL_CHECK(ncclAllReduce(x.data(), x.data(), std::size_t(x.numel()), sum_type(x.type()),
                                ncclSum, comm_, s.get()));
  }

  void all_gather(tensor_view const& in, tensor_view const& out, stream_type const& s) {
    detail::check_buffer("all_gather", "input", in, where());
    detail::check_buffer("all_gather", "output", out, where());
    detail::check_gather(in, out, world_);
    backend::device_guard guard(ordinal_);
    LC_NCCL_CHECK(ncclAllGather(in.data(), out.data(), in.nbytes(), ncclUint8, comm_, s.get()));
  }

  void reduce_scatter_sum(tensor_view const& in, tensor_view const& out, stream_type const& s) {
    detail::check_buffer("reduce_scatter_sum", "input", in, where());
    detail::check_buffer("reduce_scatter_sum", "output", out, where());
    detail::check_scatter(in, out, world_);
    backend::device_guard guard(ordinal_);
    LC_NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), std::size_t(out.numel()),
                                    sum_type(in.type()), ncclSum, comm_, s.get()));
  }

  void all_to_all_v(tensor_view const& in, std::span<std::int64_t const> send_counts,
                    tensor_view const& out, std::span<std::int64_t const> recv_counts,
                    stream_type const& s) {
    detail::check_buffer("all_to_all_v", "input", in, where());
    detail::check_buffer("all_to_all_v", "output", out, where());
    detail::check_all_to_all(in, send_counts, out, recv_counts, world_);
    std::size_t const row_bytes = std::size_t(detail::row_elements(in)) * in.element_size();
    auto const* src = static_cast<std::byte const*>(in.data());
    auto* dst = static_cast<std::byte*>(out.data());
    backend::device_guard guard(ordinal_);
    // One group, so that NCCL runs every send and receive concurrently (issued one by one, a
    // send would wait for its peer's matching receive and the ranks would deadlock).
    LC_NCCL_CHECK(ncclGroupStart());
    try {
      for (int peer = 0; peer < world_; ++peer) {
        std::size_t const sent = std::size_t(send_counts[std::size_t(peer)]) * row_bytes;
        std::size_t const received = std::size_t(recv_counts[std::size_t(peer)]) * row_bytes;
        if (sent != 0) LC_NCCL_CHECK(ncclSend(src, sent, ncclUint8, peer, comm_, s.get()));
        if (received != 0) LC_NCCL_CHECK(ncclRecv(dst, received, ncclUint8, peer, comm_, s.get()));
        src += sent;
        dst += received;
      }
    } catch (...) {
      ncclGroupEnd();  // leave no group open on this thread; the first error is the one to report
      throw;
    }
    LC_NCCL_CHECK(ncclGroupEnd());
  }

  void broadcast(tensor_view const& x, int root, stream_type const& s) {
    detail::check_buffer("broadcast", "x", x, where());
    detail::check_root(root, world_);
    backend::device_guard guard(ordinal_);
    LC_NCCL_CHECK(ncclBroadcast(x.data(), x.data(), x.nbytes(), ncclUint8, root, comm_, s.get()));
  }

  // NCCL has no barrier: an all-reduce of one word serves, since no rank's copy completes before
  // every rank has contributed. Work on `s` after it waits for every rank's work before it.
  void barrier(stream_type const& s) {
    backend::device_guard guard(ordinal_);
    LC_NCCL_CHECK(
        ncclAllReduce(barrier_word_, barrier_word_, 1, ncclFloat32, ncclSum, comm_, s.get()));
  }

 private:
  device where() const noexcept { return device::cuda(ordinal_); }

  static ncclDataType_t sum_type(dtype t) {
    switch (t) {
      case dtype::bf16: return ncclBfloat16;
      case dtype::f32: return ncclFloat32;
      default: break;
    }
    LC_THROW("nccl_communicator: dtype " << t << " cannot be summed; allowed: bf16, f32");
  }

  void reset() noexcept {
    if (comm_ != nullptr) {
      // Finalize flushes this rank's outstanding operations before the resources go; an error
      // here cannot be thrown from a destructor, and destroy still releases what it can.
      backend::device_guard guard(ordinal_);
      ncclCommFinalize(comm_);
      ncclCommDestroy(comm_);
      comm_ = nullptr;
    }
    if (barrier_word_ != nullptr) {
      cudaFree(barrier_word_);
      barrier_word_ = nullptr;
    }
  }

  ncclComm_t comm_ = nullptr;
  float* barrier_word_ = nullptr;  // [1] on the device
  int ordinal_ = 0;
  int rank_ = 0;
  int world_ = 1;
};

static_assert(Communicator<nccl_communicator>);

// Runs f(nccl_communicator&) on one rank per device of `ordinals` (rank i on ordinals[i]), one
// thread each, and rethrows the first failure after every thread has ended. Every rank must
// reach each collective: NCCL cannot release ranks waiting for one that failed, so f should
// validate its inputs before its first collective.
template <class F>
void run_nccl_ranks(std::span<int const> ordinals, F&& f) {
  int const world = int(ordinals.size());
  nccl_id_exchange exchange;
  std::vector<std::exception_ptr> errors(ordinals.size());
  std::vector<std::thread> threads;
  threads.reserve(ordinals.size());
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        // The id first: rank 0 failing on its device must not leave the others waiting for it.
        ncclUniqueId const id = exchange.get(r);
        backend::cuda device(ordinals[std::size_t(r)]);
        nccl_communicator comm(device, r, world, id);
        f(comm);
      } catch (...) {
        errors[std::size_t(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto const& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace lightcore::dist

#endif  // LIGHTCORE_WITH_CUDA && nccl.h
