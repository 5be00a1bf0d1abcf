// Sharded checkpoints: a model.safetensors.index.json over several shards, read by tensor name
// whatever the shard; single-file checkpoints; and the errors of a broken index.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "io_test_util.hpp"
#include "lightcore/io/safetensors_checkpoint.hpp"
#include "lightcore/io/safetensors_writer.hpp"

namespace lightcore {
namespace {

using io::safetensors_checkpoint;

// Writes `shards` files of `per_shard` random f32 tensors and their index; returns every
// tensor's values by name.
std::map<std::string, std::vector<float>> write_sharded(test::scratch_dir const& dir, int shards,
                                                        int per_shard) {
  auto rng = test::test_rng();
  std::normal_distribution<float> normal;
  std::map<std::string, std::vector<float>> values;
  std::map<std::string, std::string> weight_map;
  std::uint64_t total = 0;
  for (int s = 0; s < shards; ++s) {
    std::string const file =
        "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
    std::vector<io::named_view> views;
    for (int t = 0; t < per_shard; ++t) {
      std::string const name = "layers." + std::to_string(s * per_shard + t) + ".weight";
      auto& v = values[name];
      v.resize(1 + rng() % 50);
      for (auto& x : v) x = normal(rng);
      weight_map[name] = file;
      total += v.size() * sizeof(float);
    }
    for (auto& [name, v] : values)
      if (weight_map[name] == file)
        views.push_back({name, tensor_view(v.data(), dtype::f32, {std::int64_t(v.size())})});
    io::write_safetensors(dir / file, views, {{"format", "pt"}});
  }
  io::write_safetensors_index(dir / "model.safetensors.index.json", weight_map, total);
  return values;
}

void expect_all(safetensors_checkpoint const& ckpt,
                std::map<std::string, std::vector<float>> const& values) {
  EXPECT_EQ(ckpt.size(), values.size());
  for (auto const& [name, v] : values) {
    ASSERT_TRUE(ckpt.contains(name)) << name;
    tensor_view const t = ckpt.tensor(name);
    ASSERT_EQ(t.numel(), std::int64_t(v.size())) << name;
    EXPECT_EQ(std::memcmp(t.data(), v.data(), v.size() * sizeof(float)), 0) << name;
  }
}

TEST(SafetensorsCheckpoint, ShardedByIndex) {
  test::scratch_dir dir;
  auto const values = write_sharded(dir, 3, 4);
  safetensors_checkpoint const by_dir(dir.path());
  EXPECT_EQ(by_dir.shard_count(), 3u);
  expect_all(by_dir, values);
  EXPECT_EQ(by_dir.shard_of("layers.5.weight").path().filename(),
            "model-00002-of-00003.safetensors");
  safetensors_checkpoint const by_index(dir / "model.safetensors.index.json");
  expect_all(by_index, values);
  auto const names = by_dir.names();
  EXPECT_EQ(names.size(), values.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_THROW((void)by_dir.tensor("layers.99.weight"), error);

  // The index records the data bytes, as transformers writes it.
  auto const index = io::json::parse(test::read_text(dir / "model.safetensors.index.json"));
  std::uint64_t total = 0;
  for (auto const& [name, v] : values) total += v.size() * sizeof(float);
  EXPECT_EQ(index["metadata"]["total_size"].get<std::uint64_t>(), total);
}

TEST(SafetensorsCheckpoint, SingleFile) {
  test::scratch_dir dir;
  float x[3] = {1, 2, 3};
  io::named_view const v{"x", tensor_view(x, dtype::f32, {3})};
  io::write_safetensors(dir / "model.safetensors", std::span(&v, 1));
  safetensors_checkpoint const by_dir(dir.path());
  EXPECT_EQ(by_dir.shard_count(), 1u);
  EXPECT_EQ((by_dir.tensor("x").as<float, 1>())(2), 3.0f);
  safetensors_checkpoint const by_file(dir / "model.safetensors");
  EXPECT_EQ(by_file.size(), 1u);
}

TEST(SafetensorsCheckpoint, BrokenIndexes) {
  test::scratch_dir dir;
  write_sharded(dir, 2, 2);
  auto const index_path = dir / "bad.index.json";
  auto expect_error = [&](char const* what, std::string const& text,
                          std::vector<std::string> const& says) {
    test::write_bytes(index_path, text);
    try {
      safetensors_checkpoint const c(index_path);
      ADD_FAILURE() << what << ": opened without an error";
    } catch (error const& e) {
      for (auto const& s : says)
        EXPECT_NE(e.message().find(s), std::string::npos)
            << what << ": message lacks \"" << s << "\": " << e.message();
    }
  };
  expect_error("bad JSON", "{\"weight_map\": {", {"bad.index.json", "not valid JSON"});
  expect_error("no weight_map", R"({"metadata": {}})", {"weight_map", "missing"});
  expect_error("weight_map not an object", R"({"weight_map": []})", {"weight_map", "object"});
  expect_error("shard not a string", R"({"weight_map": {"a": 3}})", {"\"a\"", "file name"});
  expect_error("missing shard", R"({"weight_map": {"a": "model-9.safetensors"}})",
               {"model-9.safetensors", "\"a\"", "cannot open"});
  expect_error("tensor not in its shard",
               R"({"weight_map": {"layers.0.weight": "model-00002-of-00002.safetensors"}})",
               {"layers.0.weight", "model-00002-of-00002.safetensors", "does not hold it"});
  expect_error("path outside the directory",
               R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
               {"plain file name"});
  EXPECT_THROW(safetensors_checkpoint(dir / "nothing_here"), error);
  test::scratch_dir empty;
  EXPECT_THROW(safetensors_checkpoint(empty.path()), error);
}

}  // namespace
}  // namespace lightcore
