// The CUDA IPC transport between two processes on one GPU, as a prefill and a decode instance
// run it: the decode process exports its pool's layers, the prefill process opens them and
// copies rows into shuffled destination slots, each copy queued behind work still running on
// the compute stream that writes the source rows. The decode process then reads its own pool
// back and the rows must be the source's, bit for bit, and every other row untouched.
//
// The decode side is this same binary run again (a fresh process with its own CUDA context)
// with LC_PD_IPC_CHILD naming the pipe descriptors; in an ordinary run its test skips.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/index/index.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/pd/cuda_ipc_transport.hpp"

extern char** environ;

namespace lightcore::test {
namespace {

namespace pd = lightcore::pd;

constexpr std::int32_t ipc_layers = 3;
constexpr std::int64_t width = 576;  // an MLA latent row, bf16
constexpr std::int64_t dst_slots = 96, src_slots = 80;
constexpr std::size_t row_bytes = std::size_t(width) * 2;
constexpr unsigned char untouched = 0x5a;  // the decode pool's bytes before any copy

void write_all(int fd, void const* p, std::size_t n) {
  auto const* b = static_cast<char const*>(p);
  while (n > 0) {
    ssize_t const w = ::write(fd, b, n);
    LC_CHECK(w > 0, "pipe write failed");
    b += w;
    n -= std::size_t(w);
  }
}
void read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    ssize_t const r = ::read(fd, b, n);
    LC_CHECK(r > 0, "pipe read failed (the other process ended early)");
    b += r;
    n -= std::size_t(r);
  }
}

// Keeps the compute stream busy for about `us` microseconds, so that a copy not ordered behind
// it would read the source rows before they are written.
__global__ void spin_kernel(long long cycles) {
  long long const t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// The decode process: exports its layers, waits for the prefill side's word, sends its pool back.
TEST(PdCudaIpcChild, DecodeSideOfTheTransfer) {
  char const* fds = std::getenv("LC_PD_IPC_CHILD");
  if (fds == nullptr)
    GTEST_SKIP() << "the decode process of PdCudaIpc.RowsLandInAnotherProcess (started by it)";
  int rfd = -1, wfd = -1;
  ASSERT_EQ(std::sscanf(fds, "%d,%d", &rfd, &wfd), 2);
  std::vector<tensor_view> layers;
  std::vector<void*> mem(ipc_layers);
  for (std::int32_t l = 0; l < ipc_layers; ++l) {
    LC_CUDA_CHECK(cudaMalloc(&mem[std::size_t(l)], std::size_t(dst_slots) * row_bytes));
    LC_CUDA_CHECK(cudaMemset(mem[std::size_t(l)], untouched, std::size_t(dst_slots) * row_bytes));
    layers.emplace_back(mem[std::size_t(l)], dtype::bf16, dims{dst_slots, width},
                        device{device_kind::cuda, 0});
  }
  LC_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<pd::ipc_layer> const handles = pd::export_layers(layers);
  write_all(wfd, handles.data(), handles.size() * sizeof(pd::ipc_layer));
  char go = 0;
  read_all(rfd, &go, 1);  // the prefill side's copies have all completed
  std::vector<unsigned char> host(std::size_t(dst_slots) * row_bytes);
  for (void* p : mem) {
    LC_CUDA_CHECK(cudaMemcpy(host.data(), p, host.size(), cudaMemcpyDeviceToHost));
    write_all(wfd, host.data(), host.size());
  }
  read_all(rfd, &go, 1);  // the prefill side has closed its handles
  for (void* p : mem) cudaFree(p);
}

TEST(PdCudaIpc, RowsLandInAnotherProcessBehindTheComputeStream) {
  if (std::getenv("LC_PD_IPC_CHILD") != nullptr) GTEST_SKIP() << "in the decode process";
  if (backend::cuda::device_count() == 0)
    GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
  int to_child[2], from_child[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(from_child), 0);
  std::string const env_fds =
      "LC_PD_IPC_CHILD=" + std::to_string(to_child[0]) + "," + std::to_string(from_child[1]);
  std::vector<std::string> env_strings{env_fds};
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=PdCudaIpcChild.*";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  // The child keeps only its own ends: it sees end-of-file if this process goes away.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclose(&actions, to_child[1]);
  posix_spawn_file_actions_addclose(&actions, from_child[0]);
  pid_t child = -1;
  int const spawned = ::posix_spawn(&child, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ASSERT_EQ(spawned, 0);
  ::close(to_child[0]);
  ::close(from_child[1]);

  std::vector<pd::ipc_layer> handles(ipc_layers);
  read_all(from_child[0], handles.data(), handles.size() * sizeof(pd::ipc_layer));
  for (auto const& h : handles) EXPECT_EQ(h.slots, dst_slots);

  // The prefill pool: random rows, uploaded on the compute stream behind ~2 ms of spinning.
  std::mt19937 rng(7);
  std::vector<std::vector<unsigned char>> src_host(ipc_layers);
  std::vector<void*> src_mem(ipc_layers);
  std::vector<tensor_view> src;
  cudaStream_t compute = nullptr;
  LC_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  for (std::int32_t l = 0; l < ipc_layers; ++l) {
    auto& h = src_host[std::size_t(l)];
    h.resize(std::size_t(src_slots) * row_bytes);
    for (auto& b : h) b = static_cast<unsigned char>(rng() % 251);
    LC_CUDA_CHECK(cudaMalloc(&src_mem[std::size_t(l)], h.size()));
    LC_CUDA_CHECK(cudaMemset(src_mem[std::size_t(l)], 0, h.size()));
    src.emplace_back(src_mem[std::size_t(l)], dtype::bf16, dims{src_slots, width},
                     device{device_kind::cuda, 0});
  }
  LC_CUDA_CHECK(cudaDeviceSynchronize());
  // Pinned copies of the rows, so that the uploads are truly asynchronous behind the spin.
  std::vector<void*> pinned(ipc_layers);
  for (std::int32_t l = 0; l < ipc_layers; ++l) {
    LC_CUDA_CHECK(cudaMallocHost(&pinned[std::size_t(l)], src_host[std::size_t(l)].size()));
    std::memcpy(pinned[std::size_t(l)], src_host[std::size_t(l)].data(),
                src_host[std::size_t(l)].size());
  }

  // Two transfers: a prompt of 40 rows (runs of consecutive slots on both sides, as a fresh pool
  // gives) and one of 24 rows to shuffled slots on both sides.
  std::vector<std::int32_t> a_src(40), a_dst(40), b_src(24), b_dst(24);
  std::iota(a_src.begin(), a_src.end(), 3);
  std::iota(a_dst.begin(), a_dst.end(), 50);
  std::vector<std::int32_t> free_src(src_slots), free_dst(dst_slots);
  std::iota(free_src.begin(), free_src.end(), 0);
  std::iota(free_dst.begin(), free_dst.end(), 0);
  free_src.erase(free_src.begin() + 3, free_src.begin() + 43);
  free_dst.erase(free_dst.begin() + 50, free_dst.begin() + 90);
  std::shuffle(free_src.begin(), free_src.end(), rng);
  std::shuffle(free_dst.begin(), free_dst.end(), rng);
  std::copy_n(free_src.begin(), 24, b_src.begin());
  std::copy_n(free_dst.begin(), 24, b_dst.begin());

  std::mutex m;
  std::condition_variable cv;
  int done = 0;
  std::vector<std::string> errors;
  {
    pd::imported_layers imported(handles, width, dtype::bf16);
    pd::cuda_ipc_transport t(src, imported, compute, &kernels::copy_rows_on_stream);
    EXPECT_EQ(t.source_slots(), src_slots);
    EXPECT_EQ(t.destination_slots(), dst_slots);
    for (std::int32_t l = 0; l < ipc_layers; ++l) {
      // "Compute" writes layer l: a spin, then its rows; the copies are submitted at once.
      spin_kernel<<<1, 1, 0, compute>>>(2'000'000);  // ~1 ms at ~2 GHz
      LC_CUDA_CHECK(cudaGetLastError());
      LC_CUDA_CHECK(cudaMemcpyAsync(src_mem[std::size_t(l)], pinned[std::size_t(l)],
                                    src_host[std::size_t(l)].size(), cudaMemcpyHostToDevice,
                                    compute));
      for (auto const* job : {&a_src, &b_src}) {
        auto const& dst = job == &a_src ? a_dst : b_dst;
        t.submit({l, *job, dst, [&](std::string_view e) {
                    std::lock_guard g(m);
                    if (!e.empty()) errors.emplace_back(e);
                    ++done;
                    cv.notify_all();
                  }});
      }
    }
    std::unique_lock lk(m);
    ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(30), [&] { return done == 2 * ipc_layers; }))
        << done << " of " << 2 * ipc_layers << " copies completed";
    EXPECT_TRUE(errors.empty()) << errors.front();
  }  // the transport and the imported handles close here

  char const go = 1;
  write_all(to_child[1], &go, 1);
  for (std::int32_t l = 0; l < ipc_layers; ++l) {
    std::vector<unsigned char> pool(std::size_t(dst_slots) * row_bytes);
    read_all(from_child[0], pool.data(), pool.size());
    std::vector<bool> written(std::size_t(dst_slots), false);
    auto const& h = src_host[std::size_t(l)];
    for (auto const& [s, d] : {std::pair{&a_src, &a_dst}, std::pair{&b_src, &b_dst}})
      for (std::size_t i = 0; i < s->size(); ++i) {
        std::size_t const sr = std::size_t((*s)[i]), dr = std::size_t((*d)[i]);
        written[dr] = true;
        EXPECT_EQ(std::memcmp(pool.data() + dr * row_bytes, h.data() + sr * row_bytes, row_bytes),
                  0)
            << "layer " << l << ": destination slot " << dr << " does not hold source slot " << sr;
      }
    for (std::size_t r = 0; r < std::size_t(dst_slots); ++r)
      if (!written[r])
        EXPECT_TRUE(std::all_of(pool.data() + r * row_bytes, pool.data() + (r + 1) * row_bytes,
                                [](unsigned char b) { return b == untouched; }))
            << "layer " << l << ": slot " << r << " was written but is no destination";
  }
  write_all(to_child[1], &go, 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the decode process failed";
  ::close(to_child[1]);
  ::close(from_child[0]);
  for (void* p : pinned) cudaFreeHost(p);
  for (void* p : src_mem) cudaFree(p);
  cudaStreamDestroy(compute);
}

}  // namespace
}  // namespace lightcore::test
