// The MoE block of one layer run on its own (routing, experts, shared experts) on any backend,
// for the checks that shared experts folded into the expert stack compute what the separate
// shared MLP computes.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "forward_test_util.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/tensor.hpp"
#include "models/deepseek_v3/model.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {

// out [T, H] of the MoE block of `layer` for x [T, H] (bf16 on the host), with the shared
// experts' separate output (FP8 shared down projections kept apart) added in fp32: what the
// forward adds to the residual.
template <Backend B>
std::vector<float> moe_block_output(B& backend, ds::model_weights<B> const& w, std::int64_t layer,
                                    std::vector<bf16> const& x) {
  io::model_config const& c = w.config();
  std::int64_t const h = c.hidden_size, t = std::int64_t(x.size()) / h;
  auto stream = backend.make_stream();
  tensor<B> xd(backend, dtype::bf16, {t, h}), out(backend, dtype::bf16, {2, t, h});
  backend.copy(xd.data(), x.data(), x.size() * sizeof(bf16), stream);
  backend.fill(out.data(), out.nbytes(), 1, 0, stream);
  modules::deepseek::moe_experts_weights<B> const experts(backend, *w.layer(layer).moe);
  memory::cache_tensor_manager<B> mem(backend);
  kernels::gemm_context<B> gemm(backend);
  modules::deepseek::forward_context<B> ctx{backend, stream, gemm, mem};
  modules::deepseek::moe_block(ctx, c, *w.layer(layer).moe, experts, xd.view(),
                               out.view().select(0, 0), out.view().select(0, 1));
  std::vector<bf16> host(std::size_t(2 * t * h));
  backend.copy(host.data(), out.data(), out.nbytes(), stream);
  stream.synchronize();
  std::vector<float> sum(std::size_t(t * h));
  for (std::size_t i = 0; i < sum.size(); ++i)
    sum[i] = float(host[i]) + float(host[i + sum.size()]);
  return sum;
}

inline std::vector<bf16> moe_block_input(std::int64_t t, std::int64_t h, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bf16> x(std::size_t(t * h));
  for (auto& v : x) v = bf16(normal(rng));
  return x;
}

// The configs the fold must hold for: one shared expert (V3) and two (V2), bf16; FP8 with block
// shapes the FP8 GEMMs take (its apart form writes the shared output separately).
struct moe_fold_case {
  char const* name;
  char const* config;
  bool fp8;
};
inline std::vector<moe_fold_case> moe_fold_cases() {
  return {{"v3_bf16", "tiny_deepseek_v3.json", false},
          {"v2_bf16", "tiny_deepseek_v2.json", false},
          {"v3_fp8", "tiny_deepseek_v3.json", true}};
}

// Writes the case's random checkpoint under `dir` and returns its path.
inline std::filesystem::path moe_fold_checkpoint(moe_fold_case const& k,
                                                 std::filesystem::path const& dir) {
  tools::random_checkpoint_options o;
  o.config = k.fp8 ? derived_config(dir, k.config, aligned_fp8_patch) : config_path(k.config);
  o.out = dir / "ckpt";
  o.seed = 11;
  o.format = k.fp8 ? tools::weight_format::fp8 : tools::weight_format::bf16;
  tools::write_random_checkpoint(o);
  return o.out;
}

// The same checkpoint loaded with the shared experts folded and apart must give the same block
// output up to bf16 rounding: the fold sums the shared product with the routed ones in fp32 and
// rounds once, the apart form rounds the shared MLP's activation before its down projection
// (measured ~3e-3 relative L2; a lost or misplaced part of the shared MLP gives 0.1 and more).
inline constexpr double moe_fold_bound = 1e-2;

template <Backend B>
void expect_fold_matches_apart(B& backend, moe_fold_case const& k) {
  SCOPED_TRACE(k.name);
  temp_dir dir;
  auto const ckpt = moe_fold_checkpoint(k, dir.path());
  ds::load_options fold, apart;
  apart.layout.fuse_shared_experts = false;
  auto const wf = ds::load_weights(backend, ckpt, fold);
  auto const wa = ds::load_weights(backend, ckpt, apart);
  std::int64_t const layer = 1, h = wf.config().hidden_size;
  ASSERT_TRUE(wf.layer(layer).moe && wf.layer(layer).moe->fused_shared > 0);
  ASSERT_TRUE(wa.layer(layer).moe && wa.layer(layer).moe->shared);
  for (std::int64_t t : {1, 7, 300}) {
    auto const x = moe_block_input(t, h, 100 + std::uint64_t(t));
    std::vector<float> const folded = moe_block_output(backend, wf, layer, x);
    double const e = rel_l2(folded.data(), moe_block_output(backend, wa, layer, x));
    EXPECT_LE(e, moe_fold_bound) << "T " << t;
    std::cout << k.name << " T " << t << ": folded against apart, relative L2 " << e << "\n";
  }
}

}  // namespace lightcore::test
