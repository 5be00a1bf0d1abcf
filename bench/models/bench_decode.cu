// Decode step time of the DeepSeek forward on the GPU (through the decode CUDA graphs, eagerly,
// or both) against the
// weight-streaming floor: the bytes of every weight a decode step must read (attention and dense
// layers whole, the routed experts that a batch of B tokens is expected to touch, the lm head),
// divided by the HBM copy bandwidth measured in the same run. Dummy weights, so any config runs;
// --layers keeps the first N layers of a config that does not fit the GPU whole.
//
//   lightcore_bench_decode --config deepseek_v2_lite.json [--layers N] [--ctx 1024]
//                          [--batches 1,64,256] [--steps 20] [--graphs on|off|both]
//                          [--json out.json]
// --graphs on (default): decode_graphs (model.hpp), the host's metadata copy and one graph launch
// per step; off: model::forward eagerly; both: each batch both ways.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lightcore/backend/cuda.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/io/hf_config.hpp"
#include "models/deepseek_v3/model.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "nlohmann/json.hpp"

namespace {

using namespace lightcore;
namespace ds = models::deepseek_v3;

struct options {
  std::string config;
  std::int64_t layers = 0;  // 0: the config's
  std::int64_t ctx = 1024;  // cached tokens per request before the measured step
  std::vector<std::int64_t> batches = {1, 64, 256};
  int steps = 20;
  std::vector<bool> graphs = {true};  // modes to time: true = CUDA graphs, false = eager
  std::string json;
};

[[noreturn]] void usage(char const* what) {
  std::cerr << "bench_decode: " << what
            << "\nusage: lightcore_bench_decode --config FILE [--layers N] [--ctx TOKENS] "
               "[--batches 1,64,256] [--steps N] [--graphs on|off|both] [--json FILE]\n";
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    if (i + 1 >= argc) usage(("missing the value of " + a).c_str());
    std::string const v = argv[++i];
    if (a == "--config") {
      o.config = v;
    } else if (a == "--layers") {
      o.layers = std::stoll(v);
    } else if (a == "--ctx") {
      o.ctx = std::stoll(v);
    } else if (a == "--steps") {
      o.steps = std::stoi(v);
    } else if (a == "--graphs") {
      if (v == "on")
        o.graphs = {true};
      else if (v == "off")
        o.graphs = {false};
      else if (v == "both")
        o.graphs = {false, true};
      else
        usage(("--graphs takes on, off or both; got " + v).c_str());
    } else if (a == "--json") {
      o.json = v;
    } else if (a == "--batches") {
      o.batches.clear();
      std::stringstream ss(v);
      for (std::string x; std::getline(ss, x, ',');) o.batches.push_back(std::stoll(x));
    } else {
      usage(("unknown flag " + a).c_str());
    }
  }
  if (o.config.empty()) usage("--config is required");
  return o;
}

// Bytes of one linear weight [n, k] as the config stores it (FP8: one byte plus its block scales).
double linear_bytes(io::model_config const& c, std::int64_t n, std::int64_t k) {
  if (c.quantization) return double(n) * double(k) * (1.0 + 4.0 / (128.0 * 128.0));
  return double(n) * double(k) * 2.0;
}

// The weight bytes a decode step over `batch` tokens reads, with the routed experts touched by
// top-k of E uniform choices per token: E * (1 - (1 - k/E)^batch) distinct experts per layer.
double step_weight_bytes(io::model_config const& c, std::int64_t batch) {
  std::int64_t const h = c.hidden_size, heads = c.num_attention_heads;
  double attn = 0;
  if (c.q_lora_rank)
    attn += linear_bytes(c, *c.q_lora_rank, h) +
            linear_bytes(c, heads * c.qk_head_dim(), *c.q_lora_rank);
  else
    attn += linear_bytes(c, heads * c.qk_head_dim(), h);
  attn += linear_bytes(c, c.kv_lora_rank + c.qk_rope_head_dim, h);
  attn += 2.0 * double(heads) * double(c.kv_lora_rank) * 128.0 * 2.0;  // W_UK, W_UV (bf16)
  attn += linear_bytes(c, h, heads * c.v_head_dim);
  double const dense = 3.0 * linear_bytes(c, c.intermediate_size, h);
  double const expert = 3.0 * linear_bytes(c, c.moe_intermediate_size, h);
  double const e = double(c.n_routed_experts), k = double(c.num_experts_per_tok);
  double const touched = e * (1.0 - std::pow(1.0 - k / e, double(batch)));
  double total = 0;
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    total += attn;
    bool const moe =
        c.n_routed_experts > 0 && i >= c.first_k_dense_replace && i % c.moe_layer_freq == 0;
    total += moe ? touched * expert + double(c.n_shared_experts) * expert +
                       double(c.n_routed_experts) * double(h) * 4.0
                 : dense;
  }
  return total + double(c.vocab_size) * double(h) * 2.0;  // lm head
}

double hbm_copy_bandwidth() {
  std::size_t const bytes = std::size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  LC_CUDA_CHECK(cudaMalloc(&a, bytes));
  LC_CUDA_CHECK(cudaMalloc(&b, bytes));
  LC_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  LC_CUDA_CHECK(cudaEventCreate(&e0));
  LC_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 12; ++i) {
    LC_CUDA_CHECK(cudaEventRecord(e0));
    LC_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    LC_CUDA_CHECK(cudaEventRecord(e1));
    LC_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    LC_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 2) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  LC_CUDA_CHECK(cudaFree(a));
  LC_CUDA_CHECK(cudaFree(b));
  return 2.0 * double(bytes) / (double(ms[ms.size() / 2]) * 1e-3);  // read + write
}

}  // namespace

int main(int argc, char** argv) try {
  options o = parse(argc, argv);
  // The forward's persistent outputs are sized by their first use: largest batch first.
  std::sort(o.batches.rbegin(), o.batches.rend());
  io::model_config c = io::load_model_config(o.config);
  if (o.layers > 0) c.num_hidden_layers = std::min(c.num_hidden_layers, o.layers);
  backend::cuda gpu(0);
  double const hbm = hbm_copy_bandwidth();
  auto const t0 = std::chrono::steady_clock::now();
  auto const weights = ds::dummy_weights(gpu, c);
  LC_CUDA_CHECK(cudaDeviceSynchronize());
  double const load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::int64_t const max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  std::int64_t const max_len = o.ctx + 1;
  ds::model<backend::cuda> model(gpu, weights, ds::model_options{max_len});
  // One pool per layer with a slot per token of every request; the cached context is random
  // latent rows (the step reads them; their values do not change the work).
  std::int64_t const slots = max_batch * max_len;
  std::vector<tensor<backend::cuda>> pools;
  std::vector<tensor_view> kv;
  auto stream = gpu.make_stream();
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    pools.emplace_back(gpu, dtype::bf16, dims{slots, 576});
    gpu.fill(pools.back().data(), std::size_t(pools.back().numel()), 2, 0x3c00, stream);
    kv.push_back(pools.back().view());
  }
  tensor<backend::cuda> table(gpu, dtype::i32, {max_batch, max_len});
  {
    std::vector<std::int32_t> t(static_cast<std::size_t>(slots));
    for (std::int64_t i = 0; i < slots; ++i) t[std::size_t(i)] = std::int32_t(i);
    gpu.copy(table.data(), t.data(), t.size() * 4, stream);
  }
  memory::cache_tensor_manager<backend::cuda> mem(gpu);
  kernels::gemm_context<backend::cuda> gemm(gpu);
  modules::deepseek::forward_context<backend::cuda> ctx{gpu, stream, gemm, mem};
  model.logits_buffer(ctx, max_batch);  // the persistent logits, sized by the largest batch
  // Padding rows repeat a batch's first row (no scratch slot): only bucket sizes are timed here.
  ds::decode_graph_options go;
  go.max_batch = max_batch;
  ds::decode_graphs<> graphs(model, go);
  stream.synchronize();

  nlohmann::json results = nlohmann::json::array();
  nlohmann::json capture;
  std::size_t const free_before_capture = gpu.memory().free_bytes;
  std::printf("config %s, layers %lld, ctx %lld, HBM copy %.0f GB/s, dummy weights in %.1f s\n",
              o.config.c_str(), (long long)c.num_hidden_layers, (long long)o.ctx, hbm / 1e9,
              load_s);
  std::printf("%6s %6s %10s %12s %12s %10s %8s\n", "batch", "mode", "step ms", "tokens/s",
              "weight GB", "floor ms", "floor/t");
  for (std::int64_t b : o.batches)
    for (bool const graphed : o.graphs) {
      std::vector<ds::request_step> reqs;
      for (std::int64_t r = 0; r < b; ++r)
        reqs.push_back({{std::int32_t((r * 7919) % c.vocab_size)}, o.ctx, std::int32_t(r)});
      auto step = [&] {
        if (graphed)
          graphs.forward(ctx, reqs, kv, table.view());
        else
          model.forward(ctx, reqs, kv, table.view());
      };
      for (int w = 0; w < 3; ++w) step();  // the first graph step captures every bucket
      stream.synchronize();
      if (graphed && capture.empty()) {
        // What the capture cost: wall time, the shared activation pool of every graph, and all
        // device memory it took (the pool and the driver's graph objects).
        auto const pool = mem.stats().graph_pool;
        double const taken = double(free_before_capture) - double(gpu.memory().free_bytes);
        capture = {{"buckets", graphs.graphs().buckets().size()},
                   {"capture_s", graphs.graphs().capture_seconds()},
                   {"graph_pool_bytes", pool.reserved_bytes},
                   {"device_bytes_taken", taken}};
        std::printf(
            "captured %zu bucket graphs (max batch %lld) in %.3f s; graph pool %.1f MB, "
            "device memory taken %.1f MB\n",
            graphs.graphs().buckets().size(), (long long)max_batch,
            graphs.graphs().capture_seconds(), double(pool.reserved_bytes) / 1e6, taken / 1e6);
      }
      std::vector<double> ms;
      for (int s = 0; s < o.steps; ++s) {
        auto const a = std::chrono::steady_clock::now();
        step();
        stream.synchronize();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a)
                         .count());
      }
      std::sort(ms.begin(), ms.end());
      double const step_ms = ms[ms.size() / 2];
      double const bytes = step_weight_bytes(c, b);
      // The copy's bandwidth counts its reads and writes; a stream of reads alone is taken to run
      // at the same bytes per second.
      double const floor_ms = bytes / hbm * 1e3;
      std::printf("%6lld %6s %10.3f %12.0f %12.2f %10.3f %8.2f\n", (long long)b,
                  graphed ? "graph" : "eager", step_ms, double(b) / step_ms * 1e3, bytes / 1e9,
                  floor_ms, floor_ms / step_ms);
      results.push_back({{"batch", b},
                         {"mode", graphed ? "graph" : "eager"},
                         {"step_ms_median", step_ms},
                         {"tokens_per_s", double(b) / step_ms * 1e3},
                         {"weight_bytes", bytes},
                         {"floor_ms", floor_ms},
                         {"floor_over_step", floor_ms / step_ms}});
    }
  if (!o.json.empty())
    std::ofstream(o.json) << nlohmann::json{{"config", o.config}, {"layers", c.num_hidden_layers},
                                            {"ctx", o.ctx},       {"hbm_copy_bytes_per_s", hbm},
                                            {"capture", capture}, {"results", results}}
                                 .dump(2);
  return 0;
} catch (std::exception const& e) {
  std::cerr << "bench_decode: " << e.what() << "\n";
  return 1;
}
