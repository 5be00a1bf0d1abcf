// rope on the CUDA backend against the CPU reference: fresh random q ([T, H, 192], rope in the
// last 64 of each head) and latent rows ([T, 576], rope in the last 64), random positions up to
// R1's 163840, T in {1, 3, 257, 4096}, H in {128, 16} (and head counts around the kernel's
// split of a token's rows over warps), 16-byte aligned and misaligned views.
// Bound: bit-exact (relative L2 0). Both backends apply the same fp32 sequence (one product, one
// fma, per output; rope_rotate_pair) and one round-to-nearest-even to bf16; a difference means a
// wrong element or a wrong rounding, not noise. Everything outside the rope views must keep its
// random bits; an out-of-range position must turn that token's rows to NaN.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/rope/rope.cuh"
#include "kernels/rope/rope.hpp"
#include "kernels/rope/yarn.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "rope_test_util.hpp"

namespace lightcore {
namespace {

using kernels::apply_rope;

constexpr std::int64_t max_positions = 163840;  // DeepSeek-R1's max_position_embeddings
constexpr std::int64_t nope = 128;              // q: nope dims before each head's rope part
constexpr std::int64_t latent = 512;            // kv: latent dims before the rope part

std::vector<float> const& host_cache() {
  static std::vector<float> const cache =
      kernels::yarn_cos_sin_cache(kernels::yarn_config{}, max_positions);
  return cache;
}

class RopeCudaTest : public test::cuda_test {};

// One case: host buffers, views into them with a row pad (0: rope 16-byte aligned; 1: every row
// shifted by one element, the kernel's scalar path), the GPU run and the CPU run.
struct rope_run {
  std::int64_t tokens, heads, q_row, kv_row;  // q_row: elements per head; kv_row: per token
  std::vector<bf16> q, kv;
  std::vector<std::int32_t> positions;

  rope_run(std::int64_t t, std::int64_t h, std::int64_t pad, std::mt19937_64& rng)
      : tokens(t),
        heads(h),
        q_row(nope + 64 + pad),
        kv_row(latent + 64 + pad),
        q(test::random_bf16(std::size_t(t * h * q_row), rng)),
        kv(test::random_bf16(std::size_t(t * kv_row), rng)),
        positions(std::size_t(t)) {
    std::uniform_int_distribution<std::int32_t> pos(0, std::int32_t(max_positions - 1));
    for (auto& p : positions) p = pos(rng);
  }
  // The views of a q / kv buffer at `q_data` / `kv_data` on `where`.
  tensor_view q_rope(void* q_data, device where) const {
    return tensor_view(q_data, dtype::bf16, {tokens, heads, q_row}, {heads * q_row, q_row, 1},
                       where)
        .slice(2, q_row - 64, q_row);
  }
  tensor_view k_rope(void* kv_data, device where) const {
    return tensor_view(kv_data, dtype::bf16, {tokens, kv_row}, {kv_row, 1}, where)
        .slice(1, kv_row - 64, kv_row);
  }
};

struct gpu_result {
  std::vector<bf16> q, kv;
};

gpu_result run_on_gpu(rope_run const& r) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  tensor<backend::cuda> q(gpu, dtype::bf16, {std::int64_t(r.q.size())});
  tensor<backend::cuda> kv(gpu, dtype::bf16, {std::int64_t(r.kv.size())});
  tensor<backend::cuda> pos(gpu, dtype::i32, {r.tokens});
  tensor<backend::cuda> cache(gpu, dtype::f32, {max_positions, 64});
  gpu.copy(q.data(), r.q.data(), q.nbytes(), stream);
  gpu.copy(kv.data(), r.kv.data(), kv.nbytes(), stream);
  gpu.copy(pos.data(), r.positions.data(), pos.nbytes(), stream);
  gpu.copy(cache.data(), host_cache().data(), cache.nbytes(), stream);
  apply_rope(gpu, r.q_rope(q.data(), gpu.where()), r.k_rope(kv.data(), gpu.where()), pos, cache,
             stream);
  gpu_result out{std::vector<bf16>(r.q.size()), std::vector<bf16>(r.kv.size())};
  gpu.copy(out.q.data(), q.data(), q.nbytes(), stream);
  gpu.copy(out.kv.data(), kv.data(), kv.nbytes(), stream);
  stream.synchronize();
  return out;
}

// Differing elements of got vs want: a count and the first few indices.
std::string mismatches(std::vector<bf16> const& got, std::vector<bf16> const& want,
                       char const* what) {
  std::size_t count = 0;
  std::string first;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i].bits == want[i].bits) continue;
    if (++count <= 5)
      first += " [" + std::to_string(i) + "] got " + std::to_string(float(got[i])) + " want " +
               std::to_string(float(want[i]));
  }
  return count == 0 ? std::string()
                    : std::string(what) + ": " + std::to_string(count) + " of " +
                          std::to_string(got.size()) + " differ:" + first;
}

using case_t = std::tuple<std::int64_t, std::int64_t, std::int64_t>;  // tokens, heads, pad

class RopeCuda : public RopeCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(RopeCuda, MatchesCpuReferenceBitExactly) {
  auto const [tokens, heads, pad] = GetParam();
  auto rng = test::test_rng();
  rope_run run(tokens, heads, pad, rng);
  gpu_result const got = run_on_gpu(run);

  // The CPU reference on the same inputs (and same padding), in place on copies.
  std::vector<bf16> want_q = run.q, want_kv = run.kv;
  std::vector<float> cache = host_cache();
  backend::cpu cpu;
  apply_rope(cpu, run.q_rope(want_q.data(), device::cpu()),
             run.k_rope(want_kv.data(), device::cpu()),
             tensor_view(run.positions.data(), dtype::i32, {tokens}),
             tensor_view(cache.data(), dtype::f32, {max_positions, 64}), cpu.make_stream());

  // Whole buffers: rope parts equal to the reference, everything else equal to the input (the
  // CPU reference leaves it so; checked against the input directly as well).
  EXPECT_EQ(mismatches(got.q, want_q, "q"), "");
  EXPECT_EQ(mismatches(got.kv, want_kv, "kv"), "");
  std::int64_t outside_changed = 0;
  for (std::size_t row = 0; row < std::size_t(tokens * heads); ++row)
    for (std::size_t j = 0; j < std::size_t(run.q_row - 64); ++j) {
      std::size_t const i = row * std::size_t(run.q_row) + j;
      outside_changed += got.q[i].bits != run.q[i].bits;
    }
  for (std::size_t t = 0; t < std::size_t(tokens); ++t)
    for (std::size_t j = 0; j < std::size_t(run.kv_row - 64); ++j) {
      std::size_t const i = t * std::size_t(run.kv_row) + j;
      outside_changed += got.kv[i].bits != run.kv[i].bits;
    }
  EXPECT_EQ(outside_changed, 0) << "elements outside the rope views changed";
}

std::string case_name(::testing::TestParamInfo<case_t> const& info) {
  auto const [tokens, heads, pad] = info.param;
  return "T" + std::to_string(tokens) + "_H" + std::to_string(heads) +
         (pad ? "_misaligned" : "_aligned");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 3, 257, 4096),
                                            ::testing::Values<std::int64_t>(128, 16),
                                            ::testing::Values<std::int64_t>(0, 1)),
                         case_name);

// Head counts around the kernel's chunking of a token's rows (heads + 1, split into warps of at
// most 4 * rope_max_steps rows): one row of q, chunks that end exactly on a warp step or one row
// past it, and several chunks per token.
INSTANTIATE_TEST_SUITE_P(HeadCounts, RopeCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 5, 300),
                                            ::testing::Values<std::int64_t>(1, 3, 15, 19, 20, 23,
                                                                            24, 31, 32, 64),
                                            ::testing::Values<std::int64_t>(0, 1)),
                         case_name);

// The split of a token's rows over warps: every row in exactly one chunk, no chunk over the
// warp's rows, as few chunks as that allows and none of them empty.
TEST(RopeChunking, CoversEveryRowOnceWithTheFewestChunks) {
  for (int const steps : {1, 4, 5, 6, 8}) {
    int const max_rows = 4 * steps;
    for (std::int64_t heads = 1; heads <= 300; ++heads) {
      auto const c = kernels::detail::rope_chunking_for(heads, steps);
      std::int64_t const rows = heads + 1;
      SCOPED_TRACE("steps " + std::to_string(steps) + ", heads " + std::to_string(heads));
      EXPECT_EQ(c.chunks_per_token, std::uint32_t((rows + max_rows - 1) / max_rows));
      EXPECT_LE(c.rows_per_chunk, std::uint32_t(max_rows));
      EXPECT_GE(std::int64_t(c.chunks_per_token) * c.rows_per_chunk, rows);
      // The last chunk is not empty: the ones before it hold fewer than all rows.
      EXPECT_LT(std::int64_t(c.chunks_per_token - 1) * c.rows_per_chunk, rows);
    }
  }
}

// Positions outside [0, max_positions) cannot throw from the kernel: that token's rope rows
// become NaN, nothing is read outside the cache, and the other tokens are unaffected.
// With 128 heads a token's rows span several warps, each of which must see the bad position.
TEST_F(RopeCudaTest, OutOfRangePositionsWriteNaN) {
  for (std::size_t const heads : {16, 128}) {
    auto rng = test::test_rng();
    rope_run run(6, std::int64_t(heads), 0, rng);
    run.positions[1] = std::int32_t(max_positions);
    run.positions[4] = -5;
    gpu_result const got = run_on_gpu(run);
    for (std::size_t t = 0; t < 6; ++t) {
      bool const bad = t == 1 || t == 4;
      for (std::size_t h = 0; h <= heads; ++h) {
        bf16 const* row = h < heads ? got.q.data() + (t * heads + h) * std::size_t(run.q_row) + nope
                                    : got.kv.data() + t * std::size_t(run.kv_row) + latent;
        int nan = 0;
        for (int j = 0; j < 64; ++j) nan += std::isnan(float(row[j]));
        EXPECT_EQ(nan, bad ? 64 : 0) << heads << " heads, token " << t << " row " << h;
      }
    }
  }
}

// apply_rope is safe to capture into a CUDA graph (decode runs as graphs): no allocation, no sync.
TEST_F(RopeCudaTest, CapturesIntoCudaGraph) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  rope_run run(7, 16, 0, rng);
  tensor<backend::cuda> q(gpu, dtype::bf16, {std::int64_t(run.q.size())});
  tensor<backend::cuda> kv(gpu, dtype::bf16, {std::int64_t(run.kv.size())});
  tensor<backend::cuda> pos(gpu, dtype::i32, {run.tokens});
  tensor<backend::cuda> cache(gpu, dtype::f32, {max_positions, 64});
  gpu.copy(q.data(), run.q.data(), q.nbytes(), stream);
  gpu.copy(kv.data(), run.kv.data(), kv.nbytes(), stream);
  gpu.copy(pos.data(), run.positions.data(), pos.nbytes(), stream);
  gpu.copy(cache.data(), host_cache().data(), cache.nbytes(), stream);
  stream.synchronize();

  test::run_in_graph(stream, [&] {
    apply_rope(gpu, run.q_rope(q.data(), gpu.where()), run.k_rope(kv.data(), gpu.where()), pos,
               cache, stream);
  });
  std::vector<bf16> got(run.q.size());
  gpu.copy(got.data(), q.data(), q.nbytes(), stream);
  stream.synchronize();

  std::vector<bf16> want = run.q, want_kv = run.kv;
  std::vector<float> host = host_cache();
  backend::cpu cpu;
  apply_rope(cpu, run.q_rope(want.data(), device::cpu()), run.k_rope(want_kv.data(), device::cpu()),
             tensor_view(run.positions.data(), dtype::i32, {run.tokens}),
             tensor_view(host.data(), dtype::f32, {max_positions, 64}), cpu.make_stream());
  EXPECT_EQ(mismatches(got, want, "q"), "");
}

TEST_F(RopeCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  auto rng = test::test_rng();
  rope_run run(2, 16, 0, rng);
  std::vector<float> cache(64 * 4);
  test::expect_error(
      [&] {
        apply_rope(gpu, run.q_rope(run.q.data(), device::cpu()),
                   run.k_rope(run.kv.data(), device::cpu()),
                   tensor_view(run.positions.data(), dtype::i32, {2}),
                   tensor_view(cache.data(), dtype::f32, {4, 64}), gpu.make_stream());
      },
      {"apply_rope on cuda:0 needs every view there", "q_rope is on cpu"});
}

}  // namespace
}  // namespace lightcore
