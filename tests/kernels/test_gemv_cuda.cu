// gemm at M <= 8 on CUDA, where bf16 products at M <= 4 (k_by_n: 2) go to the weight-streaming
// kernels (gemv_bf16.cuh), through the public gemm() against the CPU backend on fresh random
// operands: every M from 1 to 8 with both B layouts (the counts past the kernels' on cuBLASLt,
// checked as well), bf16 and f32 C, alpha and beta; DeepSeek-V2-Lite's and R1's projections at
// M 1, 4, 8; MLA's per-head absorb (W_UK k_by_n, W_UV n_by_k) over strided [T, H, D] views at
// 16 and 128 heads; batched operands with gaps; odd N and K the kernels take and the shapes,
// strides and pointers they refuse (which cuBLASLt runs: gemm_stats says which path ran).
// Operands are stored with NaN in every gap and C is poisoned with NaN first (or, with beta, holds
// random values), and C's gaps are checked untouched. Two runs and a CUDA-graph replay agree bit
// for bit. Bounds: relative L2 against the CPU backend 4e-3 for bf16 C (both sum in fp32 in
// different orders, ~1e-6, and round to bf16 once, ~1.1e-3 each) and 1e-4 for f32 C (the orders
// alone).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "gemm_test_util.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/gemm/gemv_bf16_params.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::b_layout;
using kernels::gemm;
using kernels::gemm_context;
using kernels::gemm_options;
using kernels::gemm_workspace_bytes;

constexpr double bf16_bound = 4e-3;
constexpr double f32_bound = 1e-4;

class GemvBf16Cuda : public test::cuda_test {};

// Where the elements of a [batch][rows, cols] operand sit in its buffer: element (b, i, j) at
// offset + b * batch_stride + i * row_stride + j. Everything else in the buffer is a gap.
struct placement {
  std::int64_t batch_stride = 0, row_stride = 0, offset = 0;
};

// Dense placement of [batch][rows, cols] with `pad` extra elements per row.
placement dense(std::int64_t rows, std::int64_t cols, std::int64_t pad = 0) {
  return {rows * (cols + pad), cols + pad, 0};
}

std::int64_t buffer_size(placement const& pl, std::int64_t batch, std::int64_t rows,
                         std::int64_t cols) {
  return pl.offset + (batch - 1) * pl.batch_stride + (rows - 1) * pl.row_stride + cols;
}

// Whether gemm() gives M tokens on this layout to the streaming kernels (when strides and
// pointers allow).
bool routed(std::int64_t m, b_layout layout) {
  return m <= (layout == b_layout::n_by_k ? kernels::gemm_gemv_bf16_max_m
                                          : kernels::gemm_gemv_bf16_kn_max_m);
}

// One product: shapes, layout, C's type, scalars, placements, and whether the streaming kernels
// should run it.
struct gemv_case {
  std::int64_t batch = 1, m = 1, n = 1, k = 8;
  b_layout layout = b_layout::n_by_k;
  dtype c_type = dtype::bf16;
  float alpha = 1.0f, beta = 0.0f;
  placement a, b, c;
  bool streams = true;
};

gemv_case make(std::int64_t batch, std::int64_t m, std::int64_t n, std::int64_t k,
               b_layout layout = b_layout::n_by_k, dtype c_type = dtype::bf16) {
  gemv_case g;
  g.batch = batch, g.m = m, g.n = n, g.k = k, g.layout = layout, g.c_type = c_type;
  g.a = dense(m, k);
  g.b = layout == b_layout::n_by_k ? dense(n, k) : dense(k, n);
  g.c = dense(m, n);
  g.streams = routed(m, layout);
  return g;
}

// Fast uniform values in [-scale, scale) as bf16 (xorshift64*): weights of tens of millions of
// elements are made in well under a second.
void fill_random(bf16* v, std::int64_t count, float scale, std::uint64_t& state) {
  for (std::int64_t i = 0; i < count; ++i) {
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    std::uint64_t const z = state * 0x2545F4914F6CDD1Dull;
    v[i] = bf16((float(z >> 40) * 0x1p-23f - 1.0f) * scale);
  }
}

// A host operand in its buffer (gaps NaN) and the view of its logical elements.
struct host_operand {
  std::vector<std::byte> bytes;
  std::int64_t batch, rows, cols;
  placement pl;
  dtype type;

  host_operand(dtype t, std::int64_t batch_, std::int64_t rows_, std::int64_t cols_, placement p)
      : batch(batch_), rows(rows_), cols(cols_), pl(p), type(t) {
    std::int64_t const es = std::int64_t(size_of(t));
    bytes.assign(std::size_t(buffer_size(p, batch, rows, cols) * es), std::byte{0xFF});  // NaN
  }
  std::int64_t index(std::int64_t b, std::int64_t i, std::int64_t j) const {
    return pl.offset + b * pl.batch_stride + i * pl.row_stride + j;
  }
  void randomise(float scale, std::uint64_t& state) {
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t i = 0; i < rows; ++i) {
        if (type == dtype::bf16) {
          fill_random(reinterpret_cast<bf16*>(bytes.data()) + index(b, i, 0), cols, scale, state);
        } else {
          std::vector<bf16> row(static_cast<std::size_t>(cols));
          fill_random(row.data(), cols, scale, state);
          auto* f = reinterpret_cast<float*>(bytes.data()) + index(b, i, 0);
          for (std::int64_t j = 0; j < cols; ++j) f[j] = float(row[std::size_t(j)]);
        }
      }
  }
  // The logical elements as a view over `base` (this buffer's copy on some device).
  tensor_view view(void* base, device where) const {
    auto* const data = static_cast<std::byte*>(base) + pl.offset * std::int64_t(size_of(type));
    if (batch == 1) return tensor_view(data, type, {rows, cols}, {pl.row_stride, 1}, where);
    return tensor_view(data, type, {batch, rows, cols}, {pl.batch_stride, pl.row_stride, 1}, where);
  }
  double at(std::vector<std::byte> const& from, std::int64_t b, std::int64_t i,
            std::int64_t j) const {
    if (type == dtype::f32) return reinterpret_cast<float const*>(from.data())[index(b, i, j)];
    return float(reinterpret_cast<bf16 const*>(from.data())[index(b, i, j)]);
  }
};

tensor<backend::cuda> to_device(backend::cuda& gpu, host_operand const& h,
                                backend::cuda::stream_type const& s) {
  tensor<backend::cuda> t(gpu, dtype::u8, {std::int64_t(h.bytes.size())});
  gpu.copy(t.data(), h.bytes.data(), h.bytes.size(), s);
  return t;
}

std::vector<std::byte> to_host(backend::cuda& gpu, tensor<backend::cuda> const& t,
                               backend::cuda::stream_type const& s) {
  return test::download<std::byte>(gpu, t, s);
}

// Operands of a case on both sides; B may be shared by several cases (a weight made once).
struct operands {
  host_operand a, b, c;
  tensor<backend::cuda> da, db, dc;
};

operands make_operands(backend::cuda& gpu, backend::cuda::stream_type const& s, gemv_case const& g,
                       std::uint64_t seed) {
  bool const nk = g.layout == b_layout::n_by_k;
  std::uint64_t state = seed | 1;
  operands o{host_operand(dtype::bf16, g.batch, g.m, g.k, g.a),
             host_operand(dtype::bf16, g.batch, nk ? g.n : g.k, nk ? g.k : g.n, g.b),
             host_operand(g.c_type, g.batch, g.m, g.n, g.c),
             {},
             {},
             {}};
  o.a.randomise(1.0f, state);
  o.b.randomise(0.05f, state);
  if (g.beta != 0.0f) o.c.randomise(1.0f, state);  // else NaN: a read of C shows
  o.da = to_device(gpu, o.a, s);
  o.db = to_device(gpu, o.b, s);
  o.dc = to_device(gpu, o.c, s);
  return o;
}

// Runs the case on the GPU through gemm(); checks the path taken, C against the CPU backend and
// C's gaps; returns C's device buffer as it was left.
std::vector<std::byte> run_and_check(gemv_case const& g, std::uint64_t seed = 7) {
  SCOPED_TRACE(::testing::Message()
               << "batch " << g.batch << ", M " << g.m << ", N " << g.n << ", K " << g.k << ", "
               << g.layout << ", C " << g.c_type << ", alpha " << g.alpha << ", beta " << g.beta
               << ", lda " << g.a.row_stride << ", A offset " << g.a.offset);
  backend::cuda gpu(0);
  auto const s = gpu.make_stream();
  gemm_context<backend::cuda> ctx(gpu);
  tensor<backend::cuda> ws(gpu, dtype::u8, {gemm_workspace_bytes});
  operands o = make_operands(gpu, s, g, seed);
  gemm_options const opt{g.alpha, g.beta, g.layout};
  gemm(gpu, ctx, o.a.view(o.da.data(), gpu.where()), o.b.view(o.db.data(), gpu.where()),
       o.c.view(o.dc.data(), gpu.where()), ws, s, opt);
  EXPECT_EQ(ctx.stats().launches, 1);
  EXPECT_EQ(ctx.stats().gemv_launches, g.streams ? 1 : 0) << "which path ran";
  auto const got = to_host(gpu, o.dc, s);

  backend::cpu cpu;
  gemm_context<backend::cpu> cpu_ctx(cpu);
  std::vector<std::byte> want = o.c.bytes;
  gemm(cpu, cpu_ctx, o.a.view(o.a.bytes.data(), device::cpu()),
       o.b.view(o.b.bytes.data(), device::cpu()), o.c.view(want.data(), device::cpu()), {},
       cpu.make_stream(), opt);

  std::vector<double> got_v, want_v;
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t i = 0; i < g.m; ++i)
      for (std::int64_t j = 0; j < g.n; ++j) {
        got_v.push_back(o.c.at(got, b, i, j));
        want_v.push_back(o.c.at(want, b, i, j));
      }
  EXPECT_LT(test::relative_l2(got_v, want_v), g.c_type == dtype::f32 ? f32_bound : bf16_bound);
  // Every byte outside the logical elements is as it was (the CPU backend writes none there).
  std::int64_t changed = 0;
  for (std::size_t i = 0; i < got.size(); ++i) changed += got[i] != want[i];
  std::int64_t logical_changed = 0;
  std::int64_t const es = std::int64_t(size_of(g.c_type));
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t i = 0; i < g.m; ++i)
      for (std::int64_t j = 0; j < g.n; ++j)
        for (std::int64_t e = 0; e < es; ++e) {
          auto const at = std::size_t(o.c.index(b, i, j) * es + e);
          logical_changed += got[at] != want[at];
        }
  EXPECT_EQ(changed - logical_changed, 0) << "bytes of C outside [batch][M, N] written";
  return got;
}

TEST_F(GemvBf16Cuda, EveryTokenCountBothLayoutsAlphaBeta) {
  for (std::int64_t m = 1; m <= 8; ++m)
    for (b_layout layout : {b_layout::n_by_k, b_layout::k_by_n})
      for (dtype c_type : {dtype::bf16, dtype::f32}) {
        // N 203 (n_by_k: a last CTA with 3 rows) or 200 (k_by_n: a partial 64-column tile).
        gemv_case g = make(1, m, layout == b_layout::n_by_k ? 203 : 200, 520, layout, c_type);
        if (m % 2 == 0) g.alpha = 0.5f, g.beta = -1.25f;
        run_and_check(g, std::uint64_t(m * 4 + int(layout) * 2 + (c_type == dtype::f32)));
      }
}

// (N, K) of DeepSeek-V2-Lite's bf16 projections at decode (q_proj, kv_a, o_proj, the shared
// experts' gate|up and down) and two of R1's (q_b, o_proj at TP8-like width).
using shape_t = std::tuple<std::int64_t, std::int64_t>;
class GemvBf16Shapes : public GemvBf16Cuda, public ::testing::WithParamInterface<shape_t> {};

TEST_P(GemvBf16Shapes, MatchesCpuAtM1M4M8) {
  auto const [n, k] = GetParam();
  for (std::int64_t m : {1, 4, 8}) run_and_check(make(1, m, n, k), std::uint64_t(m));
}

INSTANTIATE_TEST_SUITE_P(DeepSeek, GemvBf16Shapes,
                         ::testing::Values(shape_t{3072, 2048}, shape_t{576, 2048},
                                           shape_t{2048, 2048}, shape_t{5632, 2048},
                                           shape_t{2048, 2816}, shape_t{24576, 1536},
                                           shape_t{7168, 2048}),
                         [](::testing::TestParamInfo<shape_t> const& info) {
                           return "N" + std::to_string(std::get<0>(info.param)) + "_K" +
                                  std::to_string(std::get<1>(info.param));
                         });

// k_by_n beyond the absorb: few column tiles, so K is split over a cluster (up to 8 CTAs).
TEST_F(GemvBf16Cuda, KByNSplitOverACluster) {
  for (std::int64_t m : {1, 2}) {
    run_and_check(make(1, m, 576, 2048, b_layout::k_by_n), std::uint64_t(m));
    run_and_check(make(1, m, 64, 7168, b_layout::k_by_n, dtype::f32), std::uint64_t(m + 10));
    run_and_check(make(1, m, 3072, 2048, b_layout::k_by_n), std::uint64_t(m + 20));
  }
  kernels::gemm_problem p;
  p.layout = b_layout::k_by_n, p.m = 1, p.n = 576, p.k = 2048;
  EXPECT_EQ(kernels::gemv_bf16_plan(p, 132).splits, 8);
  p.n = 512, p.k = 128, p.batch = 16;  // the absorb: 128 CTAs, one row block per thread
  EXPECT_EQ(kernels::gemv_bf16_plan(p, 132).splits, 1);
  p.layout = b_layout::n_by_k, p.batch = 1, p.k = 136;  // 17 chunks of 8: one warp
  EXPECT_EQ(kernels::gemv_bf16_plan(p, 132).warps, 1);
  p.k = 2048;
  EXPECT_EQ(kernels::gemv_bf16_plan(p, 132).warps, 4);
}

// MLA's absorb over [T, H, D] activations, per head h: q_nope[:, h, :128] (inside a [T, H, 192]
// q) . W_UK[h] ([128, 512], k_by_n) into [T, H, 512], and latent[:, h, :] . W_UV[h]^T
// (W_UV [H, 128, 512], n_by_k) into [T, H, 128]: the head is the batch, the tokens are rows H * D
// apart.
TEST_F(GemvBf16Cuda, MlaAbsorbPerHead) {
  constexpr std::int64_t nope = 128, rope = 64, latent = 512, v_dim = 128;
  for (std::int64_t h : {16, 128})
    for (std::int64_t t : {1, 2, 4, 8}) {
      gemv_case uk = make(h, t, latent, nope, b_layout::k_by_n);
      uk.a = {nope + rope, h * (nope + rope), 0};
      uk.c = {latent, h * latent, 0};
      run_and_check(uk, std::uint64_t(h + t));
      gemv_case uv = make(h, t, v_dim, latent, b_layout::n_by_k);
      uv.a = {latent, h * latent, 0};
      uv.c = {v_dim, h * v_dim, 0};
      run_and_check(uv, std::uint64_t(h + t + 1));
    }
}

TEST_F(GemvBf16Cuda, BatchedWithGaps) {
  for (b_layout layout : {b_layout::n_by_k, b_layout::k_by_n}) {
    std::int64_t const m = layout == b_layout::n_by_k ? 3 : 2;
    gemv_case g = make(3, m, 136, 264, layout, dtype::f32);
    g.a = {m * 280 + 8, 280, 0};  // rows 16 elements apart from the next, batches 8 more
    g.b.batch_stride += 64;
    g.c = {m * 140 + 4, 140, 0};  // C's gaps: 4 columns per row, 4 elements per batch
    g.alpha = 2.0f, g.beta = 0.5f;
    run_and_check(g, 3 + std::uint64_t(layout));
  }
}

TEST_F(GemvBf16Cuda, OddShapesTheKernelsTake) {
  run_and_check(make(1, 1, 1, 8));       // one row, one K chunk
  run_and_check(make(1, 3, 7, 136));     // N below one CTA's rows; K 17 chunks
  run_and_check(make(1, 4, 577, 2056));  // a CTA of one row; K not a multiple of 256
  run_and_check(make(1, 2, 8, 8, b_layout::k_by_n));
  run_and_check(make(1, 2, 72, 4104, b_layout::k_by_n));  // a tile of 8 columns; 513 row blocks
  run_and_check(make(1, 4, 24, 4104));  // 6 CTAs of 4 rows; 513 chunks over 128 threads
  run_and_check(make(1, 3, 17, 40));    // 5 chunks: one warp, most lanes idle
  gemv_case padded = make(1, 4, 300, 1024, b_layout::n_by_k, dtype::bf16);
  padded.a = dense(4, 1024, 8), padded.b = dense(300, 1024, 16), padded.c = dense(4, 300, 3);
  run_and_check(padded);
}

TEST_F(GemvBf16Cuda, ShapesStridesAndPointersItRefusesGoToCublasLt) {
  gemv_case g = make(1, 5, 576, 2048);  // n_by_k above 4 tokens
  EXPECT_FALSE(g.streams);
  run_and_check(g);
  g = make(1, 3, 576, 1024, b_layout::k_by_n);  // k_by_n above 2 tokens
  EXPECT_FALSE(g.streams);
  run_and_check(g);
  g = make(1, 4, 576, 100);  // K not a multiple of 8
  g.streams = false;
  run_and_check(g);
  g = make(1, 2, 100, 256, b_layout::k_by_n);  // k_by_n with N not a multiple of 8
  g.streams = false;
  run_and_check(g);
  g = make(1, 4, 256, 256);
  g.a = dense(4, 256, 4);  // A's rows 260 elements apart: not 16-byte multiples
  g.streams = false;
  run_and_check(g);
  g = make(1, 4, 256, 256);
  g.a.offset = 1;  // A 2 bytes past a 16-byte boundary
  g.streams = false;
  run_and_check(g);
  g = make(2, 2, 256, 256, b_layout::k_by_n);
  g.b.batch_stride += 4;  // B's batches 8 bytes off
  g.streams = false;
  run_and_check(g);
}

// Fixed summation orders: a rerun and a graph replay give the same bits, on both layouts and
// with a cluster split, with B declared a weight (gemm_options::b_constant) or not.
TEST_F(GemvBf16Cuda, DeterministicAndCapturable) {
  for (gemv_case const& g :
       {make(1, 4, 3072, 2048), make(1, 2, 3072, 2048), make(1, 1, 576, 2048, b_layout::k_by_n),
        make(16, 2, 512, 128, b_layout::k_by_n),
        make(1, 3, 2048, 2816, b_layout::n_by_k, dtype::f32)}) {
    SCOPED_TRACE(::testing::Message() << "M " << g.m << ", N " << g.n << ", K " << g.k << ", "
                                      << g.layout << ", batch " << g.batch);
    backend::cuda gpu(0);
    auto const s = gpu.make_stream();
    gemm_context<backend::cuda> ctx(gpu);
    tensor<backend::cuda> ws(gpu, dtype::u8, {gemm_workspace_bytes});
    operands o = make_operands(gpu, s, g, 11);
    auto const a = o.a.view(o.da.data(), gpu.where()), b = o.b.view(o.db.data(), gpu.where());
    auto const c = o.c.view(o.dc.data(), gpu.where());
    gemm_options const opt{1.0f, 0.0f, g.layout};
    gemm(gpu, ctx, a, b, c, ws, s, opt);
    auto const first = to_host(gpu, o.dc, s);
    // Again, and replayed in a graph, with B as given and with B declared a weight (its first
    // trip then loaded before the PDL wait).
    gemm_options weight = opt;
    weight.b_constant = true;
    for (gemm_options const& run : {opt, weight}) {
      SCOPED_TRACE(run.b_constant ? "b_constant" : "any B");
      gpu.fill(o.dc.data(), o.dc.nbytes(), 1, 0xFF, s);
      gemm(gpu, ctx, a, b, c, ws, s, run);
      EXPECT_EQ(to_host(gpu, o.dc, s), first) << "rerun";
      gpu.fill(o.dc.data(), o.dc.nbytes(), 1, 0xFF, s);
      test::run_in_graph(s, [&] { gemm(gpu, ctx, a, b, c, ws, s, run); });
      EXPECT_EQ(to_host(gpu, o.dc, s), first) << "graph";
    }
    EXPECT_EQ(ctx.stats().gemv_launches, 5);
    EXPECT_EQ(ctx.stats().plans, 1) << "one plan for the shape, no cuBLASLt heuristic";
    EXPECT_EQ(ctx.stats().heuristic_queries, 0);
  }
}

TEST(GemvBf16Support, WhatTheKernelsTake) {
  kernels::gemm_problem p;
  alignas(16) static std::uint16_t buffer[64];
  p.a = buffer, p.b = buffer, p.c = buffer;
  p.m = 4, p.n = 24, p.k = 64, p.lda = 64, p.ldb = 64, p.ldc = 24;
  EXPECT_TRUE(kernels::gemm_gemv_bf16_supported(p));
  p.m = 5;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "M 5";
  p.m = 1, p.a_type = dtype::fp8_e4m3;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "FP8 A";
  p.a_type = dtype::bf16, p.c_type = dtype::fp8_e4m3;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "FP8 C";
  p.c_type = dtype::f32, p.layout = b_layout::k_by_n, p.n = 20, p.ldb = 24;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "k_by_n with N 20";
  p.n = 24;
  EXPECT_TRUE(kernels::gemm_gemv_bf16_supported(p));
  p.m = 3;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "k_by_n with M 3";
  p.m = 1;
  p.batch = 2, p.stride_a = 68;
  EXPECT_FALSE(kernels::gemm_gemv_bf16_supported(p)) << "A's batch stride 68";
}

TEST_F(GemvBf16Cuda, DirectCallRefusesWhatItCannotRun) {
  kernels::gemm_problem p;
  p.m = 12, p.n = 64, p.k = 64, p.lda = 64, p.ldb = 64, p.ldc = 64;
  try {
    kernels::detail::gemm_gemv_bf16_cuda(p, {}, nullptr);
    ADD_FAILURE() << "M 12 accepted";
  } catch (error const& e) {
    EXPECT_NE(std::string(e.what()).find("M 1..4"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("got M 12"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lightcore
