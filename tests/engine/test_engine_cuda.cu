// The engine on the GPU with the tiny DeepSeek-V2-shaped model (dummy weights): overlapped
// scheduling (step t + 1 planned and launched while step t runs; decode rows read their previous
// token, and the penalties' history its last entry, on the device) draws exactly what one step at
// a time draws, with decode graphs and without; the pool comes back whole; the device-time
// statistics are measured.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/engine/engine.hpp"
#include "models/deepseek_v3/executor.hpp"
#include "models/deepseek_v3/weights_loader.hpp"

namespace lightcore::test {
namespace {

namespace ds = models::deepseek_v3;
using gpu_t = backend::cuda;
using executor_t = ds::executor<gpu_t>;
using engine_t = engine::engine<gpu_t, executor_t>;
using request_t = engine_t::request_type;

constexpr std::int64_t max_len = 96, rows = 8;

std::vector<request_t> workload() {
  std::vector<request_t> out;
  for (std::uint64_t i = 1; i <= 14; ++i) {
    request_t r;
    r.id = i;
    for (std::uint64_t j = 0; j < 5 + (i * 7) % 23; ++j)
      r.prompt.push_back(std::int32_t((i * 131 + j * 17) % 1000));
    r.sampling.temperature = 0.0f;
    if (i % 3 == 0) r.sampling.repetition_penalty = 1.3f;  // reads the history
    if (i % 4 == 0) r.sampling.frequency_penalty = 0.5f;
    if (i % 5 == 0) {  // seeded sampling: its RNG counter counts the pending token too
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 1000 + i;
    }
    r.sampling.num_logprobs = i % 2 == 0 ? 2 : -1;
    r.max_new_tokens = std::int64_t(4 + (i * 5) % 13);
    out.push_back(r);
  }
  return out;
}

struct outcome {
  std::map<std::uint64_t, std::vector<std::int32_t>> tokens;
  std::map<std::uint64_t, std::vector<float>> logprobs;
  engine::engine_stats stats;
};

outcome run(bool overlap, bool graphs) {
  gpu_t gpu(0);
  io::model_config const config = io::load_model_config(
      std::filesystem::path(LIGHTCORE_TEST_DATA_DIR) / "configs" / "tiny_deepseek_v2.json");
  auto const weights = ds::dummy_weights(gpu, config, {.shard = {}, .seed = 21, .layout = {}});
  ds::decode_graph_options g;
  g.enabled = graphs;
  executor_t exec(gpu, weights, ds::model_options{max_len}, rows, g);
  engine::engine_config c;
  c.kv.layers = std::int32_t(config.num_hidden_layers);
  c.kv.capacity = 1024;
  c.kv.max_requests = rows;
  c.kv.max_tokens = max_len;
  c.scheduler.max_seq_len = max_len;
  c.scheduler.max_tokens_per_step = 48;
  c.scheduler.max_running_requests = rows;
  c.overlap = overlap;
  engine_t e(gpu, exec, c);
  auto const reqs = workload();
  outcome out;
  std::size_t next = 0;
  for (int step = 0; !e.idle() || next < reqs.size(); ++step) {
    if (step % 2 == 0 && next < reqs.size()) e.submit(reqs[next++]);  // arrivals while running
    for (engine::token_event const& t : e.step()) {
      out.tokens[t.id].push_back(t.token);
      out.logprobs[t.id].push_back(t.logprob);
    }
    if (step > 5000) {
      ADD_FAILURE() << "no progress";
      break;
    }
  }
  out.stats = e.stats();
  EXPECT_EQ(e.live_requests(), 0u);
  EXPECT_EQ(out.stats.kv.used, out.stats.cached_tokens) << "slots leaked";
  return out;
}

TEST(EngineCuda, OverlappedStepsDrawWhatSequentialStepsDraw) {
  if (gpu_t::device_count() == 0)
    GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
  outcome const seq = run(false, true);
  outcome const ovl = run(true, true);
  outcome const ovl_eager = run(true, false);
  for (request_t const& r : workload()) {
    ASSERT_EQ(seq.tokens.at(r.id).size(), std::size_t(r.max_new_tokens)) << "request " << r.id;
    EXPECT_EQ(ovl.tokens.at(r.id), seq.tokens.at(r.id)) << "request " << r.id;
    EXPECT_EQ(ovl_eager.tokens.at(r.id), seq.tokens.at(r.id)) << "request " << r.id;
    auto const& a = ovl.logprobs.at(r.id);
    auto const& b = seq.logprobs.at(r.id);
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!std::isnan(b[i])) EXPECT_EQ(a[i], b[i]) << "request " << r.id << " token " << i;
  }
  for (outcome const* o : {&seq, &ovl}) {
    EXPECT_GT(o->stats.device_seconds, 0.0);
    EXPECT_GT(o->stats.decode_steps, 0u);
  }
  std::cout << "decode steps: sequential " << seq.stats.decode_steps << ", idle before them "
            << seq.stats.decode_idle_seconds * 1e3 << " ms; overlapped " << ovl.stats.decode_steps
            << ", idle " << ovl.stats.decode_idle_seconds * 1e3 << " ms\n";
}

}  // namespace
}  // namespace lightcore::test
