// DeepSeek-V3/V2 weights on backend::cuda: a checkpoint loaded onto the GPU holds the same bits as
// the CPU load, and dummy weights filled on the GPU equal the CPU's bit for bit.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "common/cuda.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {
namespace {

class WeightsCuda : public cuda_test {};

// The logical bytes of every view of device weights, copied to the host.
std::map<std::string, std::vector<std::uint8_t>> device_bytes(backend::cuda& gpu,
                                                              ds::model_views const& m) {
  std::map<std::string, std::vector<std::uint8_t>> out;
  auto stream = gpu.make_stream();
  for_each_view(m, [&](std::string const& name, tensor_view const& v) {
    EXPECT_EQ(v.where(), gpu.where()) << name;
    std::int64_t span = 1;  // elements from the first to the last, strides included
    for (int d = 0; d < v.rank(); ++d) span += (v.size(d) - 1) * v.stride(d);
    std::vector<std::uint8_t> host(std::size_t(span) * v.element_size());
    gpu.copy(host.data(), v.data(), host.size(), stream);
    stream.synchronize();
    out[name] =
        logical_bytes(tensor_view(host.data(), v.type(), v.shape(), v.strides(), device::cpu()));
  });
  return out;
}

std::map<std::string, std::vector<std::uint8_t>> host_bytes(ds::model_views const& m) {
  std::map<std::string, std::vector<std::uint8_t>> out;
  for_each_view(
      m, [&](std::string const& name, tensor_view const& v) { out[name] = logical_bytes(v); });
  return out;
}

TEST_F(WeightsCuda, CheckpointLoadEqualsTheCpuLoad) {
  temp_dir dir;
  backend::cpu cpu;
  backend::cuda gpu(0);
  struct variant {
    char const* config;
    std::optional<tools::weight_format> format;
    bool aligned;
    std::int64_t world;
  };
  for (variant const v : {variant{"tiny_deepseek_v3.json", tools::weight_format::fp8, false, 1},
                          variant{"tiny_deepseek_v3.json", tools::weight_format::fp8, true, 2},
                          variant{"tiny_deepseek_v3.json", tools::weight_format::bf16, false, 1},
                          variant{"tiny_deepseek_v2.json", std::nullopt, false, 2}}) {
    auto const sub =
        dir.path() / (std::string(v.config) + (v.aligned ? "a" : "") +
                      std::to_string(int(v.format.value_or(tools::weight_format::bf16))));
    auto const config =
        v.aligned ? derived_config(sub, v.config, aligned_fp8_patch) : config_path(v.config);
    write_checkpoint(config, sub / "ckpt", v.format);
    for (std::int64_t rank = 0; rank < v.world; ++rank) {
      ds::load_options o;
      o.shard = {rank, v.world};
      std::uint64_t seen = 0, total = 0;
      o.progress = [&](std::uint64_t done, std::uint64_t all, std::string const&) {
        seen = done;
        total = all;
      };
      auto const on_gpu = ds::load_weights(gpu, sub / "ckpt", o);
      EXPECT_EQ(seen, total);
      auto const on_cpu = ds::load_weights(cpu, sub / "ckpt", {o.shard, {}});
      auto const want = host_bytes(on_cpu.views());
      auto const got = device_bytes(gpu, on_gpu.views());
      ASSERT_EQ(got.size(), want.size());
      for (auto const& [name, bytes] : want)
        EXPECT_EQ(got.at(name), bytes) << v.config << " " << name;
    }
  }
}

TEST_F(WeightsCuda, DummyEqualsTheCpuBitForBit) {
  temp_dir dir;
  backend::cpu cpu;
  backend::cuda gpu(0);
  std::uint64_t const seed = run_seed();
  for (auto const& path :
       {config_path("tiny_deepseek_v3.json"), config_path("tiny_deepseek_v2.json"),
        derived_config(dir.path(), "tiny_deepseek_v3.json", aligned_fp8_patch)}) {
    auto const c = io::load_model_config(path);
    for (ds::tp_shard const shard : {ds::tp_shard{0, 1}, ds::tp_shard{1, 2}}) {
      auto const on_gpu = ds::dummy_weights(gpu, c, {shard, seed});
      auto const on_cpu = ds::dummy_weights(cpu, c, {shard, seed});
      auto const want = host_bytes(on_cpu.views());
      auto const got = device_bytes(gpu, on_gpu.views());
      for (auto const& [name, bytes] : want) EXPECT_EQ(got.at(name), bytes) << path << " " << name;
    }
  }
}

}  // namespace
}  // namespace lightcore::test
