// Reading a checkpoint into a rank's weights: validation against the config's layout, then every
// shard once, in file order, each placement staged on the host (converted, dequantised, or FP8
// codes with re-strided scales) and copied to its destination.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/fp16.hpp"
#include "lightcore/core/fp8.hpp"
#include "models/deepseek_v3/checkpoint_layout.hpp"
#include "models/deepseek_v3/weights_plan.hpp"

namespace lightcore::models::deepseek_v3::detail {
namespace {

constexpr std::int64_t block = kernels::gemm_fp8_block_size;

float load_float(std::byte const* base, dtype t, std::int64_t i) {
  switch (t) {
    case dtype::f32: {
      float v;
      std::memcpy(&v, base + i * 4, 4);
      return v;
    }
    case dtype::bf16: {
      std::uint16_t b;
      std::memcpy(&b, base + i * 2, 2);
      return float(bf16::from_bits(b));
    }
    case dtype::f16: {
      std::uint16_t b;
      std::memcpy(&b, base + i * 2, 2);
      return float(fp16::from_bits(b));
    }
    case dtype::fp8_e4m3: return float(fp8_e4m3::from_bits(std::uint8_t(base[i])));
    default: LC_THROW("weights: cannot read " << t << " values; supported: f32, bf16, f16, fp8");
  }
}

void store_float(std::byte* base, dtype t, std::int64_t i, float v) {
  switch (t) {
    case dtype::f32: std::memcpy(base + i * 4, &v, 4); break;
    case dtype::bf16: {
      std::uint16_t const b = bf16(v).bits;
      std::memcpy(base + i * 2, &b, 2);
      break;
    }
    default: LC_THROW("weights: cannot store " << t << " values; supported: f32, bf16");
  }
}

// Stages one placement and copies it. `staging` is reused between calls.
void run(placement const& p, io::safetensors_checkpoint const& checkpoint, copy_fn const& copy,
         std::vector<std::byte>& staging) {
  tensor_view const src = checkpoint.tensor(p.source);
  std::int64_t const cols = src.rank() == 1 ? src.size(0) : src.size(1);
  std::int64_t const rows = p.r1 - p.r0, width = p.c1 - p.c0;
  auto const* base = static_cast<std::byte const*>(src.data());
  std::size_t const in_size = src.element_size(), out_size = size_of(p.dst.type());
  LC_CHECK(p.dst.shape() == (dims{rows, width}) || p.dst.numel() == rows * width,
           "weights: placement of " << p.source << " into " << p.dst << " does not fit");
  std::size_t const bytes = std::size_t(rows * width) * out_size;
  if (src.type() == p.dst.type()) {
    if (width == cols) {
      // Whole rows: straight from the mapped file.
      copy(p.dst.data(), base + std::size_t(p.r0 * cols) * in_size, bytes);
    } else {
      staging.resize(bytes);
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(staging.data() + std::size_t(r * width) * out_size,
                    base + std::size_t((p.r0 + r) * cols + p.c0) * in_size,
                    std::size_t(width) * in_size);
      copy(p.dst.data(), staging.data(), bytes);
    }
  } else {
    staging.resize(bytes);
    if (src.type() == dtype::fp8_e4m3) {
      // Dequantised: code * its block's scale in fp32, rounded once to the destination's dtype.
      tensor_view const s = checkpoint.tensor(p.scale_source);
      auto const* scales = static_cast<std::byte const*>(s.data());
      std::int64_t const scale_cols = s.size(1);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t k = 0; k < width; ++k) {
          std::int64_t const sr = p.r0 + r, sc = p.c0 + k;
          float const scale =
              load_float(scales, dtype::f32, (sr / block) * scale_cols + sc / block);
          store_float(staging.data(), p.dst.type(), r * width + k,
                      load_float(base, dtype::fp8_e4m3, sr * cols + sc) * scale);
        }
    } else {
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t k = 0; k < width; ++k)
          store_float(staging.data(), p.dst.type(), r * width + k,
                      load_float(base, src.type(), (p.r0 + r) * cols + p.c0 + k));
    }
    copy(p.dst.data(), staging.data(), bytes);
  }
  if (p.dst_scales.data() == nullptr) return;
  // FP8 codes kept: the scales of the block rows and columns this placement covers, re-strided to
  // the destination's padded row (gemm_fp8_weight_scale_ld) with zeros in the padding.
  tensor_view const s = checkpoint.tensor(p.scale_source);
  auto const* scales = static_cast<float const*>(s.data());
  std::int64_t const scale_cols = s.size(1), ld = p.dst_scales.size(1);
  std::int64_t const block_rows = p.dst_scales.size(0), block_cols = (width + block - 1) / block;
  std::vector<float> staged(std::size_t(block_rows * ld), 0.0f);
  for (std::int64_t i = 0; i < block_rows; ++i)
    for (std::int64_t j = 0; j < block_cols; ++j)
      staged[std::size_t(i * ld + j)] = scales[(p.r0 / block + i) * scale_cols + p.c0 / block + j];
  copy(p.dst_scales.data(), staged.data(), staged.size() * sizeof(float));
}

}  // namespace

void check_checkpoint(io::safetensors_checkpoint const& checkpoint, io::model_config const& c,
                      std::string const& where) {
  for (tensor_spec const& t : checkpoint_layout(c)) {
    LC_CHECK(checkpoint.contains(t.name),
             where << ": tensor \"" << t.name << "\" is missing; the config expects it ("
                   << io::st_dtype_of(t.type) << " " << t.shape << ")");
    io::safetensors_entry const& e = checkpoint.entry(t.name);
    LC_CHECK(e.type == io::st_dtype_of(t.type),
             where << ": tensor \"" << t.name << "\" has dtype " << e.type << "; the config "
                   << "expects " << io::st_dtype_of(t.type)
                   << (c.quantization ? " (it has an FP8 quantization_config)"
                                      : " (torch_dtype, no quantization_config)"));
    bool const same_shape = e.shape.size() == std::size_t(t.shape.rank()) &&
                            std::equal(e.shape.begin(), e.shape.end(), t.shape.span().begin());
    if (!same_shape) {
      std::string got = "[";
      for (std::size_t i = 0; i < e.shape.size(); ++i)
        got += (i ? ", " : "") + std::to_string(e.shape[i]);
      LC_THROW(where << ": tensor \"" << t.name << "\" has shape " << got << "]; the config "
                     << "expects " << t.shape);
    }
  }
}

void read_checkpoint(io::safetensors_checkpoint const& checkpoint, io::model_config const& c,
                     weights_plan const& plan, copy_fn const& copy, load_progress const& progress) {
  std::uint64_t total = 0;
  std::map<std::string, bool, std::less<>> wanted;  // the layout's tensors, read or not yet
  for (tensor_spec const& t : checkpoint_layout(c)) {
    total += t.nbytes();
    wanted.emplace(t.name, false);
  }
  // Shards in file-name order (model-00001-of-..., ...), each tensor by its offset in the file.
  std::vector<io::safetensors_file const*> shards;
  for (auto const& s : checkpoint.shards()) shards.push_back(&s);
  std::sort(shards.begin(), shards.end(), [](auto const* a, auto const* b) {
    return a->path().filename() < b->path().filename();
  });
  std::vector<std::byte> staging;
  std::uint64_t done = 0;
  for (io::safetensors_file const* shard : shards) {
    std::vector<io::safetensors_entry const*> entries;
    for (auto const& e : shard->entries()) entries.push_back(&e);
    std::sort(entries.begin(), entries.end(),
              [](auto const* a, auto const* b) { return a->begin < b->begin; });
    for (io::safetensors_entry const* e : entries) {
      auto const it = wanted.find(e->name);
      // Not the layout's (MTP layers), or the same name in a second shard that the index does
      // not point at.
      if (it == wanted.end() || it->second || &checkpoint.shard_of(e->name) != shard) continue;
      it->second = true;
      if (auto const p = plan.by_source.find(e->name); p != plan.by_source.end())
        for (placement const& pl : p->second) run(pl, checkpoint, copy, staging);
      done += e->nbytes();
      if (progress) progress(done, total, e->name);
    }
  }
}

}  // namespace lightcore::models::deepseek_v3::detail
