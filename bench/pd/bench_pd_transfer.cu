// KV transfer bandwidth of the CUDA IPC transport between two processes on one GPU, as a
// prefill instance moves a prompt's KV into a decode instance's pool: every layer of N tokens
// (MLA latent rows, 576 bf16), from submit of the first layer to the completion of the last.
// The binary starts itself again as the decode process (its pool, exported); the benchmarks run
// in the prefill process. Counters: payload GB/s, and frac_of_hbm: the bytes read + written over
// the HBM copy ceiling measured in the same binary (BM_hbm_copy).
//
//   lightcore_bench_pd_transfer --benchmark_counters_tabular=true
//
// Slots: `runs` gives each transfer consecutive source and destination slots (a fresh pool: one
// copy per layer); `scattered` gives both sides shuffled slots (a fragmented pool: one copy per
// row, the worst case of the transport's one-copy-per-run rule).
#include <benchmark/benchmark.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../kernels/bench_common.hpp"
#include "kernels/index/index.hpp"
#include "lightcore/core/cuda_check.hpp"
#include "lightcore/pd/cuda_ipc_transport.hpp"

extern char** environ;

namespace {

namespace pd = lightcore::pd;
using lightcore::device;
using lightcore::device_kind;
using lightcore::dims;
using lightcore::dtype;
using lightcore::tensor_view;

constexpr std::int32_t bench_layers = 27;     // DeepSeek-V2-Lite
constexpr std::int64_t width = 576;           // MLA latent row, bf16
constexpr std::int64_t pool_slots = 16384;    // per layer, on each side (~18.9 MB a layer)
constexpr std::size_t row_bytes = width * 2;  // 1152

void write_all(int fd, void const* p, std::size_t n) {
  auto const* b = static_cast<char const*>(p);
  while (n > 0) {
    ssize_t const w = ::write(fd, b, n);
    if (w <= 0) std::exit(3);
    b += w;
    n -= std::size_t(w);
  }
}
bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    ssize_t const r = ::read(fd, b, n);
    if (r <= 0) return false;
    b += r;
    n -= std::size_t(r);
  }
  return true;
}

std::vector<void*> alloc_layers(std::vector<tensor_view>& views) {
  std::vector<void*> mem(bench_layers);
  for (auto& p : mem) {
    LC_CUDA_CHECK(cudaMalloc(&p, std::size_t(pool_slots) * row_bytes));
    LC_CUDA_CHECK(cudaMemset(p, 1, std::size_t(pool_slots) * row_bytes));
    views.emplace_back(p, dtype::bf16, dims{pool_slots, width}, device{device_kind::cuda, 0});
  }
  LC_CUDA_CHECK(cudaDeviceSynchronize());
  return mem;
}

// The decode process: exports its pool, then waits until the prefill process is done with it.
int decode_side(int rfd, int wfd) {
  std::vector<tensor_view> views;
  std::vector<void*> mem = alloc_layers(views);
  std::vector<pd::ipc_layer> const handles = pd::export_layers(views);
  write_all(wfd, handles.data(), handles.size() * sizeof(pd::ipc_layer));
  char done = 0;
  read_all(rfd, &done, 1);
  for (void* p : mem) cudaFree(p);
  return 0;
}

// The prefill side's state, set up once in main.
struct ipc_link {
  std::vector<tensor_view> src;
  std::vector<void*> src_mem;
  std::unique_ptr<pd::imported_layers> dst;
  cudaStream_t compute = nullptr;
  std::unique_ptr<pd::cuda_ipc_transport> transport;
};
ipc_link* the_link = nullptr;

void BM_hbm_copy(benchmark::State& state) {
  if (lightcore::bench::skip_without_gpu(state)) return;
  double const gbps = lightcore::bench::measure_hbm_copy_gbps(&state);
  lightcore::bench::hbm_copy_gbps = gbps;
  state.counters["GB/s"] = gbps;
}
BENCHMARK(BM_hbm_copy)->UseManualTime()->Iterations(lightcore::bench::iterations);

// One transfer of `tokens` rows in every layer; args: tokens, scattered (0/1).
void BM_cuda_ipc_transfer(benchmark::State& state) {
  if (the_link == nullptr) {
    state.SkipWithError("no CUDA device, or the decode process did not start");
    return;
  }
  auto const tokens = std::int64_t(state.range(0));
  bool const scattered = state.range(1) != 0;
  std::vector<std::int32_t> src(static_cast<std::size_t>(tokens)),
      dst(static_cast<std::size_t>(tokens));
  std::iota(src.begin(), src.end(), 0);
  std::iota(dst.begin(), dst.end(), std::int32_t(pool_slots - tokens));
  if (scattered) {
    std::vector<std::int32_t> all(static_cast<std::size_t>(pool_slots));
    std::iota(all.begin(), all.end(), 0);
    std::mt19937 rng(11);
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), tokens, src.begin());
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), tokens, dst.begin());
  }
  std::mutex m;
  std::condition_variable cv;
  int done = 0;
  auto run_once = [&] {
    {
      std::lock_guard g(m);
      done = 0;
    }
    auto const t0 = std::chrono::steady_clock::now();
    for (std::int32_t l = 0; l < bench_layers; ++l)
      the_link->transport->submit({l, src, dst, [&](std::string_view) {
                                     std::lock_guard g(m);
                                     ++done;
                                     cv.notify_all();
                                   }});
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return done == bench_layers; });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  run_once();  // warm-up
  std::vector<double> seconds;
  for (auto _ : state) {
    double const s = run_once();
    seconds.push_back(s);
    state.SetIterationTime(s);
  }
  double const med = lightcore::bench::median(seconds);
  double const payload = double(tokens) * double(bench_layers) * double(row_bytes);
  state.counters["MB"] = payload / 1e6;
  state.counters["us"] = med * 1e6;
  state.counters["GB/s"] = payload / med / 1e9;
  state.counters["frac_of_hbm"] = 2.0 * payload / med / 1e9 / lightcore::bench::ceiling_gbps();
}
BENCHMARK(BM_cuda_ipc_transfer)
    ->ArgsProduct({{1024, 8192}, {0, 1}})
    ->ArgNames({"tokens", "scattered"})
    ->UseManualTime()
    ->Iterations(20);

}  // namespace

int main(int argc, char** argv) {
  if (char const* fds = std::getenv("LC_PD_BENCH_CHILD")) {
    int rfd = -1, wfd = -1;
    if (std::sscanf(fds, "%d,%d", &rfd, &wfd) != 2) return 2;
    return decode_side(rfd, wfd);
  }
  benchmark::Initialize(&argc, argv);
  int to_child[2] = {-1, -1}, from_child[2] = {-1, -1};
  pid_t child = -1;
  ipc_link l;
  if (lightcore::backend::cuda::device_count() > 0 && ::pipe(to_child) == 0 &&
      ::pipe(from_child) == 0) {
    std::vector<std::string> env{"LC_PD_BENCH_CHILD=" + std::to_string(to_child[0]) + "," +
                                 std::to_string(from_child[1])};
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe";
    char* args[] = {exe.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addclose(&actions, to_child[1]);
    posix_spawn_file_actions_addclose(&actions, from_child[0]);
    int const spawned = ::posix_spawn(&child, exe.c_str(), &actions, nullptr, args, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(to_child[0]);
    ::close(from_child[1]);
    std::vector<pd::ipc_layer> handles(bench_layers);
    if (spawned == 0 &&
        read_all(from_child[0], handles.data(), handles.size() * sizeof(pd::ipc_layer))) {
      l.src_mem = alloc_layers(l.src);
      l.dst = std::make_unique<pd::imported_layers>(handles, width, dtype::bf16);
      LC_CUDA_CHECK(cudaStreamCreateWithFlags(&l.compute, cudaStreamNonBlocking));
      l.transport = std::make_unique<pd::cuda_ipc_transport>(
          l.src, *l.dst, l.compute, &lightcore::kernels::copy_rows_on_stream);
      the_link = &l;
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  the_link = nullptr;
  l.transport.reset();
  l.dst.reset();
  for (void* p : l.src_mem) cudaFree(p);
  if (l.compute != nullptr) cudaStreamDestroy(l.compute);
  if (child > 0) {
    char const done = 1;
    write_all(to_child[1], &done, 1);
    int status = 0;
    ::waitpid(child, &status, 0);
  }
  return 0;
}
