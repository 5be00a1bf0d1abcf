// embedding on the CUDA backend against the CPU reference: fresh random tables and ids over
// DeepSeek-V3's vocabulary (129280) with a tensor-parallel shard (rank 3 of 8), T in
// {1, 3, 257, 4096}, H in {7168, 2048}; output poisoned before each run and its padding checked
// untouched; ids outside the vocabulary give zeros (the kernel cannot throw); CUDA-graph capture.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/embedding/embedding.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"

namespace lightcore {
namespace {

using kernels::embedding;
using kernels::vocab_shard;

constexpr std::int64_t vocab = 129280;  // DeepSeek-V3/R1
constexpr std::int64_t ranks = 8;
constexpr std::int64_t shard_rows = vocab / ranks;    // 16160
constexpr std::int64_t vocab_start = 3 * shard_rows;  // rank 3
constexpr std::uint64_t poison_byte = 0xFF;           // bf16 0xFFFF, not in any table below
constexpr std::uint16_t poison_bits = 0xFFFF;

class EmbeddingCudaTest : public test::cuda_test {};

struct gathered {
  std::vector<std::uint16_t> table;  // [shard_rows, hidden], the random table used
  std::vector<std::uint16_t> got;    // [T, out_stride], the GPU's output buffer
};

// Gathers `ids` on the GPU from a fresh random [shard_rows, hidden] table into a [T, out_stride]
// output buffer (the view takes `hidden` columns), poisoned before the run.
gathered run_gpu(std::vector<std::int32_t> const& ids, std::int64_t hidden, std::int64_t out_stride,
                 bool graph = false) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  auto rng = test::test_rng();
  auto const tokens = std::int64_t(ids.size());
  gathered r;
  r.table.resize(std::size_t(shard_rows * hidden));
  for (auto& x : r.table) x = std::uint16_t(rng() % 0xFFFF);  // any encoding but the poison
  tensor<backend::cuda> table(gpu, dtype::bf16, {shard_rows, hidden});
  tensor<backend::cuda> id(gpu, dtype::i32, {tokens});
  tensor<backend::cuda> out(gpu, dtype::bf16, {tokens, out_stride});
  gpu.copy(table.data(), r.table.data(), table.nbytes(), stream);
  gpu.copy(id.data(), ids.data(), id.nbytes(), stream);
  gpu.fill(out.data(), out.nbytes(), 1, poison_byte, stream);
  tensor_view const out_view = out.view().slice(1, 0, hidden);
  vocab_shard const shard{vocab_start, vocab};
  test::run_maybe_in_graph(stream, graph,
                           [&] { embedding(gpu, id, table, out_view, shard, stream); });
  r.got.resize(std::size_t(tokens * out_stride));
  gpu.copy(r.got.data(), out.data(), out.nbytes(), stream);
  stream.synchronize();
  return r;
}

// Bit for bit (a gather does no arithmetic): got [T, out_stride] against want [T, hidden], and
// the padding columns still poisoned.
void compare(std::vector<std::int32_t> const& ids, std::int64_t hidden, std::int64_t out_stride,
             std::vector<std::uint16_t> const& got, std::vector<std::uint16_t> const& want) {
  std::int64_t bad_tokens = 0, clobbered = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    bool ok = true;
    for (std::int64_t h = 0; h < out_stride; ++h) {
      std::uint16_t const g = got[t * std::size_t(out_stride) + std::size_t(h)];
      if (h >= hidden) {
        clobbered += g != poison_bits;
      } else {
        ok &= g == want[t * std::size_t(hidden) + std::size_t(h)];
      }
    }
    if (!ok && ++bad_tokens <= 8)
      ADD_FAILURE() << "token " << t << " (id " << ids[t] << ") differs";
  }
  EXPECT_EQ(bad_tokens, 0);
  EXPECT_EQ(clobbered, 0) << "elements written in the output's row padding";
}

std::vector<std::int32_t> random_ids(std::int64_t n, std::int64_t lo, std::int64_t hi,
                                     std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> dist(lo, hi - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = std::int32_t(dist(rng));
  return v;
}

// Valid ids: the GPU result against the CPU backend's gather of the same table.
void check_against_cpu(std::vector<std::int32_t> const& ids, std::int64_t hidden,
                       std::int64_t out_stride, bool graph = false) {
  SCOPED_TRACE(::testing::Message() << "T " << ids.size() << ", H " << hidden);
  auto const tokens = std::int64_t(ids.size());
  auto r = run_gpu(ids, hidden, out_stride, graph);
  std::vector<std::uint16_t> want(std::size_t(tokens * hidden), poison_bits);
  backend::cpu cpu;
  embedding(cpu, tensor_view(const_cast<std::int32_t*>(ids.data()), dtype::i32, {tokens}),
            tensor_view(r.table.data(), dtype::bf16, {shard_rows, hidden}),
            tensor_view(want.data(), dtype::bf16, {tokens, hidden}),
            vocab_shard{vocab_start, vocab}, cpu.make_stream());
  compare(ids, hidden, out_stride, r.got, want);
}

using case_t = std::tuple<std::int64_t, std::int64_t>;  // T, H

class EmbeddingCuda : public EmbeddingCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(EmbeddingCuda, MatchesCpuReference) {
  auto const [tokens, hidden] = GetParam();
  auto rng = test::test_rng();
  check_against_cpu(random_ids(tokens, 0, vocab, rng), hidden, hidden);
}

INSTANTIATE_TEST_SUITE_P(DeepSeekSizes, EmbeddingCuda,
                         ::testing::Combine(::testing::Values<std::int64_t>(1, 3, 257, 4096),
                                            ::testing::Values<std::int64_t>(7168, 2048)),
                         [](::testing::TestParamInfo<case_t> const& info) {
                           return "T" + std::to_string(std::get<0>(info.param)) + "_H" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_F(EmbeddingCudaTest, MostlyInShardAndPaddedOutput) {
  auto rng = test::test_rng();
  auto ids = random_ids(1000, vocab_start - 8, vocab_start + shard_rows + 8, rng);
  ids.push_back(std::int32_t(vocab_start));
  ids.push_back(std::int32_t(vocab_start + shard_rows - 1));
  check_against_cpu(ids, 7168, 7168 + 64);
  check_against_cpu(random_ids(5000, 0, vocab, rng), 8, 16);    // one vector per row
  check_against_cpu(random_ids(70000, 0, vocab, rng), 64, 64);  // more tokens than blocks
}

// Ids outside [0, vocab): the CPU backend rejects them; the kernel writes zeros.
TEST_F(EmbeddingCudaTest, IdsOutsideTheVocabularyGiveZeros) {
  auto rng = test::test_rng();
  auto ids = random_ids(300, vocab_start, vocab_start + shard_rows, rng);
  for (std::int32_t bad :
       {-1, -100000, std::int32_t(vocab), std::int32_t(vocab + 12345),
        std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()})
    ids[std::size_t(rng() % ids.size())] = bad;
  auto const r = run_gpu(ids, 2048, 2048);
  std::vector<std::uint16_t> want(ids.size() * 2048, 0);
  for (std::size_t t = 0; t < ids.size(); ++t) {
    std::int64_t const row = std::int64_t(ids[t]) - vocab_start;
    if (row >= 0 && row < shard_rows)
      std::copy_n(r.table.begin() + row * 2048, 2048, want.begin() + std::ptrdiff_t(t * 2048));
  }
  compare(ids, 2048, 2048, r.got, want);
}

TEST_F(EmbeddingCudaTest, CapturesIntoCudaGraph) {
  auto rng = test::test_rng();
  check_against_cpu(random_ids(77, 0, vocab, rng), 7168, 7168, true);
}

TEST_F(EmbeddingCudaTest, HostViewsAreRejected) {
  backend::cuda gpu(0);
  std::vector<std::int32_t> ids(2);
  std::vector<bf16> table(64), out(16);
  test::expect_error(
      [&] {
        embedding(gpu, tensor_view(ids.data(), dtype::i32, {2}),
                  tensor_view(table.data(), dtype::bf16, {8, 8}),
                  tensor_view(out.data(), dtype::bf16, {2, 8}), vocab_shard{0, 8},
                  gpu.make_stream());
      },
      {"embedding on cuda:0 needs every view there", "ids are on cpu"});
}

}  // namespace
}  // namespace lightcore
