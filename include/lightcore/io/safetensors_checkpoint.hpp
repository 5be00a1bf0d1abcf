// safetensors_checkpoint: the tensors of a Hugging Face checkpoint directory, sharded
// (model.safetensors.index.json whose "weight_map" names each tensor's shard) or single-file
// (model.safetensors). Each shard is opened and mapped once; a tensor is found by name whatever
// shard holds it. write_safetensors_index() writes the index a sharded checkpoint needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/io/json_fields.hpp"
#include "lightcore/io/safetensors.hpp"

namespace lightcore::io {

inline constexpr std::string_view safetensors_index_name = "model.safetensors.index.json";
inline constexpr std::string_view safetensors_single_name = "model.safetensors";

class safetensors_checkpoint {
 public:
  // `path`: a checkpoint directory (its index when present, else its model.safetensors), an
  // index .json file, or one .safetensors file.
  explicit safetensors_checkpoint(std::filesystem::path const& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      if (fs::exists(path / safetensors_index_name)) {
        open_index(path / safetensors_index_name);
      } else {
        LC_CHECK(fs::exists(path / safetensors_single_name),
                 path << " holds neither " << safetensors_index_name << " nor "
                      << safetensors_single_name);
        open_single(path / safetensors_single_name);
      }
    } else if (path.extension() == ".json") {
      open_index(path);
    } else {
      open_single(path);
    }
  }

  std::size_t size() const noexcept { return where_.size(); }
  std::size_t shard_count() const noexcept { return shards_.size(); }
  std::span<safetensors_file const> shards() const noexcept { return shards_; }
  bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }

  // Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(where_.size());
    for (auto const& [name, shard] : where_) out.push_back(name);
    return out;
  }

  safetensors_file const& shard_of(std::string_view name) const {
    auto const it = where_.find(name);
    LC_CHECK(it != where_.end(), source_ << ": no tensor named \"" << name << "\" in the "
                                         << "checkpoint (" << where_.size() << " tensors)");
    return shards_[it->second];
  }
  safetensors_entry const& entry(std::string_view name) const { return shard_of(name).entry(name); }
  std::span<std::byte const> bytes(std::string_view name) const {
    return shard_of(name).bytes(name);
  }
  // A read-only host view, as safetensors_file::tensor.
  tensor_view tensor(std::string_view name) const { return shard_of(name).tensor(name); }

 private:
  void open_single(std::filesystem::path const& file) {
    source_ = file.string();
    shards_.emplace_back(file);
    for (auto const& e : shards_.back().entries()) where_.emplace(e.name, 0);
  }

  void open_index(std::filesystem::path const& index) {
    source_ = index.string();
    std::ifstream in(index, std::ios::binary);
    LC_CHECK(in.good(), "cannot open checkpoint index " << index << " for reading");
    std::ostringstream text;
    text << in.rdbuf();
    json root;
    try {
      root = json::parse(text.str());
    } catch (json::exception const& e) {
      LC_THROW(source_ << ": not valid JSON (" << e.what() << ")");
    }
    json_fields const f(root, source_);
    json const* map = f.find("weight_map");
    LC_CHECK(map != nullptr, f.field("weight_map") << " is missing; it is required");
    if (!map->is_object()) f.type_error("weight_map", *map, "an object {tensor: shard file}");

    std::map<std::string, std::size_t, std::less<>> shard_index;
    for (auto const& [name, file] : map->items()) {
      LC_CHECK(file.is_string(), source_ << ": weight_map[\"" << name << "\"] must be a file "
                                         << "name string; got " << detail::json_excerpt(file));
      std::string const shard = file.get<std::string>();
      // A shard is a file next to the index: no directories, so an index cannot point at
      // arbitrary files.
      LC_CHECK(!shard.empty() && shard.find('/') == std::string::npos &&
                   shard.find('\\') == std::string::npos && shard != "." && shard != "..",
               source_ << ": weight_map[\"" << name << "\"] = \"" << shard << "\" must be a plain "
                       << "file name in the index's directory");
      auto [it, inserted] = shard_index.emplace(shard, shards_.size());
      if (inserted) {
        try {
          shards_.emplace_back(index.parent_path() / shard);
        } catch (error const& e) {
          LC_THROW(source_ << ": shard \"" << shard << "\" (of tensor \"" << name
                           << "\"): " << e.message());
        }
      }
      LC_CHECK(shards_[it->second].contains(name), source_ << ": weight_map puts tensor \"" << name
                                                           << "\" in \"" << shard
                                                           << "\", which does not hold it");
      where_.emplace(name, it->second);
    }
  }

  std::string source_;
  std::vector<safetensors_file> shards_;
  std::map<std::string, std::size_t, std::less<>> where_;  // tensor -> shard
};

// Writes a model.safetensors.index.json: {"metadata": {"total_size": bytes}, "weight_map":
// {tensor: shard}}, total_size being the tensors' data bytes (as transformers writes it).
inline void write_safetensors_index(std::filesystem::path const& path,
                                    std::map<std::string, std::string> const& weight_map,
                                    std::uint64_t total_size) {
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total_size}};
  index["weight_map"] = weight_map;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  LC_CHECK(out.good(), "cannot create " << path);
  out << index.dump(2) << '\n';
  out.close();
  LC_CHECK(out.good(), "cannot write " << path);
}

}  // namespace lightcore::io
