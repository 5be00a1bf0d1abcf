// attention on the CUDA backend: the prefill kernel against the double-precision definition and
// the CPU reference (GQA groups 1/2/8 at head dims 64 and 128, MLA's (192, 128) with the broadcast
// rope key; ragged batches with prefixes 0..4096 and new lengths 1..2048, padded T and S whose
// rows must stay untouched; outputs poisoned first), one captured graph replayed with new lengths
// giving the eager result bit for bit (MLA, and GQA d 128 across several 128-row tiles), rows
// without keys, NaNs in the rows past the last request never reaching a result, and MLA prefill
// (gather, GEMMs, attention) against the CPU path for H = 16 and 128, eagerly and in a graph.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.hpp"
#include "common/cuda.hpp"
#include "kernels/attention/attention.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "mla_test_util.hpp"

namespace lightcore {
namespace {

using kernels::prefill_args;
using test::prefill_batch;

// 0xFF bytes: bf16 and f32 NaN, which the kernels never write.
constexpr std::uint64_t poison_byte = 0xFF;

struct host_outputs {
  std::vector<bf16> out;
  std::vector<float> lse;
};

template <class B>
tensor<B> upload(B& be, std::vector<bf16> const& v, dims shape,
                 typename B::stream_type const& stream) {
  tensor<B> t(be, dtype::bf16, shape);
  if (!v.empty()) be.copy(t.data(), v.data(), t.nbytes(), stream);
  return t;
}

// A batch's buffers on the GPU.
struct device_prefill {
  tensor<backend::cuda> q, k, k_rope, v, cu_q, cu_k, out, lse;

  device_prefill(backend::cuda& gpu, prefill_batch const& p,
                 backend::cuda::stream_type const& stream)
      : q(upload(gpu, p.q, {p.t, p.hq, p.qk}, stream)),
        k(upload(gpu, p.k, {p.s, p.hk, p.k_dim()}, stream)),
        k_rope(upload(gpu, p.k_rope, {p.s, std::max<std::int64_t>(p.rope, 8)}, stream)),
        v(upload(gpu, p.v, {p.s, p.hk, p.vd}, stream)),
        cu_q(gpu, dtype::i32, {p.batch + 1}),
        cu_k(gpu, dtype::i32, {p.batch + 1}),
        out(gpu, dtype::bf16, {p.t, p.hq, p.vd}),
        lse(gpu, dtype::f32, {p.t, p.hq}) {
    set_lengths(gpu, p, stream);
  }

  void set_lengths(backend::cuda& gpu, prefill_batch const& p,
                   backend::cuda::stream_type const& stream) {
    gpu.copy(cu_q.data(), p.cu_q.data(), cu_q.nbytes(), stream);
    gpu.copy(cu_k.data(), p.cu_k.data(), cu_k.nbytes(), stream);
  }

  prefill_args args(prefill_batch const& p) const {
    prefill_args a;
    a.q = q;
    a.k = k;
    if (p.rope > 0) a.k_rope = k_rope;
    a.v = v;
    a.cu_seqlens_q = cu_q;
    a.cu_seqlens_k = cu_k;
    a.out = out;
    a.lse = lse;
    a.softmax_scale = p.scale;
    return a;
  }

  void poison(backend::cuda& gpu, backend::cuda::stream_type const& stream) {
    gpu.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
    gpu.fill(lse.data(), lse.nbytes(), 1, poison_byte, stream);
  }

  host_outputs download(backend::cuda& gpu, backend::cuda::stream_type const& stream) const {
    host_outputs r{std::vector<bf16>(std::size_t(out.numel())),
                   std::vector<float>(std::size_t(lse.numel()))};
    gpu.copy(r.out.data(), out.data(), out.nbytes(), stream);
    gpu.copy(r.lse.data(), lse.data(), lse.nbytes(), stream);
    stream.synchronize();
    return r;
  }
};

// p's prefill on the GPU, into outputs poisoned first.
host_outputs run_gpu(prefill_batch const& p) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  device_prefill d(gpu, p, stream);
  d.poison(gpu, stream);
  kernels::prefill_attention(gpu, d.args(p), stream);
  return d.download(gpu, stream);
}

// Rows past the last request keep the poison.
void expect_padding_untouched(prefill_batch const& p, host_outputs const& r) {
  for (std::int64_t i = p.cu_q.back() * p.hq * p.vd; i < p.t * p.hq * p.vd; ++i)
    ASSERT_EQ(r.out[std::size_t(i)].bits, 0xFFFF) << "padding output written at " << i;
  for (std::int64_t i = p.cu_q.back() * p.hq; i < p.t * p.hq; ++i)
    ASSERT_TRUE(std::isnan(r.lse[std::size_t(i)])) << "padding lse written at " << i;
}

host_outputs run_cpu(prefill_batch& p) {
  backend::cpu cpu;
  host_outputs r{std::vector<bf16>(std::size_t(p.t * p.hq * p.vd)),
                 std::vector<float>(std::size_t(p.t * p.hq))};
  prefill_args a;
  a.q = tensor_view(p.q.data(), dtype::bf16, {p.t, p.hq, p.qk});
  a.k = tensor_view(p.k.data(), dtype::bf16, {p.s, p.hk, p.k_dim()});
  if (p.rope > 0) a.k_rope = tensor_view(p.k_rope.data(), dtype::bf16, {p.s, p.rope});
  a.v = tensor_view(p.v.data(), dtype::bf16, {p.s, p.hk, p.vd});
  a.cu_seqlens_q = tensor_view(p.cu_q.data(), dtype::i32, {p.batch + 1});
  a.cu_seqlens_k = tensor_view(p.cu_k.data(), dtype::i32, {p.batch + 1});
  a.out = tensor_view(r.out.data(), dtype::bf16, {p.t, p.hq, p.vd});
  a.lse = tensor_view(r.lse.data(), dtype::f32, {p.t, p.hq});
  a.softmax_scale = p.scale;
  kernels::prefill_attention(cpu, a, cpu.make_stream());
  return r;
}

struct variant {
  std::int64_t hq, hk, qk, vd;
  bool rope;
};

class PrefillCuda : public test::cuda_test, public ::testing::WithParamInterface<variant> {};

// Tolerances: the kernel rounds P to bf16 before P V (2^-9 relative per weight, averaging out
// over the keys) and rounds the output to bf16 once: ~3e-3 relative L2 expected per (row, head),
// 1e-2 allowed; a wrong key range, head or scale gives errors of order 0.1 to 1. lse is fp32
// (P's rounding does not enter it): 1e-3 allowed.
constexpr double out_tol = 1e-2, lse_tol = 1e-3;

// With nan_spares, the rows of q, k, k_rope and v past the last request hold NaNs: the kernels
// may load them (a tile or key block reaching past the end) but must not let them into any result.
void check_against_double(variant const& v, std::vector<std::int32_t> const& lens_q,
                          std::vector<std::int32_t> const& prefix, bool full_cpu,
                          bool nan_spares = false) {
  auto rng = test::test_rng();
  auto p = test::make_prefill_batch(lens_q, prefix, v.hq, v.hk, v.qk, v.vd, v.rope, rng, 70, 9);
  if (nan_spares) {
    bf16 nan;
    nan.bits = 0x7FC0;
    auto const fill_from = [&](std::vector<bf16>& x, std::int64_t row, std::int64_t row_elems) {
      std::fill(x.begin() + std::ptrdiff_t(row * row_elems), x.end(), nan);
    };
    fill_from(p.q, p.cu_q.back(), p.hq * p.qk);
    fill_from(p.k, p.cu_k.back(), p.hk * p.k_dim());
    fill_from(p.k_rope, p.cu_k.back(), p.rope);
    fill_from(p.v, p.cu_k.back(), p.hk * p.vd);
  }
  auto const got = run_gpu(p);
  expect_padding_untouched(p, got);
  double const worst = test::expect_prefill_close(
      p, got.out, got.lse, test::prefill_double(p, test::sampled_rows(p, 16, rng)), out_tol,
      lse_tol);
  std::cout << "  worst relative L2 error against the definition " << worst << "\n";
  if (full_cpu) {
    auto const want = run_cpu(p);
    std::int64_t bad = 0;
    for (std::int64_t t = 0; t < p.cu_q.back(); ++t)
      for (std::int64_t h = 0; h < p.hq; ++h) {
        std::size_t const at = std::size_t((t * p.hq + h) * p.vd);
        std::vector<double> w(static_cast<std::size_t>(p.vd));
        for (std::int64_t d2 = 0; d2 < p.vd; ++d2) w[std::size_t(d2)] = float(want.out[at + d2]);
        double const err = test::relative_l2(&got.out[at], w.data(), p.vd);
        if (!(err <= out_tol) && ++bad <= 8)
          ADD_FAILURE() << "token " << t << " head " << h << " vs the CPU reference: " << err;
      }
    EXPECT_EQ(bad, 0);
  }
}

TEST_P(PrefillCuda, RaggedBatchAroundTheTileSizes) {
  check_against_double(GetParam(), {1, 63, 64, 65, 130, 7, 200}, {0, 1, 64, 0, 3, 500, 77}, true);
}

TEST_P(PrefillCuda, LongPrefixesAndNewTokens) {
  check_against_double(GetParam(), {2048, 1, 300, 1000}, {0, 4096, 4096, 1500}, false);
}

// Both sides of the 128-row query tiles and 128-key blocks of the wgmma kernel, with prefix +
// new lengths that are not multiples of the block, and single-token requests.
TEST_P(PrefillCuda, AroundTheWgmmaTiles) {
  check_against_double(GetParam(), {1, 127, 128, 129, 255, 256, 257, 1, 383},
                       {0, 1, 128, 127, 129, 0, 300, 1000, 5}, false);
}

// The last request ends inside a tile and inside a key block, right before the NaN rows.
TEST_P(PrefillCuda, RowsPastTheLastRequestAreNeverUsed) {
  check_against_double(GetParam(), {70, 200}, {10, 57}, false, true);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, PrefillCuda,
    ::testing::Values(variant{8, 8, 64, 64, false}, variant{8, 4, 64, 64, false},
                      variant{16, 2, 64, 64, false}, variant{4, 4, 128, 128, false},
                      variant{8, 4, 128, 128, false}, variant{16, 2, 128, 128, false},
                      variant{16, 16, 192, 128, true}, variant{4, 4, 192, 128, false}),
    [](::testing::TestParamInfo<variant> const& param_info) {
      auto const& v = param_info.param;
      return "Hq" + std::to_string(v.hq) + "_Hk" + std::to_string(v.hk) + "_D" +
             std::to_string(v.qk) + "_V" + std::to_string(v.vd) + (v.rope ? "_rope" : "");
    });

class AttentionCudaTest : public test::cuda_test {};

// One graph captured for fixed T, S and batch, replayed with new splits of the same totals (device
// memory changed between replays, as the engine does): equal to the eager run bit for bit and
// close to the definition. New lengths are drawn from 0..max_len (one request of length 1 per
// round), prefixes from even numbers up to 2 max_len.
void check_graph_replay(variant const& v, std::int32_t max_len) {
  SCOPED_TRACE(::testing::Message() << "D " << v.qk << ", max_len " << max_len);
  auto rng = test::test_rng();
  std::int32_t const n = max_len, pre = 2 * max_len;  // T and S that bound every round's split
  auto p = test::make_prefill_batch({n, n, n, n}, {pre, pre, pre, pre}, v.hq, v.hk, v.qk, v.vd,
                                    v.rope, rng);
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  device_prefill d(gpu, p, stream);
  tensor<backend::cuda> eager_out(gpu, dtype::bf16, {p.t, p.hq, p.vd});
  tensor<backend::cuda> eager_lse(gpu, dtype::f32, {p.t, p.hq});
  stream.synchronize();
  cudaGraph_t graph = nullptr;
  LC_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  kernels::prefill_attention(gpu, d.args(p), stream);
  LC_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  cudaGraphExec_t exec = nullptr;
  LC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    // New lengths within the same totals: T rows of q (some padding), S rows of k.
    std::uniform_int_distribution<std::int32_t> pick(0, max_len);
    std::int32_t used_q = 0, used_k = 0;
    for (std::int64_t b = 0; b < p.batch; ++b) {
      std::int32_t const lq = b == round ? 1 : pick(rng);
      std::int32_t const lk = lq + pick(rng) * 2;
      p.cu_q[std::size_t(b + 1)] = (used_q += lq);
      p.cu_k[std::size_t(b + 1)] = (used_k += lk);
    }
    ASSERT_LE(used_q, p.t);
    ASSERT_LE(used_k, p.s);
    d.set_lengths(gpu, p, stream);
    d.poison(gpu, stream);
    LC_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
    auto const replayed = d.download(gpu, stream);
    auto eager = d.args(p);
    eager.out = eager_out;
    eager.lse = eager_lse;
    gpu.fill(eager_out.data(), eager_out.nbytes(), 1, poison_byte, stream);
    gpu.fill(eager_lse.data(), eager_lse.nbytes(), 1, poison_byte, stream);
    kernels::prefill_attention(gpu, eager, stream);
    std::vector<bf16> eo(std::size_t(eager_out.numel()));
    std::vector<float> el(std::size_t(eager_lse.numel()));
    gpu.copy(eo.data(), eager_out.data(), eager_out.nbytes(), stream);
    gpu.copy(el.data(), eager_lse.data(), eager_lse.nbytes(), stream);
    stream.synchronize();
    EXPECT_EQ(std::memcmp(eo.data(), replayed.out.data(), eo.size() * sizeof(bf16)), 0)
        << "graph replay and eager outputs differ";
    EXPECT_EQ(std::memcmp(el.data(), replayed.lse.data(), el.size() * sizeof(float)), 0)
        << "graph replay and eager lse differ";
    expect_padding_untouched(p, replayed);
    test::expect_prefill_close(p, replayed.out, replayed.lse,
                               test::prefill_double(p, test::all_rows(p)), out_tol, lse_tol);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(AttentionCudaTest, PrefillGraphReplaysWithNewLengths) {
  check_graph_replay(variant{16, 16, 192, 128, true}, 150);
}

// Lengths crossing several 128-row tiles, GQA group 4.
TEST_F(AttentionCudaTest, PrefillGraphReplaysWithNewLengthsD128) {
  check_graph_replay(variant{8, 2, 128, 128, false}, 420);
}

// A request with more new tokens than its sequence (len_k < len_q) cannot come from the engine;
// the kernels still write every row: zeros and lse -inf for rows that see no key. Every head
// dim (both kernels), 130 rows: a tile that sees no key at all and one that sees some.
TEST_F(AttentionCudaTest, RowsWithoutKeysGetZeros) {
  for (auto const& v : {variant{4, 4, 64, 64, false}, variant{4, 2, 128, 128, false},
                        variant{4, 4, 192, 128, true}}) {
    SCOPED_TRACE(::testing::Message() << "D " << v.qk);
    auto rng = test::test_rng();
    auto p = test::make_prefill_batch({130}, {0}, v.hq, v.hk, v.qk, v.vd, v.rope, rng);
    p.cu_k[1] = 2;  // rows 0..127 see no key, rows 128, 129 see keys 0 and 0..1
    auto const got = run_gpu(p);
    for (std::int64_t i = 0; i < 128 * p.hq * p.vd; ++i)
      ASSERT_EQ(float(got.out[std::size_t(i)]), 0.0f) << "element " << i;
    for (std::int64_t i = 0; i < 128 * p.hq; ++i)
      ASSERT_TRUE(std::isinf(got.lse[std::size_t(i)]) && got.lse[std::size_t(i)] < 0) << i;
    // Row 128 sees key 0 only: its output is v[0] of its key head (rounded).
    std::int64_t const group = p.hq / p.hk;
    for (std::int64_t h = 0; h < p.hq; ++h)
      for (std::int64_t c = 0; c < p.vd; ++c)
        ASSERT_EQ(got.out[std::size_t((128 * p.hq + h) * p.vd + c)].bits,
                  p.v[std::size_t((h / group) * p.vd + c)].bits)
            << "head " << h << " column " << c;
    test::expect_prefill_close(p, got.out, got.lse, test::prefill_double(p, {128, 129}), out_tol,
                               lse_tol);
  }
}

// ---- MLA prefill: the GPU path against the CPU path (same rounding points) ----

struct mla_case {
  test::mla_batch pool;  // lengths = whole sequences
  std::vector<std::int32_t> cu_q, cu_k;
  std::int64_t heads = 0, t = 0, kv_tokens = 0, batch = 0;
  std::vector<bf16> q, w_uk, w_uv;
  float scale = 0;
};

mla_case make_mla_case(std::vector<std::int32_t> const& lens_q,
                       std::vector<std::int32_t> const& prefix, std::int64_t heads,
                       std::mt19937_64& rng) {
  mla_case c;
  std::vector<std::int32_t> lens_k;
  c.cu_q.assign(1, 0);
  c.cu_k.assign(1, 0);
  for (std::size_t b = 0; b < lens_q.size(); ++b) {
    lens_k.push_back(lens_q[b] + prefix[b]);
    c.cu_q.push_back(c.cu_q.back() + lens_q[b]);
    c.cu_k.push_back(c.cu_k.back() + lens_k.back());
  }
  c.pool = test::make_mla_batch(lens_k, heads, rng);
  c.batch = std::int64_t(lens_q.size());
  c.heads = heads;
  c.t = c.cu_q.back() + 5;  // padded
  c.kv_tokens = c.cu_k.back() + 11;
  c.q = test::normal_bf16(std::size_t(c.t * heads * 192), 1.0f, rng);
  c.w_uk = test::normal_bf16(std::size_t(heads * 128 * 512), float(1.0 / std::sqrt(512.0)), rng);
  c.w_uv = test::normal_bf16(std::size_t(heads * 128 * 512), float(1.0 / std::sqrt(512.0)), rng);
  c.scale = test::deepseek_softmax_scale();
  return c;
}

// The case's tensors on backend `be` and the arguments over them.
template <class B>
struct mla_buffers {
  tensor<B> q, pool, table, rows, cu_q, cu_k, w_uk, w_uv, out, lse, workspace;

  mla_buffers(B& be, mla_case const& c, typename B::stream_type const& stream)
      : q(upload(be, c.q, {c.t, c.heads, 192}, stream)),
        pool(upload(be, c.pool.pool, {c.pool.slots, 576}, stream)),
        table(be, dtype::i32, {c.pool.requests, c.pool.columns}),
        rows(be, dtype::i32, {c.batch}),
        cu_q(be, dtype::i32, {c.batch + 1}),
        cu_k(be, dtype::i32, {c.batch + 1}),
        w_uk(upload(be, c.w_uk, {c.heads, 128, 512}, stream)),
        w_uv(upload(be, c.w_uv, {c.heads, 128, 512}, stream)),
        out(be, dtype::bf16, {c.t, c.heads, 128}),
        lse(be, dtype::f32, {c.t, c.heads}),
        workspace(be, dtype::u8,
                  {kernels::mla_prefill_workspace_layout(c.kv_tokens, c.heads).bytes}) {
    be.copy(table.data(), c.pool.table.data(), table.nbytes(), stream);
    be.copy(rows.data(), c.pool.req_rows.data(), rows.nbytes(), stream);
    be.copy(cu_q.data(), c.cu_q.data(), cu_q.nbytes(), stream);
    be.copy(cu_k.data(), c.cu_k.data(), cu_k.nbytes(), stream);
    be.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
    be.fill(lse.data(), lse.nbytes(), 1, poison_byte, stream);
  }

  kernels::mla_prefill_args args(mla_case const& c) const {
    kernels::mla_prefill_args a;
    a.q = q;
    a.kv_cache = pool;
    a.req_to_token = table;
    a.req_rows = rows;
    a.cu_seqlens_q = cu_q;
    a.cu_seqlens_k = cu_k;
    a.w_uk = w_uk;
    a.w_uv = w_uv;
    a.out = out;
    a.lse = lse;
    a.kv_tokens = c.kv_tokens;
    a.softmax_scale = c.scale;
    return a;
  }

  host_outputs download(B& be, typename B::stream_type const& stream) const {
    host_outputs r{std::vector<bf16>(std::size_t(out.numel())),
                   std::vector<float>(std::size_t(lse.numel()))};
    be.copy(r.out.data(), out.data(), out.nbytes(), stream);
    be.copy(r.lse.data(), lse.data(), lse.nbytes(), stream);
    stream.synchronize();
    return r;
  }
};

// Tolerances: k and v are bf16 on both sides from fp32 sums in different orders, so an element
// now and then rounds one ulp apart (2^-8 relative); that moves the logits it meets by up to about
// 2^-8 of their size and a row's lse with them, so lse is held to 4e-3 (measured up to 1.9e-3 at
// H = 128, where 2 x 10^4 rows give such a flip its chances); the output as the kernel's, 1e-2
// relative L2. Padding rows stay poisoned.
constexpr double path_lse_tol = 4e-3;
void check_mla_prefill(std::vector<std::int32_t> const& lens_q,
                       std::vector<std::int32_t> const& prefix, std::int64_t heads, bool graph) {
  SCOPED_TRACE(::testing::Message() << "H " << heads << (graph ? ", graph" : ""));
  auto rng = test::test_rng();
  auto c = make_mla_case(lens_q, prefix, heads, rng);
  backend::cpu cpu;
  auto const cpu_stream = cpu.make_stream();
  kernels::gemm_context<backend::cpu> cpu_ctx(cpu);
  mla_buffers<backend::cpu> h(cpu, c, cpu_stream);
  kernels::mla_prefill(cpu, cpu_ctx, h.args(c), h.workspace, cpu_stream);
  auto const want = h.download(cpu, cpu_stream);

  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  kernels::gemm_context<backend::cuda> ctx(gpu);
  mla_buffers<backend::cuda> d(gpu, c, stream);
  if (graph) {  // plan the GEMMs eagerly first, then capture everything
    kernels::mla_prefill(gpu, ctx, d.args(c), d.workspace, stream);
    gpu.fill(d.out.data(), d.out.nbytes(), 1, poison_byte, stream);
    gpu.fill(d.lse.data(), d.lse.nbytes(), 1, poison_byte, stream);
  }
  test::run_maybe_in_graph(stream, graph,
                           [&] { kernels::mla_prefill(gpu, ctx, d.args(c), d.workspace, stream); });
  auto const got = d.download(gpu, stream);

  prefill_batch shape;  // what the comparisons need of the layout
  shape.batch = c.batch;
  shape.hq = shape.hk = heads;
  shape.qk = 192;
  shape.vd = 128;
  shape.t = c.t;
  shape.cu_q = c.cu_q;
  expect_padding_untouched(shape, got);
  std::int64_t bad = 0;
  double worst = 0;
  for (std::int64_t t = 0; t < c.cu_q.back(); ++t)
    for (std::int64_t hh = 0; hh < heads; ++hh) {
      std::size_t const at = std::size_t((t * heads + hh) * 128);
      std::vector<double> w(128);
      for (int k = 0; k < 128; ++k) w[std::size_t(k)] = float(want.out[at + std::size_t(k)]);
      double const err = test::relative_l2(&got.out[at], w.data(), 128);
      worst = std::max(worst, std::isnan(err) ? 1e9 : err);
      float const gl = got.lse[std::size_t(t * heads + hh)];
      float const wl = want.lse[std::size_t(t * heads + hh)];
      if (!(err <= out_tol) && ++bad <= 8)
        ADD_FAILURE() << "token " << t << " head " << hh << ": relative L2 error " << err;
      if (!(std::abs(gl - wl) <= path_lse_tol * (1 + std::abs(wl))) && ++bad <= 8)
        ADD_FAILURE() << "token " << t << " head " << hh << ": lse " << gl << ", want " << wl;
    }
  EXPECT_EQ(bad, 0);
  std::cout << "  worst relative L2 error against the CPU path " << worst << "\n";
}

TEST_F(AttentionCudaTest, MlaPrefillH16) {
  check_mla_prefill({1, 64, 130, 17}, {0, 4096, 5, 700}, 16, false);
}
TEST_F(AttentionCudaTest, MlaPrefillH128) {
  check_mla_prefill({33, 1, 70}, {0, 200, 64}, 128, false);
}
TEST_F(AttentionCudaTest, MlaPrefillH16InAGraph) {
  check_mla_prefill({65, 3}, {100, 1000}, 16, true);
}
TEST_F(AttentionCudaTest, MlaPrefillH128InAGraph) {
  check_mla_prefill({20, 9}, {50, 0}, 128, true);
}

}  // namespace
}  // namespace lightcore
