// lightcore quickstart: a small SwiGLU MLP stack (the shape of DeepSeek's dense layers) run on
// the CPU backend, every activation taken from the cache_tensor_manager. It runs the forward twice,
// with buffer reuse on and off (two different memory layouts), checks that both give the same
// bits (reuse never hands out a live buffer), and prints what reuse saved.
//
//   lightcore_quickstart [--layers N] [--tokens T] [--hidden H] [--intermediate I] [--seed S]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

namespace lc = lightcore;
using host_backend = lc::backend::cpu;
using manager = lc::memory::cache_tensor_manager<host_backend>;

namespace {

struct options {
  int layers = 8;
  std::int64_t tokens = 64, hidden = 256, intermediate = 704;
  unsigned seed = 2026;
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view const a = argv[i];
    auto value = [&]() -> long {
      LC_CHECK(i + 1 < argc, "option " << a << " needs a value");
      char* end = nullptr;
      long const v = std::strtol(argv[++i], &end, 10);
      LC_CHECK(
          *end == '\0' && v > 0 && v <= 1 << 20,
          "option " << a << " needs a positive integer up to 1048576; got '" << argv[i] << "'");
      return v;
    };
    if (a == "--layers")
      o.layers = int(value());
    else if (a == "--tokens")
      o.tokens = value();
    else if (a == "--hidden")
      o.hidden = value();
    else if (a == "--intermediate")
      o.intermediate = value();
    else if (a == "--seed")
      o.seed = unsigned(value());
    else
      LC_THROW("unknown option '" << a
                                  << "'; allowed: --layers --tokens --hidden "
                                     "--intermediate --seed");
  }
  return o;
}

struct layer_weights {
  lc::tensor<host_backend> norm;     // [hidden] bf16
  lc::tensor<host_backend> gate_up;  // [2 * intermediate, hidden] bf16 (gate rows, then up rows)
  lc::tensor<host_backend> down;     // [hidden, intermediate] bf16
};

void randomize(lc::tensor<host_backend> const& t, std::mt19937& rng, float stddev, float mean) {
  std::normal_distribution<float> d(mean, stddev);
  auto* p = t.view().data_as<lc::bf16>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = lc::bf16(d(rng));
}

// y[t, n] = sum_k x[t, k] * w[n, k]: the weight layout of Hugging Face linear layers.
void linear(lc::typed_view<float const, 2> x, lc::typed_view<lc::bf16 const, 2> w,
            lc::typed_view<float, 2> y) {
  for (std::int64_t t = 0; t < x.size(0); ++t)
    for (std::int64_t n = 0; n < w.size(0); ++n) {
      float acc = 0;
      for (std::int64_t k = 0; k < x.size(1); ++k) acc += x(t, k) * float(w(n, k));
      y(t, n) = acc;
    }
}

template <class T, int R>
lc::typed_view<T const, R> as_const(lc::typed_view<T, R> v) {
  lc::typed_view<T const, R> c;
  c.data = v.data;
  for (int d = 0; d < R; ++d) {
    c.shape[d] = v.shape[d];
    c.stride[d] = v.stride[d];
  }
  return c;
}

// One layer: x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x))). Every intermediate is a lease
// that dies when the layer returns, so the next layer gets the same memory.
void mlp_layer(manager& m, layer_weights const& w, lc::typed_view<float, 2> x) {
  std::int64_t const tokens = x.size(0), hidden = x.size(1);
  std::int64_t const inter = w.down.shape()[1];
  auto normed = m.acquire<float>("mlp.normed", {tokens, hidden});
  auto nv = normed.as<float, 2>();
  auto const g = w.norm.as<lc::bf16, 1>();
  for (std::int64_t t = 0; t < tokens; ++t) {
    double ss = 0;
    for (std::int64_t k = 0; k < hidden; ++k) ss += double(x(t, k)) * x(t, k);
    float const inv = 1.0f / std::sqrt(float(ss / double(hidden)) + 1e-6f);
    for (std::int64_t k = 0; k < hidden; ++k) nv(t, k) = x(t, k) * inv * float(g(k));
  }
  auto gate_up = m.acquire<float>("mlp.gate_up", {tokens, 2 * inter});
  linear(as_const(nv), as_const(w.gate_up.as<lc::bf16, 2>()), gate_up.as<float, 2>());
  normed.reset();
  auto act = m.acquire<float>("mlp.act", {tokens, inter});
  auto gu = gate_up.as<float, 2>();
  auto av = act.as<float, 2>();
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t j = 0; j < inter; ++j) {
      float const gate = gu(t, j);
      av(t, j) = gate / (1.0f + std::exp(-gate)) * gu(t, inter + j);
    }
  gate_up.reset();
  auto out = m.acquire<float>("mlp.down", {tokens, hidden});
  linear(as_const(av), as_const(w.down.as<lc::bf16, 2>()), out.as<float, 2>());
  auto ov = out.as<float, 2>();
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t k = 0; k < hidden; ++k) x(t, k) += ov(t, k);
}

struct run_result {
  std::vector<float> output;
  lc::memory::cache_tensor_manager_stats stats;
  std::string report;
  double ms = 0;
};

run_result run(host_backend& host, std::vector<layer_weights> const& weights,
               std::vector<float> const& input, options const& o, bool reuse) {
  lc::memory::cache_tensor_manager_config config;
  config.reuse = reuse;
  config.growth_bytes = 1 << 16;  // small chunks, so that reserved memory tracks the need
  manager m(host, config);
  auto const t0 = std::chrono::steady_clock::now();
  run_result r;
  {
    auto x = m.acquire<float>("residual", {o.tokens, o.hidden});
    auto xv = x.as<float, 2>();
    std::copy(input.begin(), input.end(), xv.data);
    for (auto const& w : weights) mlp_layer(m, w, xv);
    r.output.assign(xv.data, xv.data + input.size());
  }
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  r.stats = m.stats();
  r.report = m.report();
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  options const o = parse(argc, argv);
  host_backend host;
  std::mt19937 rng(o.seed);
  std::vector<layer_weights> weights;
  for (int l = 0; l < o.layers; ++l) {
    layer_weights w{{host, lc::dtype::bf16, {o.hidden}},
                    {host, lc::dtype::bf16, {2 * o.intermediate, o.hidden}},
                    {host, lc::dtype::bf16, {o.hidden, o.intermediate}}};
    randomize(w.norm, rng, 0.05f, 1.0f);
    randomize(w.gate_up, rng, 1.0f / std::sqrt(float(o.hidden)), 0.0f);
    randomize(w.down, rng, 1.0f / std::sqrt(float(o.intermediate)), 0.0f);
    weights.push_back(std::move(w));
  }
  std::vector<float> input(std::size_t(o.tokens * o.hidden));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (float& v : input) v = d(rng);

  std::printf(
      "lightcore quickstart: %d-layer SwiGLU MLP (hidden %lld, intermediate %lld, bf16 "
      "weights, fp32 math) over %lld tokens on the CPU backend; activations from the "
      "cache_tensor_manager\n",
      o.layers, (long long)o.hidden, (long long)o.intermediate, (long long)o.tokens);
  run_result const with = run(host, weights, input, o, true);
  run_result const without = run(host, weights, input, o, false);

  double max_diff = 0, checksum = 0;
  for (std::size_t i = 0; i < input.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(with.output[i] - without.output[i])));
    checksum += with.output[i];
  }
  auto const mib = [](std::size_t b) { return double(b) / (1 << 20); };
  std::printf("  output: checksum %.6f, first values %.5f %.5f %.5f\n", checksum, with.output[0],
              with.output[1], with.output[2]);
  std::printf("  same result with and without buffer reuse: %s (max |diff| %g)\n",
              max_diff == 0 ? "yes" : "NO", max_diff);
  std::printf(
      "  activation peak: %.3f MiB with reuse, %.3f MiB without (%.1fx)\n",
      mib(with.stats.activations.peak_bytes), mib(without.stats.activations.peak_bytes),
      double(without.stats.activations.peak_bytes) / double(with.stats.activations.peak_bytes));
  std::printf("  forward time: %.2f ms\n  manager report:\n%s", with.ms, with.report.c_str());
  return max_diff == 0 ? 0 : 1;
} catch (lc::error const& e) {
  std::fprintf(stderr, "lightcore_quickstart: %s\n", e.message().c_str());
  return 2;
}
