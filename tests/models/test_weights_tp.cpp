// Tensor-parallel shards of DeepSeek-V3/V2 weights on the CPU backend: each rank against the
// checkpoint, the ranks put back together equal to the unsharded weights, replicated tensors
// equal on every rank, and FP8 splits off 128 boundaries refused naming the tensor.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "weights_reference.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;

// `part` equals the slice [begin, end) of dimension `dim` of `whole`, element for element.
void expect_slice(tensor_view const& whole, int dim, std::int64_t begin, std::int64_t end,
                  tensor_view const& part, std::string const& what) {
  ASSERT_EQ(whole.type(), part.type()) << what;
  EXPECT_EQ(logical_bytes(whole.slice(dim, begin, end)), logical_bytes(part)) << what;
}

// A linear weight split by rows (dim -2) or columns (dim -1) of each matrix; FP8 scales likewise
// in 128 blocks.
void expect_linear_slice(ds::linear_weight const& whole, int dim, std::int64_t begin,
                         std::int64_t end, ds::linear_weight const& part, std::string const& what) {
  ASSERT_EQ(whole.fp8(), part.fp8()) << what;
  expect_slice(whole.w, dim, begin, end, part.w, what + ".w");
  if (whole.fp8()) {
    ASSERT_EQ(begin % 128, 0) << what;
    expect_slice(whole.scales, dim, begin / 128, (end + 127) / 128, part.scales, what + ".scales");
  }
}

// gate_up of a rank: its gate rows, then its up rows, out of [gate; up] of the whole.
void expect_gate_up(ds::linear_weight const& whole, std::int64_t width, std::int64_t i0,
                    std::int64_t local, ds::linear_weight const& part, std::string const& what) {
  int const rows = whole.w.rank() - 2;
  ds::linear_weight gate{part.w.slice(rows, 0, local), {}},
      up{part.w.slice(rows, local, 2 * local), {}};
  if (part.fp8()) {
    gate.scales = part.scales.slice(rows, 0, local / 128);
    up.scales = part.scales.slice(rows, local / 128, 2 * local / 128);
  }
  expect_linear_slice(whole, rows, i0, i0 + local, gate, what + " gate");
  expect_linear_slice(whole, rows, width + i0, width + i0 + local, up, what + " up");
}

void expect_reassembles(ds::model_weights<cpu> const& full, ds::model_weights<cpu> const& rank) {
  io::model_config const& c = full.config();
  ds::tp_shard const s = rank.shard();
  std::int64_t const heads = c.num_attention_heads / s.world, h0 = s.rank * heads;
  std::int64_t const qk = c.qk_head_dim(), v = c.v_head_dim;
  ds::vocab_range const vocab = rank.vocab();
  std::string const where = "rank " + std::to_string(s.rank) + "/" + std::to_string(s.world);
  expect_slice(full.views().embed, 0, vocab.start, vocab.end, rank.views().embed, where + " embed");
  expect_slice(full.views().lm_head, 0, vocab.start, vocab.end, rank.views().lm_head,
               where + " lm_head");
  EXPECT_EQ(logical_bytes(full.views().norm), logical_bytes(rank.views().norm));
  for (std::size_t i = 0; i < full.views().layers.size(); ++i) {
    auto const& f = full.views().layers[i];
    auto const& r = rank.views().layers[i];
    std::string const w = where + " layer " + std::to_string(i);
    EXPECT_EQ(logical_bytes(f.input_norm), logical_bytes(r.input_norm)) << w;
    EXPECT_EQ(logical_bytes(f.attn.kv_a_norm), logical_bytes(r.attn.kv_a_norm)) << w;
    if (c.q_lora_rank) {
      // Replicated: the fused down-projections read the whole hidden state on every rank.
      expect_linear_slice(f.attn.q_a_kv_a, 0, 0, f.attn.q_a_kv_a.w.size(0), r.attn.q_a_kv_a,
                          w + " q_a_kv_a");
      expect_linear_slice(f.attn.q_b, 0, h0 * qk, (h0 + heads) * qk, r.attn.q_b, w + " q_b");
    } else {
      expect_linear_slice(f.attn.q, 0, h0 * qk, (h0 + heads) * qk, r.attn.q, w + " q");
      expect_linear_slice(f.attn.kv_a, 0, 0, f.attn.kv_a.w.size(0), r.attn.kv_a, w + " kv_a");
    }
    expect_slice(f.attn.w_uk, 0, h0, h0 + heads, r.attn.w_uk, w + " w_uk");
    expect_slice(f.attn.w_uv, 0, h0, h0 + heads, r.attn.w_uv, w + " w_uv");
    expect_linear_slice(f.attn.o, -1, h0 * v, (h0 + heads) * v, r.attn.o, w + " o");
    auto const mlp = [&](ds::linear_weight const& fgu, ds::linear_weight const& fd,
                         ds::linear_weight const& rgu, ds::linear_weight const& rd,
                         std::int64_t width, std::string const& name) {
      std::int64_t const local = width / s.world, i0 = s.rank * local;
      expect_gate_up(fgu, width, i0, local, rgu, name + " gate_up");
      expect_linear_slice(fd, -1, i0, i0 + local, rd, name + " down");
    };
    if (f.mlp) {
      mlp(f.mlp->gate_up, f.mlp->down, r.mlp->gate_up, r.mlp->down, c.intermediate_size, w);
      continue;
    }
    EXPECT_EQ(logical_bytes(f.moe->router), logical_bytes(r.moe->router)) << w;
    if (f.moe->router_bias.data() != nullptr) {
      EXPECT_EQ(logical_bytes(f.moe->router_bias), logical_bytes(r.moe->router_bias)) << w;
    }
    // The routed experts; folded shared experts are parts of another split (each rank's share
    // cut in n_shared_experts), checked against the checkpoint by checkpoint_reference.
    ASSERT_EQ(f.moe->fused_shared, r.moe->fused_shared) << w;
    auto const routed = [&](ds::linear_weight const& l) {
      std::int64_t const e = c.n_routed_experts;
      return ds::linear_weight{l.w.slice(0, 0, e), l.fp8() ? l.scales.slice(0, 0, e) : l.scales};
    };
    mlp(routed(f.moe->gate_up), routed(f.moe->down), routed(r.moe->gate_up), routed(r.moe->down),
        c.moe_intermediate_size, w + " experts");
    if (f.moe->shared)
      mlp(f.moe->shared->gate_up, f.moe->shared->down, r.moe->shared->gate_up, r.moe->shared->down,
          c.moe_intermediate_size * c.n_shared_experts, w + " shared");
  }
}

struct tp_case {
  char const* name;
  char const* config;
  std::optional<tools::weight_format> format;
  bool aligned;
};

class WeightsTensorParallel : public ::testing::TestWithParam<tp_case> {};

TEST_P(WeightsTensorParallel, ShardsReassembleTheUnshardedWeights) {
  tp_case const& t = GetParam();
  temp_dir dir;
  auto const config =
      t.aligned ? derived_config(dir.path(), t.config, aligned_fp8_patch) : config_path(t.config);
  write_checkpoint(config, dir.path() / "ckpt", t.format);
  cpu backend;
  auto const full = ds::load_weights(backend, dir.path() / "ckpt");
  for (std::int64_t world : {2, 4}) {
    std::int64_t vocab_rows = 0;
    for (std::int64_t rank = 0; rank < world; ++rank) {
      ds::load_options o;
      o.shard = {rank, world};
      auto const m = ds::load_weights(backend, dir.path() / "ckpt", o);
      checkpoint_reference const ref(dir.path() / "ckpt", m.config(), o.shard);
      ref.expect_model(m.views());
      expect_reassembles(full, m);
      EXPECT_EQ(m.vocab().start, vocab_rows);
      vocab_rows = m.vocab().end;
      EXPECT_LT(m.memory()[ds::weight_category::routed_experts],
                full.memory()[ds::weight_category::routed_experts]);
    }
    EXPECT_EQ(vocab_rows, full.config().vocab_size) << "world " << world;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, WeightsTensorParallel,
    ::testing::Values(
        tp_case{"v3_bf16", "tiny_deepseek_v3.json", tools::weight_format::bf16, false},
        tp_case{"v3_fp8_dequantised", "tiny_deepseek_v3.json", tools::weight_format::fp8, false},
        tp_case{"v3_fp8_aligned", "tiny_deepseek_v3.json", tools::weight_format::fp8, true},
        tp_case{"v2_bf16", "tiny_deepseek_v2.json", std::nullopt, false}),
    [](auto const& p) { return std::string(p.param.name); });

// Expects `f` to throw a lightcore::error whose message holds every string of `needles`.
template <class F>
void expect_error(F&& f, std::vector<std::string> const& needles) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << needles.front();
  } catch (error const& e) {
    for (auto const& n : needles) EXPECT_NE(e.message().find(n), std::string::npos) << e.message();
  }
}

TEST(WeightsTensorParallel, MisalignedFp8SplitsAreRefused) {
  temp_dir dir;
  cpu backend;
  // moe_intermediate_size 256 at world 4: 64 rows of each expert per rank.
  nlohmann::json patch = aligned_fp8_patch;
  patch["moe_intermediate_size"] = 256;
  auto const experts =
      io::load_model_config(derived_config(dir.path(), "tiny_deepseek_v3.json", patch));
  expect_error(
      [&] {
        ds::dummy_weights(backend, experts, {{0, 4}, 1, {}});
      },
      {"model.layers.1.mlp.experts.0.gate_proj.weight", "world 4", "128"});
  EXPECT_NO_THROW(ds::dummy_weights(backend, experts, {{1, 2}, 1, {}}));  // 128 rows per rank
  // 4 heads at world 4: q_b_proj's 192 rows per rank.
  patch["moe_intermediate_size"] = 512;
  patch["num_attention_heads"] = 4;
  auto const heads =
      io::load_model_config(derived_config(dir.path() / "heads", "tiny_deepseek_v3.json", patch));
  write_checkpoint(derived_config(dir.path() / "heads", "tiny_deepseek_v3.json", patch),
                   dir.path() / "ckpt", tools::weight_format::fp8);
  ds::load_options o;
  o.shard = {3, 4};
  expect_error([&] { ds::load_weights(backend, dir.path() / "ckpt", o); },
               {"model.layers.0.self_attn.q_b_proj.weight", "rows [576, 768)", "128"});
  // The same split of bf16 weights is fine.
  auto unquantised = heads;
  unquantised.quantization.reset();
  EXPECT_NO_THROW(ds::dummy_weights(backend, unquantised, {{3, 4}, 1, {}}));
  // A world that does not divide the heads names the field.
  expect_error(
      [&] {
        ds::dummy_weights(backend, unquantised, {{0, 3}, 1, {}});
      },
      {"num_attention_heads", "world 3"});
  expect_error([&] { ds::dummy_weights(backend, unquantised, {{4, 4}, 1, {}}); }, {"rank 4"});
}

TEST(WeightsTensorParallel, DummyReplicatedTensorsAgreeAcrossRanks) {
  cpu backend;
  auto const c = io::load_model_config(config_path("tiny_deepseek_v3.json"));
  auto const a = ds::dummy_weights(backend, c, {{0, 2}, 5, {}});
  auto const b = ds::dummy_weights(backend, c, {{1, 2}, 5, {}});
  for (std::size_t i = 0; i < a.views().layers.size(); ++i) {
    auto const& x = a.views().layers[i];
    auto const& y = b.views().layers[i];
    EXPECT_EQ(logical_bytes(x.attn.q_a_kv_a.w), logical_bytes(y.attn.q_a_kv_a.w));
    EXPECT_EQ(logical_bytes(x.input_norm), logical_bytes(y.input_norm));
    if (x.moe) {
      EXPECT_EQ(logical_bytes(x.moe->router), logical_bytes(y.moe->router));
    }
  }
}

}  // namespace
}  // namespace lightcore::test
