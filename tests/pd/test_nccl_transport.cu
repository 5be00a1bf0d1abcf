// The NCCL KV transport between two GPUs of one process (P on device 0, D on device 1, each
// side's constructor on its own thread): layers land bit-exact at shuffled slots, ordered after
// the compute stream that wrote them; D refuses an out-of-range slot and the copy fails with its
// reason while the link goes on; a layout mismatch is refused on both sides; a silent D makes
// copies time out; shutdown with copies queued or in flight ends every copy and never hangs.
// NCCL refuses two ranks on one GPU, so every test skips with fewer than two.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/dist/nccl_communicator.hpp"
#include "lightcore/pd/nccl_transport.hpp"

namespace {

namespace pd = lightcore::pd;
using lightcore::dtype;
using lightcore::tensor_view;
using lightcore::backend::device_guard;
using namespace std::chrono_literals;

constexpr std::int32_t layers = 3;
constexpr std::int64_t width = 40;  // bf16 elements: 80-byte rows
constexpr std::size_t row_bytes = width * 2;
constexpr std::int64_t prefill_slots = 96;
constexpr std::int64_t decode_slots = 64;
constexpr std::uint8_t poison = 0xee;

// One pool's layer tensors on one device, each its own allocation, every byte `fill`.
struct gpu_pool {
  gpu_pool(int ordinal, std::int64_t slots, std::int64_t row_width, std::uint8_t fill)
      : ordinal(ordinal), slots(slots), row_width(row_width) {
    device_guard g(ordinal);
    for (std::int32_t l = 0; l < layers; ++l) {
      void* p = nullptr;
      LC_CUDA_CHECK(cudaMalloc(&p, bytes()));
      LC_CUDA_CHECK(cudaMemset(p, fill, bytes()));
      ptrs.push_back(p);
    }
    // Before any link exists: later the receiver's NCCL kernel keeps the device busy.
    LC_CUDA_CHECK(cudaDeviceSynchronize());
  }
  ~gpu_pool() {
    device_guard g(ordinal);
    for (void* p : ptrs) cudaFree(p);
  }
  gpu_pool(gpu_pool const&) = delete;
  gpu_pool& operator=(gpu_pool const&) = delete;

  std::size_t bytes() const { return std::size_t(slots * row_width) * 2; }
  std::vector<tensor_view> views() const {
    std::vector<tensor_view> v;
    for (void* p : ptrs)
      v.emplace_back(p, dtype::bf16, lightcore::dims{slots, row_width},
                     lightcore::device::cuda(ordinal));
    return v;
  }
  std::vector<std::uint8_t> read(std::int32_t layer) const {
    device_guard g(ordinal);
    std::vector<std::uint8_t> out(bytes());
    // No device-wide synchronisation: D's receiver always has a receive posted. The rows of an
    // acknowledged layer are in place, so a plain copy reads them.
    LC_CUDA_CHECK(
        cudaMemcpy(out.data(), ptrs[std::size_t(layer)], bytes(), cudaMemcpyDeviceToHost));
    return out;
  }

  int ordinal;
  std::int64_t slots;
  std::int64_t row_width;
  std::vector<void*> ptrs;
};

// Both ends of a link, made at once: each constructor blocks until the other joins.
struct nccl_pair {
  nccl_pair(gpu_pool const& p, gpu_pool const& d, cudaStream_t compute,
            pd::nccl_transport_config config = {}) {
    // The id travels as hex, as it would in a control message.
    std::string const hex = pd::nccl_id_to_hex(lightcore::dist::make_nccl_id());
    ncclUniqueId const id = pd::nccl_unique_id_from_hex(hex);
    std::exception_ptr server_error;
    std::thread decode([&] {
      try {
        server = std::make_unique<pd::nccl_kv_server>(d.views(), id, config);
      } catch (...) {
        server_error = std::current_exception();
      }
    });
    try {
      transport = std::make_unique<pd::nccl_transport>(p.views(), id, compute, config);
    } catch (...) {
      decode.join();
      throw;
    }
    decode.join();
    if (server_error) std::rethrow_exception(server_error);
  }

  std::unique_ptr<pd::nccl_kv_server> server;
  std::unique_ptr<pd::nccl_transport> transport;
};

// Every layer_copy::done of a test: the message of each call, by key.
struct completions {
  std::function<void(std::string_view)> callback(int key) {
    return [this, key](std::string_view error) {
      std::lock_guard lock(mutex);
      calls[key].emplace_back(error);
      cv.notify_all();
    };
  }
  // Waits until `n` keys have been completed; false after `timeout`.
  bool wait(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return calls.size() >= n; });
  }
  // The messages of key's calls (none: not completed).
  std::vector<std::string> of(int key) {
    std::lock_guard lock(mutex);
    auto const it = calls.find(key);
    return it == calls.end() ? std::vector<std::string>{} : it->second;
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return calls.size();
  }

  std::mutex mutex;
  std::condition_variable cv;
  std::map<int, std::vector<std::string>> calls;
};

// Runs `f` on a thread; if it has not returned within `limit`, the process ends with a message
// (a hung shutdown must fail the run, not stall it).
template <class F>
void within(std::chrono::seconds limit, char const* what, F&& f) {
  std::atomic<bool> finished{false};
  std::thread t([&] {
    f();
    finished = true;
  });
  auto const until = std::chrono::steady_clock::now() + limit;
  while (!finished && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  if (!finished) {
    std::fprintf(stderr, "FAILED: %s did not return within %llds\n", what,
                 static_cast<long long>(limit.count()));
    std::_Exit(1);
  }
  t.join();
}

class PdNcclTransport : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    if (n < 2)
      GTEST_SKIP() << "the NCCL transport needs two GPUs (NCCL refuses two ranks on one GPU); " << n
                   << " visible";
    device_guard g(0);
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (compute != nullptr) {
      device_guard g(0);
      cudaStreamSynchronize(compute);
      cudaStreamDestroy(compute);
    }
  }

  cudaStream_t compute = nullptr;
};

// `n` distinct slot ids below `slots`: a run of `run` consecutive ids, then shuffled ones.
std::vector<std::int32_t> pick_slots(std::int64_t slots, std::size_t n, std::size_t run,
                                     std::mt19937_64& rng) {
  std::vector<std::int32_t> all(static_cast<std::size_t>(slots));
  std::iota(all.begin(), all.end(), 0);
  std::int32_t const start = std::int32_t(rng() % std::uint64_t(slots - std::int64_t(run)));
  std::vector<std::int32_t> out(all.begin() + start, all.begin() + start + std::int32_t(run));
  all.erase(all.begin() + start, all.begin() + start + std::int32_t(run));
  std::shuffle(all.begin(), all.end(), rng);
  out.insert(out.end(), all.begin(), all.begin() + std::ptrdiff_t(n - run));
  return out;
}

TEST_F(PdNcclTransport, LayersLandBitExactAfterTheComputeStream) {
  std::mt19937_64 rng(lightcore::test::run_seed());
  gpu_pool p(0, prefill_slots, width, 0);
  gpu_pool d(1, decode_slots, width, poison);
  // Pinned, so that the uploads below are truly asynchronous; freed after the link is gone
  // (freeing pinned memory may wait for the device).
  std::uint8_t* host = nullptr;
  LC_CUDA_CHECK(cudaMallocHost(&host, p.bytes() * layers));
  std::unique_ptr<std::uint8_t, cudaError_t (*)(void*)> const host_owner(host, cudaFreeHost);
  nccl_pair link(p, d, compute);
  EXPECT_EQ(link.transport->destination_slots(), decode_slots);
  EXPECT_EQ(link.transport->source_slots(), prefill_slots);

  // The source rows are written on the compute stream just before each submit: a copy not
  // ordered after the upload sends zeros.
  std::size_t const n = 50;
  std::vector<std::int32_t> const src = pick_slots(prefill_slots, n, 16, rng);
  std::vector<std::int32_t> const dst = pick_slots(decode_slots, n, 16, rng);
  for (std::size_t i = 0; i < p.bytes() * layers; ++i) host[i] = std::uint8_t(rng() % 255);
  completions done;
  {
    device_guard g(0);
    for (std::int32_t l = 0; l < layers; ++l) {
      LC_CUDA_CHECK(cudaMemcpyAsync(p.ptrs[std::size_t(l)], host + std::size_t(l) * p.bytes(),
                                    p.bytes(), cudaMemcpyHostToDevice, compute));
      link.transport->submit({l, src, dst, done.callback(l)});
    }
  }
  ASSERT_TRUE(done.wait(layers, 20s)) << "layers not acknowledged in time";
  for (std::int32_t l = 0; l < layers; ++l)
    EXPECT_EQ(done.of(l), std::vector<std::string>{""}) << "layer " << l;
  EXPECT_EQ(link.server->rows_received(), n * layers);

  for (std::int32_t l = 0; l < layers; ++l) {
    std::vector<std::uint8_t> const got = d.read(l);
    std::uint8_t const* want = host + std::size_t(l) * p.bytes();
    std::vector<bool> written(std::size_t(decode_slots), false);
    for (std::size_t i = 0; i < n; ++i) {
      written[std::size_t(dst[i])] = true;
      ASSERT_EQ(std::memcmp(got.data() + std::size_t(dst[i]) * row_bytes,
                            want + std::size_t(src[i]) * row_bytes, row_bytes),
                0)
          << "layer " << l << " row " << i << " (source slot " << src[i] << ", destination "
          << dst[i] << ")";
    }
    for (std::int64_t s = 0; s < decode_slots; ++s)
      if (!written[std::size_t(s)])
        ASSERT_TRUE(std::all_of(got.begin() + s * std::int64_t(row_bytes),
                                got.begin() + (s + 1) * std::int64_t(row_bytes),
                                [](std::uint8_t b) { return b == poison; }))
            << "layer " << l << " slot " << s << " was written but is not a destination";
  }

  // A layer with no rows is acknowledged too (D still reads the header).
  link.transport->submit({0, {}, {}, done.callback(10)});
  ASSERT_TRUE(done.wait(layers + 1, 20s));
  EXPECT_EQ(done.of(10), std::vector<std::string>{""});
  EXPECT_TRUE(link.transport->flush(5s));
  EXPECT_EQ(link.transport->error(), "");
  EXPECT_EQ(link.server->error(), "");
}

TEST_F(PdNcclTransport, DecodeRefusesABadSlotAndTheLinkGoesOn) {
  gpu_pool p(0, prefill_slots, width, 0x11);
  gpu_pool d(1, decode_slots, width, poison);
  nccl_pair link(p, d, compute);
  completions done;

  // P checks what it can and throws without taking the job.
  auto throws = [&](pd::layer_copy job, std::string const& what) {
    try {
      link.transport->submit(std::move(job));
    } catch (lightcore::error const& e) {
      EXPECT_NE(e.message().find(what), std::string::npos) << e.message();
      return;
    }
    ADD_FAILURE() << "submit took a bad job; expected: " << what;
  };
  std::vector<std::int32_t> const three{0, 1, 2}, two{0, 1}, bad_src{0, 96, 2};
  throws({layers, three, three, done.callback(90)}, "layer 3 is out of range; allowed 0..2");
  throws({-1, three, three, done.callback(91)}, "layer -1 is out of range");
  throws({0, three, two, done.callback(92)}, "3 source and 2 destination slots");
  throws({0, bad_src, three, done.callback(93)}, "source slot 96 is out of range; allowed 0..95");
  std::vector<std::int32_t> const many(std::size_t(decode_slots) + 1, 0);
  throws({0, many, many, done.callback(94)}, "65 rows; the decode pool has 64 slots");

  // D refuses a destination slot out of its range and writes nothing of that layer.
  std::vector<std::int32_t> const dst_bad{3, std::int32_t(decode_slots), 5};
  link.transport->submit({1, three, dst_bad, done.callback(1)});
  ASSERT_TRUE(done.wait(1, 20s));
  EXPECT_EQ(done.of(1),
            std::vector<std::string>{"decode instance refused the layer: destination slot 64 "
                                     "(row 1) is out of range; allowed 0..63"});
  std::vector<std::uint8_t> const untouched = d.read(1);
  EXPECT_TRUE(
      std::all_of(untouched.begin(), untouched.end(), [](std::uint8_t b) { return b == poison; }));
  EXPECT_EQ(link.server->layers_refused(), 1u);
  EXPECT_EQ(link.server->rows_received(), 0u);

  // The refusal ended one copy, not the link.
  std::vector<std::int32_t> const src_ok{7, 8}, dst_ok{63, 0};
  link.transport->submit({2, src_ok, dst_ok, done.callback(2)});
  ASSERT_TRUE(done.wait(2, 20s));
  EXPECT_EQ(done.of(2), std::vector<std::string>{""});
  std::vector<std::uint8_t> const got = d.read(2);
  EXPECT_TRUE(std::all_of(got.begin(), got.begin() + std::int64_t(row_bytes),
                          [](std::uint8_t b) { return b == 0x11; }));
  EXPECT_TRUE(std::all_of(got.end() - std::int64_t(row_bytes), got.end(),
                          [](std::uint8_t b) { return b == 0x11; }));
  EXPECT_EQ(link.server->rows_received(), 2u);
  EXPECT_EQ(done.size(), 2u) << "a refused submit called done";
  EXPECT_EQ(link.transport->error(), "");
}

TEST_F(PdNcclTransport, LayoutMismatchIsRefusedOnBothSides) {
  gpu_pool p(0, prefill_slots, width, 0);
  gpu_pool d(1, decode_slots, width + 8, 0);
  std::exception_ptr server_error;
  std::string const hex = pd::nccl_id_to_hex(lightcore::dist::make_nccl_id());
  ncclUniqueId const id = pd::nccl_unique_id_from_hex(hex);
  std::thread decode([&] {
    try {
      pd::nccl_kv_server server(d.views(), id);
    } catch (...) {
      server_error = std::current_exception();
    }
  });
  std::string prefill_message;
  try {
    pd::nccl_transport transport(p.views(), id, compute);
  } catch (lightcore::error const& e) {
    prefill_message = e.message();
  }
  decode.join();
  EXPECT_EQ(prefill_message,
            "nccl_transport: the prefill pool is 3 layers x 40 bf16, the decode pool 3 layers x "
            "48 bf16; rows are copied as bytes, so they must match");
  ASSERT_TRUE(server_error != nullptr) << "the decode side accepted a different layout";
  try {
    std::rethrow_exception(server_error);
  } catch (lightcore::error const& e) {
    EXPECT_EQ(e.message(),
              "nccl_kv_server: the prefill pool is 3 layers x 40 bf16, the decode pool 3 layers "
              "x 48 bf16; rows are copied as bytes, so they must match");
  }
}

TEST_F(PdNcclTransport, SilentDecodeSideTimesOutEveryCopy) {
  gpu_pool p(0, prefill_slots, width, 0);
  gpu_pool d(1, decode_slots, width, 0);
  nccl_pair link(p, d, compute, {.timeout = 300ms});
  link.server->pause();
  completions done;
  std::vector<std::int32_t> const ids{1, 2, 3, 4};
  auto const start = std::chrono::steady_clock::now();
  for (std::int32_t l = 0; l < layers; ++l) link.transport->submit({l, ids, ids, done.callback(l)});
  ASSERT_TRUE(done.wait(layers, 20s));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 250ms);
  for (std::int32_t l = 0; l < layers; ++l) {
    auto const calls = done.of(l);
    ASSERT_EQ(calls.size(), 1u) << "layer " << l;
    EXPECT_NE(calls[0].find("NCCL link to the decode instance is broken"), std::string::npos)
        << calls[0];
    EXPECT_NE(calls[0].find("timed out"), std::string::npos) << calls[0];
  }
  EXPECT_NE(link.transport->error().find("timed out"), std::string::npos);
  EXPECT_FALSE(link.transport->flush(1s));
  // Later copies fail at once, with the same reason.
  link.transport->submit({0, ids, ids, done.callback(7)});
  auto const later = done.of(7);
  ASSERT_EQ(later.size(), 1u);
  EXPECT_NE(later[0].find("timed out"), std::string::npos) << later[0];
  within(15s, "destroying the transport", [&] { link.transport.reset(); });
  within(15s, "destroying the server", [&] { link.server.reset(); });
}

TEST_F(PdNcclTransport, ShutdownWithCopiesInFlightDoesNotHang) {
  gpu_pool p(0, prefill_slots, width, 0);
  gpu_pool d(1, decode_slots, width, 0);
  nccl_pair link(p, d, compute);
  link.server->pause();  // D stops reading: sends and acks stay in flight
  completions done;
  std::vector<std::int32_t> const ids{9, 10, 11, 40};
  for (std::int32_t l = 0; l < layers; ++l) link.transport->submit({l, ids, ids, done.callback(l)});
  std::this_thread::sleep_for(100ms);
  within(15s, "destroying the transport with copies in flight", [&] { link.transport.reset(); });
  ASSERT_EQ(done.size(), std::size_t(layers));
  for (std::int32_t l = 0; l < layers; ++l) {
    auto const calls = done.of(l);
    ASSERT_EQ(calls.size(), 1u) << "layer " << l;
    EXPECT_NE(calls[0].find("shutting down"), std::string::npos) << calls[0];
  }
  within(15s, "destroying a paused server", [&] { link.server.reset(); });
}

// A host function that holds the compute stream until released: the copies queued behind it
// cannot start.
void CUDART_CB hold_stream(void* flag) {
  auto const* released = static_cast<std::atomic<bool> const*>(flag);
  while (!released->load()) std::this_thread::sleep_for(1ms);
}

TEST_F(PdNcclTransport, ShutdownWithCopiesBehindAStalledComputeDoesNotHang) {
  gpu_pool p(0, prefill_slots, width, 0);
  gpu_pool d(1, decode_slots, width, 0);
  nccl_pair link(p, d, compute);
  std::atomic<bool> released{false};
  {
    device_guard g(0);
    LC_CUDA_CHECK(cudaLaunchHostFunc(compute, hold_stream, &released));
  }
  completions done;
  std::vector<std::int32_t> const ids{0, 1};
  for (std::int32_t l = 0; l < layers; ++l) link.transport->submit({l, ids, ids, done.callback(l)});
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(done.size(), 0u) << "a copy completed before its compute did";
  // Destroying fails every copy before it frees anything; freeing device memory may wait for
  // the stalled stream, so it is released once the copies have failed.
  std::thread destroy([&] { link.transport.reset(); });
  bool const failed = done.wait(layers, 15s);
  released = true;
  within(15s, "destroying the transport behind a stalled compute stream", [&] { destroy.join(); });
  ASSERT_TRUE(failed) << "the queued copies did not fail at shutdown";
  for (std::int32_t l = 0; l < layers; ++l) {
    auto const calls = done.of(l);
    ASSERT_EQ(calls.size(), 1u) << "layer " << l;
    EXPECT_NE(calls[0].find("shutting down"), std::string::npos) << calls[0];
  }
  within(15s, "destroying the server", [&] { link.server.reset(); });
}

}  // namespace
