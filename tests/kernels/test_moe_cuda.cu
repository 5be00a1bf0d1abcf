// moe_route and moe_align on the CUDA backend against the CPU references: fresh random gate
// logits for DeepSeek-V3/R1, V2, V2-Lite and odd shapes (groups that are not whole runs of
// lanes), 1 to 8192 tokens, packed and padded logit rows; ties, the bias that only chooses, HF's
// zero-masking of dropped groups; alignment bit for bit (random routing, one expert taking every
// token, experts with none, ids of other ranks, no tokens) into poisoned buffers longer than
// needed; routing and alignment captured together in a CUDA graph.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/cuda.hpp"
#include "common/seed.hpp"
#include "convert_test_util.hpp"
#include "kernels/moe/moe.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "moe_test_util.hpp"

namespace lightcore {
namespace {

using kernels::moe_align_capacity;
using kernels::moe_align_outputs;
using kernels::moe_group_select;
using kernels::moe_routing_config;
using kernels::moe_scoring;

// 0xFF bytes: id -1 and weight NaN, neither of which the kernel writes.
constexpr std::uint64_t route_poison = 0xFF;
// 0xAB bytes: 0xABABABAB, a negative i32 that no alignment output holds (-1 is one).
constexpr std::uint64_t align_poison = 0xAB;

// A token counts as a near tie, and may choose differently on the two backends, when the
// definition's margin at the kept-group or the chosen-expert boundary is at most this: expf
// differs between the device and glibc by up to 2 ulp, so a score (< 1) may differ by ~4e-7 and a
// group's sum of two by ~1e-6.
constexpr double gpu_tie_margin = 2e-6;
// Weights: the scores differ by a few ulp, and the softmax sum is added as a tree over the lanes on
// the GPU and in index order on the CPU (up to 255 roundings of positive terms); relative 1e-5.
constexpr double gpu_weight_rtol = 1e-5;

struct routed {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

routed route_cpu(std::vector<float>& logits, std::int64_t tokens, std::int64_t stride,
                 std::vector<float>* bias, moe_routing_config const& c) {
  backend::cpu cpu;
  std::int64_t const slots = c.top_k + c.shared_experts;
  routed r{std::vector<std::int32_t>(std::size_t(tokens * slots)),
           std::vector<float>(std::size_t(tokens * slots))};
  tensor_view const b =
      bias ? tensor_view(bias->data(), dtype::f32, {c.num_experts}) : tensor_view{};
  kernels::moe_route(
      cpu,
      tensor_view(logits.data(), dtype::f32, {tokens, c.num_experts}, {stride, 1}, device::cpu()),
      b, c, tensor_view(r.ids.data(), dtype::i32, {tokens, slots}),
      tensor_view(r.weights.data(), dtype::f32, {tokens, slots}), cpu.make_stream());
  return r;
}

// The routing's device buffers for one batch.
struct device_routing {
  tensor<backend::cuda> logits, bias, ids, weights;
  tensor_view logits_view, bias_view;
  device_routing(backend::cuda& gpu, backend::cuda::stream_type const& stream,
                 std::vector<float> const& host_logits, std::int64_t tokens, std::int64_t stride,
                 std::vector<float> const* host_bias, moe_routing_config const& c)
      : logits(gpu, dtype::f32, {std::max<std::int64_t>(tokens, 1), stride}),
        bias(gpu, dtype::f32, {c.num_experts}),
        ids(gpu, dtype::i32, {tokens, c.top_k + c.shared_experts}),
        weights(gpu, dtype::f32, {tokens, c.top_k + c.shared_experts}) {
    if (tokens > 0) gpu.copy(logits.data(), host_logits.data(), host_logits.size() * 4, stream);
    logits_view =
        tensor_view(logits.data(), dtype::f32, {tokens, c.num_experts}, {stride, 1}, gpu.where());
    if (host_bias != nullptr) {
      gpu.copy(bias.data(), host_bias->data(), bias.nbytes(), stream);
      bias_view = bias.view();
    }
    gpu.fill(ids.data(), ids.nbytes(), 1, route_poison, stream);
    gpu.fill(weights.data(), weights.nbytes(), 1, route_poison, stream);
  }
  void enqueue(backend::cuda& gpu, moe_routing_config const& c,
               backend::cuda::stream_type const& stream) {
    kernels::moe_route(gpu, logits_view, bias_view, c, ids, weights, stream);
  }
  routed download(backend::cuda& gpu, backend::cuda::stream_type const& stream) const {
    routed r{std::vector<std::int32_t>(std::size_t(ids.numel())),
             std::vector<float>(std::size_t(weights.numel()))};
    gpu.copy(r.ids.data(), ids.data(), ids.nbytes(), stream);
    gpu.copy(r.weights.data(), weights.data(), weights.nbytes(), stream);
    stream.synchronize();
    return r;
  }
};

// Compares the GPU's routing of every token with the CPU's: written (valid, distinct experts,
// finite weights) everywhere; the same set and weights where the definition has no near tie, the
// same order where the chosen experts are not near-tied among themselves either. Returns the
// number of near-tie tokens.
std::int64_t expect_same_routing(routed const& gpu, routed const& cpu,
                                 std::vector<float> const& logits, std::int64_t stride,
                                 std::vector<float> const* bias, moe_routing_config const& c,
                                 std::int64_t tokens) {
  std::int64_t near_ties = 0, bad = 0;
  auto const k = std::size_t(c.top_k);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::size_t const at = std::size_t(t) * k;
    std::vector<bool> seen(std::size_t(c.num_experts), false);
    for (std::size_t i = 0; i < k; ++i) {
      std::int32_t const e = gpu.ids[at + i];
      bool const valid = e >= 0 && e < c.num_experts && !seen[std::size_t(e)] &&
                         std::isfinite(gpu.weights[at + i]);
      if (valid) seen[std::size_t(e)] = true;
      if (!valid && ++bad <= 8)
        ADD_FAILURE() << "token " << t << " choice " << i << ": expert " << e << ", weight "
                      << gpu.weights[at + i] << " (unwritten, out of range or repeated)";
    }
    auto want =
        test::route_definition(logits.data() + t * stride, bias ? bias->data() : nullptr, c);
    if (want.set_margin() <= gpu_tie_margin) {
      ++near_ties;
      continue;
    }
    // The CPU's answer, with the definition's margins.
    for (std::size_t i = 0; i < k; ++i) {
      want.experts[i] = cpu.ids[at + i];
      want.weights[i] = cpu.weights[at + i];
    }
    auto const diff = test::routing_difference(gpu.ids.data() + at, gpu.weights.data() + at, want,
                                               gpu_tie_margin, gpu_weight_rtol);
    if (!diff.empty() && ++bad <= 8) ADD_FAILURE() << "token " << t << ": " << diff;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_LE(near_ties, 2 + tokens / 100) << near_ties << " near-tie tokens of " << tokens;
  return near_ties;
}

void check_routing(moe_routing_config const& c, std::int64_t tokens, std::int64_t stride,
                   bool with_bias, bool graph = false) {
  SCOPED_TRACE(::testing::Message()
               << "E " << c.num_experts << ", top-" << c.top_k << ", tokens " << tokens
               << ", stride " << stride << (with_bias ? ", bias" : "") << (graph ? ", graph" : ""));
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto logits = test::random_logits(tokens, c.num_experts, stride, rng);
  auto bias = test::random_bias(c.num_experts, rng);
  std::vector<float>* b = with_bias ? &bias : nullptr;
  device_routing d(gpu, stream, logits, tokens, stride, b, c);
  test::run_maybe_in_graph(stream, graph, [&] { d.enqueue(gpu, c, stream); });
  auto const got = d.download(gpu, stream);
  auto const want = route_cpu(logits, tokens, stride, b, c);
  std::int64_t const near = expect_same_routing(got, want, logits, stride, b, c, tokens);
  if (near > 0) std::cout << "  " << near << " near-tie tokens of " << tokens << "\n";
}

moe_routing_config odd_grouped() {  // E 48: 2 per lane, groups of 12 = 6 lanes (not a power of 2)
  return {48, 5, 4, 2, moe_scoring::sigmoid, moe_group_select::top2_sum, true, 1.5f};
}
moe_routing_config odd_softmax_grouped() {  // E 200: 8 per lane, groups of 25 across lanes
  return {200, 7, 8, 3, moe_scoring::softmax, moe_group_select::max, true, 1.0f};
}
moe_routing_config small_groups() {  // E 32: 2 per lane (half the warp idle), groups of 2 = 1 lane
  return {32, 4, 16, 5, moe_scoring::sigmoid, moe_group_select::top2_sum, true, 2.5f};
}

class MoeCudaTest : public test::cuda_test {};

using route_case = std::tuple<int, std::int64_t>;  // config index, tokens

std::vector<moe_routing_config> route_configs() {
  return {moe_routing_config::deepseek_v3(),
          moe_routing_config::deepseek_v2(),
          moe_routing_config::deepseek_v2_lite(),
          odd_grouped(),
          odd_softmax_grouped(),
          small_groups()};
}
char const* const route_config_names[] = {"R1", "V2", "V2Lite", "E48G4", "E200G8Softmax", "E32G16"};

class MoeRouteCuda : public MoeCudaTest, public ::testing::WithParamInterface<route_case> {};

TEST_P(MoeRouteCuda, MatchesCpuReference) {
  auto const [index, tokens] = GetParam();
  auto const c = route_configs()[std::size_t(index)];
  // Sigmoid (V3-style) with a bias, softmax (V2-style) without: a bias shared by every token
  // would dominate the tiny softmax scores and make near ties common.
  bool const bias = c.scoring == moe_scoring::sigmoid;
  check_routing(c, tokens, c.num_experts, bias);  // packed rows: vector loads where E = 32n
  if (tokens <= 4096) check_routing(c, tokens, c.num_experts + 3, false);  // padded: scalar loads
}

INSTANTIATE_TEST_SUITE_P(Models, MoeRouteCuda,
                         ::testing::Combine(::testing::Range(0, 6),
                                            ::testing::Values<std::int64_t>(1, 3, 257, 4096, 8192)),
                         [](::testing::TestParamInfo<route_case> const& info) {
                           return std::string(route_config_names[std::get<0>(info.param)]) + "_T" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_F(MoeCudaTest, RoutingWithEveryGroupKeptIsAPlainTopK) {
  auto c = moe_routing_config::deepseek_v3();
  c.topk_group = c.n_group;
  check_routing(c, 300, 256, true);
  c.group_select = moe_group_select::none;
  check_routing(c, 300, 260, false);
}

// Shared experts folded in: every token's routed slots exactly as without them (same kernel
// decisions, bit for bit), then experts E.. with weight 1, the same on both backends.
TEST_F(MoeCudaTest, SharedExpertsFollowTheRoutedSlots) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  for (auto c : {moe_routing_config::deepseek_v3(), moe_routing_config::deepseek_v2_lite()}) {
    std::int64_t const tokens = 300, k = c.top_k,
                       shared = c.scoring == moe_scoring::sigmoid ? 1 : 2;
    SCOPED_TRACE(::testing::Message() << "E " << c.num_experts << ", shared " << shared);
    auto rng = test::test_rng();
    auto logits = test::random_logits(tokens, c.num_experts, c.num_experts, rng);
    device_routing alone(gpu, stream, logits, tokens, c.num_experts, nullptr, c);
    alone.enqueue(gpu, c, stream);
    auto const base = alone.download(gpu, stream);
    c.shared_experts = shared;
    device_routing folded(gpu, stream, logits, tokens, c.num_experts, nullptr, c);
    test::run_maybe_in_graph(stream, true, [&] { folded.enqueue(gpu, c, stream); });
    auto const got = folded.download(gpu, stream);
    auto const cpu = route_cpu(logits, tokens, c.num_experts, nullptr, c);
    std::int64_t bad = 0;
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t i = 0; i < k + shared; ++i) {
        auto const at = std::size_t(t * (k + shared) + i);
        bool const ok = i < k ? got.ids[at] == base.ids[std::size_t(t * k + i)] &&
                                    got.weights[at] == base.weights[std::size_t(t * k + i)]
                              : got.ids[at] == c.num_experts + (i - k) && got.weights[at] == 1.0f &&
                                    cpu.ids[at] == got.ids[at] && cpu.weights[at] == 1.0f;
        if (!ok && ++bad <= 8)
          ADD_FAILURE() << "token " << t << " slot " << i << ": expert " << got.ids[at]
                        << ", weight " << got.weights[at];
      }
    EXPECT_EQ(bad, 0);
  }
}

TEST_F(MoeCudaTest, RoutingCapturesIntoCudaGraph) {
  check_routing(moe_routing_config::deepseek_v3(), 77, 256, true, true);
}

// Exact agreement where the answer is decided by the tie rule or by the bias alone.
void expect_exact(moe_routing_config const& c, std::vector<float>& logits, std::int64_t tokens,
                  std::vector<float>* bias) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  device_routing d(gpu, stream, logits, tokens, c.num_experts, bias, c);
  d.enqueue(gpu, c, stream);
  auto const got = d.download(gpu, stream);
  auto const want = route_cpu(logits, tokens, c.num_experts, bias, c);
  EXPECT_EQ(got.ids, want.ids);
  for (std::size_t i = 0; i < want.weights.size(); ++i)
    EXPECT_NEAR(got.weights[i], want.weights[i], 1e-6 * std::fabs(want.weights[i])) << i;
}

TEST_F(MoeCudaTest, TiesGoToTheLowerIndex) {
  std::vector<float> zeros(3 * 256, 0.0f);
  expect_exact(moe_routing_config::deepseek_v3(), zeros, 3, nullptr);
  zeros[256 + 5 * 32 + 9] = 1.0f;  // token 1: group 5 joins groups 0..2, expert 169 first
  expect_exact(moe_routing_config::deepseek_v3(), zeros, 3, nullptr);
  std::vector<float> flat(5 * 64, -1.5f);
  expect_exact(moe_routing_config::deepseek_v2_lite(), flat, 5, nullptr);
}

TEST_F(MoeCudaTest, BiasChoosesOneExpertForEveryToken) {
  auto rng = test::test_rng();
  std::int64_t const tokens = 2048;
  auto logits = test::random_logits(tokens, 256, 256, rng);
  auto bias = test::random_bias(256, rng);
  bias[201] = 10.0f;
  auto const c = moe_routing_config::deepseek_v3();
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  device_routing d(gpu, stream, logits, tokens, 256, &bias, c);
  d.enqueue(gpu, c, stream);
  auto const got = d.download(gpu, stream);
  for (std::int64_t t = 0; t < tokens; ++t) ASSERT_EQ(got.ids[std::size_t(t * 8)], 201) << t;
  expect_same_routing(got, route_cpu(logits, tokens, 256, &bias, c), logits, 256, &bias, c, tokens);
}

// All choices negative: HF's 0.0 for dropped groups wins, ties to the lower index (see the CPU
// test DroppedGroupsScoreZeroAsInHuggingFace).
// The experts are then decided by the tie rule alone, so they must agree exactly wherever the
// kept groups are not near-tied.
TEST_F(MoeCudaTest, DroppedGroupsScoreZeroAsInHuggingFace) {
  auto rng = test::test_rng();
  std::int64_t const tokens = 256;
  auto const c = moe_routing_config::deepseek_v3();
  auto logits = test::random_logits(tokens, 256, 256, rng);
  std::vector<float> bias(256, -2.0f);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  device_routing d(gpu, stream, logits, tokens, 256, &bias, c);
  d.enqueue(gpu, c, stream);
  auto const got = d.download(gpu, stream);
  auto const want = route_cpu(logits, tokens, 256, &bias, c);
  std::int64_t near_ties = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    auto const def = test::route_definition(logits.data() + t * 256, bias.data(), c);
    if (def.group_margin <= gpu_tie_margin) {
      ++near_ties;
      continue;
    }
    for (std::size_t i = 0; i < 8; ++i) {
      std::size_t const at = std::size_t(t) * 8 + i;
      EXPECT_EQ(got.ids[at], want.ids[at]) << "token " << t << " choice " << i;
      EXPECT_EQ(got.ids[at] % 32, std::int32_t(i)) << "token " << t << ": not a group's first 8";
      EXPECT_NEAR(got.weights[at], want.weights[at], gpu_weight_rtol * want.weights[at]);
    }
  }
  EXPECT_LE(near_ties, 5);
}

// Alignment ---------------------------------------------------------------------------------------

struct device_alignment {
  tensor<backend::cuda> counts, offsets, sorted, blocks, total, inverse;
  device_alignment(backend::cuda& gpu, backend::cuda::stream_type const& stream,
                   std::int64_t tokens, std::int64_t k, std::int64_t experts, std::int64_t block_m,
                   std::int64_t extra)
      : counts(gpu, dtype::i32, {experts}),
        offsets(gpu, dtype::i32, {experts + 1}),
        sorted(gpu, dtype::i32,
               {moe_align_capacity(tokens, k, experts, block_m).sorted_rows + extra}),
        blocks(gpu, dtype::i32, {moe_align_capacity(tokens, k, experts, block_m).blocks + extra}),
        total(gpu, dtype::i32, {1}),
        inverse(gpu, dtype::i32, {tokens, k}) {
    for (auto* t : {&counts, &offsets, &sorted, &blocks, &total, &inverse})
      gpu.fill(t->data(), t->nbytes(), 1, align_poison, stream);
  }
  moe_align_outputs views() const { return {counts, offsets, sorted, blocks, total, inverse}; }
  test::alignment_host download(backend::cuda& gpu,
                                backend::cuda::stream_type const& stream) const {
    test::alignment_host h;
    auto const get = [&](std::vector<std::int32_t>& v, tensor<backend::cuda> const& t) {
      v.resize(std::size_t(t.numel()));
      gpu.copy(v.data(), t.data(), t.nbytes(), stream);
    };
    get(h.counts, counts);
    get(h.offsets, offsets);
    get(h.sorted, sorted);
    get(h.block_expert, blocks);
    get(h.total, total);
    get(h.inverse, inverse);
    stream.synchronize();
    return h;
  }
};

test::alignment_host align_cpu(std::vector<std::int32_t>& ids, std::int64_t tokens, std::int64_t k,
                               std::int64_t experts, std::int64_t block_m, std::int64_t extra) {
  auto const cap = moe_align_capacity(tokens, k, experts, block_m);
  test::alignment_host h{std::vector<std::int32_t>(std::size_t(experts)),
                         std::vector<std::int32_t>(std::size_t(experts + 1)),
                         std::vector<std::int32_t>(std::size_t(cap.sorted_rows + extra)),
                         std::vector<std::int32_t>(std::size_t(cap.blocks + extra)),
                         std::vector<std::int32_t>(1),
                         std::vector<std::int32_t>(std::size_t(tokens * k))};
  auto const v = [](std::vector<std::int32_t>& x, dims d) {
    return tensor_view(x.data(), dtype::i32, d);
  };
  backend::cpu cpu;
  kernels::moe_align(cpu, v(ids, {tokens, k}), experts, block_m,
                     {v(h.counts, {experts}), v(h.offsets, {experts + 1}),
                      v(h.sorted, {std::int64_t(h.sorted.size())}),
                      v(h.block_expert, {std::int64_t(h.block_expert.size())}), v(h.total, {1}),
                      v(h.inverse, {tokens, k})},
                     cpu.make_stream());
  return h;
}

// Every output of two alignments, element for element.
void expect_same_alignment(test::alignment_host const& got, test::alignment_host const& want) {
  EXPECT_EQ(got.counts, want.counts);
  EXPECT_EQ(got.offsets, want.offsets);
  EXPECT_EQ(got.total, want.total);
  EXPECT_EQ(got.sorted, want.sorted);
  EXPECT_EQ(got.block_expert, want.block_expert);
  EXPECT_EQ(got.inverse, want.inverse);
}

// Aligns ids [tokens, k] on the GPU into poisoned buffers `extra` elements longer than the
// capacity; expects the CPU's result bit for bit and every invariant.
void check_alignment(std::vector<std::int32_t>& ids, std::int64_t tokens, std::int64_t k,
                     std::int64_t experts, std::int64_t block_m) {
  SCOPED_TRACE(::testing::Message() << "tokens " << tokens << ", top-" << k << ", E " << experts
                                    << ", block_m " << block_m);
  std::int64_t const extra = 37;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  tensor<backend::cuda> d_ids(gpu, dtype::i32, {tokens, k});
  if (!ids.empty()) gpu.copy(d_ids.data(), ids.data(), d_ids.nbytes(), stream);
  device_alignment out(gpu, stream, tokens, k, experts, block_m, extra);
  kernels::moe_align(gpu, d_ids, experts, block_m, out.views(), stream);
  auto const got = out.download(gpu, stream);
  auto const want = align_cpu(ids, tokens, k, experts, block_m, extra);
  EXPECT_EQ(test::alignment_violations(ids, experts, block_m, got), "");
  expect_same_alignment(got, want);
}

std::vector<std::int32_t> routed_ids(std::int64_t tokens, moe_routing_config const& c,
                                     std::mt19937_64& rng) {
  auto logits = test::random_logits(tokens, c.num_experts, c.num_experts, rng);
  auto bias = test::random_bias(c.num_experts, rng);
  return route_cpu(logits, tokens, c.num_experts, &bias, c).ids;
}

using align_case = std::tuple<std::int64_t, std::int64_t>;  // tokens, block_m

class MoeAlignCuda : public MoeCudaTest, public ::testing::WithParamInterface<align_case> {};

TEST_P(MoeAlignCuda, MatchesCpuReference) {
  auto const [tokens, block_m] = GetParam();
  auto rng = test::test_rng();
  auto r1 = routed_ids(tokens, moe_routing_config::deepseek_v3(), rng);
  check_alignment(r1, tokens, 8, 256, block_m);
  auto lite = routed_ids(tokens, moe_routing_config::deepseek_v2_lite(), rng);
  check_alignment(lite, tokens, 6, 64, block_m);
  // Shared experts folded in: R1's stack of 257 (one past the routing's 256), V2-Lite's of 66.
  auto r1_shared = moe_routing_config::deepseek_v3();
  r1_shared.shared_experts = 1;
  auto r1s = routed_ids(tokens, r1_shared, rng);
  check_alignment(r1s, tokens, 9, 257, block_m);
  auto lite_shared = moe_routing_config::deepseek_v2_lite();
  lite_shared.shared_experts = 2;
  auto lites = routed_ids(tokens, lite_shared, rng);
  check_alignment(lites, tokens, 8, 66, block_m);
}

INSTANTIATE_TEST_SUITE_P(Sizes, MoeAlignCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(0, 1, 3, 64, 257, 4096,
                                                                            8192),
                                            ::testing::Values<std::int64_t>(1, 16, 64, 128)),
                         [](::testing::TestParamInfo<align_case> const& info) {
                           return "T" + std::to_string(std::get<0>(info.param)) + "_block" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_F(MoeCudaTest, AlignmentOneExpertTakesEveryTokenOthersNone) {
  for (std::int64_t tokens : {1, 100, 8192}) {
    std::vector<std::int32_t> ids(std::size_t(tokens * 8));
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t s = 0; s < 8; ++s)  // expert 13 for every token, the rest from 5 experts
        ids[std::size_t(t * 8 + s)] = std::int32_t(s == 0 ? 13 : 100 + (t * 3 + s) % 5);
    check_alignment(ids, tokens, 8, 256, 128);
    check_alignment(ids, tokens, 8, 256, 64);
  }
  std::vector<std::int32_t> all_one(std::size_t(4096), 255);  // 4096 tokens x top-1, one expert
  check_alignment(all_one, 4096, 1, 256, 128);
}

TEST_F(MoeCudaTest, AlignmentLeavesOutIdsOfOtherRanks) {
  auto rng = test::test_rng();
  std::uniform_int_distribution<int> id(-3, 300);  // [0, 256) ours, the rest other ranks'
  // 1000 tokens on the block kernel; 1, 3 and 4 (8, 24 and 32 rows) on the one-warp kernel.
  for (std::int64_t tokens : {1000, 1, 3, 4}) {
    std::vector<std::int32_t> ids(std::size_t(tokens * 8));
    for (auto& x : ids) x = id(rng);
    check_alignment(ids, tokens, 8, 256, 64);
  }
}

// Up to 32 rows one warp aligns: the rows' edge (32 and 33), repeated experts among a few tokens
// (each of 4 tokens picks 8 of 10 experts), block heights of 1 and 128.
TEST_F(MoeCudaTest, AlignmentOfADecodeBatchOnOneWarp) {
  auto rng = test::test_rng();
  std::uniform_int_distribution<int> id(0, 9);
  for (auto [tokens, k] : {std::pair<std::int64_t, std::int64_t>{4, 8}, {11, 3}, {1, 32}, {3, 11}})
    for (std::int64_t block_m : {1, 128}) {
      std::vector<std::int32_t> ids(std::size_t(tokens * k));
      for (auto& x : ids) x = id(rng);
      check_alignment(ids, tokens, k, 66, block_m);
    }
}

// The MoE's front half as the layer will run it: routing, then alignment of the GPU's ids, one
// graph, no host synchronisation between them.
TEST_F(MoeCudaTest, RoutingAndAlignmentCaptureTogether) {
  auto const c = moe_routing_config::deepseek_v3();
  std::int64_t const tokens = 513, block_m = 64;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto logits = test::random_logits(tokens, 256, 256, rng);
  auto bias = test::random_bias(256, rng);
  device_routing r(gpu, stream, logits, tokens, 256, &bias, c);
  device_alignment a(gpu, stream, tokens, c.top_k, 256, block_m, 0);
  test::run_in_graph(stream, [&] {
    r.enqueue(gpu, c, stream);
    kernels::moe_align(gpu, r.ids, 256, block_m, a.views(), stream);
  });
  auto ids = r.download(gpu, stream);
  expect_same_routing(ids, route_cpu(logits, tokens, 256, &bias, c), logits, 256, &bias, c, tokens);
  expect_same_alignment(a.download(gpu, stream),
                        align_cpu(ids.ids, tokens, c.top_k, 256, block_m, 0));
}

// moe_route_and_align: one launch for a decode batch, the two kernels above it. Either way the
// outputs equal those of moe_route then moe_align, bit for bit (the one-launch kernel routes with
// the same warp code and aligns with moe_align_warp), into buffers 37 elements longer than the
// capacity and poisoned; V2-Lite and R1 with and without folded shared experts, 48 experts in
// groups that are no whole lanes; 1..5 tokens (R1 with its shared expert: 9 slots, so 4 tokens
// are 36 rows and take the two kernels); once inside a graph.
TEST_F(MoeCudaTest, RoutingAndAlignmentInOneLaunchEqualTheTwoKernels) {
  auto lite = moe_routing_config::deepseek_v2_lite();
  lite.shared_experts = 2;
  auto r1 = moe_routing_config::deepseek_v3();
  r1.shared_experts = 1;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  for (auto const& c : {lite, r1, moe_routing_config::deepseek_v3(), odd_grouped()}) {
    std::int64_t const k = c.top_k + c.shared_experts, stack = c.num_experts + c.shared_experts;
    for (std::int64_t tokens : {1, 2, 3, 4, 5}) {
      for (std::int64_t block_m : {16, 64}) {
        bool const graph = tokens == 3 && block_m == 64;
        SCOPED_TRACE(::testing::Message() << "E " << c.num_experts << " + " << c.shared_experts
                                          << " shared, top-" << c.top_k << ", tokens " << tokens
                                          << ", block_m " << block_m << (graph ? ", graph" : ""));
        auto logits = test::random_logits(tokens, c.num_experts, c.num_experts, rng);
        auto bias = test::random_bias(c.num_experts, rng);
        device_routing two(gpu, stream, logits, tokens, c.num_experts, &bias, c);
        device_alignment two_a(gpu, stream, tokens, k, stack, block_m, 37);
        two.enqueue(gpu, c, stream);
        kernels::moe_align(gpu, two.ids, stack, block_m, two_a.views(), stream);
        device_routing one(gpu, stream, logits, tokens, c.num_experts, &bias, c);
        device_alignment one_a(gpu, stream, tokens, k, stack, block_m, 37);
        test::run_maybe_in_graph(stream, graph, [&] {
          kernels::moe_route_and_align(gpu, one.logits_view, one.bias_view, c, one.ids, one.weights,
                                       stack, block_m, one_a.views(), stream);
        });
        auto const want = two.download(gpu, stream);
        auto const got = one.download(gpu, stream);
        EXPECT_EQ(got.ids, want.ids);
        EXPECT_EQ(got.weights, want.weights);
        auto const got_a = one_a.download(gpu, stream);
        auto const want_a = two_a.download(gpu, stream);
        EXPECT_EQ(test::alignment_violations(got.ids, stack, block_m, got_a), "");
        expect_same_alignment(got_a, want_a);
      }
    }
  }
}

TEST_F(MoeCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<float> logits(256);
  std::vector<std::int32_t> ids(8);
  std::vector<float> weights(8);
  test::expect_error(
      [&] {
        kernels::moe_route(gpu, tensor_view(logits.data(), dtype::f32, {1, 256}), tensor_view{},
                           moe_routing_config::deepseek_v3(),
                           tensor_view(ids.data(), dtype::i32, {1, 8}),
                           tensor_view(weights.data(), dtype::f32, {1, 8}), gpu.make_stream());
      },
      {"moe_route on cuda:0 needs every view there", "logits are on cpu"});
}

}  // namespace
}  // namespace lightcore
