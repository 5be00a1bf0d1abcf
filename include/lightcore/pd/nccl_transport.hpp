// nccl_transport: a kv_transport from a prefill instance's GPU pool into a decode instance's GPU
// pool over NCCL send/recv (any two GPUs NCCL reaches: NVLink, PCIe, or the network between
// nodes). The decode side runs an nccl_kv_server; the two join a 2-rank link (P rank 0, D rank 1)
// made from one ncclUniqueId that the caller hands from one side to the other (nccl_id_to_hex).
// P gathers each layer's rows into a staging buffer behind the layer's compute and sends a
// header, the destination slot ids and the rows; D checks and scatters them, then acknowledges,
// and P completes the layer on the ack. docs/pd.md ("NCCL framing") specifies the wire format.
//
// Available when CUDA and NCCL are (LIGHTCORE_WITH_CUDA and nccl.h); elsewhere this header
// declares nothing.
#pragma once

#if defined(LIGHTCORE_WITH_CUDA) && __has_include(<nccl.h>)

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/dist/nccl_communicator.hpp"
#include "lightcore/pd/nccl_framing.hpp"
#include "lightcore/pd/transfer.hpp"

namespace lightcore::pd {

static_assert(sizeof(ncclUniqueId) == nccl_id_size, "nccl_id_size must match NCCL_UNIQUE_ID_BYTES");

// The id's 128 bytes as 256 hex characters, for a JSON control message.
inline std::string nccl_id_to_hex(ncclUniqueId const& id) {
  nccl_id_bytes bytes;
  std::memcpy(bytes.data(), &id, sizeof id);
  return nccl_id_to_hex(bytes);
}

// The id written by nccl_id_to_hex; throws on a bad length or character.
inline ncclUniqueId nccl_unique_id_from_hex(std::string_view hex) {
  nccl_id_bytes const bytes = nccl_id_from_hex(hex);
  ncclUniqueId id;
  std::memcpy(&id, bytes.data(), sizeof id);
  return id;
}

struct nccl_transport_config {
  // Longest wait for one step that needs the peer or the GPU: the hello at setup, a layer's
  // compute and sends, its payload arriving at D, its ack arriving at P; default 30 s. Past it
  // the link is broken: every queued and unacknowledged copy fails, and so does every later one.
  std::chrono::milliseconds timeout{30'000};
  // How often a waiting thread checks its stream, the communicators' asynchronous errors and
  // shutdown; default 50 us (a few percent of one core while a copy is in flight).
  std::chrono::microseconds poll_interval{50};
  // Rows the staging buffers hold before they first grow; default 1024. Growing frees the old
  // buffer, which waits for the whole device, so size it for the longest prompt expected.
  std::int64_t initial_rows = 1024;
};

namespace detail {

inline void check_nccl_config(char const* who, nccl_transport_config const& c) {
  LC_CHECK(c.timeout.count() >= 1 && c.poll_interval.count() >= 1 && c.initial_rows >= 1,
           who << ": timeout " << c.timeout.count() << " ms, poll_interval "
               << c.poll_interval.count() << " us, initial_rows " << c.initial_rows
               << "; each must be >= 1");
}

// Checks that `layers` are contiguous [slots, width] CUDA tensors alike and on one device;
// returns the device's ordinal.
inline int check_nccl_layers(char const* who, std::vector<tensor_view> const& layers) {
  LC_CHECK(!layers.empty(), who << " needs at least one layer");
  tensor_view const& first = layers[0];
  for (std::size_t l = 0; l < layers.size(); ++l) {
    tensor_view const& t = layers[l];
    LC_CHECK(t.where().kind == device_kind::cuda && t.where() == first.where() && t.rank() == 2 &&
                 t.is_contiguous() && t.size(0) == first.size(0) && t.size(1) == first.size(1) &&
                 t.type() == first.type(),
             who << ": layer " << l << " is " << t
                 << "; every layer must be a contiguous [slots, width] CUDA tensor like layer 0, "
                    "on the same device");
  }
  return first.where().index;
}

// A device buffer that grows (never shrinks) on demand; plain cudaMalloc memory, which NCCL may
// read or write from the peer GPU directly.
class nccl_buffer {
 public:
  nccl_buffer() = default;
  nccl_buffer(nccl_buffer const&) = delete;
  nccl_buffer& operator=(nccl_buffer const&) = delete;
  ~nccl_buffer() { release(); }

  unsigned char* data() const noexcept { return static_cast<unsigned char*>(p_); }
  void reserve(std::size_t bytes) {
    if (bytes <= size_) return;
    std::size_t const grown = std::max(bytes, 2 * size_);
    release();
    LC_CUDA_CHECK(cudaMalloc(&p_, grown));
    size_ = grown;
  }
  void release() noexcept {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    size_ = 0;
  }

 private:
  void* p_ = nullptr;
  std::size_t size_ = 0;
};

// The two communicators of a link: `data` carries P -> D (hellos, headers, payloads), `ack`
// carries D -> P. Two, because operations on one communicator run in the order issued: with one,
// P's wait for an ack would sit behind its next layer's sends, which wait for D, which sends
// that ack first.
struct nccl_link {
  ncclComm_t data = nullptr;
  ncclComm_t ack = nullptr;

  // Joins rank `rank` of the 2-rank link; blocks until the peer joins too.
  void join(ncclUniqueId const& id, int rank) {
    LC_NCCL_CHECK(ncclCommInitRank(&data, 2, id, rank));
    ncclResult_t const r = ncclCommSplit(data, 0, rank, &ack, nullptr);
    if (r != ncclSuccess) {
      abort();
      LC_NCCL_CHECK(r);
    }
  }
  // Ends both communicators at once, whatever is in flight: never waits for the peer.
  void abort() noexcept {
    if (ack != nullptr) ncclCommAbort(ack);
    if (data != nullptr) ncclCommAbort(data);
    ack = data = nullptr;
  }

  // Polls `s` until its work is done: an empty string, or why not (a CUDA or NCCL error, `stop`
  // set, `deadline` passed).
  std::string wait(cudaStream_t s, std::atomic<bool> const& stop, clock::time_point deadline,
                   std::chrono::microseconds poll) const {
    for (;;) {
      cudaError_t const q = cudaStreamQuery(s);
      if (q == cudaSuccess) return {};
      if (q != cudaErrorNotReady) return std::string("CUDA error: ") + cudaGetErrorString(q);
      for (ncclComm_t c : {data, ack}) {
        if (c == nullptr) continue;
        ncclResult_t state = ncclSuccess;
        ncclResult_t const r = ncclCommGetAsyncError(c, &state);
        if (r != ncclSuccess) state = r;
        if (state != ncclSuccess && state != ncclInProgress)
          return std::string("NCCL error: ") + ncclGetErrorString(state);
      }
      if (stop.load()) return "the link is shutting down";
      if (clock::now() > deadline) return "timed out";
      std::this_thread::sleep_for(poll);
    }
  }
};

// Copies a record between the host and a device buffer on `s`. From pageable memory the copy is
// complete (to the device: staged) when the call returns, so the host record may be reused.
template <class Record>
void put_record(void* dev, Record const& r, cudaStream_t s) {
  auto const bytes = pack(r);
  LC_CUDA_CHECK(cudaMemcpyAsync(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, s));
}
template <class Record>
std::string get_record(void const* dev, Record& out, cudaStream_t s) {
  std::array<std::byte, sizeof(Record)> bytes;
  LC_CUDA_CHECK(cudaMemcpyAsync(bytes.data(), dev, bytes.size(), cudaMemcpyDeviceToHost, s));
  LC_CUDA_CHECK(cudaStreamSynchronize(s));
  return unpack(bytes, out);
}

}  // namespace detail

// The decode side: receives layers from one nccl_transport and scatters their rows into its
// pool's layer tensors, then acknowledges each. The rows belong to slots the kv_receiver
// reserved for the transfer, so no pool bookkeeping happens here. One receiver thread with its
// own stream.
class nccl_kv_server {
 public:
  // Joins the link as rank 1 and exchanges hellos: blocks until the prefill side constructs its
  // nccl_transport with the same id (from another thread or process; NCCL's bootstrap has no
  // deadline of ours), then throws if the hellos do not complete within config.timeout or the
  // layouts differ (the peer throws too).
  nccl_kv_server(std::vector<tensor_view> layers, ncclUniqueId const& id,
                 nccl_transport_config config = {})
      : layers_(std::move(layers)), config_(config) {
    ordinal_ = detail::check_nccl_layers("nccl_kv_server", layers_);
    detail::check_nccl_config("nccl_kv_server", config_);
    layout_ = {std::int32_t(layers_.size()), layers_[0].size(1), layers_[0].type()};
    backend::device_guard guard(ordinal_);
    try {
      LC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      header_.reserve(sizeof(nccl_ack));
      ack_.reserve(sizeof(nccl_ack));
      link_.join(id, 1);
      // P's hello arrives on the data communicator, ours leaves on the ack one.
      detail::put_record(ack_.data(), make_hello(layout_, slots()), stream_);
      LC_NCCL_CHECK(
          ncclRecv(header_.data(), sizeof(nccl_hello), ncclUint8, 0, link_.data, stream_));
      LC_NCCL_CHECK(ncclSend(ack_.data(), sizeof(nccl_hello), ncclUint8, 0, link_.ack, stream_));
      std::string const e =
          link_.wait(stream_, stop_, clock::now() + config_.timeout, config_.poll_interval);
      LC_CHECK(e.empty(), "nccl_kv_server: no hello from the prefill side: " << e);
      nccl_hello theirs;
      std::string const bad = detail::get_record(header_.data(), theirs, stream_);
      LC_CHECK(bad.empty(), "nccl_kv_server: bad hello from the prefill side: " << bad);
      LC_CHECK(layout_of(theirs) == layout_, "nccl_kv_server: the prefill pool is "
                                                 << layout_of(theirs) << ", the decode pool "
                                                 << layout_
                                                 << "; rows are copied as bytes, so they "
                                                    "must match");
      std::size_t const rows = std::size_t(config_.initial_rows);
      ids_.reserve(rows * sizeof(std::int32_t));
      rows_buf_.reserve(rows * layout_.row_bytes());
    } catch (...) {
      teardown();
      throw;
    }
    receiver_ = std::thread([this] { receive_loop(); });
  }
  nccl_kv_server(nccl_kv_server const&) = delete;
  nccl_kv_server& operator=(nccl_kv_server const&) = delete;

  // Stops receiving and aborts the link (a layer in flight is dropped, unacknowledged).
  ~nccl_kv_server() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      cv_.notify_all();
    }
    receiver_.join();
    teardown();
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t slots() const noexcept { return layers_[0].size(0); }
  std::uint64_t rows_received() const noexcept { return rows_.load(); }
  std::uint64_t layers_refused() const noexcept { return refused_.load(); }

  // Why the link failed (it then receives nothing more), or an empty string while it works.
  std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }

  // Holds the receiver once it has read the next layer header, before the payload and the ack,
  // and lets it go; for tests of a decode side that stops answering.
  void pause() {
    std::lock_guard lock(mutex_);
    paused_ = true;
  }
  void resume() {
    std::lock_guard lock(mutex_);
    paused_ = false;
    cv_.notify_all();
  }

 private:
  void receive_loop() {
    std::string e;
    try {
      LC_CUDA_CHECK(cudaSetDevice(ordinal_));
      while (e.empty()) e = receive_one();
    } catch (std::exception const& x) {
      e = x.what();
    }
    if (stop_.load()) return;  // the destructor aborts the link
    {
      std::lock_guard lock(mutex_);
      error_ = e;
    }
    link_.abort();  // this thread is the only user of the link now: no stuck kernel stays
  }

  // One layer: header, payload, checks, scatter, ack. An empty string to go on, else why the
  // link cannot continue.
  std::string receive_one() {
    LC_NCCL_CHECK(
        ncclRecv(header_.data(), sizeof(nccl_layer_header), ncclUint8, 0, link_.data, stream_));
    // Waiting for the next layer has no deadline: a quiet prefill side is not a failure.
    std::string e = link_.wait(stream_, stop_, clock::time_point::max(), config_.poll_interval);
    if (!e.empty()) return e;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return !paused_ || stop_.load(); });
    }
    if (stop_.load()) return "the link is shutting down";
    nccl_layer_header h;
    e = detail::get_record(header_.data(), h, stream_);
    if (e.empty()) e = check_receivable(h, layout_.row_bytes(), slots());
    if (!e.empty()) return "bad layer header: " + e;
    std::size_t const n = h.rows, row = layout_.row_bytes();
    std::vector<std::int32_t> ids(n);
    if (n > 0) {
      ids_.reserve(n * sizeof(std::int32_t));
      rows_buf_.reserve(n * row);
      LC_NCCL_CHECK(ncclGroupStart());
      ncclResult_t const a = ncclRecv(ids_.data(), n * 4, ncclUint8, 0, link_.data, stream_);
      ncclResult_t const b = ncclRecv(rows_buf_.data(), n * row, ncclUint8, 0, link_.data, stream_);
      LC_NCCL_CHECK(ncclGroupEnd());
      LC_NCCL_CHECK(a);
      LC_NCCL_CHECK(b);
      e = link_.wait(stream_, stop_, clock::now() + config_.timeout, config_.poll_interval);
      if (!e.empty()) return "layer payload: " + e;
      LC_CUDA_CHECK(
          cudaMemcpyAsync(ids.data(), ids_.data(), n * 4, cudaMemcpyDeviceToHost, stream_));
      LC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    std::string const refusal = check_layer(h, layout_.layers, ids, slots());
    if (refusal.empty()) {
      auto* base = static_cast<unsigned char*>(layers_[std::size_t(h.layer)].data());
      for (slot_run const& r : consecutive_runs(ids))
        LC_CUDA_CHECK(cudaMemcpyAsync(base + std::size_t(r.first) * row,
                                      rows_buf_.data() + r.index * row, r.count * row,
                                      cudaMemcpyDeviceToDevice, stream_));
    }
    // Counted before the ack leaves, so that a peer that has the ack sees the count.
    if (refusal.empty())
      rows_ += n;
    else
      ++refused_;
    // The ack leaves behind the scatter on the same stream: "acknowledged" means "in the pool".
    detail::put_record(ack_.data(), make_ack(h, refusal), stream_);
    LC_NCCL_CHECK(ncclSend(ack_.data(), sizeof(nccl_ack), ncclUint8, 0, link_.ack, stream_));
    e = link_.wait(stream_, stop_, clock::now() + config_.timeout, config_.poll_interval);
    if (!e.empty()) return "ack: " + e;
    return {};
  }

  void teardown() noexcept {
    link_.abort();
    ids_.release();
    rows_buf_.release();
    header_.release();
    ack_.release();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  std::vector<tensor_view> layers_;  // per layer [slots, width] on device ordinal_
  nccl_transport_config config_;
  kv_layout layout_;
  int ordinal_ = 0;
  detail::nccl_link link_;
  cudaStream_t stream_ = nullptr;
  detail::nccl_buffer header_;    // [32 bytes] a received hello or layer header
  detail::nccl_buffer ack_;       // [256 bytes] an outgoing hello or ack
  detail::nccl_buffer ids_;       // [rows] i32 destination slot ids
  detail::nccl_buffer rows_buf_;  // [rows, row_bytes] received rows
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> rows_{0};
  std::atomic<std::uint64_t> refused_{0};
  mutable std::mutex mutex_;
  std::condition_variable cv_;  // paused_ or stop_ changed
  bool paused_ = false;
  std::string error_;
  std::thread receiver_;
};

// The prefill side: a kv_transport whose destination is an nccl_kv_server. submit() records an
// event on the compute stream and queues the copy; a sender thread gathers each layer behind its
// event and sends it; an ack thread completes each layer when D acknowledges it.
class nccl_transport {
 public:
  // src: the prefill pool's layers (one device); compute: the stream the forward writes the KV
  // on. Joins the link as rank 0 and exchanges hellos: blocks until the decode side constructs
  // its nccl_kv_server with the same id (NCCL's bootstrap has no deadline of ours), then throws
  // if the hellos do not complete within config.timeout or the layouts differ.
  nccl_transport(std::vector<tensor_view> src, ncclUniqueId const& id, cudaStream_t compute,
                 nccl_transport_config config = {})
      : src_(std::move(src)), compute_(compute), config_(config) {
    ordinal_ = detail::check_nccl_layers("nccl_transport", src_);
    detail::check_nccl_config("nccl_transport", config_);
    layout_ = {std::int32_t(src_.size()), src_[0].size(1), src_[0].type()};
    backend::device_guard guard(ordinal_);
    try {
      LC_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
      LC_CUDA_CHECK(cudaStreamCreateWithFlags(&ack_stream_, cudaStreamNonBlocking));
      header_.reserve(sizeof(nccl_ack));
      ack_.reserve(sizeof(nccl_ack));
      link_.join(id, 0);
      detail::put_record(header_.data(), make_hello(layout_, source_slots()), copy_);
      LC_NCCL_CHECK(ncclSend(header_.data(), sizeof(nccl_hello), ncclUint8, 1, link_.data, copy_));
      LC_NCCL_CHECK(ncclRecv(ack_.data(), sizeof(nccl_hello), ncclUint8, 1, link_.ack, copy_));
      std::string const e =
          link_.wait(copy_, stop_, clock::now() + config_.timeout, config_.poll_interval);
      LC_CHECK(e.empty(), "nccl_transport: no hello from the decode side: " << e);
      nccl_hello theirs;
      std::string const bad = detail::get_record(ack_.data(), theirs, copy_);
      LC_CHECK(bad.empty(), "nccl_transport: bad hello from the decode side: " << bad);
      LC_CHECK(layout_of(theirs) == layout_, "nccl_transport: the prefill pool is "
                                                 << layout_ << ", the decode pool "
                                                 << layout_of(theirs)
                                                 << "; rows are copied as bytes, so they "
                                                    "must match");
      dst_slots_ = theirs.slots;
      std::size_t const rows = std::size_t(config_.initial_rows);
      ids_.reserve(rows * sizeof(std::int32_t));
      staging_.reserve(rows * layout_.row_bytes());
    } catch (...) {
      teardown();
      throw;
    }
    threads_ = 2;
    sender_ = std::thread([this] { send_loop(); });
    acker_ = std::thread([this] { ack_loop(); });
  }
  nccl_transport(nccl_transport const&) = delete;
  nccl_transport& operator=(nccl_transport const&) = delete;

  // Aborts the link: copies not yet acknowledged fail ("shutting down"; call flush() first to
  // let them land). Never waits for the peer.
  ~nccl_transport() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      halt_ = true;
      cv_.notify_all();
    }
    sender_.join();
    acker_.join();
    fail_all("the link is shutting down");
    teardown();
  }

  kv_layout layout() const noexcept { return layout_; }
  std::int64_t source_slots() const noexcept { return src_[0].size(0); }
  std::int64_t destination_slots() const noexcept { return dst_slots_; }

  // Queues one layer's copy behind the work queued on the compute stream so far and returns.
  // Throws (the job is not taken) for a layer or source slot out of range, slot lists of
  // different lengths, or more rows than the decode pool has slots; destination slot ids are
  // D's to check (it refuses the layer, and done gets its reason). On a broken link, done is
  // called at once with the reason. Not thread-safe: one caller thread.
  void submit(layer_copy job) {
    LC_CHECK(job.done != nullptr, "nccl_transport::submit: the job has no completion callback");
    LC_CHECK(job.layer >= 0 && job.layer < layout_.layers,
             "nccl_transport: layer " << job.layer << " is out of range; allowed 0.."
                                      << layout_.layers - 1);
    LC_CHECK(job.src_slots.size() == job.dst_slots.size(),
             "nccl_transport: " << job.src_slots.size() << " source and " << job.dst_slots.size()
                                << " destination slots; they must be equal");
    LC_CHECK(std::int64_t(job.dst_slots.size()) <= dst_slots_,
             "nccl_transport: " << job.dst_slots.size() << " rows; the decode pool has "
                                << dst_slots_ << " slots");
    for (std::int32_t const s : job.src_slots)
      LC_CHECK(s >= 0 && s < source_slots(), "nccl_transport: source slot "
                                                 << s << " is out of range; allowed 0.."
                                                 << source_slots() - 1);
    cudaEvent_t written = nullptr;
    {
      backend::device_guard guard(ordinal_);
      LC_CUDA_CHECK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
      cudaError_t const e = cudaEventRecord(written, compute_);
      if (e != cudaSuccess) {
        cudaEventDestroy(written);
        LC_CUDA_CHECK(e);
      }
    }
    std::unique_lock lock(mutex_);
    if (broken_) {  // checked under the lock that queues: a failure cannot strand the job
      std::string const why = broken_reason_;
      lock.unlock();
      cudaEventDestroy(written);
      job.done("NCCL link to the decode instance is broken: " + why);
      return;
    }
    queue_.push_back({std::move(job), written});
    cv_.notify_all();
  }

  // Waits until every submitted copy has completed, or the link broke, or `timeout` passed;
  // true when everything submitted was acknowledged.
  bool flush(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return idle_.wait_for(lock, timeout, [&] {
      return broken_ || (queue_.empty() && pending_.empty());
    }) && !broken_;
  }

  // Why the link failed, or an empty string while it works.
  std::string error() const {
    std::lock_guard lock(mutex_);
    return broken_ ? broken_reason_ : std::string();
  }

 private:
  struct queued {
    layer_copy job;
    cudaEvent_t written = nullptr;  // recorded on the compute stream at submit
  };

  void send_loop() {
    std::string e;
    try {
      LC_CUDA_CHECK(cudaSetDevice(ordinal_));
      for (;;) {
        queued q;
        std::uint64_t tag = 0;
        std::int32_t layer = 0;
        std::vector<std::int32_t> src, dst;
        {
          std::unique_lock lock(mutex_);
          cv_.wait(lock, [&] { return !queue_.empty() || halt_.load(); });
          if (halt_.load()) break;
          q = std::move(queue_.front());
          queue_.pop_front();
          tag = ++next_tag_;
          // The slot ids are copied: once the job is in pending_, a failure on the other thread
          // may complete it, and its owner may free the spans at once.
          layer = q.job.layer;
          src.assign(q.job.src_slots.begin(), q.job.src_slots.end());
          dst.assign(q.job.dst_slots.begin(), q.job.dst_slots.end());
          pending_.emplace(tag, std::move(q.job));
        }
        e = send_one(tag, q.written, layer, src, dst);
        if (!e.empty()) break;
      }
    } catch (std::exception const& x) {
      e = x.what();
    }
    if (!e.empty()) fail_all(e);
    thread_done();
  }

  // Gathers and sends the copy `tag` of `layer`; an empty string once D has received it all.
  std::string send_one(std::uint64_t tag, cudaEvent_t written, std::int32_t layer,
                       std::vector<std::int32_t> const& src_slots,
                       std::vector<std::int32_t> const& dst_slots) {
    struct event_owner {
      cudaEvent_t e;
      ~event_owner() { cudaEventDestroy(e); }
    } const owner{written};
    std::size_t const n = src_slots.size(), row = layout_.row_bytes();
    nccl_layer_header h;
    h.tag = tag;
    h.layer = layer;
    h.rows = std::uint32_t(n);
    h.row_bytes = row;
    // Header and ids first: from pageable memory each copy waits for the stream, which holds
    // nothing of the compute yet.
    detail::put_record(header_.data(), h, copy_);
    if (n > 0) {
      ids_.reserve(n * sizeof(std::int32_t));
      staging_.reserve(n * row);
      LC_CUDA_CHECK(
          cudaMemcpyAsync(ids_.data(), dst_slots.data(), n * 4, cudaMemcpyHostToDevice, copy_));
      LC_CUDA_CHECK(cudaStreamWaitEvent(copy_, written, 0));
      auto const* src = static_cast<unsigned char const*>(src_[std::size_t(layer)].data());
      for (slot_run const& r : consecutive_runs(src_slots))
        LC_CUDA_CHECK(cudaMemcpyAsync(staging_.data() + r.index * row,
                                      src + std::size_t(r.first) * row, r.count * row,
                                      cudaMemcpyDeviceToDevice, copy_));
    }
    // Wait for the compute and the gather before any NCCL work is queued: an NCCL operation
    // queued behind a stalled stream could not be aborted cleanly at shutdown.
    std::string e = link_.wait(copy_, halt_, clock::now() + config_.timeout, config_.poll_interval);
    if (!e.empty()) return "layer " + std::to_string(layer) + " compute or gather: " + e;
    // The header alone first: D posts its payload receives only once it has read the sizes.
    LC_NCCL_CHECK(ncclSend(header_.data(), sizeof h, ncclUint8, 1, link_.data, copy_));
    if (n > 0) {
      LC_NCCL_CHECK(ncclGroupStart());
      ncclResult_t const a = ncclSend(ids_.data(), n * 4, ncclUint8, 1, link_.data, copy_);
      ncclResult_t const b = ncclSend(staging_.data(), n * row, ncclUint8, 1, link_.data, copy_);
      LC_NCCL_CHECK(ncclGroupEnd());
      LC_NCCL_CHECK(a);
      LC_NCCL_CHECK(b);
    }
    {
      std::lock_guard lock(mutex_);
      ++unacked_;
      cv_.notify_all();
    }
    e = link_.wait(copy_, halt_, clock::now() + config_.timeout, config_.poll_interval);
    return e.empty() ? e : "sending layer " + std::to_string(layer) + ": " + e;
  }

  void ack_loop() {
    std::string e;
    try {
      LC_CUDA_CHECK(cudaSetDevice(ordinal_));
      for (;;) {
        {
          std::unique_lock lock(mutex_);
          cv_.wait(lock, [&] { return unacked_ > 0 || halt_.load(); });
          if (halt_.load()) break;
        }
        LC_NCCL_CHECK(
            ncclRecv(ack_.data(), sizeof(nccl_ack), ncclUint8, 1, link_.ack, ack_stream_));
        e = link_.wait(ack_stream_, halt_, clock::now() + config_.timeout, config_.poll_interval);
        if (!e.empty()) {
          e = "waiting for an ack: " + e;
          break;
        }
        nccl_ack a;
        e = detail::get_record(ack_.data(), a, ack_stream_);
        if (!e.empty()) {
          e = "bad ack: " + e;
          break;
        }
        layer_copy job;
        {
          std::lock_guard lock(mutex_);
          auto it = pending_.find(a.tag);
          if (it == pending_.end()) {
            e = "ack for unknown tag " + std::to_string(a.tag);
            break;
          }
          job = std::move(it->second);
          pending_.erase(it);
          --unacked_;
        }
        job.done(a.status == 0
                     ? std::string()
                     : "decode instance refused the layer: " + std::string(message_of(a)));
        std::lock_guard lock(mutex_);
        if (queue_.empty() && pending_.empty()) idle_.notify_all();
      }
    } catch (std::exception const& x) {
      e = x.what();
    }
    if (!e.empty()) fail_all(e);
    thread_done();
  }

  // Marks the link broken (first reason kept) and fails every queued and unacknowledged copy.
  void fail_all(std::string const& why) {
    std::vector<layer_copy> jobs;
    std::string reason;
    {
      std::lock_guard lock(mutex_);
      if (!broken_) broken_reason_ = why;
      broken_ = true;
      halt_ = true;
      reason = broken_reason_;
      for (queued& q : queue_) {
        cudaEventDestroy(q.written);
        jobs.push_back(std::move(q.job));
      }
      queue_.clear();
      for (auto& [tag, j] : pending_) jobs.push_back(std::move(j));
      pending_.clear();
      unacked_ = 0;
      cv_.notify_all();
      idle_.notify_all();
    }
    for (layer_copy& j : jobs) j.done("NCCL link to the decode instance is broken: " + reason);
  }

  // The last of the two threads to end on a broken link aborts it, so that no NCCL kernel stays
  // stuck on this GPU until destruction; nobody else uses the communicators then.
  void thread_done() {
    if (--threads_ == 0 && !stop_.load()) link_.abort();
  }

  void teardown() noexcept {
    link_.abort();
    ids_.release();
    staging_.release();
    header_.release();
    ack_.release();
    if (ack_stream_ != nullptr) cudaStreamDestroy(ack_stream_);
    if (copy_ != nullptr) cudaStreamDestroy(copy_);
    ack_stream_ = copy_ = nullptr;
  }

  std::vector<tensor_view> src_;  // per layer [source slots, width] on device ordinal_
  cudaStream_t compute_;
  nccl_transport_config config_;
  kv_layout layout_;
  int ordinal_ = 0;
  std::int64_t dst_slots_ = 0;
  detail::nccl_link link_;
  cudaStream_t copy_ = nullptr;        // gathers and sends (data communicator)
  cudaStream_t ack_stream_ = nullptr;  // ack receives (ack communicator)
  detail::nccl_buffer header_;         // [32 bytes] outgoing hello or layer header
  detail::nccl_buffer ack_;            // [256 bytes] incoming hello or ack
  detail::nccl_buffer ids_;            // [rows] i32 destination slot ids
  detail::nccl_buffer staging_;        // [rows, row_bytes] gathered rows
  mutable std::mutex mutex_;
  std::condition_variable cv_;    // queued work, sends to acknowledge, stop, broken
  std::condition_variable idle_;  // nothing queued or unacknowledged
  std::deque<queued> queue_;
  std::map<std::uint64_t, layer_copy> pending_;  // taken by the sender, not yet acknowledged
  std::uint64_t next_tag_ = 0;
  std::int64_t unacked_ = 0;  // sent and awaiting the ack
  bool broken_ = false;
  std::string broken_reason_;
  std::atomic<bool> stop_{false};  // the destructor runs
  std::atomic<bool> halt_{false};  // stop_ or broken_: the threads end
  std::atomic<int> threads_{0};
  std::thread sender_;
  std::thread acker_;
};

static_assert(kv_transport<nccl_transport>);

}  // namespace lightcore::pd

#endif  // LIGHTCORE_WITH_CUDA && nccl.h
