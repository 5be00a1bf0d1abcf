// embedding on the CPU backend: gathers against the definition (rows of this rank's shard, zeros
// elsewhere), sharded tables summing to the unsharded result, strided views, and the errors for
// bad arguments (ids outside the vocabulary included).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "convert_test_util.hpp"
#include "kernels/embedding/embedding.hpp"
#include "lightcore/backend/cpu.hpp"

namespace lightcore {
namespace {

using kernels::embedding;
using kernels::vocab_shard;

constexpr std::uint16_t poison = 0xFFFF;

std::vector<std::uint16_t> random_bits(std::size_t n, std::mt19937_64& rng) {
  std::vector<std::uint16_t> v(n);
  for (auto& x : v) x = std::uint16_t(rng());  // any encoding: the gather copies bits
  return v;
}

// Runs the CPU gather with a [rows, table_stride] table buffer (the view takes `hidden` columns)
// and a [T, out_stride] output buffer, then checks every element against the definition and the
// output's padding untouched.
void check(std::vector<std::int32_t> const& ids, std::int64_t vocab_start, std::int64_t rows,
           std::int64_t vocab_size, std::int64_t hidden, std::int64_t table_stride,
           std::int64_t out_stride) {
  auto rng = test::test_rng();
  auto const tokens = std::int64_t(ids.size());
  auto table = random_bits(std::size_t(rows * table_stride), rng);
  std::vector<std::uint16_t> out(std::size_t(tokens * out_stride), poison);
  backend::cpu cpu;
  embedding(
      cpu, tensor_view(const_cast<std::int32_t*>(ids.data()), dtype::i32, {tokens}),
      tensor_view(table.data(), dtype::bf16, {rows, hidden}, {table_stride, 1}, device::cpu()),
      tensor_view(out.data(), dtype::bf16, {tokens, hidden}, {out_stride, 1}, device::cpu()),
      vocab_shard{vocab_start, vocab_size}, cpu.make_stream());
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::int64_t const id = ids[std::size_t(t)];
    bool const here = vocab_start <= id && id < vocab_start + rows;
    for (std::int64_t h = 0; h < out_stride; ++h) {
      std::uint16_t const got = out[std::size_t(t * out_stride + h)];
      std::uint16_t const want =
          h >= hidden ? poison
                      : (here ? table[std::size_t((id - vocab_start) * table_stride + h)] : 0);
      if (got != want) {
        ADD_FAILURE() << "token " << t << " (id " << id << ") element " << h << ": got 0x"
                      << std::hex << got << ", want 0x" << want;
        return;
      }
    }
  }
}

std::vector<std::int32_t> random_ids(std::size_t n, std::int32_t vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> dist(0, vocab - 1);
  std::vector<std::int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(EmbeddingCpu, UnshardedGathersRows) {
  auto rng = test::test_rng();
  check(random_ids(37, 1000, rng), 0, 1000, 1000, 64, 64, 64);
  check({0, 999, 999, 0}, 0, 1000, 1000, 8, 8, 8);  // first and last rows, repeats
}

TEST(EmbeddingCpu, ShardWritesItsRowsAndZerosElsewhere) {
  auto rng = test::test_rng();
  auto ids = random_ids(200, 1000, rng);
  ids.push_back(250);  // the shard's first id
  ids.push_back(499);  // its last
  ids.push_back(249);  // just before it
  ids.push_back(500);  // just after it
  check(ids, 250, 250, 1000, 128, 128, 128);
}

TEST(EmbeddingCpu, StridedViews) {
  auto rng = test::test_rng();
  check(random_ids(19, 512, rng), 128, 256, 512, 24, 40, 32);
}

// Four ranks' outputs sum to the unsharded gather (exactly: each element has one non-zero term).
TEST(EmbeddingCpu, ShardsSumToTheFullTable) {
  auto rng = test::test_rng();
  std::int64_t const vocab = 1024, hidden = 16, ranks = 4, shard = vocab / ranks;
  auto const ids = random_ids(50, std::int32_t(vocab), rng);
  std::vector<float> full(std::size_t(vocab * hidden));
  std::normal_distribution<float> normal;
  for (auto& x : full) x = float(bf16(normal(rng)));
  std::vector<bf16> table(full.size());
  for (std::size_t i = 0; i < full.size(); ++i) table[i] = bf16(full[i]);
  auto const n = std::int64_t(ids.size());
  std::vector<float> sum(std::size_t(n * hidden), 0.0f);
  backend::cpu cpu;
  for (std::int64_t r = 0; r < ranks; ++r) {
    std::vector<bf16> out(std::size_t(n * hidden));
    embedding(cpu, tensor_view(const_cast<std::int32_t*>(ids.data()), dtype::i32, {n}),
              tensor_view(table.data() + r * shard * hidden, dtype::bf16, {shard, hidden}),
              tensor_view(out.data(), dtype::bf16, {n, hidden}), vocab_shard{r * shard, vocab},
              cpu.make_stream());
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += float(out[i]);
  }
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t h = 0; h < hidden; ++h)
      ASSERT_EQ(sum[std::size_t(t * hidden + h)],
                full[std::size_t(ids[std::size_t(t)] * hidden + h)])
          << "token " << t;
}

class EmbeddingErrors : public ::testing::Test {
 protected:
  backend::cpu cpu_;
  backend::cpu::stream_type stream_ = cpu_.make_stream();
  std::vector<std::int32_t> ids_ = {1, 2, 3, 4};
  std::vector<bf16> table_ = std::vector<bf16>(1024, bf16(1.0f));
  std::vector<bf16> out_ = std::vector<bf16>(1024);
  tensor_view ids(dims d = {4}) { return tensor_view(ids_.data(), dtype::i32, d); }
  tensor_view table(dims d) { return tensor_view(table_.data(), dtype::bf16, d); }
  tensor_view out(dims d) { return tensor_view(out_.data(), dtype::bf16, d); }
};

TEST_F(EmbeddingErrors, IdOutsideTheVocabularyIsNamed) {
  ids_[2] = 100;
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}), out({4, 8}), vocab_shard{0, 100}, stream_);
      },
      {"token 2 has id 100", "outside the vocabulary [0, 100)"});
  ids_[2] = -1;
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}), out({4, 8}), vocab_shard{16, 100}, stream_);
      },
      {"token 2 has id -1"});
}

TEST_F(EmbeddingErrors, ShardOutsideTheVocabulary) {
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}), out({4, 8}), vocab_shard{90, 100}, stream_);
      },
      {"holds ids [90, 106)", "vocabulary [0, 100)"});
}

TEST_F(EmbeddingErrors, HiddenNotMultipleOf8) {
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 12}), out({4, 12}), vocab_shard{0, 16}, stream_);
      },
      {"multiple of 8", "H = 12"});
}

TEST_F(EmbeddingErrors, WrongShapesAndDtypes) {
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}), out({3, 8}), vocab_shard{0, 16}, stream_);
      },
      {"ids [T], table [V_shard, H] and output [T, H]", "output [3, 8]"});
  test::expect_error(
      [&] {
        embedding(cpu_, tensor_view(ids_.data(), dtype::i64, {2}), table({16, 8}), out({2, 8}),
                  vocab_shard{0, 16}, stream_);
      },
      {"ids i32", "got ids i64"});
}

TEST_F(EmbeddingErrors, BadStridesAndDevicesAreRejected) {
  tensor_view const odd(table_.data(), dtype::bf16, {16, 8}, {12, 1}, device::cpu());
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), odd, out({4, 8}), vocab_shard{0, 16}, stream_);
      },
      {"multiples of 8", "strides [12, 1]"});
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}),
                  tensor_view(out_.data(), dtype::bf16, {4, 8}, device::cuda(0)),
                  vocab_shard{0, 16}, stream_);
      },
      {"embedding on cpu needs every view there", "output on cuda:0"});
  test::expect_error(
      [&] {
        embedding(cpu_, ids(), table({16, 8}), tensor_view(table_.data() + 8, dtype::bf16, {4, 8}),
                  vocab_shard{0, 16}, stream_);
      },
      {"disjoint"});
}

}  // namespace
}  // namespace lightcore
