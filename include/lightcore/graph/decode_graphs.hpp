// Batch-size buckets and one captured CUDA graph per bucket: the decode step's work is captured
// once per bucket (largest first, inside the cache_tensor_manager's graph_scope, so that every
// graph shares one activation pool) and replayed for any batch that fits the bucket.
//
//   graph::bucket_graphs g(256);                 // buckets 1, 2, ..., 32, 48, 64, ..., 256
//   g.capture(mem, stream, [&](std::int64_t rows) { step(rows); });  // step: device work only
//   copy_inputs(stream);                                      // outside the graph
//   g.replay(g.bucket_for(n), stream);
//
// What a captured step may do: launch kernels whose geometry depends on the bucket alone, copy
// between device buffers, take buffers from the manager. What it may not: copy from pageable host
// memory, synchronise with the host, read device values on the host. Its inputs live in buffers
// of one address (the manager's persistent()), written on the stream before each replay.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lightcore/core/error.hpp"

#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"
#endif

namespace lightcore::graph {

// Buckets up to max_batch, ascending: every size 1..dense (small batches pay for no padding
// rows, and a padded row costs most there, where the step is latency-bound), then every
// multiple of `step` above dense, then max_batch itself (1..32, 48, ..., 256 for 256 with the
// defaults; 1..32, 48, 64, 80, 96, 100 for 100). A replay pads at most step - 1 rows.
// max_batch, dense and step must be >= 1.
inline std::vector<std::int64_t> batch_buckets(std::int64_t max_batch, std::int64_t dense = 32,
                                               std::int64_t step = 16) {
  LC_CHECK(max_batch >= 1 && dense >= 1 && step >= 1,
           "batch_buckets: max_batch, dense and step must be >= 1; got " << max_batch << ", "
                                                                         << dense << ", " << step);
  std::vector<std::int64_t> b;
  for (std::int64_t n = 1; n <= std::min(dense, max_batch); ++n) b.push_back(n);
  for (std::int64_t n = (dense / step + 1) * step; n < max_batch; n += step) b.push_back(n);
  if (b.back() != max_batch) b.push_back(max_batch);
  return b;
}

// The smallest bucket >= n, or 0 when n is larger than every bucket (n must be >= 1).
inline std::int64_t bucket_for(std::vector<std::int64_t> const& buckets, std::int64_t n) {
  LC_CHECK(n >= 1, "bucket_for: a batch has at least one row; got " << n);
  auto const it = std::lower_bound(buckets.begin(), buckets.end(), n);
  return it == buckets.end() ? 0 : *it;
}

#if defined(LIGHTCORE_WITH_CUDA)

// An instantiated CUDA graph. Move-only.
class cuda_graph {
 public:
  cuda_graph() = default;
  cuda_graph(cuda_graph&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  cuda_graph& operator=(cuda_graph&& o) noexcept {
    if (this != &o) {
      reset();
      exec_ = std::exchange(o.exec_, nullptr);
    }
    return *this;
  }
  cuda_graph(cuda_graph const&) = delete;
  cuda_graph& operator=(cuda_graph const&) = delete;
  ~cuda_graph() { reset(); }

  // Captures what `enqueue` issues on `stream` (thread-local capture: other threads may go on
  // with their own work) and instantiates it. A failure inside `enqueue` ends the capture first.
  template <class Enqueue>
  static cuda_graph capture(backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
    LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    try {
      std::forward<Enqueue>(enqueue)();
    } catch (...) {
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(stream.get(), &partial);
      if (partial != nullptr) cudaGraphDestroy(partial);
      throw;
    }
    cudaGraph_t graph = nullptr;
    LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    cuda_graph g;
    cudaError_t const instantiated = cudaGraphInstantiate(&g.exec_, graph, 0);
    cudaGraphDestroy(graph);
    LC_CUDA_CHECK(instantiated);
    return g;
  }

  // Launches the graph on `stream` (ordered after the work already queued there).
  void launch(backend::cuda::stream_type const& stream) const {
    LC_CHECK(exec_ != nullptr, "cuda_graph::launch on an empty graph");
    LC_CUDA_CHECK(cudaGraphLaunch(exec_, stream.get()));
  }
  bool empty() const noexcept { return exec_ == nullptr; }

 private:
  void reset() noexcept {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }
  cudaGraphExec_t exec_ = nullptr;
};

// One graph per batch bucket of a step whose work depends on the bucket's row count only.
class bucket_graphs {
 public:
  explicit bucket_graphs(std::int64_t max_batch) : buckets_(batch_buckets(max_batch)) {}
  explicit bucket_graphs(std::vector<std::int64_t> buckets) : buckets_(std::move(buckets)) {
    LC_CHECK(!buckets_.empty() && buckets_.front() >= 1 &&
                 std::is_sorted(buckets_.begin(), buckets_.end()) &&
                 std::adjacent_find(buckets_.begin(), buckets_.end()) == buckets_.end(),
             "bucket_graphs: buckets must be ascending, distinct and >= 1");
  }

  std::vector<std::int64_t> const& buckets() const noexcept { return buckets_; }
  std::int64_t max_batch() const noexcept { return buckets_.back(); }
  std::int64_t bucket_for(std::int64_t n) const { return graph::bucket_for(buckets_, n); }
  bool captured() const noexcept { return !graphs_.empty(); }

  // Captures enqueue(rows) for every bucket, largest first, each inside mem.graph_scope so that
  // the graphs share one pool sized by the largest. Replaces earlier captures.
  template <class Enqueue>
  void capture(memory::cache_tensor_manager<backend::cuda>& mem,
               backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
    graphs_.clear();
    stream.synchronize();
    auto const t0 = std::chrono::steady_clock::now();
    std::vector<cuda_graph> g(buckets_.size());
    for (std::size_t i = buckets_.size(); i-- > 0;) {
      std::int64_t const rows = buckets_[i];
      auto scope = mem.graph_scope("decode.bs" + std::to_string(rows));
      g[i] = cuda_graph::capture(stream, [&] { enqueue(rows); });
    }
    graphs_ = std::move(g);
    capture_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Wall time of the last capture() (every bucket, instantiation included).
  double capture_seconds() const noexcept { return capture_seconds_; }

  // Launches the graph of `bucket` (one of buckets()) on `stream`.
  void replay(std::int64_t bucket, backend::cuda::stream_type const& stream) const {
    LC_CHECK(captured(), "bucket_graphs::replay before capture");
    auto const it = std::find(buckets_.begin(), buckets_.end(), bucket);
    LC_CHECK(it != buckets_.end(), "bucket_graphs::replay: " << bucket << " is not a bucket; "
                                                             << "allowed: 1.." << max_batch()
                                                             << " as given by bucket_for");
    graphs_[std::size_t(it - buckets_.begin())].launch(stream);
  }

  void clear() noexcept { graphs_.clear(); }

 private:
  std::vector<std::int64_t> buckets_;
  std::vector<cuda_graph> graphs_;
  double capture_seconds_ = 0.0;
};

#endif  // LIGHTCORE_WITH_CUDA

}  // namespace lightcore::graph
