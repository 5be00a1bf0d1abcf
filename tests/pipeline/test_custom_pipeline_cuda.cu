// The dense GQA pipeline on CUDA against the same pipeline on the CPU: the same weights (copied
// from the CPU's), the same steps (prefill, mixed prefill and decode, a chunked prompt, decode
// only), logits compared row by row; then the engine with the generic executor on the GPU.
// Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "common/cuda.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/dist/inproc_communicator.hpp"
#include "lightcore/memory/kv_pool.hpp"
#include "lightcore/pipeline/pipeline.hpp"
#include "models/deepseek_v3/pipeline.hpp"
#include "modules/common/executor.hpp"
#include "modules/gqa/dense_model.hpp"
#include "pipeline/reference.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;
using backend::cuda;
using modules::gqa::dense_model;
using modules::gqa::dense_weights;
template <class B>
using dense = pipeline::pipeline<modules::common::eager_policy<dense_model>, B>;

// The parallel policy's communicator must live on the pipeline's backend.
static_assert(pipeline::valid_pipeline<modules::common::eager_policy<dense_model>, cuda>);
static_assert(!pipeline::communicator_on<
              pipeline::parallel::tensor_parallel<dist::inproc_communicator>, cuda>);

// DeepSeek on CUDA: the server's engine, its executor with decode graphs.
static_assert(std::same_as<models::deepseek_v3::deepseek_pipeline<cuda>::engine_type,
                           engine::engine<cuda, models::deepseek_v3::executor<cuda>>>);

tensor<cuda> to_device(cuda& gpu, cpu& host, tensor<cpu> const& t) {
  tensor<cuda> d(gpu, t.view().type(), t.view().shape());
  std::vector<float> const f = host_floats(host, t);
  std::vector<bf16> const b(f.begin(), f.end());
  auto stream = gpu.make_stream();
  gpu.copy(d.data(), b.data(), b.size() * sizeof(bf16), stream);
  stream.synchronize();
  return d;
}

dense_weights<cuda> to_device(cuda& gpu, cpu& host, dense_weights<cpu> const& w) {
  dense_weights<cuda> d;
  d.config = w.config;
  d.embed = to_device(gpu, host, w.embed);
  d.norm = to_device(gpu, host, w.norm);
  d.lm_head = to_device(gpu, host, w.lm_head);
  for (auto const& l : w.layers)
    d.layers.push_back({to_device(gpu, host, l.input_norm), to_device(gpu, host, l.qkv),
                        to_device(gpu, host, l.o), to_device(gpu, host, l.post_norm),
                        to_device(gpu, host, l.gate_up), to_device(gpu, host, l.down)});
  return d;
}

// One scripted run: three requests over seven steps, the logits of every row on the host.
template <class B>
std::vector<std::vector<float>> scripted_run(B& backend, dense_weights<B> const& w) {
  using p = dense<B>;
  typename p::model_type model(backend, w);
  memory::kv_pool<B> pool(backend, p::kv_config(model, 512, 4, 128));
  memory::cache_tensor_manager<B> mem(backend);
  kernels::gemm_context<B> gemm(backend);
  auto stream = backend.make_stream();
  struct seq {
    std::int32_t row;
    std::int64_t len = 0;
    std::vector<std::int32_t> slots;
  };
  std::vector<seq> s;
  for (int i = 0; i < 3; ++i) s.push_back({*pool.table().acquire_row(), 0, {}});
  struct part {
    int who;
    std::vector<std::int32_t> tokens;
    bool prefill;
  };
  std::vector<std::int32_t> const c = dense_prompt(11, 3);
  std::vector<std::int32_t> const c1(c.begin(), c.begin() + 5), c2(c.begin() + 5, c.end());
  std::vector<std::vector<part>> const script = {
      {{0, dense_prompt(11, 1), true}},
      {{0, {17}, false}, {1, dense_prompt(7, 2), true}},
      {{0, {29}, false}, {2, c1, true}, {1, {3}, false}},
      {{2, c2, true}, {0, {41}, false}, {1, {250}, false}},
      {{0, {5}, false}, {1, {6}, false}, {2, {7}, false}},
      {{0, {105}, false}, {1, {106}, false}, {2, {107}, false}},
      {{2, {299}, false}, {1, {0}, false}, {0, {8}, false}}};
  std::vector<std::vector<float>> out;
  for (auto const& step : script) {
    std::vector<pipeline::model_step> steps;
    for (part const& pt : step) {
      seq& q = s[std::size_t(pt.who)];
      std::size_t const at = q.slots.size();
      LC_CHECK(pool.slots().try_alloc(std::int64_t(pt.tokens.size()), q.slots), "pool full");
      pool.write_slots(q.row, std::int64_t(at), std::span<std::int32_t const>(q.slots).subspan(at),
                       stream);
      steps.push_back({pt.tokens, q.len, q.row, pt.prefill});
      q.len += std::int64_t(pt.tokens.size());
    }
    typename p::model_type::context ctx{backend, stream, gemm, mem};
    tensor_view const logits = model.forward(ctx, steps, pool.layers(), pool.req_to_token());
    std::vector<float> h(std::size_t(logits.numel()));
    backend.copy(h.data(), logits.data(), h.size() * 4, stream);
    stream.synchronize();
    for (std::size_t r = 0; r < step.size(); ++r)
      out.emplace_back(h.begin() + long(r * 300), h.begin() + long((r + 1) * 300));
  }
  return out;
}

class CustomPipelineCuda : public cuda_test {};

// Tolerance: relative L2 2e-2 per logits row. Both backends store the same bf16 activations;
// the GPU's GEMMs (cuBLASLt) and attention kernels (flash prefill, split-KV decode) sum in other
// orders, which moves fp32 sums by ~1e-6 relative and flips occasional bf16 roundings: the CPU
// path is itself 7e-3 from an fp32-order reference, and the GPU is expected as close.
TEST_F(CustomPipelineCuda, LogitsMatchTheCpu) {
  cpu host;
  cuda gpu(0);
  auto const wc = modules::gqa::random_dense_weights(host, tiny_dense_config(), 7);
  auto const wg = to_device(gpu, host, wc);
  auto const want = scripted_run(host, wc);
  auto const got = scripted_run(gpu, wg);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_LT(rel_l2(got[i], want[i]), 2e-2) << "logits row " << i;
}

TEST_F(CustomPipelineCuda, EngineGeneratesAsTheCpu) {
  cpu host;
  cuda gpu(0);
  auto const wc = modules::gqa::random_dense_weights(host, tiny_dense_config(), 7);
  auto const wg = to_device(gpu, host, wc);
  auto generate = [](auto& backend, auto const& w) {
    using B = std::remove_reference_t<decltype(backend)>;
    using p = dense<B>;
    typename p::model_type model(backend, w);
    typename p::executor_type exec(backend, model);
    engine::engine_config ec;
    ec.kv = p::kv_config(model, 1024, 8, 128);
    ec.scheduler.max_seq_len = 128;
    ec.scheduler.max_tokens_per_step = 16;  // chunked prompts
    ec.scheduler.max_running_requests = 8;
    typename p::engine_type e(backend, exec, ec);
    std::vector<typename p::request_type> rs;
    for (std::int32_t i = 0; i < 4; ++i) {
      typename p::request_type r;
      r.id = std::uint64_t(i);
      r.prompt = dense_prompt(5 + 9 * i, i);
      r.sampling.temperature = 0.0f;
      r.max_new_tokens = 6;
      rs.push_back(r);
    }
    return e.generate(std::move(rs));
  };
  auto const want = generate(host, wc);
  auto const got = generate(gpu, wg);
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].tokens.size(), 6u) << "request " << i;
    // The first token follows the prompt alone (logits within 2e-2 of the CPU's); later ones
    // may part ways where a near tie flips, so only the first is held equal.
    EXPECT_EQ(got[i].tokens[0], want[i].tokens[0]) << "request " << i;
  }
}

}  // namespace
}  // namespace lightcore::test
