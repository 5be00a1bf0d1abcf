// sample on the CUDA backend against the CPU reference: the same token, the same top-n ids and
// the chosen and top-n logprobs within float summation error, for every mode alone and mixed in
// one batch, at vocab 129280 (DeepSeek-V3/R1), 102400 (V2-Lite) and odd sizes, batch 1 / 3 / 257,
// padded and misaligned logit rows, outputs poisoned before each run, inside a CUDA graph, and
// the chi-square goodness of fit of GPU draws.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/cuda.hpp"
#include "convert_test_util.hpp"
#include "kernels/sampling/sampling.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "sampling_test_util.hpp"

namespace lightcore {
namespace {

using kernels::sampling_max_logprobs;
using kernels::sampling_request;
using test::sampling_batch;
using test::sampling_result;

// 0x7F bytes: i32 0x7F7F7F7F (no token id) and f32 3.4e38 (no logprob: those are <= 0).
constexpr std::uint64_t poison_byte = 0x7F;

struct gpu_layout {
  std::int64_t row_stride = 0;  // 0: vocab (dense rows)
  std::int64_t offset = 0;      // elements before row 0: 1 makes the rows misaligned for 16 bytes
  bool graph = false;
  kernels::sampling_route route = kernels::sampling_route::automatic;
};

// Runs the batch on the GPU; the logits are laid out per `layout` and checked unchanged after.
sampling_result run_sampling_gpu(sampling_batch& b, gpu_layout layout = {}) {
  backend::cuda gpu(0);
  auto const stream = gpu.make_stream();
  std::int64_t const stride = layout.row_stride > 0 ? layout.row_stride : b.vocab;
  std::int64_t const span = layout.offset + (b.batch - 1) * stride + b.vocab;
  std::vector<float> host_logits(std::size_t(span), -1e30f);
  for (std::int64_t r = 0; r < b.batch; ++r)
    std::copy_n(b.logits.begin() + r * b.vocab, b.vocab,
                host_logits.begin() + layout.offset + r * stride);
  auto const history = std::int64_t(b.history_ids.size());
  tensor<backend::cuda> logits(gpu, dtype::f32, {span});
  tensor<backend::cuda> requests(gpu, dtype::u8, {b.batch, std::int64_t(sizeof(sampling_request))});
  tensor<backend::cuda> positions(gpu, dtype::i32, {b.batch});
  tensor<backend::cuda> ids(gpu, dtype::i32, {std::max<std::int64_t>(history, 1)});
  tensor<backend::cuda> offsets(gpu, dtype::i32, {b.batch + 1});
  tensor<backend::cuda> tokens(gpu, dtype::i32, {b.batch});
  tensor<backend::cuda> logprobs(gpu, dtype::f32, {b.batch});
  tensor<backend::cuda> top_ids(gpu, dtype::i32, {b.batch, sampling_max_logprobs});
  tensor<backend::cuda> top_logprobs(gpu, dtype::f32, {b.batch, sampling_max_logprobs});
  std::int64_t const ws_bytes = kernels::sampling_workspace_bytes(b.batch, b.vocab);
  tensor<backend::cuda> workspace(gpu, dtype::u8, {std::max<std::int64_t>(ws_bytes, 1)});
  gpu.copy(logits.data(), host_logits.data(), logits.nbytes(), stream);
  gpu.copy(requests.data(), b.requests.data(), requests.nbytes(), stream);
  gpu.copy(positions.data(), b.positions.data(), positions.nbytes(), stream);
  if (history > 0) gpu.copy(ids.data(), b.history_ids.data(), std::size_t(history) * 4, stream);
  gpu.copy(offsets.data(), b.history_offsets.data(), offsets.nbytes(), stream);
  for (auto* t : {&tokens, &logprobs, &top_ids, &top_logprobs})
    gpu.fill(t->data(), t->nbytes(), 1, poison_byte, stream);

  kernels::sampling_inputs const in{
      tensor_view(static_cast<float*>(logits.data()) + layout.offset, dtype::f32,
                  {b.batch, b.vocab}, {stride, 1}, gpu.where()),
      requests, positions, ids.view().slice(0, 0, history), offsets};
  kernels::sampling_outputs const out{tokens, logprobs, top_ids, top_logprobs};
  tensor_view const ws = workspace.view().slice(0, 0, ws_bytes);
  test::run_maybe_in_graph(stream, layout.graph,
                           [&] { kernels::sample(gpu, in, out, ws, stream, layout.route); });

  sampling_result r;
  r.tokens.resize(std::size_t(b.batch));
  r.logprobs.resize(std::size_t(b.batch));
  r.top_ids.resize(std::size_t(b.batch * sampling_max_logprobs));
  r.top_logprobs.resize(r.top_ids.size());
  std::vector<float> logits_after(host_logits.size());
  gpu.copy(r.tokens.data(), tokens.data(), tokens.nbytes(), stream);
  gpu.copy(r.logprobs.data(), logprobs.data(), logprobs.nbytes(), stream);
  gpu.copy(r.top_ids.data(), top_ids.data(), top_ids.nbytes(), stream);
  gpu.copy(r.top_logprobs.data(), top_logprobs.data(), top_logprobs.nbytes(), stream);
  gpu.copy(logits_after.data(), logits.data(), logits.nbytes(), stream);
  gpu.copy(&r.exact_rows, workspace.data(), 4, stream);
  stream.synchronize();
  EXPECT_EQ(std::memcmp(logits_after.data(), host_logits.data(), logits.nbytes()), 0)
      << "the logits are read only";
  return r;
}

// The CPU reference of row `row` alone with top_p scaled by `scale` (for boundary checks).
std::int32_t cpu_token_with_top_p(sampling_batch const& b, std::int64_t row, float scale) {
  sampling_batch one;
  one.batch = 1;
  one.vocab = b.vocab;
  one.logits.assign(b.logits.begin() + row * b.vocab, b.logits.begin() + (row + 1) * b.vocab);
  one.requests = {b.requests[std::size_t(row)]};
  one.requests[0].top_p = std::min(1.0f, one.requests[0].top_p * scale);
  one.positions = {b.positions[std::size_t(row)]};
  one.history_ids.assign(b.history_ids.begin() + b.history_offsets[std::size_t(row)],
                         b.history_ids.begin() + b.history_offsets[std::size_t(row + 1)]);
  one.history_offsets = {0, std::int32_t(one.history_ids.size())};
  return test::run_sampling_cpu(one).tokens[0];
}

// GPU against CPU. Tokens and top-n ids must be equal: both sides compute every per-token value
// (z, the weights, the race keys) with the same IEEE operations. The one exception allowed is a
// top_p row whose boundary the two sides' different float summation orders place differently: the
// GPU token must then be the CPU's for top_p scaled by 1 -+ 1e-4. Logprobs: the GPU sums exp in
// float (relative error ~1e-6 over 1e5 terms), the CPU in double: 1e-5 absolute + 2e-6 relative.
void expect_matches_cpu(sampling_batch& b, gpu_layout layout = {},
                        std::int32_t* exact_rows = nullptr) {
  auto const want = test::run_sampling_cpu(b);
  auto const got = run_sampling_gpu(b, layout);
  if (exact_rows != nullptr) *exact_rows = got.exact_rows;
  int boundary = 0, bad = 0;
  for (std::int64_t row = 0; row < b.batch; ++row) {
    auto const k = std::size_t(row);
    sampling_request const& r = b.requests[k];
    SCOPED_TRACE(::testing::Message()
                 << "row " << row << ": " << test::describe(r) << ", logprobs " << r.num_logprobs);
    if (got.tokens[k] != want.tokens[k]) {
      bool const explained =
          r.top_p < 1.0f && (cpu_token_with_top_p(b, row, 1.0f - 1e-4f) == got.tokens[k] ||
                             cpu_token_with_top_p(b, row, 1.0f + 1e-4f) == got.tokens[k]);
      if (explained) {
        ++boundary;
      } else if (++bad <= 8) {
        ADD_FAILURE() << "token " << got.tokens[k] << ", CPU " << want.tokens[k];
      }
      continue;
    }
    if (r.num_logprobs < 0) {
      EXPECT_TRUE(std::isnan(got.logprobs[k])) << got.logprobs[k];
    } else {
      EXPECT_NEAR(got.logprobs[k], want.logprobs[k], 1e-5 + 2e-6 * std::fabs(want.logprobs[k]));
    }
    for (int j = 0; j < sampling_max_logprobs; ++j) {
      std::size_t const at = k * sampling_max_logprobs + std::size_t(j);
      ASSERT_EQ(got.top_ids[at], want.top_ids[at]) << "top " << j;
      if (want.top_ids[at] < 0) {
        ASSERT_EQ(got.top_logprobs[at], -std::numeric_limits<float>::infinity()) << "top " << j;
      } else {
        ASSERT_NEAR(got.top_logprobs[at], want.top_logprobs[at],
                    1e-5 + 2e-6 * std::fabs(want.top_logprobs[at]))
            << "top " << j;
      }
    }
  }
  EXPECT_EQ(bad, 0) << bad << " tokens differ from the CPU reference";
  if (boundary > 0) std::cout << "  " << boundary << " top_p boundary rows\n";
  EXPECT_LE(boundary * 100, std::max<std::int64_t>(b.batch, 100)) << "too many boundary rows";
}

// The modes tested one at a time; every one with penalties over a random history.
std::vector<std::pair<std::string, sampling_request>> modes() {
  std::vector<std::pair<std::string, sampling_request>> m;
  sampling_request r;
  r.temperature = 0.0f;
  m.emplace_back("greedy", r);
  r = {};
  r.temperature = 0.8f;
  m.emplace_back("temperature", r);
  r.top_k = 50;
  m.emplace_back("top_k", r);
  r.top_k = 0;
  r.top_p = 0.9f;
  m.emplace_back("top_p", r);
  r.top_k = 50;
  m.emplace_back("top_k_top_p", r);
  r = {};
  r.temperature = 1.2f;
  r.min_p = 0.05f;
  m.emplace_back("min_p", r);
  r.top_k = 1;
  m.emplace_back("top_k_1", r);
  for (auto& [name, q] : m) {
    q.repetition_penalty = 1.2f;
    q.presence_penalty = 0.4f;
    q.frequency_penalty = 0.3f;
    q.num_logprobs = 5;
  }
  return m;
}

// Every row a different mode: greedy or not, each filter on or off, logprobs -1 .. 20.
void mix_requests(sampling_batch& b, std::mt19937_64& rng) {
  for (auto& r : b.requests) {
    std::uint64_t const bits = rng();
    r.temperature = bits % 5 == 0 ? 0.0f : 0.5f + float(bits % 7) * 0.2f;
    int const ks[] = {0, 0, 1, 20, 50, 1000};
    r.top_k = ks[(bits >> 8) % 6];
    float const ps[] = {1.0f, 1.0f, 0.9f, 0.5f};
    r.top_p = ps[(bits >> 12) % 4];
    r.min_p = (bits >> 16) % 3 == 0 ? 0.05f : 0.0f;
    r.repetition_penalty = (bits >> 20) % 2 ? 1.3f : 1.0f;
    r.presence_penalty = (bits >> 21) % 2 ? 0.5f : 0.0f;
    r.frequency_penalty = (bits >> 22) % 2 ? 0.2f : 0.0f;
    int const ns[] = {-1, 0, 1, 5, 20};
    r.num_logprobs = ns[(bits >> 24) % 5];
  }
}

class SamplingCudaTest : public test::cuda_test {};

using case_t = std::tuple<int, std::int64_t>;  // mode index, vocab

class SamplingCuda : public SamplingCudaTest, public ::testing::WithParamInterface<case_t> {};

TEST_P(SamplingCuda, MatchesCpuReference) {
  auto const [mode, vocab] = GetParam();
  auto rng = test::test_rng();
  for (std::int64_t batch : {1, 3}) {
    auto b = test::make_batch(batch, vocab, rng, modes()[std::size_t(mode)].second, 64);
    expect_matches_cpu(b);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, SamplingCuda,
                         ::testing::Combine(::testing::Range(0, 7),
                                            ::testing::Values<std::int64_t>(129280, 102400, 50257,
                                                                            1001, 7, 1)),
                         [](::testing::TestParamInfo<case_t> const& info) {
                           return modes()[std::size_t(std::get<0>(info.param))].first + "_vocab" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_F(SamplingCudaTest, MixedModesInOneBatch) {
  auto rng = test::test_rng();
  for (std::int64_t vocab : {129280, 102400, 333}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    auto b = test::make_batch(257, vocab, rng, sampling_request{}, 200);
    mix_requests(b, rng);
    expect_matches_cpu(b);
  }
}

// Rows with top_k or top_p take a candidate list (z >= z_max - gap) when one provably holds
// every kept token and the exact whole-row path otherwise: flat rows (spread 0.3: top_p keeps
// most of the row), top_k beyond the widest level (20000), sharp rows (spread 8: few candidates),
// and every filter combination in between, against the CPU reference.
TEST_F(SamplingCudaTest, CandidateListAndWholeRowPaths) {
  auto rng = test::test_rng();
  int const ks[] = {0, 1, 50, 3000, 20000};
  float const ps[] = {1.0f, 0.9f, 0.5f, 0.99f};
  float const temperatures[] = {0.6f, 1.0f, 1.5f};
  for (float const spread : {0.3f, 1.0f, 3.0f, 8.0f}) {
    SCOPED_TRACE(::testing::Message() << "spread " << spread);
    auto b = test::make_batch(20, 129280, rng, sampling_request{}, 100);
    b.logits = test::random_logits(b.batch, b.vocab, rng, spread);
    for (std::size_t k = 0; k < b.requests.size(); ++k) {
      sampling_request& r = b.requests[k];
      r.top_k = ks[k % 5];
      r.top_p = ps[(k / 5) % 4];
      r.temperature = temperatures[k % 3];
      r.min_p = k % 7 == 3 ? 0.02f : 0.0f;
      r.repetition_penalty = 1.2f;
      r.frequency_penalty = 0.3f;
      r.num_logprobs = int(k % 3) - 1;
    }
    expect_matches_cpu(b);
  }
}

// The streamed launches keep a row only when its candidates prove the answer; the others take
// the exact path. Rows built to fail the proof: every logit equal (no level fits a chunk's list),
// top_k beyond the candidates (20000), top_p 0.999 on flat rows, a tiny min_p, and the rows the
// streamed launches never serve (temperature alone, logprobs). Rows built to pass: greedy, top_k
// 50 (alone and with top_p), min_p 0.1, and any filter when a whole row fits one chunk's list.
// Every row must match the CPU, and the count of exact-path rows (the workspace's first word) is
// checked where it is known.
TEST_F(SamplingCudaTest, StreamedCandidatesAndExactFallback) {
  auto rng = test::test_rng();
  sampling_request base;
  base.temperature = 0.8f;
  base.repetition_penalty = 1.1f;
  base.presence_penalty = 0.2f;
  base.frequency_penalty = 0.1f;
  auto b = test::make_batch(10, 129280, rng, base, 64);
  std::vector<sampling_request>& q = b.requests;
  q[0].top_k = 50;  // every logit equal: each chunk's levels hold all 4096 tokens
  std::fill_n(b.logits.begin(), b.vocab, 0.5f);
  q[1].top_k = 20000;   // more than the candidates
  q[2].top_p = 0.999f;  // flat row: the kept mass reaches far below every chunk floor
  std::normal_distribution<float> flat(0.0f, 0.05f);
  for (std::int64_t i = 0; i < b.vocab; ++i) b.logits[std::size_t(2 * b.vocab + i)] = flat(rng);
  // (row 3: temperature alone)
  q[4].temperature = 0.0f;  // greedy with logprobs
  q[4].num_logprobs = 3;
  q[5].temperature = 0.0f;  // greedy
  q[6].top_k = 50;
  q[7].top_k = 50;
  q[7].top_p = 0.9f;
  q[8].min_p = 0.1f;
  q[9].top_k = 600;  // wider than one chunk's list: the union of the widest levels still proves it
  std::int32_t exact = -1;
  expect_matches_cpu(b, {}, &exact);
  EXPECT_GE(exact, 5) << "rows 0 to 4 cannot be proved from candidates";
  EXPECT_LE(exact, 6) << "rows 5 to 8 are proved from candidates";
  std::cout << "  exact-path rows: " << exact << " of " << b.batch << "\n";

  // A vocab that fits one chunk's list: every filtered row is proved, whatever its filters.
  auto small = test::make_batch(24, 300, rng, base, 16);
  float const ps[] = {1.0f, 0.5f, 0.999f};
  for (std::size_t k = 0; k < small.requests.size(); ++k) {
    sampling_request& r = small.requests[k];
    r.top_k = int(k % 4) * 100;  // 0, 100, 200, 300 (= vocab: off)
    r.top_p = ps[k % 3];
    r.min_p = k % 5 == 0 ? 1e-6f : 0.0f;
    if (r.top_k % 300 == 0 && r.top_p == 1.0f && r.min_p == 0.0f) r.min_p = 0.3f;
  }
  expect_matches_cpu(small, {}, &exact);
  EXPECT_LE(exact, 2) << "a whole row is one chunk's list: only top_p rounding may fall back";

  // Sharp, flat and coarse rows with every filter, against the CPU (either path).
  for (float const spread : {0.05f, 0.5f, 3.0f, 12.0f}) {
    SCOPED_TRACE(::testing::Message() << "spread " << spread);
    auto c = test::make_batch(16, 50257, rng, base, 32);
    c.logits = test::random_logits(c.batch, c.vocab, rng, spread);
    for (std::size_t k = 0; k < c.requests.size(); ++k) {
      sampling_request& r = c.requests[k];
      int const ks[] = {0, 1, 7, 512, 513, 4096};
      float const tops[] = {1.0f, 0.95f, 0.999f, 0.3f};
      r.top_k = ks[k % 6];
      r.top_p = tops[(k / 2) % 4];
      r.min_p = k % 3 == 0 ? 1e-4f : 0.0f;
      if (r.top_k == 0 && r.top_p == 1.0f && r.min_p == 0.0f) r.min_p = 0.02f;
      r.temperature = k % 2 ? 0.3f : 1.7f;
    }
    expect_matches_cpu(c);
  }
}

// Launch 1's levels are bins of an arithmetic index below each chunk's max, and each listed
// level's floor is found by searching the floats around its boundary. Logits on coarse grids
// (multiples of 1/8, bf16 values) put many tokens on and beside those boundaries; temperatures
// from 0.05 to 9 move the bins; top_k 511 / 512 / 513 sit on a chunk list's capacity. Every row
// must match the CPU, and most must be proved by their candidates (the streamed path is the one
// under test). Temperatures of 1e-30 and 1e30 leave the range where the bins are integers or put
// every token in one bin: those rows must take the exact path and still match.
TEST_F(SamplingCudaTest, StreamedLevelsOnGridsAndExtremeTemperatures) {
  auto rng = test::test_rng();
  sampling_request base;
  base.repetition_penalty = 1.1f;
  base.frequency_penalty = 0.2f;
  auto b = test::make_batch(48, 129280, rng, base, 32);
  float const temperatures[] = {0.05f, 0.3f, 0.77f, 1.0f, 2.5f, 9.0f};
  int const ks[] = {1, 2, 50, 511, 512, 513, 0, 0};
  float const ps[] = {1.0f, 0.9f, 0.5f};
  for (std::int64_t row = 0; row < b.batch; ++row) {
    auto const k = std::size_t(row);
    float* const l = b.logits.data() + row * b.vocab;
    for (std::int64_t i = 0; i < b.vocab; ++i) {
      if (row % 3 == 0) l[i] = std::round(l[i] * 8.0f) / 8.0f;
      if (row % 3 == 1) {
        std::uint32_t u;
        std::memcpy(&u, &l[i], 4);
        u &= 0xFFFF'0000u;
        std::memcpy(&l[i], &u, 4);
      }
    }
    sampling_request& r = b.requests[k];
    r.temperature = temperatures[k % 6];
    r.top_k = ks[(k / 6) % 8];
    r.top_p = ps[k % 3];
    if (r.top_k == 0 && r.top_p == 1.0f) r.min_p = 0.05f;
  }
  std::int32_t exact = -1;
  expect_matches_cpu(b, {}, &exact);
  std::cout << "  exact-path rows: " << exact << " of " << b.batch << "\n";
  EXPECT_LE(exact * 4, b.batch * 3) << "the rows at temperatures 0.3 to 2.5 are mostly proved";

  auto extreme = test::make_batch(6, 129280, rng, base, 16);
  float const wild[] = {1e-30f, 1e30f, 0.8f};
  for (std::size_t k = 0; k < extreme.requests.size(); ++k) {
    extreme.requests[k].temperature = wild[k % 3];
    extreme.requests[k].top_k = k < 3 ? 50 : 0;
    extreme.requests[k].top_p = k < 3 ? 1.0f : 0.9f;
  }
  expect_matches_cpu(extreme, {}, &exact);
  EXPECT_GE(exact, 4) << "rows at temperature 1e-30 or 1e30 cannot use the streamed levels";
}

// sampling_route::exact sends every row to the exact path (one cluster per row): the same draws
// as the CPU for every mode, temperature-only and logprob rows (the batches the executor routes
// there) and filtered and greedy ones alike, in and out of a CUDA graph.
TEST_F(SamplingCudaTest, ExactRouteMatchesCpuForEveryMode) {
  auto rng = test::test_rng();
  sampling_request base;
  base.temperature = 0.9f;
  base.repetition_penalty = 1.2f;
  base.frequency_penalty = 0.1f;
  auto b = test::make_batch(12, 129280, rng, base, 48);
  for (std::size_t k = 0; k < b.requests.size(); ++k)
    b.requests[k].num_logprobs = k % 3 == 0 ? int(k % 5) : -1;
  for (sampling_request const& r : b.requests)
    EXPECT_EQ(kernels::sampling_row_kind(r, b.vocab), kernels::sampling_row_exact);
  gpu_layout exact;
  exact.route = kernels::sampling_route::exact;
  expect_matches_cpu(b, exact);
  exact.graph = true;
  expect_matches_cpu(b, exact);
  exact.graph = false;
  auto mixed = test::make_batch(24, 50257, rng, base, 32);
  mix_requests(mixed, rng);
  expect_matches_cpu(mixed, exact);
}

TEST_F(SamplingCudaTest, SmallWorkspaceIsRejected) {
  backend::cuda gpu(0);
  auto rng = test::test_rng();
  auto b = test::make_batch(4, 5000, rng, sampling_request{}, 2);
  std::int64_t const need = kernels::sampling_workspace_bytes(4, 5000);
  tensor<backend::cuda> logits(gpu, dtype::f32, {4, 5000});
  tensor<backend::cuda> requests(gpu, dtype::u8, {4, 40}), positions(gpu, dtype::i32, {4});
  tensor<backend::cuda> offsets(gpu, dtype::i32, {5}), tok(gpu, dtype::i32, {4});
  tensor<backend::cuda> lp(gpu, dtype::f32, {4}), tid(gpu, dtype::i32, {4, 20});
  tensor<backend::cuda> tlp(gpu, dtype::f32, {4, 20}), ws(gpu, dtype::u8, {need});
  std::string const size = "workspace of at least " + std::to_string(need) + " bytes";
  test::expect_error(
      [&] {
        kernels::sample(gpu,
                        {logits, requests, positions,
                         tensor_view(nullptr, dtype::i32, {0}, gpu.where()), offsets},
                        {tok, lp, tid, tlp}, ws.view().slice(0, 0, need - 1), gpu.make_stream());
      },
      {size.c_str(), "sampling_workspace_bytes(4, 5000)"});
}

TEST_F(SamplingCudaTest, PaddedAndMisalignedRows) {
  auto rng = test::test_rng();
  auto b = test::make_batch(9, 1001, rng, sampling_request{}, 20);
  mix_requests(b, rng);
  expect_matches_cpu(b, {1004, 0, false});  // padded rows, scalar loads (vocab % 4 != 0)
  auto c = test::make_batch(9, 4096, rng, sampling_request{}, 20);
  mix_requests(c, rng);
  expect_matches_cpu(c, {4100, 1, false});  // rows off 16-byte alignment: scalar loads
  expect_matches_cpu(c, {4100, 0, false});  // aligned padded rows: vector loads
}

TEST_F(SamplingCudaTest, TopLogprobTiesAndTiedLogits) {
  auto rng = test::test_rng();
  sampling_request r;
  r.num_logprobs = 20;
  r.top_k = 30;
  auto b = test::make_batch(5, 129280, rng, r, 0);
  for (float& v : b.logits) v = std::round(v);  // massive ties everywhere, across blocks too
  expect_matches_cpu(b);
  for (float& v : b.logits) v = 0.5f;  // every logit equal: the lowest ids, and a uniform draw
  expect_matches_cpu(b);
}

TEST_F(SamplingCudaTest, CapturesIntoCudaGraph) {
  auto rng = test::test_rng();
  auto b = test::make_batch(33, 129280, rng, sampling_request{}, 50);
  mix_requests(b, rng);
  expect_matches_cpu(b, {0, 0, true});
}

TEST_F(SamplingCudaTest, DrawsFitTheKeptDistribution) {
  for (auto const& r : test::chi_square_modes()) {
    SCOPED_TRACE(::testing::Message() << test::describe(r));
    auto b = test::draws_batch(r);
    auto const got = run_sampling_gpu(b);
    test::expect_draws_fit(b, got.tokens);
    EXPECT_EQ(got.tokens, test::run_sampling_cpu(b).tokens) << "GPU draws differ from the CPU's";
  }
}

TEST_F(SamplingCudaTest, HostViewsAndLargeVocabAreRejected) {
  backend::cuda gpu(0);
  auto rng = test::test_rng();
  auto b = test::make_batch(2, 10, rng, sampling_request{}, 2);
  std::vector<std::int32_t> tokens(2), ids(40);
  std::vector<float> logprobs(2), top(40);
  kernels::sampling_outputs const out{
      tensor_view(tokens.data(), dtype::i32, {2}), tensor_view(logprobs.data(), dtype::f32, {2}),
      tensor_view(ids.data(), dtype::i32, {2, 20}), tensor_view(top.data(), dtype::f32, {2, 20})};
  test::expect_error(
      [&] {
        kernels::sample(gpu, test::host_inputs(b), out, tensor_view(nullptr, dtype::u8, {0}),
                        gpu.make_stream());
      },
      {"sample on cuda:0 needs every view there", "logits are on cpu"});
  std::int64_t const vocab = kernels::sampling_cuda_max_vocab + 4;
  tensor<backend::cuda> logits(gpu, dtype::f32, {1, vocab});
  tensor<backend::cuda> requests(gpu, dtype::u8, {1, 40}), positions(gpu, dtype::i32, {1});
  tensor<backend::cuda> offsets(gpu, dtype::i32, {2}), tok(gpu, dtype::i32, {1});
  tensor<backend::cuda> lp(gpu, dtype::f32, {1}), tid(gpu, dtype::i32, {1, 20});
  tensor<backend::cuda> tlp(gpu, dtype::f32, {1, 20});
  test::expect_error(
      [&] {
        kernels::sample(gpu,
                        {logits, requests, positions,
                         tensor_view(nullptr, dtype::i32, {0}, gpu.where()), offsets},
                        {tok, lp, tid, tlp}, tensor_view(nullptr, dtype::u8, {0}, gpu.where()),
                        gpu.make_stream());
      },
      {"vocab <= 393216", "got 393220"});
}

}  // namespace
}  // namespace lightcore
