// The engine's own CPU time per step: scheduling (plan, peak-token admission), KV slots and the
// req_to_token updates, the rows of the batch, and the bookkeeping of the sampled tokens, over
// an executor that does no device work and draws a fixed token. This is the framework's share of
// a decode step that a real executor adds its launch work to (docs/perf: the engine notes).
//
//   lightcore_bench_engine_host [--benchmark_filter=...]
//
// BM_decode_step/batch:B/overlap:O: B requests decoding, one step() timed per iteration; O = 1
// plans step t + 1 before step t is collected, as the engine does on CUDA.
//   BM_decode_step        pure decode: 64-token prompts, 1100 new tokens each, 1000 steps timed
//                         (no request ends meanwhile)
//   BM_serving_step       the serving steady state: 1024-token prompts, 128 new tokens each; a
//                         request that ends is replaced at once, so steps also carry the new
//                         prompts' prefill chunks and the prefix cache evicts for them
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "kernels/sampling/sampling_params.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/engine/engine.hpp"

namespace {

using namespace lightcore;

// An overlapping executor with no device: launch() remembers which rows sample, collect() draws
// token 7 for each.
struct null_executor {
  using params_type = kernels::sampling_request;
  using row_type = engine::step_row<params_type>;
  backend::cpu::stream_type stream_;
  std::vector<std::vector<std::uint8_t>> flights;

  void launch(std::vector<row_type> const& rows, std::vector<tensor_view> const&,
              tensor_view const&) {
    auto& f = flights.emplace_back();
    f.reserve(rows.size());
    for (row_type const& r : rows) f.push_back(r.sample ? 1 : 0);
  }
  engine::step_output collect() {
    engine::step_output out;
    for (std::uint8_t const sampled : flights.front())
      if (sampled != 0) {
        out.tokens.push_back(7);
        out.logprobs.push_back(0.0f);
      }
    flights.erase(flights.begin());
    return out;
  }
  engine::step_output run(std::vector<row_type> const& rows, std::vector<tensor_view> const& kv,
                          tensor_view const& t) {
    launch(rows, kv, t);
    return collect();
  }
  void update_table(tensor_view const&, std::span<std::int32_t const>,
                    std::span<std::int32_t const>) {}
  backend::cpu::stream_type const& stream() const { return stream_; }
};
static_assert(engine::overlapping_executor<null_executor>);

void run_steps(benchmark::State& state, std::int64_t prompt_len, std::int64_t max_new,
               bool replace) {
  std::int64_t const batch = state.range(0);
  backend::cpu cpu;
  null_executor exec;
  engine::engine_config c;
  c.kv.layers = 1;  // the host work does not depend on the layer count
  c.kv.width = 8;
  c.kv.capacity = batch * 1200 + 1024;
  c.kv.max_requests = std::int32_t(batch);
  c.kv.max_tokens = 1200;
  c.scheduler.max_seq_len = 1200;
  c.scheduler.max_running_requests = batch;
  c.scheduler.max_tokens_per_step = std::max<std::int64_t>(batch, 8192);
  c.overlap = state.range(1) != 0;
  engine::engine<backend::cpu, null_executor> e(cpu, exec, c);
  std::uint64_t next_id = 1;
  auto submit = [&] {
    engine::request<kernels::sampling_request> r;
    r.id = next_id++;
    r.prompt.resize(std::size_t(prompt_len));
    for (std::size_t i = 0; i < r.prompt.size(); ++i)
      r.prompt[i] = std::int32_t((r.id * 7919 + i * 31) % 100000);
    r.sampling.temperature = 0.0f;
    r.max_new_tokens = max_new;
    e.submit(std::move(r));
  };
  for (std::int64_t i = 0; i < batch; ++i) submit();
  // Prefill everyone, then time decode steps; a finished request is replaced at once so the
  // batch stays full (its prefill steps are not timed).
  while (e.stats().decode_steps == 0) e.step();
  std::uint64_t finished = 0;
  for (auto _ : state) {
    auto const t0 = std::chrono::steady_clock::now();
    auto const events = e.step();
    double const s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(s);
    state.PauseTiming();
    for (engine::token_event const& t : events)
      if (t.finished != engine::finish_reason::none) {
        ++finished;
        if (replace) submit();
      }
    state.ResumeTiming();
  }
  state.counters["rows"] = double(batch);
  state.counters["us_per_row"] =
      benchmark::Counter(double(state.iterations()) * double(batch),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["replaced"] = double(finished);
}
void BM_decode_step(benchmark::State& state) { run_steps(state, 64, 1100, false); }
void BM_serving_step(benchmark::State& state) { run_steps(state, 1024, 128, true); }

BENCHMARK(BM_decode_step)
    ->ArgsProduct({{1, 64, 256}, {0, 1}})
    ->ArgNames({"batch", "overlap"})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(1000);
BENCHMARK(BM_serving_step)
    ->ArgsProduct({{1, 64, 256}, {0, 1}})
    ->ArgNames({"batch", "overlap"})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
