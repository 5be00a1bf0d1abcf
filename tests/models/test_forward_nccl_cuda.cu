// The DeepSeek forward through the NCCL communicator at world size 1 on one GPU: the tensor-
// parallel code path (all-reduces after o_proj, the MLPs and the MoE blocks; the vocab-sharded
// embedding's reduce; the gathered logits) with NCCL underneath, against the forward without a
// communicator. At world 1 every collective is a copy, so the logits must be bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "common/cuda.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/dist/nccl_communicator.hpp"
#include "models/deepseek_v3/model.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {
namespace {

using backend::cuda;

class ForwardNccl : public cuda_test {};

// Logits of a prefill of `prompt` then three decode steps, on fresh pools.
template <class Model>
std::vector<std::vector<float>> run(cuda& gpu, Model& model, std::int64_t layers,
                                    std::vector<std::int32_t> const& prompt) {
  constexpr std::int64_t max_len = 64;
  std::vector<tensor<cuda>> pools;
  std::vector<tensor_view> kv;
  auto stream = gpu.make_stream();
  for (std::int64_t i = 0; i < layers; ++i) {
    pools.emplace_back(gpu, dtype::bf16, dims{max_len, 576});
    gpu.fill(pools.back().data(), pools.back().nbytes(), 1, 0, stream);
    kv.push_back(pools.back().view());
  }
  tensor<cuda> table(gpu, dtype::i32, {1, max_len});
  std::vector<std::int32_t> t(static_cast<std::size_t>(max_len));
  for (std::int64_t i = 0; i < max_len; ++i) t[std::size_t(i)] = std::int32_t(i);
  gpu.copy(table.data(), t.data(), t.size() * 4, stream);
  memory::cache_tensor_manager<cuda> mem(gpu);
  kernels::gemm_context<cuda> gemm(gpu);
  modules::deepseek::forward_context<cuda> ctx{gpu, stream, gemm, mem};
  std::vector<std::vector<float>> out;
  std::vector<std::int32_t> step = prompt;
  std::int64_t cached = 0;
  for (int s = 0; s < 4; ++s) {
    tensor_view const l = model.forward(ctx, {{step, cached, 0}}, kv, table.view());
    std::vector<float> host(std::size_t(l.numel()));
    gpu.copy(host.data(), l.data(), host.size() * 4, stream);
    stream.synchronize();
    out.push_back(host);
    cached += std::int64_t(step.size());
    std::int32_t const next =
        std::int32_t(std::max_element(host.begin(), host.end()) - host.begin());
    step = {next};
  }
  return out;
}

TEST_F(ForwardNccl, WorldOneThroughNcclEqualsTheForwardWithoutACommunicator) {
  for (char const* name : {"tiny_deepseek_v2.json", "tiny_deepseek_v3.json"}) {
    SCOPED_TRACE(name);
    io::model_config const c = io::load_model_config(config_path(name));
    std::vector<std::int32_t> const prompt = {5, 17, 256, 3, 999, 42, 7, 100, 64};
    std::vector<std::vector<float>> plain, tp;
    int const ordinal = 0;
    dist::run_nccl_ranks(std::span<int const>(&ordinal, 1), [&](dist::nccl_communicator& comm) {
      cuda gpu(0);
      auto const w = ds::dummy_weights(gpu, c, {.shard = {0, 1}, .seed = 5, .layout = {}});
      ds::model<cuda> alone(gpu, w, ds::model_options{64});
      plain = run(gpu, alone, c.num_hidden_layers, prompt);
      ds::model<cuda, dist::nccl_communicator> ranked(gpu, w, comm, ds::model_options{64});
      tp = run(gpu, ranked, c.num_hidden_layers, prompt);
    });
    ASSERT_EQ(plain.size(), tp.size());
    for (std::size_t s = 0; s < plain.size(); ++s)
      EXPECT_EQ(plain[s], tp[s]) << "step " << s << ": world 1 through NCCL changed the logits";
  }
}

}  // namespace
}  // namespace lightcore::test
