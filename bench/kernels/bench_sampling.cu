// sample against the HBM ceiling at DeepSeek-V3/R1's vocab (129280) for batch 1, 64 and 256:
// greedy, temperature only, top-k 50, top-p 0.9 and top-k 50 + top-p 0.9, every row with
// repetition/presence/frequency penalties over 256 history ids and a different seed. Logits are
// normal with standard deviation 3 plus a few lifted tokens (an lm head's spread, never zeros),
// rotated over enough buffer sets that each call misses L2; CUDA-event timing, median per call.
// Counters: GB/s of the logits read once (batch * vocab * 4 bytes: the floor every mode pays) and
// frac_of_hbm, that rate over a device-to-device cudaMemcpyAsync measured in this binary
// (BM_hbm_copy). The target for top-k + top-p at batch 256 is 1/3 of the ceiling or more.
//   lightcore_bench_sampling [--benchmark_filter=...]
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kernels/sampling/sampling.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using namespace bench;
using kernels::sampling_request;

constexpr std::int64_t vocab = 129280;
constexpr int history_per_row = 256;

enum mode : int { greedy, temperature, top_k, top_p, top_k_top_p };
char const* const mode_names[] = {"greedy", "temperature", "top_k50", "top_p0.9",
                                  "top_k50_top_p0.9"};

sampling_request request_for(int m, std::uint64_t seed) {
  sampling_request r;
  r.temperature = m == greedy ? 0.0f : 0.8f;
  r.top_k = m == top_k || m == top_k_top_p ? 50 : 0;
  r.top_p = m == top_p || m == top_k_top_p ? 0.9f : 1.0f;
  r.repetition_penalty = 1.1f;
  r.presence_penalty = 0.2f;
  r.frequency_penalty = 0.1f;
  r.seed = seed;
  return r;
}

// rows x vocab normal(0, 3) logits (Box-Muller over splitmix64), 3 tokens per row lifted by 6.
std::vector<float> random_logits(std::int64_t rows, std::uint64_t seed) {
  splitmix64 rng{seed};
  auto uniform = [&] { return (double(rng.next() >> 11) + 0.5) * 0x1p-53; };
  std::vector<float> v(std::size_t(rows * vocab));
  for (std::size_t i = 0; i < v.size(); i += 2) {
    double const radius = std::sqrt(-2.0 * std::log(uniform())),
                 angle = 6.283185307179586 * uniform();
    v[i] = float(3.0 * radius * std::cos(angle));
    if (i + 1 < v.size()) v[i + 1] = float(3.0 * radius * std::sin(angle));
  }
  for (std::int64_t r = 0; r < rows; ++r)
    for (int k = 0; k < 3; ++k)
      v[std::size_t(r * vocab + std::int64_t(rng.next() % vocab))] += 6.0f;
  return v;
}

void bm_sampling(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  std::int64_t const batch = state.range(0);
  int const m = int(state.range(1));
  double const bytes = double(batch * vocab) * sizeof(float);
  int const sets = buffer_sets_for(bytes);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();

  auto const host_logits = random_logits(batch, 17);
  std::vector<sampling_request> host_requests;
  std::vector<std::int32_t> host_positions, host_ids, host_offsets{0};
  splitmix64 rng{23};
  for (std::int64_t r = 0; r < batch; ++r) {
    host_requests.push_back(request_for(m, rng.next()));
    host_positions.push_back(std::int32_t(rng.next() % 4096));
    for (int k = 0; k < history_per_row; ++k) host_ids.push_back(std::int32_t(rng.next() % vocab));
    host_offsets.push_back(std::int32_t(host_ids.size()));
  }
  std::vector<tensor<backend::cuda>> logits;
  for (int k = 0; k < sets; ++k) {
    logits.emplace_back(gpu, dtype::f32, dims{batch, vocab});
    gpu.copy(logits.back().data(), host_logits.data(), logits.back().nbytes(), stream);
  }
  tensor<backend::cuda> requests(gpu, dtype::u8, {batch, std::int64_t(sizeof(sampling_request))});
  tensor<backend::cuda> positions(gpu, dtype::i32, {batch});
  tensor<backend::cuda> ids(gpu, dtype::i32, {std::int64_t(host_ids.size())});
  tensor<backend::cuda> offsets(gpu, dtype::i32, {batch + 1});
  tensor<backend::cuda> tokens(gpu, dtype::i32, {batch});
  tensor<backend::cuda> logprobs(gpu, dtype::f32, {batch});
  tensor<backend::cuda> top_ids(gpu, dtype::i32, {batch, kernels::sampling_max_logprobs});
  tensor<backend::cuda> top_logprobs(gpu, dtype::f32, {batch, kernels::sampling_max_logprobs});
  std::int64_t const ws_bytes = kernels::sampling_workspace_bytes(batch, vocab);
  tensor<backend::cuda> workspace(gpu, dtype::u8, {std::max<std::int64_t>(ws_bytes, 1)});
  gpu.copy(requests.data(), host_requests.data(), requests.nbytes(), stream);
  gpu.copy(positions.data(), host_positions.data(), positions.nbytes(), stream);
  gpu.copy(ids.data(), host_ids.data(), ids.nbytes(), stream);
  gpu.copy(offsets.data(), host_offsets.data(), offsets.nbytes(), stream);
  stream.synchronize();
  kernels::sampling_outputs const out{tokens, logprobs, top_ids, top_logprobs};
  tensor_view const ws = workspace.view().slice(0, 0, ws_bytes);
  // The route the engine's executor takes: straight to the exact path when every row would go
  // there anyway (here: temperature-only rows).
  bool all_exact = true;
  for (kernels::sampling_request const& r : host_requests)
    all_exact = all_exact && kernels::sampling_row_kind(r, vocab) == kernels::sampling_row_exact;
  auto const route =
      all_exact ? kernels::sampling_route::exact : kernels::sampling_route::automatic;
  double const seconds = median_seconds(
      &state, gpu, stream,
      [&](int call) {
        kernels::sampling_inputs const in{logits[std::size_t(call % sets)], requests, positions,
                                          ids, offsets};
        kernels::sample(gpu, in, out, ws, stream, route);
      },
      call_numbering::running);
  set_bandwidth_counters(state, bytes, seconds);
}

}  // namespace
}  // namespace lightcore

int main(int argc, char** argv) {
  using namespace lightcore;
  bench::register_hbm_copy();
  for (int m = 0; m < 5; ++m) {
    for (std::int64_t batch : {1, 64, 256}) {
      bench::timed(benchmark::RegisterBenchmark(
                       (std::string("BM_sampling_") + mode_names[m]).c_str(), bm_sampling)
                       ->Args({batch, m})
                       ->ArgNames({"batch", "mode"}));
    }
  }
  return bench::run_benchmarks(argc, argv);
}
