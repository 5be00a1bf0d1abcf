// Planning a rank's weights: shapes, FP8 or bf16, tensor-parallel splits and placements.
#include "models/deepseek_v3/weights_plan.hpp"

#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/gemm/gemm_params.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::models::deepseek_v3 {

vocab_range vocab_shard(io::model_config const& c, tp_shard shard) {
  std::int64_t const per = (c.vocab_size + shard.world - 1) / shard.world;
  std::int64_t const start = std::min(shard.rank * per, c.vocab_size);
  return {start, std::min(start + per, c.vocab_size)};
}

char const* name_of(weight_category c) noexcept {
  switch (c) {
    case weight_category::embedding: return "embedding";
    case weight_category::attention: return "attention";
    case weight_category::dense_mlp: return "dense_mlp";
    case weight_category::routed_experts: return "routed_experts";
    case weight_category::shared_experts: return "shared_experts";
    case weight_category::router: return "router";
    case weight_category::norms: return "norms";
    case weight_category::lm_head: return "lm_head";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& os, memory_report const& r) {
  auto const mib = [](std::uint64_t b) { return double(b) / double(1 << 20); };
  for (int i = 0; i < weight_category_count; ++i)
    os << name_of(weight_category(i)) << ": " << mib(r.bytes[i]) << " MiB\n";
  os << "total: " << mib(r.total()) << " MiB";
  if (!r.dequantised.empty())
    os << "\n"
       << r.dequantised.size() << " FP8 weights stored as bf16 (shapes the FP8 GEMM "
       << "cannot take), e.g. " << r.dequantised.front();
  return os;
}

namespace detail {
namespace {

constexpr std::int64_t block = kernels::gemm_fp8_block_size;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Dummy-mode distributions. Linear weights, the embedding, lm_head and the router: std 0.02
// (transformers' initializer_range, as random_checkpoint draws them). FP8 codes: std 112, so that
// the largest draw (2 sqrt(3) std = 388) stays below e4m3's 448; their block scales 0.02 / 112
// (the same weight spread once dequantised), varied by 10% so that a scale mix-up shows.
constexpr float dummy_std = 0.02f;
constexpr float dummy_code_std = 112.0f;
constexpr float dummy_scale_mean = dummy_std / dummy_code_std;
constexpr float dummy_scale_std = 0.1f * dummy_scale_mean;

// One checkpoint weight's share in a linear destination: rows [r0, r1) and columns [c0, c1) of a
// [rows, cols] tensor; `full_rows` is the part's row count at world 1 (fusion alignment).
struct part {
  std::string source;  // the weight's prefix, e.g. "model.layers.0.self_attn.q_a_proj"
  std::int64_t rows = 0, cols = 0;
  std::int64_t r0 = 0, r1 = 0, c0 = 0, c1 = 0;
  std::int64_t full_rows = 0;
};

part whole(std::string source, std::int64_t rows, std::int64_t cols) {
  return {std::move(source), rows, cols, 0, rows, 0, cols, rows};
}
part row_range(std::string source, std::int64_t rows, std::int64_t cols, std::int64_t r0,
               std::int64_t r1) {
  return {std::move(source), rows, cols, r0, r1, 0, cols, rows};
}
part col_range(std::string source, std::int64_t rows, std::int64_t cols, std::int64_t c0,
               std::int64_t c1) {
  return {std::move(source), rows, cols, 0, rows, c0, c1, rows};
}

class planner {
 public:
  planner(io::model_config const& c, tp_shard shard, layout_options layout,
          allocate_fn const& allocate)
      : c_(c), shard_(shard), layout_(layout), allocate_(allocate) {}

  weights_plan run() {
    check_divisions();
    out_.vocab = vocab_shard(c_, shard_);
    std::int64_t const h = c_.hidden_size;
    out_.views.embed =
        plain("model.embed_tokens.weight", "model.embed_tokens.weight", {c_.vocab_size, h},
              weight_category::embedding, dtype::bf16, dummy_std, true);
    for (std::int64_t i = 0; i < c_.num_hidden_layers; ++i) out_.views.layers.push_back(layer(i));
    out_.views.norm = norm("model.norm.weight", h);
    out_.views.lm_head = c_.tie_word_embeddings
                             ? out_.views.embed
                             : plain("lm_head.weight", "lm_head.weight", {c_.vocab_size, h},
                                     weight_category::lm_head, dtype::bf16, dummy_std, true);
    return std::move(out_);
  }

 private:
  void check_divisions() const {
    std::int64_t const w = shard_.world;
    LC_CHECK(w >= 1 && 0 <= shard_.rank && shard_.rank < w,
             "tensor parallelism: rank " << shard_.rank << " of world " << w
                                         << " is invalid; allowed: world >= 1, 0 <= rank < world");
    auto const divides = [&](char const* field, std::int64_t v) {
      LC_CHECK(v % w == 0, "tensor parallelism at world " << w << ": " << field << " = " << v
                                                          << " is not a multiple of the world "
                                                             "size; allowed: a world size that "
                                                             "divides it");
    };
    divides("num_attention_heads", c_.num_attention_heads);
    bool dense = false, moe = false;
    for (std::int64_t i = 0; i < c_.num_hidden_layers; ++i)
      (io::is_moe_layer(c_, i) ? moe : dense) = true;
    if (dense) divides("intermediate_size", c_.intermediate_size);
    if (moe) {
      divides("moe_intermediate_size", c_.moe_intermediate_size);
      if (c_.n_shared_experts > 0)
        divides("moe_intermediate_size * n_shared_experts",
                c_.moe_intermediate_size * c_.n_shared_experts);
    }
    std::int64_t const per = (c_.vocab_size + w - 1) / w;
    LC_CHECK((w - 1) * per < c_.vocab_size,
             "tensor parallelism at world " << w << ": vocab_size = " << c_.vocab_size
                                            << " leaves the last rank no rows of the embedding "
                                               "(ceil(vocab / world) rows per rank); allowed: a "
                                               "smaller world");
  }

  tensor_view alloc(std::string name, dtype type, dims shape, weight_category cat, float mean,
                    float stddev) {
    dest_tensor d{std::move(name), type, shape, cat, mean, stddev};
    tensor_view const v = allocate_(d);
    LC_CHECK(v.shape() == shape && v.type() == type && v.is_contiguous(),
             "weights: the allocation of " << d.name << " is " << v << "; expected contiguous "
                                           << type << " " << shape);
    out_.memory.bytes[int(cat)] += v.nbytes();
    out_.dests.push_back(std::move(d));
    out_.storage.push_back(v);
    return v;
  }

  void place(placement p) {
    std::string const key = p.source;
    out_.by_source[key].push_back(std::move(p));
  }

  // A whole (or vocab-sharded) tensor that is not a linear layer: norms, router, embedding.
  tensor_view plain(std::string const& source, std::string const& name, dims shape,
                    weight_category cat, dtype type, float stddev, bool vocab_rows = false,
                    float mean = 0.0f) {
    std::int64_t const rows = shape.rank() == 1 ? 1 : shape[0];
    std::int64_t const cols = shape.rank() == 1 ? shape[0] : shape[1];
    std::int64_t const r0 = vocab_rows ? out_.vocab.start : 0;
    std::int64_t const r1 = vocab_rows ? out_.vocab.end : rows;
    dims local = shape;
    if (shape.rank() == 2) local[0] = r1 - r0;
    tensor_view const v = alloc(name, type, local, cat, mean, stddev);
    place({source, "", r0, r1, 0, cols, v.reshape({r1 - r0, cols}), {}});
    return v;
  }
  tensor_view norm(std::string const& name, std::int64_t width) {
    return plain(name, name, {width}, weight_category::norms, dtype::bf16, 0.0f, false, 1.0f);
  }

  // An FP8 destination may only take blocks whose edges fall on 128 boundaries of the checkpoint's
  // block grid, and must start each part on a block of its own.
  void check_fp8_split(part const& p, std::int64_t dst_row) const {
    bool const rows_ok = p.r0 % block == 0 && (p.r1 % block == 0 || p.r1 == p.rows);
    bool const cols_ok = p.c0 % block == 0 && (p.c1 - p.c0) % block == 0;
    LC_CHECK(rows_ok && cols_ok && dst_row % block == 0,
             p.source << ".weight is FP8 with 128x128 scale blocks, and tensor parallelism at "
                      << "world " << shard_.world << " gives rank " << shard_.rank << " rows ["
                      << p.r0 << ", " << p.r1 << ") of " << p.rows << " and columns [" << p.c0
                      << ", " << p.c1 << ") of " << p.cols
                      << ", which is not on 128 boundaries; an FP8 weight may only be split into "
                         "multiples of 128 rows or columns: use a world size whose share of the "
                         "heads or intermediate size is a multiple of 128, or a bf16 checkpoint");
  }

  // A linear destination [E?][sum of part rows, K] built from `parts_of(e)` (e = -1 when not
  // stacked). FP8 when the checkpoint is and the FP8 GEMM can take the world-1 shape: K a multiple
  // of 128 and every part but the last a multiple of 128 rows (so the fused scales line up);
  // otherwise dequantised to bf16.
  template <class Parts>
  linear_weight linear(std::string const& name, weight_category cat, std::int64_t experts,
                       Parts const& parts_of) {
    std::vector<part> const proto = parts_of(experts > 0 ? 0 : -1);
    std::int64_t n = 0;
    for (auto const& p : proto) n += p.r1 - p.r0;
    std::int64_t const k = proto.front().c1 - proto.front().c0;
    bool const quantised = c_.quantization.has_value();
    bool fp8 = quantised && proto.front().cols % block == 0;
    for (std::size_t i = 0; i + 1 < proto.size(); ++i) fp8 = fp8 && proto[i].full_rows % block == 0;
    if (quantised && !fp8) out_.memory.dequantised.push_back(name);
    if (fp8) {
      // Every stacked part, not only expert 0's: shared experts folded into a stack come from
      // other rows of another tensor.
      for (std::int64_t e = experts > 0 ? 0 : -1; e < std::max<std::int64_t>(experts, 0); ++e) {
        std::int64_t row = 0;
        for (auto const& p : parts_of(e)) {
          check_fp8_split(p, row);
          row += p.r1 - p.r0;
        }
      }
    }
    dims const wshape = experts > 0 ? dims{experts, n, k} : dims{n, k};
    linear_weight out;
    out.w = alloc(name + ".weight", fp8 ? dtype::fp8_e4m3 : dtype::bf16, wshape, cat, 0.0f,
                  fp8 ? dummy_code_std : dummy_std);
    tensor_view storage;
    if (fp8) {
      std::int64_t const ld = kernels::gemm_fp8_weight_scale_ld(k), nb = ceil_div(n, block);
      dims const sshape = experts > 0 ? dims{experts, nb, ld} : dims{nb, ld};
      storage = alloc(name + ".scales", dtype::f32, sshape, cat, dummy_scale_mean, dummy_scale_std);
      out.scales = storage.slice(-1, 0, k / block);
    }
    for (std::int64_t e = experts > 0 ? 0 : -1; e < std::max<std::int64_t>(experts, 0); ++e) {
      tensor_view const w = e >= 0 ? out.w.select(0, e) : out.w;
      tensor_view const s = !fp8 ? tensor_view{} : e >= 0 ? storage.select(0, e) : storage;
      std::int64_t row = 0;
      for (auto const& p : parts_of(e)) {
        std::int64_t const rows = p.r1 - p.r0;
        placement pl{p.source + ".weight",
                     quantised ? p.source + ".weight_scale_inv" : "",
                     p.r0,
                     p.r1,
                     p.c0,
                     p.c1,
                     w.slice(0, row, row + rows),
                     {}};
        if (fp8) pl.dst_scales = s.slice(0, row / block, row / block + ceil_div(rows, block));
        place(std::move(pl));
        row += rows;
      }
    }
    return out;
  }

  // gate_proj and up_proj rows [r0, r1) of intermediate `width` fused, down_proj columns likewise.
  // A stack of `experts` routed experts takes `fused` more after them: the shared experts' MLP
  // (intermediate width x fused) cut into `fused` parts, part j of the rank's share being its
  // intermediate columns [r0' + j * local, r0' + (j + 1) * local) with r0' the rank's first.
  mlp_weights mlp(std::string const& name, std::string const& prefix_of_e, std::int64_t width,
                  std::int64_t experts, weight_category cat, std::int64_t fused = 0,
                  std::string const& shared = {}) {
    std::int64_t const h = c_.hidden_size;
    std::int64_t const local = width / shard_.world, r0 = shard_.rank * local, r1 = r0 + local;
    std::int64_t const shared_width = width * fused, shared_r0 = shard_.rank * local * fused;
    // (source prefix, full width, rows) of expert e's share.
    struct share {
      std::string prefix;
      std::int64_t width, r0, r1;
    };
    auto const share_of = [&](std::int64_t e) -> share {
      if (e < 0) return {prefix_of_e, width, r0, r1};
      if (e < experts) return {prefix_of_e + "." + std::to_string(e), width, r0, r1};
      std::int64_t const j0 = shared_r0 + (e - experts) * local;
      return {shared, shared_width, j0, j0 + local};
    };
    std::int64_t const stack = experts > 0 ? experts + fused : 0;
    std::uint64_t const before = out_.memory.bytes[int(cat)];
    mlp_weights m;
    m.gate_up = linear(name + ".gate_up", cat, stack, [&](std::int64_t e) {
      share const s = share_of(e);
      return std::vector<part>{row_range(s.prefix + ".gate_proj", s.width, h, s.r0, s.r1),
                               row_range(s.prefix + ".up_proj", s.width, h, s.r0, s.r1)};
    });
    m.down = linear(name + ".down", cat, stack, [&](std::int64_t e) {
      share const s = share_of(e);
      return std::vector<part>{col_range(s.prefix + ".down_proj", h, s.width, s.r0, s.r1)};
    });
    if (fused > 0) {
      // What the folded parts occupy counts as the shared experts'.
      std::uint64_t const moved =
          (out_.memory.bytes[int(cat)] - before) / std::uint64_t(stack) * std::uint64_t(fused);
      out_.memory.bytes[int(cat)] -= moved;
      out_.memory.bytes[int(weight_category::shared_experts)] += moved;
    }
    return m;
  }

  attention_weights attention(std::string const& a) {
    std::int64_t const h = c_.hidden_size, heads = c_.num_attention_heads;
    std::int64_t const local = heads / shard_.world, h0 = shard_.rank * local, h1 = h0 + local;
    std::int64_t const qk = c_.qk_head_dim(), kv_a_rows = c_.kv_lora_rank + c_.qk_rope_head_dim;
    auto const cat = weight_category::attention;
    attention_weights out;
    if (c_.q_lora_rank) {
      std::int64_t const q_lora = *c_.q_lora_rank;
      out.q_a_kv_a = linear(a + ".q_a_kv_a", cat, 0, [&](std::int64_t) {
        return std::vector<part>{whole(a + ".q_a_proj", q_lora, h),
                                 whole(a + ".kv_a_proj_with_mqa", kv_a_rows, h)};
      });
      out.q_a_norm = norm(a + ".q_a_layernorm.weight", q_lora);
      out.q_b = linear(a + ".q_b", cat, 0, [&](std::int64_t) {
        return std::vector<part>{row_range(a + ".q_b_proj", heads * qk, q_lora, h0 * qk, h1 * qk)};
      });
    } else if (!c_.quantization) {
      // One weight, so that one GEMM (a weight-streaming GEMV at decode) reads the hidden state
      // for both; q and kv_a are views of its rows.
      out.q_kv_a = linear(a + ".q_kv_a", cat, 0, [&](std::int64_t) {
        return std::vector<part>{row_range(a + ".q_proj", heads * qk, h, h0 * qk, h1 * qk),
                                 whole(a + ".kv_a_proj_with_mqa", kv_a_rows, h)};
      });
      std::int64_t const q_rows = local * qk;
      out.q = {out.q_kv_a.w.slice(0, 0, q_rows), {}};
      out.kv_a = {out.q_kv_a.w.slice(0, q_rows, q_rows + kv_a_rows), {}};
    } else {
      out.q = linear(a + ".q", cat, 0, [&](std::int64_t) {
        return std::vector<part>{row_range(a + ".q_proj", heads * qk, h, h0 * qk, h1 * qk)};
      });
      out.kv_a = linear(a + ".kv_a", cat, 0, [&](std::int64_t) {
        return std::vector<part>{whole(a + ".kv_a_proj_with_mqa", kv_a_rows, h)};
      });
    }
    out.kv_a_norm = norm(a + ".kv_a_layernorm.weight", c_.kv_lora_rank);
    // kv_b_proj [heads * (nope + v), kv_lora]: per head, nope key rows then v value rows.
    std::int64_t const nope = c_.qk_nope_head_dim, v = c_.v_head_dim, kv = c_.kv_lora_rank;
    out.w_uk = alloc(a + ".w_uk", dtype::bf16, {local, nope, kv}, cat, 0.0f, dummy_std);
    out.w_uv = alloc(a + ".w_uv", dtype::bf16, {local, v, kv}, cat, 0.0f, dummy_std);
    std::string const kv_b = a + ".kv_b_proj.weight";
    std::string const kv_b_scale = c_.quantization ? a + ".kv_b_proj.weight_scale_inv" : "";
    for (std::int64_t j = 0; j < local; ++j) {
      std::int64_t const r = (h0 + j) * (nope + v);
      place({kv_b, kv_b_scale, r, r + nope, 0, kv, out.w_uk.select(0, j), {}});
      place({kv_b, kv_b_scale, r + nope, r + nope + v, 0, kv, out.w_uv.select(0, j), {}});
    }
    out.o = linear(a + ".o", cat, 0, [&](std::int64_t) {
      return std::vector<part>{col_range(a + ".o_proj", h, heads * v, h0 * v, h1 * v)};
    });
    return out;
  }

  layer_weights layer(std::int64_t i) {
    std::string const p = "model.layers." + std::to_string(i);
    std::int64_t const h = c_.hidden_size;
    layer_weights out;
    out.input_norm = norm(p + ".input_layernorm.weight", h);
    out.attn = attention(p + ".self_attn");
    out.post_attention_norm = norm(p + ".post_attention_layernorm.weight", h);
    if (!io::is_moe_layer(c_, i)) {
      out.mlp = mlp(p + ".mlp", p + ".mlp", c_.intermediate_size, 0, weight_category::dense_mlp);
      return out;
    }
    moe_weights m;
    std::int64_t const experts = c_.n_routed_experts;
    // The router stays in the checkpoint's dtype when it is bf16 or f32 (f16 becomes bf16).
    dtype const router_type = c_.torch_dtype == dtype::f32 ? dtype::f32 : dtype::bf16;
    m.router = plain(p + ".mlp.gate.weight", p + ".mlp.gate.weight", {experts, h},
                     weight_category::router, router_type, dummy_std);
    if (c_.topk == io::topk_method::noaux_tc)
      m.router_bias =
          plain(p + ".mlp.gate.e_score_correction_bias", p + ".mlp.gate.e_score_correction_bias",
                {experts}, weight_category::router, dtype::f32, dummy_std);
    // Shared experts folded into the stack when asked for (weights.hpp), else a dense MLP.
    std::int64_t const fused = layout_.fuse_shared_experts ? c_.n_shared_experts : 0;
    mlp_weights const routed =
        mlp(p + ".mlp.experts", p + ".mlp.experts", c_.moe_intermediate_size, experts,
            weight_category::routed_experts, fused, p + ".mlp.shared_experts");
    m.gate_up = routed.gate_up;
    m.down = routed.down;
    m.fused_shared = fused;
    if (c_.n_shared_experts > 0 && fused == 0)
      m.shared =
          mlp(p + ".mlp.shared_experts", p + ".mlp.shared_experts",
              c_.moe_intermediate_size * c_.n_shared_experts, 0, weight_category::shared_experts);
    out.moe = std::move(m);
    return out;
  }

  io::model_config const& c_;
  tp_shard shard_;
  layout_options layout_;
  allocate_fn const& allocate_;
  weights_plan out_;
};

}  // namespace

weights_plan plan_weights(io::model_config const& c, tp_shard shard, layout_options layout,
                          allocate_fn const& allocate) {
  // A dry run first (nothing allocated) so that every refusal comes before any memory is taken.
  std::vector<std::byte> scratch(256);
  allocate_fn const dry = [&](dest_tensor const& d) {
    return tensor_view(scratch.data(), d.type, d.shape);
  };
  planner(c, shard, layout, dry).run();
  return planner(c, shard, layout, allocate).run();
}

}  // namespace detail
}  // namespace lightcore::models::deepseek_v3
