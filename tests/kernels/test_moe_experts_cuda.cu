// moe_experts on the CUDA backend against the CPU reference: V2-Lite (E 64, top-6, H 2048,
// I 1408), R1 (E 256, top-8, H 7168, I 2048) and R1 at TP8 (I 256), T in {1, 3, 64, 257, 4096},
// bf16 and FP8, block_m 64 and 128; one expert taking every token, experts with none (routing to a
// subset; the weights of the others are NaN on the device, so reading them fails), ids of other
// ranks; row blocks whose routed rows end at and just past an m16 tile; outputs and workspace
// poisoned; alignment and experts captured together in a CUDA graph; the FP8 gate_up epilogue's
// quantisation of the intermediate, bit for bit against quantize_per_token_group's formulas.
// R1 at T 4096: the CPU reference runs on 64 sampled tokens (a token's output depends on its own
// inputs alone), to keep its time reasonable.
// The wgmma kernel (bf16 and FP8, block_m 64, from moe_experts_wgmma_min_tokens tokens): the T 257
// and 4096 cases above take it through the dispatch; below it is also forced, in both formats, at
// small T on every model shape, at T not a multiple of 64 with experts of 0, 1 and every token's
// rows, FP8 with items grouped by several pairs of one expert (the persistent kernel's dynamic
// order), in a graph, on a shape whose down GEMM falls back to mma.sync, against the mma.sync
// kernel on every token of R1 at T 4096, with parameters it must refuse, and its FP8 gate_up
// epilogue's quantisation bit for bit (in the mma.sync kernel's test).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "common/seed.hpp"
#include "kernels/moe/moe.hpp"
#include "kernels/moe/moe_experts.hpp"
#include "kernels/quant/quant_params.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "moe_experts_test_util.hpp"

namespace lightcore {
namespace {

using kernels::moe_weight_format;

// 0xFF bytes: bf16 and fp8 NaN, f32 NaN, i32 -1.
constexpr std::uint64_t poison = 0xFF;

// GPU against CPU: both accumulate in fp32 in different orders (~1e-6 relative), so a bf16
// rounding of gate/up/y flips now and then (one bf16 ulp, 0.4%), and in FP8 such a flip can move
// one fp8 code of the intermediate (an eighth of that element); spread over I-term sums these stay
// far below 1% of the rms. bf16 5e-3, FP8 1e-2 relative L2; 4% / 6% of rms per element. FP8 on
// wgmma: the e4m3 tensor cores' partial sums are less precise than fp32 ones (why they are
// promoted every 128 values of K), so bf16 roundings of gate/up flip more often, and when the
// flipped value is a group's amax its whole group is quantised with another scale: a token's
// output then moves on a few elements: up to 6.5% of the rms seen at R1-TP8 (T 257) and 10.3%
// on the H 384 / I 256 case (T 300); with I 256 a group is half of each output's down sum. So
// 15% where the wgmma kernel may run; a wrong scale, block or expert moves elements by the order
// of the rms, and the relative L2 bound stays 1e-2.
double rel_l2(moe_weight_format f) { return f == moe_weight_format::bf16 ? 5e-3 : 1e-2; }
double elem_tol(moe_weight_format f, bool wgmma) {
  return f == moe_weight_format::bf16 ? 0.04 : wgmma ? 0.15 : 0.06;
}

// Which grouped GEMM kernel runs: the dispatch's choice (the public entry point), or one forced
// through the threshold field of the params.
enum class gemm_kernel { dispatch, mma_sync, wgmma };

struct device_moe {
  tensor<backend::cuda> hidden, ids, weights, gate_up, down, gu_scales, dn_scales, out, ws;
  tensor<backend::cuda> counts, offsets, sorted, blocks, total, inverse;
  std::int64_t tokens, k, h, block_m;
  std::int64_t shared = 0;  // moe_expert_weights::shared: a prefetch hint only

  device_moe(backend::cuda& gpu, backend::cuda::stream_type const& stream, test::moe_inputs& in,
             std::int64_t bm)
      : tokens(in.tokens), k(in.shape.top_k), h(in.shape.hidden), block_m(bm) {
    auto const& s = in.shape;
    auto const cap = kernels::moe_align_capacity(tokens, k, s.experts, block_m);
    hidden = tensor<backend::cuda>(gpu, dtype::bf16, {tokens, h});
    ids = tensor<backend::cuda>(gpu, dtype::i32, {tokens, k});
    weights = tensor<backend::cuda>(gpu, dtype::f32, {tokens, k});
    out = tensor<backend::cuda>(gpu, dtype::bf16, {tokens, h});
    ws = tensor<backend::cuda>(gpu, dtype::u8,
                               {kernels::moe_experts_workspace_bytes(tokens, k, s.experts, block_m,
                                                                     h, s.inter, in.format)});
    counts = tensor<backend::cuda>(gpu, dtype::i32, {s.experts});
    offsets = tensor<backend::cuda>(gpu, dtype::i32, {s.experts + 1});
    sorted = tensor<backend::cuda>(gpu, dtype::i32, {cap.sorted_rows + 3 * block_m});
    blocks = tensor<backend::cuda>(gpu, dtype::i32, {cap.blocks + 3});
    total = tensor<backend::cuda>(gpu, dtype::i32, {1});
    inverse = tensor<backend::cuda>(gpu, dtype::i32, {tokens, k});
    gpu.copy(hidden.data(), in.hidden.data(), hidden.nbytes(), stream);
    gpu.copy(ids.data(), in.ids.data(), ids.nbytes(), stream);
    gpu.copy(weights.data(), in.weights.data(), weights.nbytes(), stream);
    // Weights: NaN everywhere, then the hit experts' slices.
    auto upload = [&](tensor<backend::cuda>& d, tensor<backend::cpu> const& hst) {
      d = tensor<backend::cuda>(gpu, hst.view().type(), hst.view().shape());
      gpu.fill(d.data(), d.nbytes(), 1, poison, stream);
      std::size_t const slice = d.nbytes() / std::size_t(s.experts);
      for (std::int32_t e : in.hit)
        gpu.copy(static_cast<std::uint8_t*>(d.data()) + e * slice,
                 static_cast<std::uint8_t const*>(hst.data()) + e * slice, slice, stream);
    };
    upload(gate_up, in.gate_up);
    upload(down, in.down);
    if (in.format == moe_weight_format::fp8_block) {
      upload(gu_scales, in.gate_up_scales);
      upload(dn_scales, in.down_scales);
    }
    gpu.fill(out.data(), out.nbytes(), 1, poison, stream);
    gpu.fill(ws.data(), ws.nbytes(), 1, poison, stream);
    for (auto* t : {&counts, &offsets, &sorted, &blocks, &total, &inverse})
      gpu.fill(t->data(), t->nbytes(), 1, poison, stream);
  }

  void enqueue(backend::cuda& gpu, moe_weight_format f, std::int64_t experts,
               backend::cuda::stream_type const& stream,
               gemm_kernel kernel = gemm_kernel::dispatch) {
    kernels::moe_align_outputs const a{counts, offsets, sorted, blocks, total, inverse};
    kernels::moe_align(gpu, ids, experts, block_m, a, stream);
    bool const fp8 = f == moe_weight_format::fp8_block;
    kernels::moe_expert_weights const w{gate_up, down, fp8 ? gu_scales.view() : tensor_view{},
                                        fp8 ? dn_scales.view() : tensor_view{}, shared};
    if (kernel == gemm_kernel::dispatch) {
      kernels::moe_experts(gpu, hidden, ids, weights, a, block_m, w, out, ws, stream);
      return;
    }
    kernels::moe_experts_params p = kernels::detail::make_moe_experts_params(
        gpu.where(), hidden, ids, weights, a, block_m, w, out, ws);
    p.wgmma_min_tokens = kernel == gemm_kernel::wgmma ? 1 : std::int64_t(1) << 40;
    p.gemv_max_tokens = 0;  // a forced grouped GEMM also at decode sizes
    kernels::detail::moe_experts_cuda(p, gpu.where().index, stream.get());
  }

  std::vector<bf16> download(backend::cuda& gpu, backend::cuda::stream_type const& stream) {
    std::vector<bf16> v(std::size_t(tokens * h));
    gpu.copy(v.data(), out.data(), out.nbytes(), stream);
    stream.synchronize();
    return v;
  }
};

// The CPU reference for `sample` tokens of `in` (all when sample >= T): their rows, routed alone.
std::vector<double> reference_rows(test::moe_inputs const& in,
                                   std::vector<std::int64_t> const& rows, std::int64_t block_m) {
  backend::cpu cpu;
  test::moe_inputs sub;
  sub.shape = in.shape;
  sub.tokens = std::int64_t(rows.size());
  sub.format = in.format;
  sub.hit = in.hit;
  std::int64_t const h = in.shape.hidden, k = in.shape.top_k;
  for (std::int64_t t : rows) {
    sub.hidden.insert(sub.hidden.end(), in.hidden.begin() + t * h, in.hidden.begin() + (t + 1) * h);
    sub.ids.insert(sub.ids.end(), in.ids.begin() + t * k, in.ids.begin() + (t + 1) * k);
    sub.weights.insert(sub.weights.end(), in.weights.begin() + t * k,
                       in.weights.begin() + (t + 1) * k);
  }
  // The weights are shared through views: moe_experts_on_cpu reads them through weight_views.
  auto const w = test::weight_views(in);
  std::vector<bf16> out(std::size_t(sub.tokens * h));
  auto a = test::align_on_cpu(sub.ids, sub.tokens, k, in.shape.experts, block_m);
  tensor<backend::cpu> ws(
      cpu, dtype::u8,
      {kernels::moe_experts_workspace_bytes(sub.tokens, k, in.shape.experts, block_m, h,
                                            in.shape.inter, in.format)});
  kernels::moe_experts(
      cpu, tensor_view(sub.hidden.data(), dtype::bf16, {sub.tokens, h}),
      tensor_view(sub.ids.data(), dtype::i32, {sub.tokens, k}),
      tensor_view(sub.weights.data(), dtype::f32, {sub.tokens, k}), a.views(sub.tokens, k), block_m,
      w, tensor_view(out.data(), dtype::bf16, {sub.tokens, h}), ws.view(), cpu.make_stream());
  return test::widen(out);
}

struct gpu_case {
  int model;  // 0 V2-Lite, 1 R1, 2 R1-TP8
  std::int64_t tokens;
  moe_weight_format format;
};

test::moe_shape shape_of(int model) {
  return model == 0 ? test::v2_lite_shape : model == 1 ? test::r1_shape : test::r1_tp8_shape;
}

// Expert in.hit.back() keeps a single row (one of token 0's slots) and leaves every other token's
// choice, replaced there by a hit expert the token does not use yet.
void keep_one_row_of_last_expert(test::moe_inputs& in) {
  std::int64_t const k = in.shape.top_k;
  std::int32_t const single = in.hit.back();
  for (std::int64_t t = 0; t < in.tokens; ++t) {
    auto* const ids = in.ids.data() + t * k;
    auto* const at = std::find(ids, ids + k, single);
    if (t == 0) {
      // Not the slot of an all-to-one expert (hit[0]).
      if (at == ids + k) *(ids[0] == in.hit[0] ? ids + 1 : ids) = single;
      continue;
    }
    if (at == ids + k) continue;
    for (std::int32_t e : in.hit)
      if (e != single && std::find(ids, ids + k, e) == ids + k) {
        *at = e;
        break;
      }
  }
  ASSERT_EQ(std::count(in.ids.begin(), in.ids.end(), single), 1);
}

struct check_opts {
  gemm_kernel kernel = gemm_kernel::dispatch;
  bool one_row_expert = false;  // keep_one_row_of_last_expert
  std::int64_t sample = 0;      // tokens checked against the CPU (0: the default rule below)
  std::int64_t shared = 0;      // the hint that the stack's last experts are shared
};

void check(test::moe_shape shape, std::int64_t tokens, moe_weight_format f, std::int64_t hit,
           bool all_to_one, std::int64_t block_m, bool graph, bool other_ranks = false,
           check_opts const& o = {}) {
  SCOPED_TRACE(::testing::Message()
               << "E " << shape.experts << ", top-" << shape.top_k << ", H " << shape.hidden
               << ", I " << shape.inter << ", T " << tokens
               << (f == moe_weight_format::bf16 ? ", bf16" : ", fp8") << ", hit " << hit
               << ", block_m " << block_m << (all_to_one ? ", one expert takes all" : "")
               << (graph ? ", graph" : "")
               << (o.kernel == gemm_kernel::wgmma      ? ", wgmma forced"
                   : o.kernel == gemm_kernel::mma_sync ? ", mma.sync forced"
                                                       : "")
               << (o.one_row_expert ? ", an expert with one row" : "") << ", shared hint "
               << o.shared);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto in = test::make_moe_inputs(shape, tokens, f, hit, all_to_one, rng);
  if (other_ranks)
    for (std::size_t r = 1; r < in.ids.size(); r += 5) in.ids[r] = -1;
  if (o.one_row_expert) keep_one_row_of_last_expert(in);
  device_moe d(gpu, stream, in, block_m);
  d.shared = o.shared;
  test::run_maybe_in_graph(stream, graph,
                           [&] { d.enqueue(gpu, f, shape.experts, stream, o.kernel); });
  auto const got = d.download(gpu, stream);
  // The CPU reference on at most 64 tokens for R1's full size at large T (or on o.sample tokens),
  // else on all of them.
  std::vector<std::int64_t> rows(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) rows[std::size_t(t)] = t;
  std::int64_t const sample =
      o.sample > 0 ? o.sample
                   : (shape.inter >= 2048 && shape.hidden >= 7168 && tokens > 257 ? 64 : tokens);
  if (sample < tokens) {
    std::shuffle(rows.begin() + 1, rows.end() - 1, rng);  // keep the first and last token
    rows.resize(std::size_t(sample - 1));
    rows.push_back(tokens - 1);
  }
  auto const want = reference_rows(in, rows, block_m);
  std::vector<bf16> picked;
  for (std::int64_t t : rows)
    picked.insert(picked.end(), got.begin() + t * shape.hidden,
                  got.begin() + (t + 1) * shape.hidden);
  // The wgmma kernel runs when forced, or through the dispatch from its threshold at block_m 64.
  bool const wgmma = o.kernel == gemm_kernel::wgmma ||
                     (o.kernel == gemm_kernel::dispatch &&
                      tokens >= kernels::moe_experts_wgmma_min_tokens && block_m == 64);
  test::expect_close(picked, want, rel_l2(f), elem_tol(f, wgmma), shape.hidden);
  // Sampled or not, every element of the GPU's output must have been written.
  std::int64_t unwritten = 0;
  for (bf16 v : got) unwritten += std::isnan(float(v)) ? 1 : 0;
  EXPECT_EQ(unwritten, 0);
}

class MoeExpertsCuda : public test::cuda_test, public ::testing::WithParamInterface<gpu_case> {};

// Experts hit: all of V2-Lite's 64; 24 of R1's 256 (R1's weights are 22 GB in bf16; the
// experts not hit stay NaN).
TEST_P(MoeExpertsCuda, MatchesCpuReference) {
  auto const c = GetParam();
  auto const shape = shape_of(c.model);
  check(shape, c.tokens, c.format, c.model == 0 ? shape.experts : 24, false, 64, false);
}

std::vector<gpu_case> gpu_cases() {
  std::vector<gpu_case> v;
  for (int model : {0, 1, 2})
    for (std::int64_t t : {1, 3, 64, 257, 4096})
      for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block})
        v.push_back({model, t, f});
  return v;
}

std::string case_name(::testing::TestParamInfo<gpu_case> const& i) {
  std::string const model = i.param.model == 0 ? "V2Lite" : i.param.model == 1 ? "R1" : "R1TP8";
  return model + "_T" + std::to_string(i.param.tokens) +
         (i.param.format == moe_weight_format::bf16 ? "_bf16" : "_fp8");
}

INSTANTIATE_TEST_SUITE_P(Models, MoeExpertsCuda, ::testing::ValuesIn(gpu_cases()), case_name);

class MoeExpertsCudaCases : public test::cuda_test {};

TEST_F(MoeExpertsCudaCases, OneExpertTakesEveryToken) {
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block})
    check(test::v2_lite_shape, 257, f, 64, true, 64, false);
}

TEST_F(MoeExpertsCudaCases, FewExpertsHitBlockM128) {
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block})
    check(test::r1_tp8_shape, 257, f, 8, false, 128, false);
}

// The mma.sync kernel multiplies only the m16 row tiles that hold a routed row: one expert taking
// every token fills 17 (a second tile with one row) and 33 rows of its block (block_m 64) or 80
// rows (block_m 128: the second warp row's first tile), while the others' blocks hold a few.
TEST_F(MoeExpertsCudaCases, RowTilesAtTheirBoundaries) {
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block}) {
    for (std::int64_t t : {17, 33}) check(test::v2_lite_shape, t, f, 16, true, 64, false);
    check(test::r1_tp8_shape, 80, f, 24, true, 128, false);
  }
}

TEST_F(MoeExpertsCudaCases, OtherRanksExpertsAddNothing) {
  check(test::v2_lite_shape, 64, moe_weight_format::bf16, 64, false, 64, false, true);
}

TEST_F(MoeExpertsCudaCases, CapturedInAGraph) {
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block}) {
    check(test::v2_lite_shape, 64, f, 64, false, 64, true);
    check(test::r1_tp8_shape, 3, f, 24, false, 128, true);
  }
}

// Batches of at most 4 tokens (bf16) take the weight-streaming kernels (moe_gemv.cuh), which
// read the first 1 (T = 1) or 4 rows of every block: each T, both block heights, an expert taking
// every token (4 rows in its block), one with a single row among others of several, other ranks'
// slots, and a graph.
TEST_F(MoeExpertsCudaCases, FourTokensOrFewerStreamTheWeights) {
  auto const bf = moe_weight_format::bf16;
  for (std::int64_t t : {1, 2, 3, 4}) {
    check(test::v2_lite_shape, t, bf, 64, false, 64, false);
    check(test::r1_tp8_shape, t, bf, 24, false, 128, t == 2);
    check(test::v2_lite_shape, t, bf, 16, true, 64, t == 4);
  }
  check(test::v2_lite_shape, 4, bf, 64, false, 64, false, true);
  check(test::r1_tp8_shape, 4, bf, 24, false, 64, false, false,
        check_opts{gemm_kernel::dispatch, true, 0});
  // The shared-experts hint moves only a prefetch: with it, experts hit or not, the same result.
  for (std::int64_t t : {1, 3})
    check(test::v2_lite_shape, t, bf, 64, false, 64, t == 3, false,
          check_opts{gemm_kernel::dispatch, false, 0, 2});
  check(test::r1_tp8_shape, 2, bf, 24, false, 64, false, false,
        check_opts{gemm_kernel::dispatch, false, 0, test::r1_tp8_shape.experts});
}

// The same inputs through the weight-streaming kernels and through the grouped GEMM agree to the
// bf16 rounding of gate, up and y (their fp32 sums differ only in order).
TEST_F(MoeExpertsCudaCases, StreamingKernelsAgreeWithTheGroupedGemm) {
  for (std::int64_t t : {1, 4}) {
    SCOPED_TRACE(::testing::Message() << "T " << t);
    backend::cuda gpu(0);
    auto const stream = gpu.make_stream();
    auto rng = test::test_rng();
    auto in =
        test::make_moe_inputs(test::v2_lite_shape, t, moe_weight_format::bf16, 64, false, rng);
    device_moe d(gpu, stream, in, 64);
    d.enqueue(gpu, moe_weight_format::bf16, test::v2_lite_shape.experts, stream);
    auto const streamed = d.download(gpu, stream);
    // Poisoned again, so that a grouped GEMM that wrote nothing cannot pass on the first run's
    // output.
    gpu.fill(d.out.data(), d.out.nbytes(), 1, poison, stream);
    gpu.fill(d.ws.data(), d.ws.nbytes(), 1, poison, stream);
    d.enqueue(gpu, moe_weight_format::bf16, test::v2_lite_shape.experts, stream,
              gemm_kernel::mma_sync);
    auto const grouped = d.download(gpu, stream);
    test::expect_close(streamed, test::widen(grouped), 5e-3, 0.04, test::v2_lite_shape.hidden);
  }
}

// FP8 gate_up quantises the intermediate in its epilogue, across the two CTAs of a 128-column
// group: its codes and scales must be exactly what quantize_per_token_group's formulas give for
// the bf16 intermediate. Inputs whose products and sums are exact in fp32 in any order (small
// integer codes, power-of-two scales) make the bf16 kernel's intermediate, on the same weights
// widened, bit-identical to the one the FP8 kernel quantised; the host quantises that one.
// E 2, I 256 (two groups: two clusters), H 256 (two K blocks of different scales), 20 tokens,
// top-2: each expert's block holds 20 routed rows (m16 tiles 0 and 1) and 44 of padding.
TEST_F(MoeExpertsCudaCases, Fp8GateUpEpilogueQuantisesAsQuantizePerTokenGroup) {
  constexpr std::int64_t experts = 2, inter = 256, h = 256, tokens = 20, k = 2, block_m = 64;
  constexpr std::int64_t rows = tokens * k, sorted = experts * block_m, groups = inter / 128;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  std::uniform_int_distribution<int> code(-3, 3), shift(0, 2);
  // x: codes and per-token-group scales; w: [E, 2I, H] codes and [E, 2I / 128, H / 128] scales.
  std::vector<fp8_e4m3> xq(std::size_t(tokens * h)), wq(std::size_t(experts * 2 * inter * h));
  std::vector<float> xs(std::size_t(tokens * (h / 128))), ws(std::size_t(experts * 2 * groups * 2));
  for (auto& c : xq) c = fp8_e4m3(float(code(rng)));
  for (auto& c : wq) c = fp8_e4m3(float(code(rng)));
  for (auto& v : xs) v = std::ldexp(1.0f, -1 - shift(rng));
  for (auto& v : ws) v = std::ldexp(1.0f, -4 - shift(rng));
  // The same values widened to bf16 (exact: at most 2 significant bits times a power of two).
  std::vector<bf16> xb(xq.size()), wb(wq.size());
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t j = 0; j < h; ++j)
      xb[std::size_t(t * h + j)] =
          bf16(float(xq[std::size_t(t * h + j)]) * xs[std::size_t(t * (h / 128) + j / 128)]);
  for (std::int64_t e = 0; e < experts; ++e)
    for (std::int64_t r = 0; r < 2 * inter; ++r)
      for (std::int64_t j = 0; j < h; ++j) {
        std::size_t const at = std::size_t((e * 2 * inter + r) * h + j);
        wb[at] = bf16(float(wq[at]) * ws[std::size_t(((e * 2 * groups) + r / 128) * 2 + j / 128)]);
      }
  // Row r = t * 2 + slot goes to expert r % 2: block e holds expert e's 20 rows, then padding.
  std::vector<std::int32_t> sorted_ids(static_cast<std::size_t>(sorted), std::int32_t{rows});
  for (std::int64_t r = 0; r < rows; ++r)
    sorted_ids[std::size_t((r % 2) * block_m + r / 2)] = std::int32_t(r);
  std::vector<std::int32_t> const expert_of_block{0, 1};

  auto upload = [&](auto const& host, dtype type, dims shape) {
    tensor<backend::cuda> d(gpu, type, shape);
    gpu.copy(d.data(), host.data(), d.nbytes(), stream);
    return d;
  };
  auto const d_xq = upload(xq, dtype::fp8_e4m3, {tokens, h});
  auto const d_xs = upload(xs, dtype::f32, {tokens, h / 128});
  auto const d_wq = upload(wq, dtype::fp8_e4m3, {experts, 2 * inter, h});
  auto const d_ws = upload(ws, dtype::f32, {experts, 2 * groups, 2});
  auto const d_xb = upload(xb, dtype::bf16, {tokens, h});
  auto const d_wb = upload(wb, dtype::bf16, {experts, 2 * inter, h});
  auto const d_ids = upload(sorted_ids, dtype::i32, {sorted});
  auto const d_blocks = upload(expert_of_block, dtype::i32, {experts});
  tensor<backend::cuda> codes(gpu, dtype::u8, {sorted, inter});
  tensor<backend::cuda> scales(gpu, dtype::f32, {sorted, groups});
  tensor<backend::cuda> a(gpu, dtype::bf16, {sorted, inter});
  for (auto* t : {&codes, &scales, &a}) gpu.fill(t->data(), t->nbytes(), 1, poison, stream);

  kernels::moe_grouped_gemm_params p;
  p.sorted_ids = static_cast<std::int32_t const*>(d_ids.data());
  p.expert_of_block = static_cast<std::int32_t const*>(d_blocks.data());
  p.rows = rows;
  p.top_k = k;
  p.n = inter;
  p.k = h;
  p.blocks = experts;
  p.experts = experts;
  p.ldo = inter;
  kernels::moe_grouped_gemm_params q = p;
  p.a = d_xb.data();
  p.lda = h;
  p.w = d_wb.data();
  p.out = a.data();
  using kernels::moe_gemm_stage;
  kernels::detail::launch_moe_grouped_gemm<moe_gemm_stage::gate_up, false, 64, false>(p,
                                                                                      stream.get());
  q.a = d_xq.data();
  q.lda = h;
  q.a_scales = static_cast<float const*>(d_xs.data());
  q.a_scales_ld = h / 128;
  q.w = d_wq.data();
  q.w_scales = static_cast<float const*>(d_ws.data());
  q.w_scales_ld = 2;
  q.out = codes.data();
  q.out_scales = static_cast<float*>(scales.data());
  q.out_scales_ld = groups;
  kernels::detail::launch_moe_grouped_gemm<moe_gemm_stage::gate_up, true, 64, false>(q,
                                                                                     stream.get());

  auto const verify = [&](char const* kernel) {
    SCOPED_TRACE(kernel);
    std::vector<bf16> host_a(std::size_t(sorted * inter));
    std::vector<std::uint8_t> host_codes(std::size_t(sorted * inter));
    std::vector<float> host_scales(std::size_t(sorted * groups));
    gpu.copy(host_a.data(), a.data(), a.nbytes(), stream);
    gpu.copy(host_codes.data(), codes.data(), codes.nbytes(), stream);
    gpu.copy(host_scales.data(), scales.data(), scales.nbytes(), stream);
    stream.synchronize();
    std::int64_t nonzero = 0, wrong_codes = 0, wrong_scales = 0;
    for (std::int64_t pos = 0; pos < sorted; ++pos) {
      if (sorted_ids[std::size_t(pos)] >= rows) continue;  // padding: left unwritten
      for (std::int64_t grp = 0; grp < groups; ++grp) {
        float amax = 0.0f;
        for (std::int64_t j = grp * 128; j < (grp + 1) * 128; ++j)
          amax = kernels::quant_amax(amax, float(host_a[std::size_t(pos * inter + j)]));
        float const scale = kernels::quant_group_scale(amax);
        float const inverse = kernels::quant_inverse_scale(scale);
        wrong_scales += host_scales[std::size_t(pos * groups + grp)] != scale ? 1 : 0;
        for (std::int64_t j = grp * 128; j < (grp + 1) * 128; ++j) {
          float const v = float(host_a[std::size_t(pos * inter + j)]);
          nonzero += v != 0.0f ? 1 : 0;
          std::uint8_t const want = kernels::quant_value<fp8_e4m3>(v, inverse).bits;
          wrong_codes += host_codes[std::size_t(pos * inter + j)] != want ? 1 : 0;
        }
      }
    }
    EXPECT_GT(nonzero, rows * inter / 2);  // the intermediate is not trivially zero
    EXPECT_EQ(wrong_scales, 0);
    EXPECT_EQ(wrong_codes, 0);
  };
  verify("mma.sync");
  // The wgmma kernels on the same inputs (each expert's block is a lone item: 20 routed rows).
  for (auto* t : {&codes, &scales, &a}) gpu.fill(t->data(), t->nbytes(), 1, poison, stream);
  kernels::detail::launch_moe_grouped_gemm_wgmma<moe_gemm_stage::gate_up, 64, 128>(p, stream.get());
  kernels::detail::launch_moe_grouped_gemm_wgmma_fp8<moe_gemm_stage::gate_up>(q, stream.get());
  verify("wgmma");

  // Without somewhere to put the scales, the FP8 gate_up launchers refuse.
  q.out_scales = nullptr;
  try {
    kernels::detail::launch_moe_grouped_gemm<moe_gemm_stage::gate_up, true, 64, false>(
        q, stream.get());
    ADD_FAILURE() << "no error without out_scales";
  } catch (std::exception const& e) {
    EXPECT_NE(std::string(e.what()).find("out_scales"), std::string::npos) << e.what();
  }
  try {
    kernels::detail::launch_moe_grouped_gemm_wgmma_fp8<moe_gemm_stage::gate_up>(q, stream.get());
    ADD_FAILURE() << "no error without out_scales (wgmma)";
  } catch (std::exception const& e) {
    EXPECT_NE(std::string(e.what()).find("out_scales"), std::string::npos) << e.what();
  }
}

class MoeExpertsCudaWgmma : public test::cuda_test {};

// Forced at sizes the dispatch gives to mma.sync: every model shape, one to a few row blocks per
// expert (lone blocks of a 128-row tile), R1-TP8's down GEMM has K 256: fewer K stages than the
// ring holds.
TEST_F(MoeExpertsCudaWgmma, ForcedOnEveryModelShape) {
  check_opts const o{gemm_kernel::wgmma};
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block}) {
    for (std::int64_t t : {1, 3, 64, 257})
      check(test::v2_lite_shape, t, f, 64, false, 64, false, false, o);
    check(test::r1_tp8_shape, 257, f, 24, false, 64, false, false, o);
    check(test::r1_shape, 64, f, 24, false, 64, false, false, o);
  }
}

// T not a multiple of 64, one expert taking every token (T rows: many blocks, the last one
// partial), one expert with a single row, most experts with none (their weights NaN); experts
// with odd and even block counts (V2-Lite: ~6 blocks each, R1-TP8: ~5).
TEST_F(MoeExpertsCudaWgmma, RaggedTokensAndExpertsOfZeroOneAndEveryRow) {
  for (auto fmt : {moe_weight_format::bf16, moe_weight_format::fp8_block}) {
    check_opts const f{gemm_kernel::wgmma, true, 96};
    check(test::v2_lite_shape, 1000, fmt, 16, true, 64, false, false, f);
    check(test::r1_tp8_shape, 777, fmt, 24, true, 64, false, false, f);
    // Through the dispatch: from the threshold on, block_m 64 takes the wgmma kernel.
    check_opts const o{gemm_kernel::dispatch, true, 96};
    check(test::v2_lite_shape, kernels::moe_experts_wgmma_min_tokens + 77, fmt, 16, true, 64, false,
          false, o);
    // Other ranks' ids (-1) in the same batch.
    check(test::v2_lite_shape, 1100, fmt, 64, false, 64, false, true, o);
  }
}

// FP8 from ~64 routed rows per expert on average takes its items in groups of 2-4 pairs of one
// expert (their tiles neighbours in the dynamic order): V2-Lite at T 3000 and 4000 averages 281
// and 375 rows per expert, groups of 3 and 4 pairs; of the 16 hit experts one takes every token
// (47 and 63 blocks), one a single row (a group of one lone block), the others ~16 and ~21
// blocks (groups lacking pairs, lone last blocks).
TEST_F(MoeExpertsCudaWgmma, Fp8GroupsOfSeveralPairsOfOneExpert) {
  check_opts const o{gemm_kernel::wgmma, true, 96};
  for (std::int64_t t : {3000, 4000})
    check(test::v2_lite_shape, t, moe_weight_format::fp8_block, 16, true, 64, false, false, o);
}

TEST_F(MoeExpertsCudaWgmma, CapturedInAGraph) {
  check_opts const o{gemm_kernel::dispatch, false, 64};
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block})
    check(test::v2_lite_shape, kernels::moe_experts_wgmma_min_tokens + 5, f, 64, false, 64, true,
          false, o);
}

// H 384 is no multiple of the down kernel's 256 columns: gate_up runs on wgmma, down on mma.sync
// (FP8: reading the codes and scales the wgmma epilogue quantised).
TEST_F(MoeExpertsCudaWgmma, DownFallsBackWhereHiddenIsNotAMultipleOf256) {
  test::moe_shape const small{8, 2, 384, 256};
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block})
    check(small, 300, f, 8, false, 64, false, false, check_opts{gemm_kernel::wgmma});
}

// Every token of R1 at T 4096: the two kernels agree within the tolerances each meets against the
// CPU reference (both sum in fp32, in different orders), and the wgmma output has no NaN.
TEST_F(MoeExpertsCudaWgmma, AgreesWithMmaSyncOnEveryTokenOfR1) {
  auto const shape = test::r1_shape;
  std::int64_t const tokens = 4096;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  for (auto f : {moe_weight_format::bf16, moe_weight_format::fp8_block}) {
    SCOPED_TRACE(f == moe_weight_format::bf16 ? "bf16" : "fp8");
    auto rng = test::test_rng();
    auto in = test::make_moe_inputs(shape, tokens, f, 24, false, rng);
    device_moe d(gpu, stream, in, 64);
    d.enqueue(gpu, f, shape.experts, stream, gemm_kernel::mma_sync);
    auto const want = test::widen(d.download(gpu, stream));
    gpu.fill(d.out.data(), d.out.nbytes(), 1, poison, stream);
    gpu.fill(d.ws.data(), d.ws.nbytes(), 1, poison, stream);
    d.enqueue(gpu, f, shape.experts, stream, gemm_kernel::wgmma);
    auto const got = d.download(gpu, stream);
    test::expect_close(got, want, rel_l2(f), elem_tol(f, true), shape.hidden);
  }
}

// The launcher refuses what its tiles cannot cover, saying what is allowed.
TEST_F(MoeExpertsCudaWgmma, RefusesShapesItsTilesCannotCover) {
  kernels::moe_grouped_gemm_params p;
  p.n = 384;  // down tiles are 256 columns wide
  p.k = 512;
  p.experts = 4;
  p.blocks = 1;
  p.lda = 512;
  auto const message_of = [](auto&& launch) -> std::string {
    try {
      launch();
    } catch (std::exception const& e) {
      return e.what();
    }
    return "no error";
  };
  using kernels::moe_gemm_stage;
  std::string m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma<moe_gemm_stage::down, 64, 128>(p, nullptr);
  });
  EXPECT_NE(m.find("multiple of 256"), std::string::npos) << m;
  p.n = 256;
  p.k = 100;  // not a whole number of 64-value stages
  m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma<moe_gemm_stage::gate_up, 64, 128>(p, nullptr);
  });
  EXPECT_NE(m.find("of 64"), std::string::npos) << m;
  p.k = 512;
  p.experts = 0;  // the tensor map needs the weights' extent
  m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma<moe_gemm_stage::gate_up, 64, 128>(p, nullptr);
  });
  EXPECT_NE(m.find("experts > 0"), std::string::npos) << m;
  p.experts = 4;
  p.lda = 500;  // rows must stay 16-byte aligned for the 16-byte copies
  m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma<moe_gemm_stage::gate_up, 64, 128>(p, nullptr);
  });
  EXPECT_NE(m.find("multiple of 8"), std::string::npos) << m;
  // FP8: 128-value stages, and the block scales are required.
  p.lda = 512;
  p.k = 192;
  m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma_fp8<moe_gemm_stage::down>(p, nullptr);
  });
  EXPECT_NE(m.find("of 128"), std::string::npos) << m;
  p.k = 512;
  m = message_of([&] {
    kernels::detail::launch_moe_grouped_gemm_wgmma_fp8<moe_gemm_stage::down>(p, nullptr);
  });
  EXPECT_NE(m.find("block scales"), std::string::npos) << m;
}

}  // namespace
}  // namespace lightcore
