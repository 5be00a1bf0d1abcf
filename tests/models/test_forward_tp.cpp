// The tensor-parallel DeepSeek forward on the CPU: ranks as threads of one process
// (inproc_communicator), each with its shard of a tiny random checkpoint, against the world-1
// forward of the unsharded weights, over prefill, chunked prefill, decode and mixed steps; the MoE
// block under tensor_parallel against local; and the refusals of mismatched shards.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "dist/dist_test_util.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/dist/inproc_communicator.hpp"
#include "models/deepseek_v3/model.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "nlohmann/json.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {
namespace {

using backend::cpu;
using dist::inproc_communicator;
using logits_rows = std::vector<std::vector<float>>;  // [rows][vocab]

double rel_l2(std::vector<float> const& a, std::vector<float> const& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    double const d = double(a[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / den);
}

// A Communicator that forwards to another and counts the all-reduces (the MoE block promises
// one per layer, shared experts included).
struct counting_communicator {
  using backend_type = cpu;
  using stream_type = cpu::stream_type;
  inproc_communicator* inner;
  int all_reduces = 0;
  int rank() const noexcept { return inner->rank(); }
  int world_size() const noexcept { return inner->world_size(); }
  void all_reduce_sum(tensor_view const& x, stream_type const& s) {
    ++all_reduces;
    inner->all_reduce_sum(x, s);
  }
  void all_gather(tensor_view const& i, tensor_view const& o, stream_type const& s) {
    inner->all_gather(i, o, s);
  }
  void reduce_scatter_sum(tensor_view const& i, tensor_view const& o, stream_type const& s) {
    inner->reduce_scatter_sum(i, o, s);
  }
  void all_to_all_v(tensor_view const& i, std::span<std::int64_t const> sc, tensor_view const& o,
                    std::span<std::int64_t const> rc, stream_type const& s) {
    inner->all_to_all_v(i, sc, o, rc, s);
  }
  void broadcast(tensor_view const& x, int root, stream_type const& s) {
    inner->broadcast(x, root, s);
  }
  void barrier(stream_type const& s) { inner->barrier(s); }
};
static_assert(dist::Communicator<counting_communicator>);

// One step of the script: the requests and whether every position's logits come back.
struct step {
  std::vector<ds::request_step> reqs;
  bool all_positions = false;
};

std::vector<std::int32_t> tokens(std::int64_t n, std::uint32_t salt) {
  std::vector<std::int32_t> v(std::size_t(n), 0);
  for (std::int64_t i = 0; i < n; ++i) v[std::size_t(i)] = std::int32_t((salt + 37 * i) % 997 + 2);
  return v;
}

// Prefill (every position), a second prompt, decode steps, a prompt in two chunks, and a mixed
// batch: two decode rows, a chunk over a cached prefix and a fresh prompt. Tokens are fixed (not
// sampled) so that every world runs the same steps.
std::vector<step> script() {
  using rs = ds::request_step;
  std::vector<step> s;
  s.push_back({{rs{tokens(17, 11), 0, 0}}, true});
  s.push_back({{rs{tokens(9, 5), 0, 1}}});
  s.push_back({{rs{{41}, 17, 0}}});
  s.push_back({{rs{{43}, 18, 0}, rs{{47}, 9, 1}}});
  s.push_back({{rs{tokens(6, 3), 0, 2}}});
  s.push_back(
      {{rs{{53}, 19, 0}, rs{tokens(7, 13), 6, 2}, rs{{59}, 10, 1}, rs{tokens(12, 29), 0, 3}},
       true});
  return s;
}

// A model of one rank with its token pool; request r's positions at slots r * max_len + pos.
template <class Model>
class rank_model {
 public:
  static constexpr std::int64_t max_len = 64, max_requests = 4;

  template <class... Comm>
  rank_model(cpu& backend, ds::model_weights<cpu> const& w, ds::model_options const& o,
             Comm&... comm)
      : backend_(&backend), model_(backend, w, comm..., o) {
    std::int64_t const slots = max_len * max_requests;
    for (std::int64_t i = 0; i < w.config().num_hidden_layers; ++i) {
      pools_.emplace_back(backend, dtype::bf16, dims{slots, 576});
      std::memset(pools_.back().data(), 0xff, pools_.back().nbytes());  // NaN where unwritten
      pool_views_.push_back(pools_.back().view());
    }
    table_ = tensor<cpu>(backend, dtype::i32, {max_requests, max_len});
    auto* t = static_cast<std::int32_t*>(table_.data());
    for (std::int64_t i = 0; i < slots; ++i) t[i] = std::int32_t(i);
  }

  logits_rows forward(step const& s) {
    memory::cache_tensor_manager<cpu> mem(*backend_);
    kernels::gemm_context<cpu> gemm(*backend_);
    auto stream = backend_->make_stream();
    modules::deepseek::forward_context<cpu> ctx{*backend_, stream, gemm, mem};
    tensor_view const l = model_.forward(ctx, s.reqs, pool_views_, table_.view(), s.all_positions);
    logits_rows out;
    for (std::int64_t i = 0; i < l.size(0); ++i) {
      auto const* p = static_cast<float const*>(l.select(0, i).data());
      out.emplace_back(p, p + l.size(1));
    }
    return out;
  }

 private:
  cpu* backend_;
  Model model_;
  std::vector<tensor<cpu>> pools_;
  std::vector<tensor_view> pool_views_;
  tensor<cpu> table_;
};

using tp_model = ds::model<cpu, inproc_communicator>;

// Every step's logits of the script: [step][row][vocab].
using run_logits = std::vector<logits_rows>;

run_logits run_world1(std::filesystem::path const& ckpt, std::vector<step> const& steps) {
  cpu backend;
  auto const w = ds::load_weights(backend, ckpt);
  rank_model<ds::model<cpu>> m(backend, w, {rank_model<ds::model<cpu>>::max_len});
  run_logits out;
  for (step const& s : steps) out.push_back(m.forward(s));
  return out;
}

// The steps on `world` ranks; returns each rank's logits. Every rank must return the same bits:
// the in-process sums are deterministic and everything else is replicated.
run_logits run_tp(std::filesystem::path const& ckpt, int world, std::vector<step> const& steps,
                  ds::model_options o = {}) {
  std::vector<run_logits> out(static_cast<std::size_t>(world));
  o.max_positions = rank_model<tp_model>::max_len;
  within(hang_limit, [&] {
    dist::run_ranks(world, [&](inproc_communicator& comm) {
      cpu backend;
      ds::load_options lo;
      lo.shard = {comm.rank(), world};
      auto const w = ds::load_weights(backend, ckpt, lo);
      rank_model<tp_model> m(backend, w, o, comm);
      for (step const& s : steps) out[std::size_t(comm.rank())].push_back(m.forward(s));
    });
  });
  for (int k = 1; k < world; ++k)
    for (std::size_t s = 0; s < steps.size(); ++s)
      for (std::size_t r = 0; r < out[0][s].size(); ++r)
        EXPECT_TRUE(same_bits(out[std::size_t(k)][s][r], out[0][s][r]))
            << "rank " << k << " step " << s << " row " << r;
  return out[0];
}

std::filesystem::path write_tiny(temp_dir const& dir, char const* config, bool aligned_fp8,
                                 tools::weight_format format, bool heads16 = false) {
  tools::random_checkpoint_options o;
  o.config = aligned_fp8 ? derived_config(dir.path(), config, aligned_fp8_patch)
             : heads16   ? derived_config(dir.path(), config,
                                          {{"num_attention_heads", 16}, {"num_key_value_heads", 16}})
                         : config_path(config);
  o.out = dir.path() / "ckpt";
  o.format = format;
  o.seed = 7;
  tools::write_random_checkpoint(o);
  return o.out;
}

// Bounds on the relative L2 distance of each logit row from world 1 (seed 7, measured in
// parentheses). World 1 rounds each projection's fp32 sum to bf16 once; a bf16 all-reduce rounds
// every rank's partial and then the sum, so a layer's output moves by up to ~2^-8 of its partials,
// and a bf16 residual that lands on the other side of a rounding step carries a one-ulp change on
// (the mechanism of test_forward's chunked/batched bound, 3e-2). `bound` holds for every row but
// at most `max_outliers`; `bound_any` for all: on the tiny V3 (sigmoid router, near-tied scores)
// such a change can flip a token's expert choice, an isolated jump that the positions after it do
// not share (the same kind of jump as test_forward's 0.043 against transformers). Which rows jump
// depends on the exact fp32 sum order of the products, so the count is bounded, not the rows. With
// reduce_f32 the attention and dense MLP sums round once, as at world 1, and no jump shows. FP8:
// every activation is requantised to e4m3 per 128 columns, so a one-ulp change of a group's largest
// element moves its scale and every element of the group near a rounding step (2^-4 relative): the
// model's FP8 noise (0.11 against transformers in test_forward) is what any perturbation turns
// into. A misplaced shard, a missing or doubled reduction or a residual summed `world` times gives
// errors of order 1.
struct tp_case {
  char const* name;
  char const* config;
  int world;
  bool reduce_f32;
  bool aligned_fp8;  // FP8 weights that stay FP8 when split (aligned_fp8_patch)
  double bound;
  double bound_any;
  // 16 heads: world 1 runs V2's q_proj and kv_a as one GEMM (q_kv_a, no padded heads), a rank of
  // world 2 (8 heads, padded to 16) runs them apart through the same weight's row views.
  bool heads16 = false;
};

class ForwardTensorParallel : public ::testing::TestWithParam<tp_case> {};

TEST_P(ForwardTensorParallel, LogitsMatchTheUnshardedForward) {
  tp_case const& p = GetParam();
  temp_dir dir;
  auto const ckpt =
      write_tiny(dir, p.config, p.aligned_fp8,
                 p.aligned_fp8 ? tools::weight_format::fp8 : tools::weight_format::bf16, p.heads16);
  std::vector<step> const steps = script();
  run_logits const ref = run_world1(ckpt, steps);
  ds::model_options mo;
  mo.reduce_f32 = p.reduce_f32;
  run_logits const got = run_tp(ckpt, p.world, steps, mo);
  constexpr int max_outliers = 3;
  double worst = 0;
  std::vector<double> errors;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    ASSERT_EQ(got[s].size(), ref[s].size());
    for (std::size_t r = 0; r < ref[s].size(); ++r) {
      ASSERT_EQ(got[s][r].size(), ref[s][r].size()) << "row " << r << ": the full vocabulary";
      double const e = rel_l2(got[s][r], ref[s][r]);
      errors.push_back(e);
      worst = std::max(worst, e);
      EXPECT_LE(e, p.bound_any) << "row " << r;
      EXPECT_TRUE(
          std::all_of(got[s][r].begin(), got[s][r].end(), [](float x) { return std::isfinite(x); }))
          << "row " << r;
    }
  }
  std::sort(errors.rbegin(), errors.rend());
  double const rest = errors.size() > max_outliers ? errors[max_outliers] : 0.0;
  auto const outliers =
      std::count_if(errors.begin(), errors.end(), [&](double e) { return e > p.bound; });
  EXPECT_LE(rest, p.bound) << outliers << " rows past " << p.bound << "; allowed: " << max_outliers;
  std::cout << p.name << ": relative L2 against world 1 over " << errors.size() << " rows: worst "
            << worst << " (bound " << p.bound_any << "), " << outliers << " rows past " << p.bound
            << ", the rest at most " << rest << "\n";
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ForwardTensorParallel,
    ::testing::Values(
        // measured: worst 0.072, 2 rows past 2e-2
        tp_case{"v3_world2", "tiny_deepseek_v3.json", 2, false, false, 2e-2, 0.1},
        // measured: worst 0.063, 2 rows past 2e-2
        tp_case{"v3_world4", "tiny_deepseek_v3.json", 4, false, false, 2e-2, 0.1},
        // measured: 0.0048
        tp_case{"v3_world2_f32", "tiny_deepseek_v3.json", 2, true, false, 1e-2, 1e-2},
        // FP8 o_proj cannot write f32: its sum falls back to bf16. measured: worst 0.083
        tp_case{"v3_fp8_world2_f32", "tiny_deepseek_v3.json", 2, true, true, 6e-2, 0.12},
        // measured: 0.0087 and 0.0086
        tp_case{"v2_world2", "tiny_deepseek_v2.json", 2, false, false, 2e-2, 2e-2},
        tp_case{"v2_world4", "tiny_deepseek_v2.json", 4, false, false, 2e-2, 2e-2},
        tp_case{"v2_16heads_world2_f32", "tiny_deepseek_v2.json", 2, true, false, 1e-2, 1e-2,
                true}),
    [](auto const& i) { return std::string(i.param.name); });

// FP8 against transformers: tiny V3's FP8 checkpoint (o_proj and the dense MLP stay FP8 when
// split; the rest is dequantised at load) at worlds 2 and 4, every prompt position of the golden
// within test_forward's FP8 bound (0.15; world 1 measures 0.11): tensor parallelism keeps the
// forward as close to the reference as one rank is.
TEST(ForwardTensorParallel, Fp8PrefillMatchesTransformers) {
  constexpr double fp8_bound = 0.15;
  temp_dir dir;
  auto const ckpt = write_tiny(dir, "tiny_deepseek_v3.json", false, tools::weight_format::fp8);
  std::ifstream in(std::filesystem::path(LIGHTCORE_TEST_DATA_DIR) / "deepseek" /
                   "tiny_v3_fp8_golden.json");
  nlohmann::json const golden = nlohmann::json::parse(in);
  std::vector<step> steps;
  std::vector<logits_rows> want;
  std::int32_t row = 0;
  for (auto const& c : golden.at("cases")) {
    if (row == rank_model<tp_model>::max_requests) break;
    steps.push_back({{{c.at("prompt").get<std::vector<std::int32_t>>(), 0, row++}}, true});
    want.push_back(c.at("logits").get<logits_rows>());
  }
  ASSERT_FALSE(steps.empty());
  for (int world : {2, 4}) {
    run_logits const got = run_tp(ckpt, world, steps);
    double worst = 0;
    for (std::size_t s = 0; s < steps.size(); ++s) {
      ASSERT_EQ(got[s].size(), want[s].size());
      for (std::size_t p = 0; p < want[s].size(); ++p) {
        double const e = rel_l2(got[s][p], want[s][p]);
        worst = std::max(worst, e);
        EXPECT_LE(e, fp8_bound) << "world " << world << ", prompt " << s << ", position " << p;
      }
    }
    std::cout << "tiny V3 FP8 at world " << world << ": worst relative L2 against transformers "
              << worst << " (bound " << fp8_bound << ")\n";
  }
}

// logits_layout::vocab_shard gives each rank its own columns of the full logits, bit for bit.
TEST(ForwardTensorParallel, VocabShardedLogitsAreTheColumnsOfTheFullOnes) {
  temp_dir dir;
  tools::random_checkpoint_options o;
  o.config = config_path("tiny_deepseek_v3.json");
  o.out = dir.path();
  o.seed = 7;
  o.format = tools::weight_format::bf16;
  tools::write_random_checkpoint(o);
  int const world = 2;
  step const s{{{tokens(5, 17), 0, 0}, {tokens(8, 19), 0, 1}}, true};
  std::vector<logits_rows> full(world), part(world);
  std::vector<ds::vocab_range> ranges(world);
  within(hang_limit, [&] {
    dist::run_ranks(world, [&](inproc_communicator& comm) {
      cpu backend;
      auto const w = ds::load_weights(backend, dir.path(), {{comm.rank(), world}, {}, {}});
      ranges[std::size_t(comm.rank())] = w.vocab();
      ds::model_options mo{rank_model<tp_model>::max_len};
      rank_model<tp_model> a(backend, w, mo, comm);
      full[std::size_t(comm.rank())] = a.forward(s);
      mo.logits = ds::logits_layout::vocab_shard;
      rank_model<tp_model> b(backend, w, mo, comm);
      part[std::size_t(comm.rank())] = b.forward(s);
    });
  });
  for (int r = 0; r < world; ++r) {
    auto const& v = ranges[std::size_t(r)];
    ASSERT_EQ(part[std::size_t(r)].size(), 13u);
    for (std::size_t i = 0; i < part[std::size_t(r)].size(); ++i) {
      ASSERT_EQ(std::int64_t(part[std::size_t(r)][i].size()), v.size()) << "rank " << r;
      std::vector<float> const cols(full[0][i].begin() + v.start, full[0][i].begin() + v.end);
      EXPECT_TRUE(same_bits(part[std::size_t(r)][i], cols)) << "rank " << r << " row " << i;
    }
  }
}

// The MoE block of layer 1 on random inputs. Each rank's tensor_parallel result must be exactly
// the fp32 sum, rounded once, of the partials that the same rank computes with `local` on its
// shard (the in-process all-reduce's definition), from one all-reduce, shared experts included;
// and within bf16 rounding of the world-1 block.
struct moe_case {
  char const* name;
  char const* config;
  bool aligned_fp8;  // FP8 experts and an FP8 shared down projection
  bool fused;        // shared experts folded into the stack; else apart (FP8: output separate)
};

class MoeBlockTensorParallel : public ::testing::TestWithParam<moe_case> {};

TEST_P(MoeBlockTensorParallel, EqualsTheLocalBlockUpToTheRoundingOfThePartials) {
  moe_case const& p = GetParam();
  temp_dir dir;
  auto const config = p.aligned_fp8 ? derived_config(dir.path(), p.config, aligned_fp8_patch)
                                    : config_path(p.config);
  tools::random_checkpoint_options o;
  o.config = config;
  o.out = dir.path() / "ckpt";
  o.seed = 7;
  o.format = p.aligned_fp8 ? tools::weight_format::fp8 : tools::weight_format::bf16;
  tools::write_random_checkpoint(o);
  int const world = 2;
  std::int64_t const t = 37, layer = 1;

  cpu backend;
  ds::load_options lo;
  lo.layout.fuse_shared_experts = p.fused;
  auto const full = ds::load_weights(backend, dir.path() / "ckpt", lo);
  io::model_config const& c = full.config();
  std::int64_t const h = c.hidden_size;
  ASSERT_TRUE(full.layer(layer).moe.has_value());
  ds::moe_weights const& m = *full.layer(layer).moe;
  ASSERT_EQ(m.fused_shared, p.fused ? c.n_shared_experts : 0);
  ASSERT_EQ(m.shared.has_value(), !p.fused);
  ASSERT_EQ(m.gate_up.fp8(), p.aligned_fp8);
  bool const separate = !p.fused && m.shared->down.fp8();
  ASSERT_EQ(separate, p.aligned_fp8 && !p.fused)
      << "the case must exercise the shared output it names";
  auto rng = test_rng();
  std::vector<bf16> x = random_bf16(t * h, rng);
  tensor_view const xv(x.data(), dtype::bf16, {t, h});

  // out and shared_out as the forward lays them: [2, T, H], shared after out.
  auto run_block = [&](cpu& be, ds::model_weights<cpu> const& w, auto&& dispatch) {
    modules::deepseek::moe_experts_weights<cpu> const experts(be, *w.layer(layer).moe);
    memory::cache_tensor_manager<cpu> mem(be);
    kernels::gemm_context<cpu> gemm(be);
    auto stream = be.make_stream();
    modules::deepseek::forward_context<cpu> ctx{be, stream, gemm, mem};
    std::vector<bf16> out(std::size_t(2 * t * h), bf16(0.0f));
    tensor_view const ov(out.data(), dtype::bf16, {2, t, h});
    modules::deepseek::moe_block(ctx, c, *w.layer(layer).moe, experts, xv, ov.select(0, 0),
                                 ov.select(0, 1), dispatch);
    std::vector<float> f(out.size());
    for (std::size_t i = 0; i < out.size(); ++i) f[i] = float(out[i]);
    return f;
  };
  modules::deepseek::moe_dispatch::local world1;
  std::vector<float> const ref = run_block(backend, full, world1);

  std::vector<std::vector<float>> partial(world), got(world);
  std::vector<int> reduces(world);
  within(hang_limit, [&] {
    dist::run_ranks(world, [&](inproc_communicator& comm) {
      cpu be;
      ds::load_options rank_options = lo;
      rank_options.shard = {comm.rank(), world};
      auto const w = ds::load_weights(be, dir.path() / "ckpt", rank_options);
      modules::deepseek::moe_dispatch::local alone;
      partial[std::size_t(comm.rank())] = run_block(be, w, alone);
      counting_communicator counter{&comm};
      modules::deepseek::moe_dispatch::tensor_parallel<counting_communicator> tp(counter);
      got[std::size_t(comm.rank())] = run_block(be, w, tp);
      reduces[std::size_t(comm.rank())] = counter.all_reduces;
    });
  });
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(reduces[std::size_t(r)], 1) << "rank " << r << ": one all-reduce per block";
    EXPECT_TRUE(same_bits(got[std::size_t(r)], got[0])) << "rank " << r;
  }
  // The reduce: exactly the rank-order fp32 sum of the partials, rounded once.
  int bad = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    float const sum = float(bf16(partial[0][i] + partial[1][i]));
    if (got[0][i] != sum && ++bad <= 5)
      ADD_FAILURE() << "element " << i << ": " << got[0][i] << ", the ranks' sum is " << sum;
  }
  EXPECT_EQ(bad, 0);
  // Against world 1, which rounds each expert's product once: here each rank's part of it is
  // rounded, then the ranks' sum, and the routed sum cancels (its terms are larger than the
  // result), so elements near zero move most; over the whole output the relative L2 distance
  // measures about one bf16 ulp (2^-8 = 0.0039): measured 0.0029-0.0039. A lost shard, a missing
  // shared part or a doubled reduction give 0.3 and more.
  constexpr double block_bound = 1.5e-2;
  std::size_t const half = std::size_t(t * h);
  std::vector<float> const got_out(got[0].begin(), got[0].begin() + long(half)),
      ref_out(ref.begin(), ref.begin() + long(half));
  double const e_out = rel_l2(got_out, ref_out);
  EXPECT_LE(e_out, block_bound);
  double e_shared = 0;
  if (separate) {
    std::vector<float> const got_sh(got[0].begin() + long(half), got[0].end()),
        ref_sh(ref.begin() + long(half), ref.end());
    e_shared = rel_l2(got_sh, ref_sh);
    EXPECT_LE(e_shared, block_bound);
  } else {
    // Folded into out: shared_out untouched on both sides.
    EXPECT_TRUE(
        std::all_of(got[0].begin() + long(half), got[0].end(), [](float v) { return v == 0.0f; }));
  }
  std::cout << p.name << ": MoE block against world 1, relative L2 " << e_out << " (shared part "
            << e_shared << ", bound " << block_bound << ")\n";
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, MoeBlockTensorParallel,
    ::testing::Values(moe_case{"v3_bf16", "tiny_deepseek_v3.json", false, true},
                      moe_case{"v2_bf16", "tiny_deepseek_v2.json", false, true},
                      moe_case{"v2_bf16_apart", "tiny_deepseek_v2.json", false, false},
                      moe_case{"v3_fp8_aligned", "tiny_deepseek_v3.json", true, true},
                      moe_case{"v3_fp8_aligned_apart", "tiny_deepseek_v3.json", true, false}),
    [](auto const& i) { return std::string(i.param.name); });

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

TEST(ForwardTensorParallel, MismatchedShardsAreRefused) {
  cpu backend;
  auto const c = io::load_model_config(config_path("tiny_deepseek_v3.json"));
  // 4 heads do not split over 3 ranks: the loader names the field.
  expect_error(
      [&] {
        ds::dummy_weights(backend, c, {{0, 3}, 1, {}});
      },
      {"num_attention_heads", "world 3"});
  // Weights of world 1 under a communicator of world 2.
  auto const whole = ds::dummy_weights(backend, c, {{0, 1}, 1, {}});
  expect_error(
      [&] {
        dist::run_ranks(2, [&](inproc_communicator& comm) {
          cpu be;
          tp_model m(be, whole, comm);
        });
      },
      {"communicator is rank", "world 2", "weights are rank 0 of world 1"});
  // A shard without a communicator.
  auto const half = ds::dummy_weights(backend, c, {{1, 2}, 1, {}});
  expect_error([&] { ds::model<cpu> m(backend, half); },
               {"rank 1 of a tensor-parallel world of 2", "communicator"});
  // The communicator's rank must be the weights' rank.
  expect_error(
      [&] {
        dist::run_ranks(2, [&](inproc_communicator& comm) {
          cpu be;
          tp_model m(be, half, comm);  // rank 1's weights on rank 0 too
        });
      },
      {"communicator is rank 0 of world 2", "weights are rank 1 of world 2"});
  // Expert parallelism is declared, not implemented.
  expect_error(
      [&] {
        dist::run_ranks(1, [&](inproc_communicator& comm) {
          modules::deepseek::moe_dispatch::expert_parallel<inproc_communicator> ep(comm);
        });
      },
      {"expert_parallel", "not implemented yet"});
}

}  // namespace
}  // namespace lightcore::test
