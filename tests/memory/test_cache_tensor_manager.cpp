// cache_tensor_manager on the CPU backend: layer buffers are reused (the peak of an N-layer
// forward is one layer's), graph captures share one pool sized by the largest, persistent
// buffers keep their address, and misuse is reported. The manager's logic is the same for every
// backend; the CUDA graph test lives in test_cache_tensor_manager_graphs.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

namespace lc = lightcore;
using manager = lc::memory::cache_tensor_manager<lc::backend::cpu>;

namespace {

constexpr std::int64_t hidden = 64;
constexpr std::int64_t inter = 192;

// The allocation pattern of one decoder layer: attention then MLP buffers, some dying early.
// Returns the addresses it was given, to compare across layers.
std::vector<void*> layer_buffers(manager& m, std::int64_t tokens) {
  std::vector<void*> seen;
  {
    auto qkv = m.acquire<float>("attn.qkv", {tokens, 3 * hidden});
    auto scores = m.acquire<float>("attn.scores", {tokens, tokens});
    seen.insert(seen.end(), {qkv.data(), scores.data()});
    scores.reset();
    auto out = m.acquire<float>("attn.out", {tokens, hidden});
    seen.push_back(out.data());
  }
  auto gate_up = m.acquire<lc::bf16>("mlp.gate_up", {tokens, 2 * inter});
  auto act = m.acquire<lc::bf16>("mlp.act", {tokens, inter});
  gate_up.reset();
  auto down = m.acquire<float>("mlp.down", {tokens, hidden});
  seen.insert(seen.end(), {act.data(), down.data()});
  return seen;
}

struct forward_result {
  std::size_t peak;
  std::size_t reserved;
  std::vector<std::vector<void*>> addresses;  // per layer
};

forward_result run_forward(int layers, std::int64_t tokens,
                           lc::memory::cache_tensor_manager_config c = {}) {
  lc::backend::cpu host;
  manager m(host, c);
  forward_result r;
  auto residual = m.acquire<float>("residual", {tokens, hidden});  // lives across layers
  for (int i = 0; i < layers; ++i) r.addresses.push_back(layer_buffers(m, tokens));
  r.peak = m.stats().activations.peak_bytes;
  r.reserved = m.stats().activations.reserved_bytes;
  return r;
}

TEST(CacheTensorManager, PeakOfNLayersEqualsOneLayer) {
  auto const one = run_forward(1, 100);
  for (int layers : {2, 8, 61}) {
    auto const many = run_forward(layers, 100);
    EXPECT_EQ(many.peak, one.peak) << layers << " layers";
    EXPECT_EQ(many.reserved, one.reserved) << layers << " layers";
    for (int i = 1; i < layers; ++i)
      EXPECT_EQ(many.addresses[i], many.addresses[0]) << "layer " << i << " got other buffers";
  }
}

TEST(CacheTensorManager, WithoutReuseThePeakGrowsWithDepth) {
  // What the manager saves: the same forward with reuse off needs memory for every layer.
  lc::memory::cache_tensor_manager_config no_reuse;
  no_reuse.reuse = false;
  auto const one = run_forward(1, 100, no_reuse);
  auto const eight = run_forward(8, 100, no_reuse);
  EXPECT_GT(eight.peak, 6 * one.peak);
  auto const eight_reused = run_forward(8, 100);
  EXPECT_GT(eight.peak, 6 * eight_reused.peak);
}

// A tiny residual MLP computed through leases must match the same math on plain vectors.
TEST(CacheTensorManager, MlpThroughLeasesMatchesDirectComputation) {
  lc::backend::cpu host;
  manager m(host);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.0f, 0.2f);
  std::int64_t const tokens = 7, layers = 4;
  std::vector<std::vector<float>> w1(layers), w2(layers);
  for (int l = 0; l < layers; ++l) {
    w1[l].resize(hidden * inter);
    w2[l].resize(inter * hidden);
    for (auto& v : w1[l]) v = dist(rng);
    for (auto& v : w2[l]) v = dist(rng);
  }
  std::vector<float> x0(tokens * hidden);
  for (auto& v : x0) v = dist(rng);

  // Reference on plain vectors.
  std::vector<float> ref = x0;
  for (int l = 0; l < layers; ++l) {
    std::vector<float> h(tokens * inter, 0.0f);
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < inter; ++j) {
        float acc = 0;
        for (int k = 0; k < hidden; ++k) acc += ref[t * hidden + k] * w1[l][k * inter + j];
        h[t * inter + j] = acc / (1.0f + std::exp(-acc));
      }
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < hidden; ++j) {
        float acc = 0;
        for (int k = 0; k < inter; ++k) acc += h[t * inter + k] * w2[l][k * hidden + j];
        ref[t * hidden + j] += acc;
      }
  }

  // The same through the manager; the intermediate lives only inside each layer.
  auto x = m.acquire<float>("residual", {tokens, hidden});
  auto xv = x.as<float, 2>();
  std::copy(x0.begin(), x0.end(), xv.data);
  void* first_hidden = nullptr;
  for (int l = 0; l < layers; ++l) {
    auto h = m.acquire<float>("mlp.hidden", {tokens, inter});
    if (l == 0) first_hidden = h.data();
    EXPECT_EQ(h.data(), first_hidden) << "layer " << l << " did not reuse layer 0's buffer";
    auto hv = h.as<float, 2>();
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < inter; ++j) {
        float acc = 0;
        for (int k = 0; k < hidden; ++k) acc += xv(t, k) * w1[l][k * inter + j];
        hv(t, j) = acc / (1.0f + std::exp(-acc));
      }
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < hidden; ++j) {
        float acc = 0;
        for (int k = 0; k < inter; ++k) acc += hv(t, k) * w2[l][k * hidden + j];
        xv(t, j) += acc;
      }
  }
  for (int i = 0; i < tokens * hidden; ++i) EXPECT_EQ(xv.data[i], ref[i]) << i;
}

// Graph mode, on the CPU backend (no real graphs; the pool logic is backend-independent).
std::size_t capture_all(manager& m, std::vector<std::int64_t> const& batches) {
  for (std::int64_t b : batches) {
    auto scope = m.graph_scope("decode.bs" + std::to_string(b));
    auto residual = m.acquire<float>("residual", {b, hidden});
    for (int l = 0; l < 4; ++l) layer_buffers(m, b);
  }
  return m.stats().graph_pool.reserved_bytes;
}

TEST(CacheTensorManager, GraphsShareOnePoolSizedByTheLargest) {
  lc::backend::cpu host;
  lc::memory::cache_tensor_manager_config c;
  c.graph_growth_bytes = 4096;  // grow exactly as needed, so the sizes below are tight
  std::vector<std::int64_t> const batches{256, 128, 64, 32, 16, 8, 4, 1};

  manager largest_alone(host, c);
  std::size_t const alone = capture_all(largest_alone, {256});

  manager all(host, c);
  std::size_t const shared = capture_all(all, batches);
  EXPECT_LE(double(shared), 1.10 * double(alone));
  ASSERT_EQ(all.graphs().size(), batches.size());
  EXPECT_EQ(all.graphs()[0].peak_bytes, largest_alone.graphs()[0].peak_bytes);
  for (std::size_t i = 1; i < batches.size(); ++i)
    EXPECT_LT(all.graphs()[i].peak_bytes, all.graphs()[i - 1].peak_bytes);
  // Eager activations are untouched by captures.
  EXPECT_EQ(all.stats().activations.reserved_bytes, 0u);

  lc::memory::cache_tensor_manager_config no_reuse = c;
  no_reuse.reuse = false;
  manager separate(host, no_reuse);
  std::size_t const unshared = capture_all(separate, batches);
  EXPECT_GT(double(unshared), 1.5 * double(alone)) << "without sharing each graph pays alone";
}

TEST(CacheTensorManager, GraphLeasesMayOutliveTheirCapture) {
  lc::backend::cpu host;
  manager m(host);
  manager::lease output;
  {
    auto scope = m.graph_scope("g1");
    output = m.acquire<float>("logits", {8, 100});
  }
  void* const first = output.data();
  {
    auto scope = m.graph_scope("g2");  // lays its buffers over g1's
    auto other = m.acquire<float>("logits", {8, 100});
    EXPECT_EQ(other.data(), first);
  }
  output.reset();  // returning a block of an older capture is a no-op, not a double free
  EXPECT_EQ(m.stats().live_leases, 0u);
}

TEST(CacheTensorManager, PersistentBuffersKeepTheirAddress) {
  lc::backend::cpu host;
  manager m(host);
  auto big = m.persistent("sampler.logits", lc::dtype::f32, {256, 1000});
  auto small = m.persistent("sampler.logits", lc::dtype::f32, {4, 1000});
  EXPECT_EQ(big.data(), small.data());
  EXPECT_EQ(small.shape(), (lc::dims{4, 1000}));
  {
    auto scope = m.graph_scope("g");
    EXPECT_EQ(m.persistent("sampler.logits", lc::dtype::f32, {16, 1000}).data(), big.data());
  }
  try {
    m.persistent("sampler.logits", lc::dtype::f32, {512, 1000});
    FAIL() << "a larger persistent request did not throw";
  } catch (lc::error const& e) {
    EXPECT_NE(std::string(e.what()).find("make the largest request first"), std::string::npos)
        << e.what();
  }
}

TEST(CacheTensorManager, ZeroSizedAndTypedLeases) {
  lc::backend::cpu host;
  manager m(host);
  auto empty = m.acquire<float>("empty", {0, 128});
  EXPECT_EQ(empty.view().numel(), 0);
  auto ids = m.acquire<std::int32_t>("ids", {3});
  EXPECT_EQ(ids.view().type(), lc::dtype::i32);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(ids.data()) % lc::backend::cpu::alignment, 0u);
  EXPECT_EQ(m.stats().live_leases, 2u);
}

TEST(CacheTensorManager, NestedScopesAreRejected) {
  lc::backend::cpu host;
  manager m(host);
  auto outer = m.graph_scope("outer");
  EXPECT_THROW({ auto inner = m.graph_scope("inner"); }, lc::error);
}

TEST(CacheTensorManager, ConsolidateLeavesOneChunkOfThePeak) {
  lc::backend::cpu host;
  lc::memory::cache_tensor_manager_config c;
  c.growth_bytes = 4096;  // many small chunks
  manager m(host, c);
  for (int l = 0; l < 3; ++l) layer_buffers(m, 50);
  EXPECT_GT(m.stats().activations.chunks, 1u);
  std::size_t const peak = m.stats().activations.peak_bytes;
  m.consolidate();
  EXPECT_EQ(m.stats().activations.chunks, 1u);
  EXPECT_EQ(m.stats().activations.reserved_bytes, peak);
  layer_buffers(m, 50);  // the same forward fits without growing
  EXPECT_EQ(m.stats().activations.reserved_bytes, peak);
  EXPECT_NE(m.report().find("role mlp.gate_up"), std::string::npos) << m.report();
}

TEST(CacheTensorManagerDeathTest, LeaseOutlivingItsManagerIsCaught) {
  EXPECT_DEATH(
      {
        lc::backend::cpu host;
        auto m = std::make_unique<manager>(host);
        auto leaked = m->acquire<float>("x", {4});
        m.reset();
      },
      "live lease");
}

}  // namespace
