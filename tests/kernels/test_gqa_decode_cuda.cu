// gqa_decode on the CUDA backend against the CPU reference: head dims 64 and 128, groups 1, 2, 4
// and 8, lengths 1, 7, 129, 1000 and 4097 (and 0) mixed in one batch, batches of 1..64 rows,
// slots scattered (shuffled) over NaN-filled pools, padded slot rows, the planned split and
// forced ones (1, 3, 128: most of them empty for short rows), outputs poisoned first; one CUDA
// graph replayed with different lengths giving the eager result bit for bit; host views refused.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "common/seed.hpp"
#include "convert_test_util.hpp"
#include "gqa_decode_test_util.hpp"
#include "kernels/attention/gqa_decode.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using test::gqa_batch;
using test::make_batch;

using kernels::gqa_decode_args;
using kernels::gqa_decode_plan;

class GqaDecodeCudaTest : public test::cuda_test {};

// 0xFF bytes: bf16 and f32 NaN, which the kernels never write.
constexpr std::uint64_t poison_byte = 0xFF;

struct host_result {
  std::vector<bf16> out;   // [batch, q_heads, dim]
  std::vector<float> lse;  // [batch, q_heads]
};

gqa_decode_args views(gqa_batch const& m, tensor_view const& q, tensor_view const& k,
                      tensor_view const& v, tensor_view const& table, tensor_view const& req_rows,
                      tensor_view const& seq_lens, tensor_view const& out, tensor_view const& lse,
                      float scale) {
  dims const shape{m.slots, m.kv_heads, m.dim}, strides{m.slot_stride, m.dim, 1};
  gqa_decode_args a;
  a.q = q;
  a.k_cache = tensor_view(k.data(), dtype::bf16, shape, strides, k.where());
  a.v_cache = tensor_view(v.data(), dtype::bf16, shape, strides, v.where());
  a.req_to_token = table;
  a.req_rows = req_rows;
  a.seq_lens = seq_lens;
  a.out = out;
  a.lse = lse;
  a.softmax_scale = scale;
  return a;
}

host_result run_cpu(gqa_batch& m, float scale) {
  backend::cpu cpu;
  host_result r{std::vector<bf16>(std::size_t(m.batch * m.q_heads * m.dim)),
                std::vector<float>(std::size_t(m.batch * m.q_heads))};
  auto const a = views(m, tensor_view(m.q.data(), dtype::bf16, {m.batch, m.q_heads, m.dim}),
                       tensor_view(m.k.data(), dtype::bf16, {m.slots * m.slot_stride}),
                       tensor_view(m.v.data(), dtype::bf16, {m.slots * m.slot_stride}),
                       tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns}),
                       tensor_view(m.req_rows.data(), dtype::i32, {m.batch}),
                       tensor_view(m.seq_lens.data(), dtype::i32, {m.batch}),
                       tensor_view(r.out.data(), dtype::bf16, {m.batch, m.q_heads, m.dim}),
                       tensor_view(r.lse.data(), dtype::f32, {m.batch, m.q_heads}), scale);
  kernels::gqa_decode(cpu, a, gqa_decode_plan{}, tensor_view(), cpu.make_stream());
  return r;
}

// The batch's buffers on the GPU.
struct device_batch {
  tensor<backend::cuda> q, k, v, table, req_rows, seq_lens, out, lse, workspace;

  device_batch(backend::cuda& gpu, gqa_batch const& m, std::int64_t workspace_bytes,
               backend::cuda::stream_type const& s)
      : q(test::upload(gpu, m.q, dtype::bf16, {m.batch, m.q_heads, m.dim}, s)),
        k(test::upload(gpu, m.k, dtype::bf16, {m.slots * m.slot_stride}, s)),
        v(test::upload(gpu, m.v, dtype::bf16, {m.slots * m.slot_stride}, s)),
        table(test::upload(gpu, m.table, dtype::i32, {m.requests, m.columns}, s)),
        req_rows(test::upload(gpu, m.req_rows, dtype::i32, {m.batch}, s)),
        seq_lens(test::upload(gpu, m.seq_lens, dtype::i32, {m.batch}, s)),
        out(gpu, dtype::bf16, {m.batch, m.q_heads, m.dim}),
        lse(gpu, dtype::f32, {m.batch, m.q_heads}),
        workspace(gpu, dtype::u8, {std::max<std::int64_t>(workspace_bytes, 256)}) {}

  gqa_decode_args args(gqa_batch const& m, float scale) const {
    return views(m, q, k, v, table, req_rows, seq_lens, out, lse, scale);
  }

  void poison(backend::cuda& gpu, backend::cuda::stream_type const& stream) {
    gpu.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
    gpu.fill(lse.data(), lse.nbytes(), 1, poison_byte, stream);
  }

  host_result download(backend::cuda& gpu, backend::cuda::stream_type const& stream) const {
    return {test::download<bf16>(gpu, out, stream), test::download<float>(gpu, lse, stream)};
  }
};

// Tolerances against the fp32 CPU reference: the kernel rounds P to bf16 before P V (2^-9
// relative per weight, averaging out over the positions) and both sides round the output to bf16
// once: ~2e-3 relative L2 expected per (row, head), 1e-2 allowed; a wrong position, head, slot or
// scale gives errors of order 1 (and a NaN slot row NaN). lse is fp32 on both sides: 1e-3. Empty
// rows: exactly 0 and -inf.
void expect_close(gqa_batch const& m, host_result const& got, host_result const& want) {
  std::int64_t bad = 0;
  double worst = 0;
  std::size_t const d = std::size_t(m.dim);
  for (std::int64_t b = 0; b < m.batch; ++b) {
    for (std::int64_t h = 0; h < m.q_heads; ++h) {
      std::size_t const row = std::size_t(b * m.q_heads + h);
      bf16 const* g = &got.out[row * d];
      float const gl = got.lse[row], wl = want.lse[row];
      if (m.seq_lens[std::size_t(b)] == 0) {
        for (std::size_t i = 0; i < d; ++i)
          if (!(float(g[i]) == 0.0f) && ++bad <= 8)
            ADD_FAILURE() << "row " << b << " (empty) head " << h << " col " << i << ": "
                          << float(g[i]);
        if (!(std::isinf(gl) && gl < 0) && ++bad <= 8)
          ADD_FAILURE() << "row " << b << " (empty) head " << h << " lse " << gl;
        continue;
      }
      std::vector<float> w(d);
      for (std::size_t i = 0; i < d; ++i) w[i] = float(want.out[row * d + i]);
      double const err = test::relative_l2(g, w.data(), m.dim);
      worst = std::max(worst, std::isnan(err) ? 1e9 : err);
      if (!(err <= 1e-2) && ++bad <= 8)
        ADD_FAILURE() << "row " << b << " (length " << m.seq_lens[std::size_t(b)] << ") head " << h
                      << ": relative L2 error " << err;
      if (!(std::abs(gl - wl) <= 1e-3 * (1 + std::abs(wl))) && ++bad <= 8)
        ADD_FAILURE() << "row " << b << " head " << h << ": lse " << gl << ", want " << wl;
    }
  }
  EXPECT_EQ(bad, 0);
  std::cout << "  worst relative L2 error " << worst << "\n";
}

gqa_decode_plan forced_plan(gqa_batch const& m, int splits) {
  return {splits, kernels::detail::gqa_decode_workspace_bytes(m.batch, m.q_heads, m.dim, splits)};
}

// Runs the batch on the GPU with the planned split and forced ones, and compares with the CPU.
void check_decode(std::vector<std::int32_t> const& lens, std::int64_t q_heads,
                  std::int64_t kv_heads, std::int64_t dim, std::int64_t pad = 0) {
  SCOPED_TRACE(::testing::Message() << "q_heads " << q_heads << ", kv_heads " << kv_heads
                                    << ", dim " << dim << ", batch " << lens.size());
  auto rng = test::test_rng();
  float const scale = 1.0f / std::sqrt(float(dim));
  auto m = make_batch(lens, q_heads, kv_heads, dim, rng, kv_heads * dim + pad);
  auto const want = run_cpu(m, scale);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const planned = kernels::plan_gqa_decode(gpu, m.batch, q_heads, kv_heads, dim);
  std::vector<gqa_decode_plan> plans = {planned, forced_plan(m, 1), forced_plan(m, 3),
                                        forced_plan(m, kernels::gqa_decode_max_splits)};
  std::int64_t most = 0;
  for (auto const& p : plans) most = std::max(most, p.workspace_bytes);
  device_batch d(gpu, m, most, stream);
  for (auto const& plan : plans) {
    SCOPED_TRACE(::testing::Message() << plan.num_splits << " splits");
    d.poison(gpu, stream);
    kernels::gqa_decode(gpu, d.args(m, scale), plan, d.workspace, stream);
    expect_close(m, d.download(gpu, stream), want);
  }
}

std::vector<std::int32_t> random_lengths(std::int64_t n, std::int32_t lo, std::int32_t hi,
                                         std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> dist(lo, hi);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// (head dim, group): q_heads = 2 * group over 2 kv heads.
class GqaDecodeCuda : public GqaDecodeCudaTest,
                      public ::testing::WithParamInterface<std::tuple<int, int>> {
 protected:
  std::int64_t dim() const { return std::get<0>(GetParam()); }
  std::int64_t group() const { return std::get<1>(GetParam()); }
};

TEST_P(GqaDecodeCuda, OneRowOfOneToken) { check_decode({1}, 2 * group(), 2, dim()); }

TEST_P(GqaDecodeCuda, MixedLengthsInOneBatch) {
  check_decode({1, 7, 129, 1000, 4097}, 2 * group(), 2, dim());
}

TEST_P(GqaDecodeCuda, MixedLengthsWithEmptyRowsAndPaddedSlots) {
  check_decode({4097, 0, 7, 64, 65, 1, 0, 129, 1000, 63}, 2 * group(), 2, dim(), 8);
}

TEST_P(GqaDecodeCuda, Batch64) {
  auto rng = test::test_rng();
  auto lens = random_lengths(64, 1, 300, rng);
  lens[5] = 4097;
  lens[40] = 1000;
  check_decode(lens, 2 * group(), 2, dim());
}

INSTANTIATE_TEST_SUITE_P(Shapes, GqaDecodeCuda,
                         ::testing::Combine(::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 4, 8)),
                         [](::testing::TestParamInfo<std::tuple<int, int>> const& info) {
                           return "D" + std::to_string(std::get<0>(info.param)) + "G" +
                                  std::to_string(std::get<1>(info.param));
                         });

// The benchmark's head layout (64 query heads over 8 kv heads, d 128) and Llama-style 32 over 8.
TEST_F(GqaDecodeCudaTest, EightKvHeads) {
  check_decode({1000, 7, 4097, 129}, 64, 8, 128);
  check_decode({129, 1, 2000}, 32, 8, 128);
  check_decode({129, 1, 2000}, 32, 8, 64);
}

// One captured graph, replayed with new lengths (device memory changed between replays, as the
// engine does), gives the eager result bit for bit, and that matches the CPU reference.
void check_graph_replays(std::int64_t dim, std::int64_t group) {
  SCOPED_TRACE(::testing::Message() << "dim " << dim << ", group " << group);
  auto rng = test::test_rng();
  float const scale = 1.0f / std::sqrt(float(dim));
  std::int64_t const batch = 6, kv_heads = 2, q_heads = kv_heads * group;
  auto m = make_batch(std::vector<std::int32_t>(batch, 3000), q_heads, kv_heads, dim, rng);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const plan = kernels::plan_gqa_decode(gpu, batch, q_heads, kv_heads, dim);
  EXPECT_GT(plan.num_splits, 1) << "6 rows should be split (the merge runs in the graph)";
  device_batch d(gpu, m, plan.workspace_bytes, stream);
  tensor<backend::cuda> eager_out(gpu, dtype::bf16, {batch, q_heads, dim});
  tensor<backend::cuda> eager_lse(gpu, dtype::f32, {batch, q_heads});
  stream.synchronize();

  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  kernels::gqa_decode(gpu, d.args(m, scale), plan, d.workspace, stream);
  LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  LC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    auto lens = random_lengths(batch, 0, 3000, rng);
    lens[std::size_t(round)] = round == 0 ? 1 : 3000;
    m.seq_lens = lens;
    gpu.copy(d.seq_lens.data(), lens.data(), d.seq_lens.nbytes(), stream);
    d.poison(gpu, stream);
    LC_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
    auto const replayed = d.download(gpu, stream);
    auto eager_args = d.args(m, scale);
    eager_args.out = eager_out;
    eager_args.lse = eager_lse;
    gpu.fill(eager_out.data(), eager_out.nbytes(), 1, poison_byte, stream);
    kernels::gqa_decode(gpu, eager_args, plan, d.workspace, stream);
    auto const eo = test::download<bf16>(gpu, eager_out, stream);
    auto const el = test::download<float>(gpu, eager_lse, stream);
    EXPECT_EQ(std::memcmp(eo.data(), replayed.out.data(), eo.size() * sizeof(bf16)), 0)
        << "graph replay and eager outputs differ";
    EXPECT_EQ(std::memcmp(el.data(), replayed.lse.data(), el.size() * sizeof(float)), 0)
        << "graph replay and eager lse differ";
    expect_close(m, replayed, run_cpu(m, scale));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(GqaDecodeCudaTest, GraphReplaysWithNewLengthsD128G4) { check_graph_replays(128, 4); }
TEST_F(GqaDecodeCudaTest, GraphReplaysWithNewLengthsD64G8) { check_graph_replays(64, 8); }

TEST_F(GqaDecodeCudaTest, RejectsHostViews) {
  backend::cuda gpu(0);
  auto rng = test::test_rng();
  auto m = make_batch({4}, 4, 2, 64, rng);
  host_result r{std::vector<bf16>(4 * 64), std::vector<float>(4)};
  auto const a = views(m, tensor_view(m.q.data(), dtype::bf16, {1, 4, 64}),
                       tensor_view(m.k.data(), dtype::bf16, {m.slots * m.slot_stride}),
                       tensor_view(m.v.data(), dtype::bf16, {m.slots * m.slot_stride}),
                       tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns}),
                       tensor_view(m.req_rows.data(), dtype::i32, {1}),
                       tensor_view(m.seq_lens.data(), dtype::i32, {1}),
                       tensor_view(r.out.data(), dtype::bf16, {1, 4, 64}),
                       tensor_view(r.lse.data(), dtype::f32, {1, 4}), 0.125f);
  test::expect_error(
      [&] { kernels::gqa_decode(gpu, a, gqa_decode_plan{}, tensor_view(), gpu.make_stream()); },
      {"gqa_decode on cuda:0 needs every view there"});
}

}  // namespace
}  // namespace lightcore
