// What the GPU suites share: a fixture that skips without a device, and running a kernel's work
// inside a CUDA graph (fixed launch geometry, no host synchronisation, no allocation while
// capturing) to check that it can be captured.
#pragma once

#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore::test {

// Base of every GPU test fixture: skips, saying why, where no CUDA device is visible.
class cuda_test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (backend::cuda::device_count() == 0)
      GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
  }
};

// Captures what `enqueue` issues on `stream` into a CUDA graph, launches it once and waits.
template <class Enqueue>
void run_in_graph(backend::cuda::stream_type const& stream, Enqueue&& enqueue) {
  stream.synchronize();
  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  std::forward<Enqueue>(enqueue)();
  LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  cudaError_t const instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  LC_CUDA_CHECK(instantiated);
  cudaError_t const launched = cudaGraphLaunch(exec, stream.get());
  cudaError_t const finished = cudaStreamSynchronize(stream.get());
  cudaGraphExecDestroy(exec);
  LC_CUDA_CHECK(launched);
  LC_CUDA_CHECK(finished);
}

// enqueue() through a CUDA graph when `graph`, else directly on the stream.
template <class Enqueue>
void run_maybe_in_graph(backend::cuda::stream_type const& stream, bool graph, Enqueue&& enqueue) {
  if (graph)
    run_in_graph(stream, std::forward<Enqueue>(enqueue));
  else
    std::forward<Enqueue>(enqueue)();
}

// A device tensor of `shape` holding the host values `v` (copied on `s`, not waited for).
template <class T>
tensor<backend::cuda> upload(backend::cuda& gpu, std::vector<T> const& v, dtype t, dims shape,
                             backend::cuda::stream_type const& s) {
  tensor<backend::cuda> out(gpu, t, shape);
  gpu.copy(out.data(), v.data(), out.nbytes(), s);
  return out;
}

// The bytes of a device tensor as host values of T, after the work on `s` is done.
template <class T>
std::vector<T> download(backend::cuda& gpu, tensor<backend::cuda> const& t,
                        backend::cuda::stream_type const& s) {
  std::vector<T> v(t.nbytes() / sizeof(T));
  gpu.copy(v.data(), t.data(), t.nbytes(), s);
  s.synchronize();
  return v;
}

}  // namespace lightcore::test
