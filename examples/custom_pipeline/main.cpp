// A pipeline that is not DeepSeek, composed from the same parts: a dense decoder with grouped-query
// attention (modules/gqa/dense_model.hpp: 8 q heads over 2 kv heads of 128 dims, partial rotary
// over 64 dims, SwiGLU MLP) with seeded random weights, run by the generic executor under the
// engine. Generates greedily for a few token-id prompts on CUDA when a device is present, else on
// the CPU, and prints the tokens and the throughput.
//
//   lightcore_custom_pipeline [--cpu]
#include <chrono>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string_view>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/pipeline/pipeline.hpp"
#include "modules/common/executor.hpp"
#include "modules/gqa/dense_model.hpp"
#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/backend/cuda.hpp"
#endif

namespace {

using namespace lightcore;

template <class B>
using dense_pipeline =
    pipeline::pipeline<modules::common::eager_policy<modules::gqa::dense_model>, B>;

template <class B>
int run(B& backend, char const* where) {
  using p = dense_pipeline<B>;
  modules::gqa::dense_config config;
  config.vocab_size = 1000;
  config.hidden_size = 512;
  config.layers = 4;
  config.intermediate = 1024;
  auto const weights = modules::gqa::random_dense_weights(backend, config, 2024);
  typename p::model_type model(backend, weights);
  typename p::executor_type exec(backend, model);

  std::int64_t constexpr max_len = 256;
  engine::engine_config ec;
  ec.kv = p::kv_config(model, 4096, 16, max_len);
  ec.scheduler.max_seq_len = max_len;
  ec.scheduler.max_tokens_per_step = 512;
  ec.scheduler.max_running_requests = 16;
  typename p::engine_type eng(backend, exec, ec);

  std::vector<std::vector<std::int32_t>> const prompts = {
      {1, 17, 256, 42, 9}, {3, 3, 3, 3, 3, 3, 3, 3}, {999, 512, 7}, {5, 80, 81, 82, 83, 84}};
  std::int64_t constexpr new_tokens = 32;
  std::vector<typename p::request_type> requests;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    typename p::request_type r;
    r.id = i;
    r.prompt = prompts[i];
    r.sampling.temperature = 0.0f;  // greedy
    r.max_new_tokens = new_tokens;
    requests.push_back(r);
  }
  auto const t0 = std::chrono::steady_clock::now();
  auto const out = eng.generate(std::move(requests));
  double const seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::int64_t generated = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::cout << "prompt " << i << ":";
    for (std::int32_t const t : prompts[i]) std::cout << ' ' << t;
    std::cout << "\n  ->";
    for (std::int32_t const t : out[i].tokens) std::cout << ' ' << t;
    std::cout << "\n";
    generated += std::int64_t(out[i].tokens.size());
  }
  auto const stats = eng.stats();
  std::cout << where << ": " << generated << " tokens in " << seconds
            << " s: " << double(generated) / seconds << " tokens/s (" << stats.steps << " steps, "
            << stats.decode_steps << " decode-only)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  bool const force_cpu = argc > 1 && std::string_view(argv[1]) == "--cpu";
#if defined(LIGHTCORE_WITH_CUDA)
  if (!force_cpu && backend::cuda::device_count() > 0) {
    backend::cuda gpu(0);
    return run(gpu, "cuda");
  }
#endif
  (void)force_cpu;
  backend::cpu cpu;
  return run(cpu, "cpu");
} catch (std::exception const& e) {
  std::cerr << "lightcore_custom_pipeline: " << e.what() << "\n";
  return 1;
}
