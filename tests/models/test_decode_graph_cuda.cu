// Decode steps of the DeepSeek forward through CUDA graphs (decode_graphs in model.hpp) on the
// tiny V2 and V3 models (bf16 and FP8): each step runs three ways over three copies of the KV
// pools, from the same prefill: replayed graphs, the same padded bucket eagerly, and the plain
// eager forward of the n requests. Batches of 1, 3 and 8 rows over changing requests, lengths
// and slots; padding rows either in a scratch slot or repeating the first row.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/cuda.hpp"
#include "forward_test_util.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/graph/decode_graphs.hpp"
#include "models/deepseek_v3/executor.hpp"

namespace lightcore::test {
namespace {

namespace ds = models::deepseek_v3;
using gpu_t = backend::cuda;

struct graph_case {
  fixture_spec spec;
  bool scratch;  // padding rows in a scratch slot (else they repeat the batch's first row)
};

float bf16_to_float(std::uint16_t b) {
  std::uint32_t const u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

class DecodeGraphCuda : public ::testing::TestWithParam<graph_case> {
 protected:
  void SetUp() override {
    if (backend::cuda::device_count() == 0)
      GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
  }
};

TEST(DecodeGraphBuckets, EverySizeTo32ThenEvery16) {
  EXPECT_EQ(graph::batch_buckets(1), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(graph::batch_buckets(8), (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  auto const b100 = graph::batch_buckets(100);
  EXPECT_EQ(b100.size(), 32u + 5u);  // 1..32, 48, 64, 80, 96, 100
  EXPECT_EQ(std::vector<std::int64_t>(b100.end() - 5, b100.end()),
            (std::vector<std::int64_t>{48, 64, 80, 96, 100}));
  auto const b = graph::batch_buckets(256);
  EXPECT_EQ(b.size(), 32u + 14u);  // 1..32, 48, ..., 256
  EXPECT_EQ(b.back(), 256);
  EXPECT_EQ(graph::bucket_for(b, 1), 1);
  EXPECT_EQ(graph::bucket_for(b, 3), 3);
  EXPECT_EQ(graph::bucket_for(b, 33), 48);
  EXPECT_EQ(graph::bucket_for(b, 200), 208);
  EXPECT_EQ(graph::bucket_for(b, 257), 0);
  EXPECT_EQ(graph::batch_buckets(64, 4, 16),
            (std::vector<std::int64_t>{1, 2, 3, 4, 16, 32, 48, 64}));
  EXPECT_THROW(graph::bucket_for(b, 0), std::exception);
  EXPECT_THROW(graph::batch_buckets(0), std::exception);
}

TEST_P(DecodeGraphCuda, ReplaysMatchEagerDecodeAndPaddingLeavesRealKvAlone) {
  graph_case const gc = GetParam();
  constexpr std::int64_t requests = 8, max_len = 64, copies = 3;
  constexpr std::int64_t slots = requests * max_len + 1, scratch_slot = slots - 1;
  temp_dir dir;
  gpu_t gpu(0);
  tools::random_checkpoint_options ro;
  ro.config = config_path(gc.spec.config);
  ro.out = dir.path();
  ro.format = gc.spec.format;
  ro.seed = 7;
  tools::write_random_checkpoint(ro);
  auto const weights = ds::load_weights(gpu, dir.path());
  io::model_config const& c = weights.config();
  ds::model<gpu_t> model(gpu, weights, ds::model_options{max_len});

  // Copy 0: graphs; 1: the same buckets eagerly; 2: the plain eager forward. NaN-filled pools.
  auto stream = gpu.make_stream();
  std::vector<tensor<gpu_t>> pools;
  std::vector<std::vector<tensor_view>> kv(copies);
  for (std::int64_t k = 0; k < copies; ++k)
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      pools.emplace_back(gpu, dtype::bf16, dims{slots, 576});
      gpu.fill(pools.back().data(), pools.back().nbytes(), 1, 0xff, stream);
      kv[std::size_t(k)].push_back(pools.back().view());
    }
  // Request r's position p in slot r * max_len + p; row `requests` is the scratch row.
  tensor<gpu_t> table(gpu, dtype::i32, {requests + 1, max_len});
  {
    std::vector<std::int32_t> t(std::size_t((requests + 1) * max_len), 0);
    for (std::int64_t i = 0; i < requests * max_len; ++i) t[std::size_t(i)] = std::int32_t(i);
    gpu.copy(table.data(), t.data(), t.size() * 4, stream);
  }
  memory::cache_tensor_manager<gpu_t> mem(gpu);
  kernels::gemm_context<gpu_t> gemm(gpu);
  modules::deepseek::forward_context<gpu_t> ctx{gpu, stream, gemm, mem};
  ds::decode_graph_options go;
  go.max_batch = requests;
  go.dense_buckets = 2;  // buckets 1, 2, 4, 8: batches of 3, 5, 6, 7 rows replay with padding
  go.bucket_step = 4;
  if (gc.scratch) {
    go.scratch_row = std::int32_t(requests);
    go.scratch_slot = std::int32_t(scratch_slot);
  }
  ds::decode_graphs<> graphs(model, go);
  model.logits_buffer(ctx, requests);  // the persistent logits, sized for the largest step

  auto download = [&](tensor_view const& v) {
    std::vector<float> h(std::size_t(v.numel()));
    gpu.copy(h.data(), v.data(), h.size() * 4, stream);
    stream.synchronize();
    return h;
  };
  auto pool_bytes = [&](std::int64_t k) {
    std::vector<std::vector<std::uint16_t>> out;
    for (tensor_view const& v : kv[std::size_t(k)]) {
      std::vector<std::uint16_t> h(std::size_t(v.numel()));
      gpu.copy(h.data(), v.data(), h.size() * 2, stream);
      out.push_back(std::move(h));
    }
    stream.synchronize();
    return out;
  };

  // Prompts of 4 + 3r tokens into every copy.
  std::vector<std::int64_t> len(requests);
  std::vector<ds::request_step> prefill;
  for (std::int64_t r = 0; r < requests; ++r) {
    std::vector<std::int32_t> p;
    for (std::int64_t j = 0; j < 4 + 3 * r; ++j)
      p.push_back(std::int32_t((r * 31 + j * 7 + 3) % c.vocab_size));
    len[std::size_t(r)] = std::int64_t(p.size());
    prefill.push_back({p, 0, std::int32_t(r)});
  }
  for (std::int64_t k = 0; k < copies; ++k) model.forward(ctx, prefill, kv[std::size_t(k)], table);
  ASSERT_TRUE(pool_bytes(0) == pool_bytes(1)) << "the eager prefill is not deterministic";
  ASSERT_TRUE(pool_bytes(0) == pool_bytes(2)) << "the eager prefill is not deterministic";

  // Bad steps are refused with a message, before any graph exists.
  EXPECT_FALSE(graphs.accepts({{{1, 2}, 5, 0}}));
  EXPECT_FALSE(graphs.accepts({}));
  EXPECT_THROW(graphs.forward(ctx, {{{1}, 0, 0}}, kv[0], table), std::exception);
  EXPECT_THROW(graphs.forward(ctx, std::vector<ds::request_step>(9, {{1}, 4, 0}), kv[0], table),
               std::exception);

  std::vector<std::vector<std::int64_t>> const batches = {
      {0},      {1, 4, 6}, {0, 1, 2, 3, 4, 5, 6, 7}, {7, 2, 5}, {3}, {5, 0, 2, 7, 1, 6, 4, 3},
      {6, 1, 3}};
  std::set<std::int64_t> decoded;  // slots the decode steps wrote
  bool padded = false;
  double worst = 0;
  std::int64_t const vocab = c.vocab_size;
  double const bound = gc.spec.format == tools::weight_format::fp8 ? 0.15 : 5e-2;
  for (std::size_t s = 0; s < batches.size(); ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    std::vector<ds::request_step> reqs;
    for (std::int64_t r : batches[s]) {
      reqs.push_back({{std::int32_t((r * 13 + std::int64_t(s) * 101 + 7) % vocab)},
                      len[std::size_t(r)],
                      std::int32_t(r)});
      decoded.insert(r * max_len + len[std::size_t(r)]);
    }
    std::int64_t const n = std::int64_t(reqs.size());
    std::int64_t const bucket = graphs.graphs().bucket_for(n);
    padded = padded || bucket != n;
    auto const g = download(graphs.forward(ctx, reqs, kv[0], table));
    auto const p = download(graphs.forward_eager(ctx, reqs, kv[1], table));
    auto const e = download(model.forward(ctx, reqs, kv[2], table));
    ASSERT_EQ(g.size(), std::size_t(n * vocab));
    ASSERT_EQ(e.size(), g.size());
    EXPECT_EQ(0, std::memcmp(g.data(), p.data(), g.size() * 4))
        << "a replay differs from the same bucket run eagerly";
    for (std::int64_t i = 0; i < n; ++i) {
      std::vector<float> const row(e.begin() + i * vocab, e.begin() + (i + 1) * vocab);
      double const err = rel_l2(g.data() + i * vocab, row);
      worst = std::max(worst, err);
      EXPECT_LE(err, bound) << "row " << i << " of " << n;
      // A full bucket runs the kernels of the eager forward at the same sizes: the same bits.
      if (bucket == n)
        EXPECT_EQ(0, std::memcmp(g.data() + i * vocab, row.data(), std::size_t(vocab) * 4))
            << "row " << i << " of a full bucket of " << n;
    }
    for (std::int64_t r : batches[s]) ++len[std::size_t(r)];

    // The graphs' pools equal the eager bucket's bit for bit (the scratch slot too); against
    // the plain forward, every slot no decode step wrote is untouched (the scratch slot aside)
    // and the written ones agree within the logits' bound.
    auto const pg = pool_bytes(0), pe = pool_bytes(2);
    ASSERT_TRUE(pg == pool_bytes(1)) << "the replays' KV differs from the eager bucket's";
    for (std::size_t l = 0; l < pg.size(); ++l) {
      double num = 0, den = 0;
      for (std::int64_t slot = 0; slot < slots; ++slot) {
        if (slot == scratch_slot) continue;
        auto const* a = pg[l].data() + slot * 576;
        auto const* b = pe[l].data() + slot * 576;
        if (!decoded.count(slot)) {
          ASSERT_EQ(0, std::memcmp(a, b, 576 * 2))
              << "layer " << l << ", slot " << slot << ": a padding row wrote a real slot";
          continue;
        }
        for (int j = 0; j < 576; ++j) {
          double const x = bf16_to_float(a[j]), y = bf16_to_float(b[j]);
          num += (x - y) * (x - y);
          den += y * y;
        }
      }
      EXPECT_LE(std::sqrt(num / den), bound) << "layer " << l << ": decoded KV rows";
    }
    // Without a scratch slot, nothing writes it.
    if (!gc.scratch)
      for (std::size_t l = 0; l < pg.size(); ++l)
        EXPECT_EQ(pg[l][std::size_t(scratch_slot * 576)], 0xffff) << "layer " << l;
  }
  EXPECT_TRUE(padded);
  if (gc.scratch) {
    auto const pg = pool_bytes(0);
    EXPECT_NE(pg[0][std::size_t(scratch_slot * 576)], 0xffff) << "padding rows never ran";
  }
  // Four buckets, captured once (largest first), never again: the pools did not move.
  ASSERT_EQ(mem.graphs().size(), 4u);
  EXPECT_EQ(mem.graphs().front().name, "decode.bs8");
  EXPECT_EQ(mem.graphs().back().name, "decode.bs1");
  std::cout << gc.spec.config << (gc.spec.format == tools::weight_format::fp8 ? " fp8" : " bf16")
            << (gc.scratch ? ", scratch padding" : ", repeated-row padding")
            << ": worst relative L2 of graph vs plain eager logits " << worst << "\n";
}

// The executor replays graphs for decode-only steps and runs steps with prefill rows eagerly;
// with four requests (a full bucket) its draws equal an executor without graphs bit for bit.
TEST(DecodeGraphExecutorCuda, DecodeStepsReplayGraphsAndDrawWhatEagerDraws) {
  if (backend::cuda::device_count() == 0)
    GTEST_SKIP() << "no CUDA device visible: GPU tests run on a GPU machine";
  constexpr std::int64_t requests = 4, max_len = 32;
  temp_dir dir;
  gpu_t gpu(0);
  tools::random_checkpoint_options ro;
  ro.config = config_path("tiny_deepseek_v3.json");
  ro.out = dir.path();
  ro.seed = 7;
  tools::write_random_checkpoint(ro);
  auto const weights = ds::load_weights(gpu, dir.path());
  io::model_config const& c = weights.config();
  ds::decode_graph_options off;
  off.enabled = false;
  ds::executor<gpu_t> graphed(gpu, weights, ds::model_options{max_len}, requests);
  ds::executor<gpu_t> eager(gpu, weights, ds::model_options{max_len}, requests, off);
  ASSERT_TRUE(graphed.uses_graphs());
  ASSERT_FALSE(eager.uses_graphs());

  std::vector<tensor<gpu_t>> pools;
  std::vector<std::vector<tensor_view>> kv(2);
  auto stream = gpu.make_stream();
  for (auto& k : kv)
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      pools.emplace_back(gpu, dtype::bf16, dims{requests * max_len, 576});
      gpu.fill(pools.back().data(), pools.back().nbytes(), 1, 0xff, stream);
      k.push_back(pools.back().view());
    }
  tensor<gpu_t> table(gpu, dtype::i32, {requests, max_len});
  std::vector<std::int32_t> t(std::size_t(requests * max_len));
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = std::int32_t(i);
  gpu.copy(table.data(), t.data(), t.size() * 4, stream);
  stream.synchronize();

  using row = ds::executor<gpu_t>::row_type;
  std::vector<std::vector<std::int32_t>> toks(requests);
  std::vector<std::int64_t> len(requests, 0);
  for (std::int64_t r = 0; r < requests; ++r)
    for (std::int64_t j = 0; j < 3 + 2 * r; ++j)
      toks[std::size_t(r)].push_back(std::int32_t((r * 17 + j * 5 + 1) % c.vocab_size));
  // Step 0: every prompt (eager in both); steps 1-4: decode (graphs); step 5: a decode row
  // beside a prefill chunk (eager again).
  for (int s = 0; s < 6; ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    std::vector<row> rows;
    std::vector<std::vector<std::int32_t>> fed(requests);
    for (std::int64_t r = 0; r < requests; ++r) {
      auto& v = fed[std::size_t(r)];
      if (s == 0)
        v = toks[std::size_t(r)];
      else if (s == 5 && r == 3)
        v = {1, 2};  // a two-token chunk after the cached tokens: a prefill row
      else
        v = {toks[std::size_t(r)].back()};
      row x;
      x.tokens = v;
      x.cached = len[std::size_t(r)];
      x.req_row = std::int32_t(r);
      x.sample = true;
      x.sampling.temperature = 0;
      x.sampling.num_logprobs = 0;
      rows.push_back(x);
    }
    auto const a = graphed.run(rows, kv[0], table.view());
    auto const b = eager.run(rows, kv[1], table.view());
    ASSERT_EQ(a.tokens, b.tokens);
    ASSERT_EQ(a.tokens.size(), std::size_t(requests));
    EXPECT_EQ(0, std::memcmp(a.logprobs.data(), b.logprobs.data(), a.logprobs.size() * 4));
    for (std::int64_t r = 0; r < requests; ++r) {
      len[std::size_t(r)] += std::int64_t(fed[std::size_t(r)].size());
      toks[std::size_t(r)].push_back(a.tokens[std::size_t(r)]);
    }
    // Graphs are captured at the first decode step (buckets 1, 2, 3, 4) and only then.
    EXPECT_EQ(graphed.memory().graphs().size(), s == 0 ? 0u : 4u);
  }
  EXPECT_TRUE(eager.memory().graphs().empty());
}

std::string case_name(::testing::TestParamInfo<graph_case> const& p) {
  std::string n = p.param.spec.golden;
  return n.substr(0, n.find("_golden")) + (p.param.scratch ? "_scratch" : "_repeat");
}

constexpr fixture_spec v2{"tiny_v2_golden.json", "tiny_deepseek_v2.json",
                          tools::weight_format::bf16, 1e-2, 5e-2};
constexpr fixture_spec v3{"tiny_v3_golden.json", "tiny_deepseek_v3.json",
                          tools::weight_format::bf16, 1e-2, 5e-2};
constexpr fixture_spec v3_fp8{"tiny_v3_fp8_golden.json", "tiny_deepseek_v3.json",
                              tools::weight_format::fp8, 0.15, 0.15};

INSTANTIATE_TEST_SUITE_P(Tiny, DecodeGraphCuda,
                         ::testing::Values(graph_case{v2, true}, graph_case{v3, true},
                                           graph_case{v3_fp8, true}, graph_case{v2, false},
                                           graph_case{v3_fp8, false}),
                         case_name);

}  // namespace
}  // namespace lightcore::test
