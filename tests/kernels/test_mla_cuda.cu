// mla on the CUDA backend against the CPU reference: the absorbed decode for H = 16 (the streaming
// kernel), 64 and 128 (the wgmma kernel with one and two head tiles per row) over batches of
// 1..256 rows with mixed lengths 0..32768, slots scattered over a pool whose free rows
// are NaN, q as the two parts of one [batch, heads, 576] projection, the planned split and forced
// ones (1, 3, 128: most of them empty for short rows), outputs poisoned first; table entries
// outside the pool read as zero rows; one CUDA graph replayed with different lengths giving the
// eager result bit for bit; W_UV folded into the merge (batches up to 8, every split, graphs); the
// KV writes bit for bit.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/mla/mla.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using kernels::kv_slots;
using kernels::mla_decode_args;
using kernels::mla_decode_plan;
using test::mla_batch;
using test::mla_latent;
using test::mla_rope;
using test::mla_width;

class MlaCudaTest : public test::cuda_test {};

// 0xFF bytes: bf16 and f32 NaN, which the kernels never write.
constexpr std::uint64_t poison_byte = 0xFF;

struct host_result {
  std::vector<bf16> out;   // [batch, heads, 512]
  std::vector<float> lse;  // [batch, heads]
};

mla_decode_args views(mla_batch const& m, tensor_view const& q, tensor_view const& pool,
                      tensor_view const& table, tensor_view const& req_rows,
                      tensor_view const& seq_lens, tensor_view const& out, tensor_view const& lse,
                      float scale) {
  mla_decode_args a;
  a.q_nope = q.slice(2, 0, mla_latent);
  a.q_rope = q.slice(2, mla_latent, mla_width);
  a.kv_cache =
      tensor_view(pool.data(), dtype::bf16, {m.slots, mla_width}, {m.pool_stride, 1}, pool.where());
  a.req_to_token = table;
  a.req_rows = req_rows;
  a.seq_lens = seq_lens;
  a.out = out;
  a.lse = lse;
  a.softmax_scale = scale;
  return a;
}

host_result run_cpu(mla_batch& m, float scale) {
  backend::cpu cpu;
  host_result r{std::vector<bf16>(std::size_t(m.batch * m.heads * mla_latent)),
                std::vector<float>(std::size_t(m.batch * m.heads))};
  auto const a = views(m, tensor_view(m.q.data(), dtype::bf16, {m.batch, m.heads, mla_width}),
                       tensor_view(m.pool.data(), dtype::bf16, {m.slots * m.pool_stride}),
                       tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns}),
                       tensor_view(m.req_rows.data(), dtype::i32, {m.batch}),
                       tensor_view(m.seq_lens.data(), dtype::i32, {m.batch}),
                       tensor_view(r.out.data(), dtype::bf16, {m.batch, m.heads, mla_latent}),
                       tensor_view(r.lse.data(), dtype::f32, {m.batch, m.heads}), scale);
  kernels::mla_decode(cpu, a, kernels::plan_mla_decode(cpu, m.batch, m.heads), tensor_view(),
                      cpu.make_stream());
  return r;
}

// The batch's buffers on the GPU.
struct device_batch {
  tensor<backend::cuda> q, pool, table, req_rows, seq_lens, out, lse, workspace;

  device_batch(backend::cuda& gpu, mla_batch const& m, mla_decode_plan const& plan,
               backend::cuda::stream_type const& stream)
      : q(gpu, dtype::bf16, {m.batch, m.heads, mla_width}),
        pool(gpu, dtype::bf16, {m.slots * m.pool_stride}),
        table(gpu, dtype::i32, {m.requests, m.columns}),
        req_rows(gpu, dtype::i32, {m.batch}),
        seq_lens(gpu, dtype::i32, {m.batch}),
        out(gpu, dtype::bf16, {m.batch, m.heads, mla_latent}),
        lse(gpu, dtype::f32, {m.batch, m.heads}),
        workspace(gpu, dtype::u8, {std::max<std::int64_t>(plan.workspace_bytes, 256)}) {
    gpu.copy(q.data(), m.q.data(), q.nbytes(), stream);
    gpu.copy(pool.data(), m.pool.data(), pool.nbytes(), stream);
    gpu.copy(table.data(), m.table.data(), table.nbytes(), stream);
    gpu.copy(req_rows.data(), m.req_rows.data(), req_rows.nbytes(), stream);
    gpu.copy(seq_lens.data(), m.seq_lens.data(), seq_lens.nbytes(), stream);
  }

  mla_decode_args args(mla_batch const& m, float scale) const {
    return views(m, q, pool, table, req_rows, seq_lens, out, lse, scale);
  }

  void poison(backend::cuda& gpu, backend::cuda::stream_type const& stream) {
    gpu.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
    gpu.fill(lse.data(), lse.nbytes(), 1, poison_byte, stream);
  }

  host_result download(backend::cuda& gpu, backend::cuda::stream_type const& stream) const {
    host_result r{std::vector<bf16>(std::size_t(out.numel())),
                  std::vector<float>(std::size_t(lse.numel()))};
    gpu.copy(r.out.data(), out.data(), out.nbytes(), stream);
    gpu.copy(r.lse.data(), lse.data(), lse.nbytes(), stream);
    stream.synchronize();
    return r;
  }
};

// Tolerances against the fp32 CPU reference: the kernel rounds P to bf16 before P V (2^-9
// relative per weight, averaging out over the positions) and both sides round the output to bf16
// once (2^-9 relative at most each): ~2e-3 relative L2 expected per (row, head), 1e-2 allowed; a
// wrong position, head or scale gives errors of order 1. lse is fp32 on both sides (P's rounding
// does not enter the sum): 1e-3 allowed. Empty rows: exactly 0 and -inf.
void expect_close(mla_batch const& m, host_result const& got, host_result const& want) {
  std::int64_t bad = 0;
  double worst = 0;
  for (std::int64_t b = 0; b < m.batch; ++b) {
    for (std::int64_t h = 0; h < m.heads; ++h) {
      std::size_t const row = std::size_t(b * m.heads + h);
      bf16 const* g = &got.out[row * mla_latent];
      float const gl = got.lse[row], wl = want.lse[row];
      if (m.seq_lens[std::size_t(b)] == 0) {
        for (std::int64_t d = 0; d < mla_latent; ++d)
          if (!(float(g[d]) == 0.0f) && ++bad <= 8)
            ADD_FAILURE() << "row " << b << " (empty) head " << h << " col " << d << ": "
                          << float(g[d]);
        if (!(std::isinf(gl) && gl < 0) && ++bad <= 8)
          ADD_FAILURE() << "row " << b << " (empty) head " << h << " lse " << gl;
        continue;
      }
      std::vector<float> w(mla_latent);
      for (std::int64_t d = 0; d < mla_latent; ++d)
        w[std::size_t(d)] = float(want.out[row * mla_latent + std::size_t(d)]);
      double const err = test::relative_l2(g, w.data(), mla_latent);
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

mla_decode_plan forced_plan(std::int64_t batch, std::int64_t heads, int splits) {
  return {splits, kernels::detail::mla_workspace_bytes(batch, heads, splits)};
}

// Runs the batch on the GPU with the planned split and each forced one, and compares.
void check_decode(std::vector<std::int32_t> const& lens, std::int64_t heads,
                  std::int64_t pool_stride = mla_width) {
  SCOPED_TRACE(::testing::Message() << "H " << heads << ", batch " << lens.size());
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  auto m = test::make_mla_batch(lens, heads, rng, 37, pool_stride);
  auto const want = run_cpu(m, scale);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const planned = kernels::plan_mla_decode(gpu, m.batch, m.heads);
  std::vector<mla_decode_plan> plans = {planned, forced_plan(m.batch, heads, 1),
                                        forced_plan(m.batch, heads, 3)};
  // The most splits (most of them empty for short rows) where the workspace stays under 512 MiB.
  auto const widest = forced_plan(m.batch, heads, kernels::mla_max_splits);
  if (widest.workspace_bytes <= (std::int64_t(512) << 20)) plans.push_back(widest);
  std::int64_t most = 0;
  for (auto const& p : plans) most = std::max(most, p.workspace_bytes);
  device_batch d(gpu, m, {1, most}, stream);
  for (auto const& plan : plans) {
    SCOPED_TRACE(::testing::Message() << plan.num_splits << " splits");
    d.poison(gpu, stream);
    kernels::mla_decode(gpu, d.args(m, scale), plan, d.workspace, stream);
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

class MlaDecodeCuda : public MlaCudaTest, public ::testing::WithParamInterface<std::int64_t> {};

TEST_P(MlaDecodeCuda, OneRowOfOneToken) { check_decode({1}, GetParam()); }

TEST_P(MlaDecodeCuda, MixedLengthsAroundTheBlockSizes) {
  check_decode({1, 63, 64, 65, 127, 1000, 3, 31, 32, 33}, GetParam(), mla_width + 64);
}

TEST_P(MlaDecodeCuda, LongContexts) { check_decode({32768, 1, 4097}, GetParam()); }

TEST_P(MlaDecodeCuda, EmptyRows) { check_decode({0, 5, 0, 300}, GetParam()); }

TEST_P(MlaDecodeCuda, Batch256) {
  auto rng = test::test_rng();
  // The CPU reference's time bounds the lengths: ~5 GFLOP at either head count.
  check_decode(random_lengths(256, 1, GetParam() == 16 ? 1200 : 300, rng), GetParam());
}

// Table entries naming slots outside the pool (negative, or past its end) read as zero rows on
// the GPU, as mla_decode documents (the CPU reference rejects them): the result equals the CPU's
// with those positions pointing at an extra all-zero row. The entries sit at block edges, in a
// split's last partial block and in a row of 3 tokens, so the zero fill of a gathered row is
// exercised next to real rows and to masked positions.
void check_slots_outside_the_pool(std::int64_t heads) {
  SCOPED_TRACE(::testing::Message() << "H " << heads);
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  auto m = test::make_mla_batch({100, 40, 3}, heads, rng);
  auto ref = m;  // the pool plus one zero row, which the bad positions point at
  auto const zero_slot = std::int32_t(m.slots);
  ref.slots += 1;
  ref.pool.resize(std::size_t(ref.slots * ref.pool_stride), bf16(0.0f));
  struct bad_entry {
    std::size_t b;
    std::int64_t pos;
    std::int32_t entry;
  };
  for (auto const& e :
       {bad_entry{0, 0, -1}, bad_entry{0, 31, zero_slot}, bad_entry{0, 32, -7},
        bad_entry{0, 99, zero_slot + 1000}, bad_entry{1, 39, -1}, bad_entry{2, 1, zero_slot}}) {
    auto const at = std::size_t(m.req_rows[e.b] * m.columns + e.pos);
    m.table[at] = e.entry;
    ref.table[at] = zero_slot;
  }
  auto const want = run_cpu(ref, scale);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const planned = kernels::plan_mla_decode(gpu, m.batch, m.heads);
  auto const three = forced_plan(m.batch, heads, 3);
  device_batch d(gpu, m, {1, std::max(planned.workspace_bytes, three.workspace_bytes)}, stream);
  for (auto const& plan : {planned, three}) {
    SCOPED_TRACE(::testing::Message() << plan.num_splits << " splits");
    d.poison(gpu, stream);
    kernels::mla_decode(gpu, d.args(m, scale), plan, d.workspace, stream);
    expect_close(m, d.download(gpu, stream), want);
  }
}

TEST_P(MlaDecodeCuda, SlotsOutsideThePoolReadAsZeroRows) {
  check_slots_outside_the_pool(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Heads, MlaDecodeCuda, ::testing::Values<std::int64_t>(16, 64, 128),
                         [](::testing::TestParamInfo<std::int64_t> const& info) {
                           return "H" + std::to_string(info.param);
                         });

// One captured graph, replayed with new lengths (device memory changed between replays, as the
// engine does), gives the eager result bit for bit, and that matches the CPU reference.
void check_graph_replays(std::int64_t heads) {
  SCOPED_TRACE(::testing::Message() << "H " << heads);
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  std::int64_t const batch = 12;
  auto m = test::make_mla_batch(std::vector<std::int32_t>(batch, 3000), heads, rng);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const plan = kernels::plan_mla_decode(gpu, batch, heads);
  EXPECT_GT(plan.num_splits, 1) << "12 rows should be split (the merge runs in the graph)";
  device_batch d(gpu, m, plan, stream);
  tensor<backend::cuda> eager_out(gpu, dtype::bf16, {batch, heads, mla_latent});
  tensor<backend::cuda> eager_lse(gpu, dtype::f32, {batch, heads});
  stream.synchronize();

  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  kernels::mla_decode(gpu, d.args(m, scale), plan, d.workspace, stream);
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
    kernels::mla_decode(gpu, eager_args, plan, d.workspace, stream);
    std::vector<bf16> eo(std::size_t(eager_out.numel()));
    std::vector<float> el(std::size_t(eager_lse.numel()));
    gpu.copy(eo.data(), eager_out.data(), eager_out.nbytes(), stream);
    gpu.copy(el.data(), eager_lse.data(), eager_lse.nbytes(), stream);
    stream.synchronize();
    EXPECT_EQ(std::memcmp(eo.data(), replayed.out.data(), eo.size() * sizeof(bf16)), 0)
        << "graph replay and eager outputs differ";
    EXPECT_EQ(std::memcmp(el.data(), replayed.lse.data(), el.size() * sizeof(float)), 0)
        << "graph replay and eager lse differ";
    expect_close(m, replayed, run_cpu(m, scale));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(MlaCudaTest, GraphReplaysWithNewLengthsH16) { check_graph_replays(16); }
TEST_F(MlaCudaTest, GraphReplaysWithNewLengthsH128) { check_graph_replays(128); }

TEST_F(MlaCudaTest, DecodeRejectsHostViews) {
  backend::cuda gpu(0);
  auto rng = test::test_rng();
  auto m = test::make_mla_batch({4}, 16, rng);
  host_result r{std::vector<bf16>(16 * mla_latent), std::vector<float>(16)};
  auto const a = views(m, tensor_view(m.q.data(), dtype::bf16, {1, 16, mla_width}),
                       tensor_view(m.pool.data(), dtype::bf16, {m.slots * m.pool_stride}),
                       tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns}),
                       tensor_view(m.req_rows.data(), dtype::i32, {1}),
                       tensor_view(m.seq_lens.data(), dtype::i32, {1}),
                       tensor_view(r.out.data(), dtype::bf16, {1, 16, mla_latent}),
                       tensor_view(r.lse.data(), dtype::f32, {1, 16}), 0.1f);
  test::expect_error(
      [&] {
        kernels::mla_decode(gpu, a, kernels::plan_mla_decode(gpu, 1, 16), tensor_view(),
                            gpu.make_stream());
      },
      {"mla_decode on cuda:0 needs every view there"});
}

// ---- W_UV folded into the merge: out_v[b, h] = out[b, h] . w_uv[h]^T ----

// The CPU reference of the folded product (out as bf16, fp32 sums), with out written too.
std::vector<bf16> run_cpu_folded(mla_batch& m, float scale, std::vector<bf16>& w_uv,
                                 std::int64_t v_dim) {
  backend::cpu cpu;
  std::vector<bf16> out_v(std::size_t(m.batch * m.heads * v_dim));
  auto a = views(m, tensor_view(m.q.data(), dtype::bf16, {m.batch, m.heads, mla_width}),
                 tensor_view(m.pool.data(), dtype::bf16, {m.slots * m.pool_stride}),
                 tensor_view(m.table.data(), dtype::i32, {m.requests, m.columns}),
                 tensor_view(m.req_rows.data(), dtype::i32, {m.batch}),
                 tensor_view(m.seq_lens.data(), dtype::i32, {m.batch}), tensor_view(),
                 tensor_view(), scale);
  a.w_uv = tensor_view(w_uv.data(), dtype::bf16, {m.heads, v_dim, mla_latent});
  a.out_v = tensor_view(out_v.data(), dtype::bf16, {m.batch, m.heads, v_dim});
  kernels::mla_decode(cpu, a, kernels::plan_mla_decode(cpu, m.batch, m.heads), tensor_view(),
                      cpu.make_stream());
  return out_v;
}

// The planned split and forced ones (3, and 128: most splits empty), out left unwritten: each
// (row, head) of out_v within 1e-2 relative L2 of the CPU (the latent's error, ~2e-3, carried
// through a random projection), empty rows exactly 0.
void check_folded(std::vector<std::int32_t> const& lens, std::int64_t heads) {
  SCOPED_TRACE(::testing::Message() << "H " << heads << ", batch " << lens.size());
  constexpr std::int64_t v_dim = 128;
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  auto m = test::make_mla_batch(lens, heads, rng, 37);
  auto w_uv = test::normal_bf16(std::size_t(heads * v_dim * mla_latent), 0.05f, rng);
  auto const want = run_cpu_folded(m, scale, w_uv, v_dim);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const planned = kernels::plan_mla_decode(gpu, m.batch, heads);
  ASSERT_TRUE(kernels::mla_decode_folds_w_uv(gpu, planned, m.batch));
  std::vector<mla_decode_plan> const plans = {planned, forced_plan(m.batch, heads, 3),
                                              forced_plan(m.batch, heads, kernels::mla_max_splits)};
  std::int64_t most = 0;
  for (auto const& p : plans) most = std::max(most, p.workspace_bytes);
  device_batch d(gpu, m, {1, most}, stream);
  tensor<backend::cuda> w(gpu, dtype::bf16, {heads, v_dim, mla_latent});
  tensor<backend::cuda> out_v(gpu, dtype::bf16, {m.batch, heads, v_dim});
  gpu.copy(w.data(), w_uv.data(), w.nbytes(), stream);
  for (auto const& plan : plans) {
    SCOPED_TRACE(::testing::Message() << plan.num_splits << " splits");
    gpu.fill(out_v.data(), out_v.nbytes(), 1, poison_byte, stream);
    auto a = d.args(m, scale);
    a.out = tensor_view();
    a.lse = tensor_view();
    a.w_uv = w;
    a.out_v = out_v;
    kernels::mla_decode(gpu, a, plan, d.workspace, stream);
    std::vector<bf16> got(want.size());
    gpu.copy(got.data(), out_v.data(), out_v.nbytes(), stream);
    stream.synchronize();
    std::int64_t bad = 0;
    for (std::int64_t b = 0; b < m.batch; ++b) {
      for (std::int64_t h = 0; h < heads; ++h) {
        std::size_t const at = std::size_t((b * heads + h) * v_dim);
        std::vector<float> wf(static_cast<std::size_t>(v_dim));
        for (std::int64_t c = 0; c < v_dim; ++c) wf[std::size_t(c)] = float(want[at + c]);
        bool const empty = m.seq_lens[std::size_t(b)] == 0;
        bool ok = true;
        if (empty) {
          for (std::int64_t c = 0; c < v_dim; ++c) ok = ok && float(got[at + c]) == 0.0f;
        } else {
          ok = test::relative_l2(&got[at], wf.data(), v_dim) <= 1e-2;
        }
        if (!ok && ++bad <= 8)
          ADD_FAILURE() << "row " << b << " (length " << m.seq_lens[std::size_t(b)] << ") head "
                        << h << ": relative L2 error "
                        << test::relative_l2(&got[at], wf.data(), v_dim);
      }
    }
    EXPECT_EQ(bad, 0);
  }

  // A plan that does not split, or more rows than the fold takes, are refused with the reason.
  auto a = d.args(m, scale);
  a.out = tensor_view();
  a.w_uv = w;
  a.out_v = out_v;
  test::expect_error(
      [&] { kernels::mla_decode(gpu, a, forced_plan(m.batch, heads, 1), d.workspace, stream); },
      {"folds W_UV into the merge of a split plan", "1 splits"});
  EXPECT_FALSE(kernels::mla_decode_folds_w_uv(gpu, forced_plan(m.batch, heads, 1), m.batch));
  EXPECT_FALSE(kernels::mla_decode_folds_w_uv(gpu, planned, kernels::mla_fold_w_uv_max_batch + 1));
}

TEST_F(MlaCudaTest, FoldedWuvOneRowH16) { check_folded({1024}, 16); }
TEST_F(MlaCudaTest, FoldedWuvMixedRowsH16) { check_folded({1, 0, 300, 4097}, 16); }
TEST_F(MlaCudaTest, FoldedWuvEightRowsH128) {
  check_folded({7, 64, 1000, 33, 0, 2048, 5, 129}, 128);
}

// The folded decode captured in a graph and replayed gives the eager result bit for bit.
TEST_F(MlaCudaTest, FoldedWuvGraphReplaysAsEager) {
  constexpr std::int64_t heads = 16, v_dim = 128, batch = 2;
  auto rng = test::test_rng();
  float const scale = test::deepseek_softmax_scale();
  auto m = test::make_mla_batch({700, 1500}, heads, rng);
  auto w_uv = test::normal_bf16(std::size_t(heads * v_dim * mla_latent), 0.05f, rng);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto const plan = kernels::plan_mla_decode(gpu, batch, heads);
  device_batch d(gpu, m, plan, stream);
  tensor<backend::cuda> w(gpu, dtype::bf16, {heads, v_dim, mla_latent});
  tensor<backend::cuda> out_v(gpu, dtype::bf16, {batch, heads, v_dim});
  gpu.copy(w.data(), w_uv.data(), w.nbytes(), stream);
  auto a = d.args(m, scale);
  a.out = tensor_view();
  a.lse = tensor_view();
  a.w_uv = w;
  a.out_v = out_v;
  std::vector<bf16> eager(std::size_t(out_v.numel())), replayed(eager.size());
  kernels::mla_decode(gpu, a, plan, d.workspace, stream);
  gpu.copy(eager.data(), out_v.data(), out_v.nbytes(), stream);
  stream.synchronize();
  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  kernels::mla_decode(gpu, a, plan, d.workspace, stream);
  LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  LC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  gpu.fill(out_v.data(), out_v.nbytes(), 1, poison_byte, stream);
  LC_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
  gpu.copy(replayed.data(), out_v.data(), out_v.nbytes(), stream);
  stream.synchronize();
  EXPECT_EQ(std::memcmp(eager.data(), replayed.data(), eager.size() * sizeof(bf16)), 0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// ---- KV writes: the GPU pool equals the CPU pool bit for bit, from the same NaN pool ----

struct write_case {
  std::int64_t tokens, slots;
  std::vector<bf16> a, b;         // latent and rope, or k and v
  std::vector<std::int32_t> ids;  // scattered distinct slots, some -1
  std::vector<std::int32_t> table, rows, positions;
  std::int64_t requests = 4, columns = 0;
};

write_case make_write_case(std::int64_t tokens, std::int64_t width_a, std::int64_t width_b,
                           std::mt19937_64& rng) {
  write_case c{tokens, tokens * 3 + 11, {}, {}, {}, {}, {}, {}};
  c.a = test::normal_bf16(std::size_t(tokens * width_a), 1.0f, rng);
  c.b = test::normal_bf16(std::size_t(tokens * width_b), 1.0f, rng);
  std::vector<std::int32_t> all(std::size_t(c.slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  c.ids.assign(all.begin(), all.begin() + tokens);
  for (std::int64_t t = 0; t < tokens; t += 7) c.ids[std::size_t(t)] = -1;
  // Through the table: token t at position t / 4 of request row t % 4, the table a permutation.
  c.columns = (tokens + 3) / 4;
  c.table.assign(all.begin(), all.begin() + c.requests * c.columns);
  for (std::int64_t t = 0; t < tokens; ++t) {
    c.rows.push_back(std::int32_t(t % 4));
    c.positions.push_back(std::int32_t(t / 4));
  }
  return c;
}

// The inputs of a write on one backend (the CPU backend uses the host vectors in place).
struct write_views {
  tensor_view a, b, ids, table, rows, positions;
};

template <class B, class T>
tensor_view on(B& backend, std::vector<T>& v, dims shape, std::vector<tensor<backend::cuda>>& keep,
               typename B::stream_type const& stream) {
  if constexpr (B::kind == device_kind::cpu) {
    return tensor_view(v.data(), dtype_of<T>::value, shape);
  } else {
    keep.emplace_back(backend, dtype_of<T>::value, shape);
    backend.copy(keep.back().data(), v.data(), keep.back().nbytes(), stream);
    return keep.back();
  }
}

template <class B>
write_views upload(B& be, write_case& c, dims a_shape, dims b_shape,
                   std::vector<tensor<backend::cuda>>& keep, typename B::stream_type const& s) {
  return {on(be, c.a, a_shape, keep, s),       on(be, c.b, b_shape, keep, s),
          on(be, c.ids, {c.tokens}, keep, s),  on(be, c.table, {c.requests, c.columns}, keep, s),
          on(be, c.rows, {c.tokens}, keep, s), on(be, c.positions, {c.tokens}, keep, s)};
}

// Runs write(backend, stream, views, pool0, pool1) on the CPU and on the GPU (inside a CUDA graph
// when `graph`) from the same NaN pools of pool_elems bf16 each, and compares them bit for bit.
template <class Write>
void expect_same_pools(write_case& c, dims a_shape, dims b_shape, std::int64_t pool_elems,
                       bool graph, Write&& write) {
  backend::cpu cpu;
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::vector<tensor<backend::cuda>> keep;
  auto const host_views = upload(cpu, c, a_shape, b_shape, keep, cpu.make_stream());
  auto const dev_views = upload(gpu, c, a_shape, b_shape, keep, stream);
  std::vector<bf16> host0(std::size_t(pool_elems), test::nan_bf16()), host1 = host0;
  tensor<backend::cuda> dev0(gpu, dtype::bf16, {pool_elems}), dev1(gpu, dtype::bf16, {pool_elems});
  gpu.copy(dev0.data(), host0.data(), dev0.nbytes(), stream);
  gpu.copy(dev1.data(), host1.data(), dev1.nbytes(), stream);
  write(cpu, cpu.make_stream(), host_views, host0.data(), host1.data());
  test::run_maybe_in_graph(stream, graph, [&] {
    write(gpu, stream, dev_views, static_cast<bf16*>(dev0.data()), static_cast<bf16*>(dev1.data()));
  });
  std::vector<bf16> got0(host0.size()), got1(host1.size());
  gpu.copy(got0.data(), dev0.data(), dev0.nbytes(), stream);
  gpu.copy(got1.data(), dev1.data(), dev1.nbytes(), stream);
  stream.synchronize();
  EXPECT_EQ(std::memcmp(got0.data(), host0.data(), host0.size() * sizeof(bf16)), 0)
      << "first pool differs from the CPU's";
  EXPECT_EQ(std::memcmp(got1.data(), host1.data(), host1.size() * sizeof(bf16)), 0)
      << "second pool differs from the CPU's";
}

class MlaWriteCuda : public MlaCudaTest,
                     public ::testing::WithParamInterface<std::tuple<int, bool>> {};

TEST_P(MlaWriteCuda, MlaRowsMatchCpu) {
  auto const [tokens, graph] = GetParam();
  auto rng = test::test_rng();
  auto c = make_write_case(tokens, mla_latent, mla_rope, rng);
  for (bool through_table : {false, true}) {
    SCOPED_TRACE(through_table ? "req_to_token" : "slot list");
    expect_same_pools(
        c, {c.tokens, mla_latent}, {c.tokens, mla_rope}, c.slots * mla_width, graph,
        [&](auto& be, auto const& stream, write_views const& v, bf16* pool, bf16*) {
          auto const to =
              through_table ? kv_slots::table(v.table, v.rows, v.positions) : kv_slots::list(v.ids);
          kernels::mla_write_kv(be, v.a, v.b, to,
                                tensor_view(pool, dtype::bf16, {c.slots, mla_width}, be.where()),
                                stream);
        });
  }
}

TEST_P(MlaWriteCuda, GqaRowsMatchCpu) {
  auto const [tokens, graph] = GetParam();
  auto rng = test::test_rng();
  std::int64_t const heads = 2, dim = 128;
  auto c = make_write_case(tokens, heads * dim, heads * dim, rng);
  expect_same_pools(c, {c.tokens, heads, dim}, {c.tokens, heads, dim}, c.slots * heads * dim, graph,
                    [&](auto& be, auto const& stream, write_views const& v, bf16* k, bf16* vp) {
                      kernels::gqa_write_kv(
                          be, v.a, v.b, kv_slots::list(v.ids),
                          tensor_view(k, dtype::bf16, {c.slots, heads, dim}, be.where()),
                          tensor_view(vp, dtype::bf16, {c.slots, heads, dim}, be.where()), stream);
                    });
}

INSTANTIATE_TEST_SUITE_P(Tokens, MlaWriteCuda,
                         ::testing::Combine(::testing::Values(1, 37, 4096),
                                            ::testing::Values(false, true)),
                         [](::testing::TestParamInfo<std::tuple<int, bool>> const& info) {
                           return "T" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_graph" : "");
                         });

}  // namespace
}  // namespace lightcore
