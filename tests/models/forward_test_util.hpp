// What the forward suites share: transformers' golden logits (tests/data/deepseek/*_golden.json,
// written by tools/deepseek_golden.py from random checkpoints that random_checkpoint regenerates
// here with seed 7), error measures, and a model with its token pool on any backend.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "models/deepseek_v3/model.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "nlohmann/json.hpp"
#include "weights_test_util.hpp"

namespace lightcore::test {

struct golden_case {
  std::vector<std::int32_t> prompt;
  std::vector<std::vector<float>> logits;  // [prompt positions][vocab]
  std::vector<std::int32_t> greedy;
  std::vector<double> margins;
};

struct fixture_spec {
  char const* golden;
  char const* config;
  tools::weight_format format;
  // Relative L2 bound of each prompt's last-token logits (the criterion). bf16: 1e-2
  // (bf16 activations with fp32 accumulation against transformers' fp32 run of the same weights).
  // FP8: the projections that keep FP8 weights also quantise their activations per token per 128
  // columns to e4m3 (3 mantissa bits: up to 2^-4 relative error per element), which the golden
  // (dequantised weights, fp32 activations) does not; measured up to 0.11 over every position.
  double bound;
  // Bound at every other position: a token whose expert choice flips between fp32 and bf16 on a
  // near-tied router score jumps (tiny V3: 0.043 at one position on the CPU, 0.059 on CUDA with
  // the shared expert in the grouped GEMM; the same alone and batched), while a wrong mask, slot
  // or layout gives errors of order 1.
  double bound_any;
};

inline std::vector<golden_case> read_golden(std::string const& name) {
  std::ifstream in(std::filesystem::path(LIGHTCORE_TEST_DATA_DIR) / "deepseek" / name);
  nlohmann::json const j = nlohmann::json::parse(in);
  std::vector<golden_case> out;
  for (auto const& c : j.at("cases")) {
    golden_case g;
    g.prompt = c.at("prompt").get<std::vector<std::int32_t>>();
    g.logits = c.at("logits").get<std::vector<std::vector<float>>>();
    g.greedy = c.at("greedy").get<std::vector<std::int32_t>>();
    g.margins = c.at("greedy_margins").get<std::vector<double>>();
    out.push_back(std::move(g));
  }
  return out;
}

inline double rel_l2(float const* a, std::vector<float> const& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    double const d = double(a[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / den);
}

inline double max_abs_diff(float const* a, std::vector<float> const& ref) {
  double m = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::abs(double(a[i]) - ref[i]));
  return m;
}

// A model on backend B with its token pool: `slots` rows per layer, request r's positions at
// slots r * max_len + pos. The pools start as NaN (0xff bytes), so a read of an unwritten slot
// shows in the logits.
template <Backend B>
class model_runner {
 public:
  static constexpr std::int64_t max_len = 64, max_requests = 4;

  // args: the backend's constructor arguments (backend::cuda: the device ordinal).
  template <class... Args>
  model_runner(fixture_spec const& spec, temp_dir const& dir, Args&&... args)
      : backend_(std::forward<Args>(args)...) {
    tools::random_checkpoint_options o;
    o.config = config_path(spec.config);
    o.out = dir.path();
    o.format = spec.format;
    o.seed = 7;
    tools::write_random_checkpoint(o);
    weights_ = models::deepseek_v3::load_weights(backend_, dir.path());
    model_.emplace(backend_, weights_, models::deepseek_v3::model_options{max_len});
    auto const& c = weights_.config();
    std::int64_t const slots = max_len * max_requests;
    auto stream = backend_.make_stream();
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      pools_.emplace_back(backend_, dtype::bf16, dims{slots, 576});
      backend_.fill(pools_.back().data(), pools_.back().nbytes(), 1, 0xff, stream);
      pool_views_.push_back(pools_.back().view());
    }
    table_ = tensor<B>(backend_, dtype::i32, {max_requests, max_len});
    std::vector<std::int32_t> t(static_cast<std::size_t>(slots));
    for (std::int64_t i = 0; i < slots; ++i) t[std::size_t(i)] = std::int32_t(i);
    backend_.copy(table_.data(), t.data(), t.size() * 4, stream);
    stream.synchronize();
  }

  // Logits as host rows: [requests] (last token) or [tokens] with all_positions.
  std::vector<std::vector<float>> forward(std::vector<models::deepseek_v3::request_step> const& r,
                                          bool all_positions = false) {
    memory::cache_tensor_manager<B> mem(backend_);
    kernels::gemm_context<B> gemm(backend_);
    auto stream = backend_.make_stream();
    modules::deepseek::forward_context<B> ctx{backend_, stream, gemm, mem};
    tensor_view const l = model_->forward(ctx, r, pool_views_, table_.view(), all_positions);
    std::vector<float> host(std::size_t(l.numel()));
    LC_CHECK(l.is_contiguous(), "logits view is not contiguous: " << l);
    backend_.copy(host.data(), l.data(), host.size() * sizeof(float), stream);
    stream.synchronize();
    std::vector<std::vector<float>> out;
    for (std::int64_t i = 0; i < l.size(0); ++i) {
      auto const* p = host.data() + i * l.size(1);
      out.emplace_back(p, p + l.size(1));
    }
    return out;
  }

 private:
  B backend_;
  models::deepseek_v3::model_weights<B> weights_;
  std::optional<models::deepseek_v3::model<B>> model_;
  std::vector<tensor<B>> pools_;
  std::vector<tensor_view> pool_views_;
  tensor<B> table_;
};

inline std::int32_t argmax(std::vector<float> const& v) {
  return std::int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// Greedy decode of g's prompt (row 0, already prefilled; `last` its last-token logits) through
// the decode path against the golden, which recomputes without a cache. Compared while the
// golden's top-1 margin exceeds twice the measured logit error `max_err` (both top-2 logits may
// move by it); after a step that cannot be decided the continuations may part. Returns the steps
// compared.
template <class Runner>
int expect_golden_greedy(Runner& m, golden_case const& g, std::vector<float> const& last,
                         double max_err) {
  std::int32_t next = argmax(last);
  std::int64_t len = std::int64_t(g.prompt.size());
  int compared = 0;
  for (std::size_t s = 0; s < g.greedy.size(); ++s) {
    if (g.margins[s] <= 2 * max_err) break;
    EXPECT_EQ(next, g.greedy[s]) << "greedy step " << s << ", margin " << g.margins[s];
    if (next != g.greedy[s]) break;
    ++compared;
    if (s + 1 == g.greedy.size()) break;
    auto const d = m.forward({{{next}, len, 0}});
    ++len;
    next = argmax(d[0]);
  }
  return compared;
}

}  // namespace lightcore::test
