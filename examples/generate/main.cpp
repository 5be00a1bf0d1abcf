// lightcore_generate: offline generation through the engine. Reads prompts (text through the
// tokenizer, or token ids), runs them as one continuous batch, prints each completion and the
// throughput.
//
//   lightcore_generate --tokenizer .cache/tokenizer --prompt "Hello" --prompt "Why?"
//   lightcore_generate --dummy config.json --prompts-file prompts.txt --max-tokens 128 --stream
//
// A prompts file holds one prompt per line; a line "ids: 1 2 3" is a prompt of token ids.
// Without --model or --dummy it runs the built-in tiny model (random weights: random text).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/engine/engine.hpp"
#include "lightcore/io/hf_config.hpp"
#include "models/deepseek_v3/executor.hpp"
#include "models/deepseek_v3/weights_loader.hpp"
#include "modules/text/chat_template.hpp"
#include "modules/text/detokenizer.hpp"
#include "modules/text/tokenizer.hpp"
#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/backend/cuda.hpp"
#endif

namespace lightcore::server {
extern char const* const tiny_model_config;
}

namespace {

using namespace lightcore;
namespace ds = models::deepseek_v3;

struct options {
  std::string model, dummy, tokenizer = ".cache/tokenizer", device = "auto";
  std::vector<std::string> prompts;
  std::string prompts_file;
  bool chat = false, stream = false;
  bool overlap = true;  // plan step t + 1 while step t runs (--no-overlap: one at a time)
  text::deepseek_v3::chat_flavour flavour = text::deepseek_v3::chat_flavour::v3;
  std::int64_t max_tokens = 64, kv_tokens = 0, max_seq_len = 4096;
  std::int32_t max_running = 64;
  float temperature = 0.0f, top_p = 1.0f;
  std::int32_t top_k = 0;
  std::uint64_t seed = 0;
};

[[noreturn]] void usage(int code, std::string const& why = {}) {
  if (!why.empty()) std::cerr << "lightcore_generate: " << why << "\n";
  (code ? std::cerr : std::cout)
      << "usage: lightcore_generate [--model DIR | --dummy CONFIG] [--tokenizer PATH]\n"
         "  [--prompt TEXT]... [--prompts-file FILE] [--chat] [--chat-flavour v3|r1] [--stream]\n"
         "  [--max-tokens N]\n"
         "  [--temperature T] [--top-p P] [--top-k K] [--seed N] [--device auto|cpu|cuda]\n"
         "  [--kv-tokens N] [--max-running N] [--max-seq-len N] [--no-overlap]\n";
  std::exit(code);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    if (a == "--help") usage(0);
    if (a == "--chat") {
      o.chat = true;
      continue;
    }
    if (a == "--stream") {
      o.stream = true;
      continue;
    }
    if (a == "--no-overlap") {
      o.overlap = false;
      continue;
    }
    if (i + 1 >= argc) usage(2, a + " needs a value");
    std::string const v = argv[++i];
    try {
      if (a == "--model")
        o.model = v;
      else if (a == "--dummy")
        o.dummy = v;
      else if (a == "--tokenizer")
        o.tokenizer = v;
      else if (a == "--device")
        o.device = v;
      else if (a == "--prompt")
        o.prompts.push_back(v);
      else if (a == "--prompts-file")
        o.prompts_file = v;
      else if (a == "--chat-flavour")
        o.flavour = text::deepseek_v3::parse_chat_flavour(v);
      else if (a == "--max-tokens")
        o.max_tokens = std::stoll(v);
      else if (a == "--temperature")
        o.temperature = std::stof(v);
      else if (a == "--top-p")
        o.top_p = std::stof(v);
      else if (a == "--top-k")
        o.top_k = std::stoi(v);
      else if (a == "--seed")
        o.seed = std::stoull(v);
      else if (a == "--kv-tokens")
        o.kv_tokens = std::stoll(v);
      else if (a == "--max-running")
        o.max_running = std::stoi(v);
      else if (a == "--max-seq-len")
        o.max_seq_len = std::stoll(v);
      else
        usage(2, "unknown flag " + a);
    } catch (lightcore::error const& e) {
      usage(2, a + " " + v + ": " + e.what());
    } catch (std::exception const&) {
      usage(2, a + " " + v + ": not a number");
    }
  }
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    usage(2, "--device " + o.device + ": allowed: auto, cpu, cuda");
  if (!o.model.empty() && !o.dummy.empty()) usage(2, "--model and --dummy exclude each other");
  if (o.max_tokens < 1) usage(2, "--max-tokens must be >= 1");
  if (o.max_running < 1) usage(2, "--max-running must be >= 1");
  return o;
}

template <Backend B>
int run(B& backend, options const& o, text::tokenizer const& tok,
        std::vector<std::vector<std::int32_t>> const& prompts) {
  io::model_config const c = !o.model.empty() ? io::load_model_config(o.model + "/config.json")
                             : !o.dummy.empty()
                                 ? io::load_model_config(o.dummy)
                                 : io::parse_model_config(server::tiny_model_config, "tiny model");
  auto const t0 = std::chrono::steady_clock::now();
  ds::model_weights<B> w =
      o.model.empty() ? ds::dummy_weights(backend, c, {.shard = {}, .seed = 0, .layout = {}})
                      : ds::load_weights(backend, o.model);
  ds::executor<B> exec(backend, w, ds::model_options{o.max_seq_len}, o.max_running);
  engine::engine_config ec;
  ec.kv.layers = std::int32_t(c.num_hidden_layers);
  ec.kv.width = c.kv_lora_rank + c.qk_rope_head_dim;
  ec.kv.max_requests = o.max_running;
  ec.kv.max_tokens = o.max_seq_len;
  std::int64_t need = 0;
  for (auto const& p : prompts) need += std::int64_t(p.size()) + o.max_tokens;
  ec.kv.capacity = o.kv_tokens > 0 ? o.kv_tokens : std::max<std::int64_t>(o.max_seq_len, need);
  ec.scheduler.max_seq_len = o.max_seq_len;
  ec.scheduler.max_running_requests = o.max_running;
  ec.scheduler.max_tokens_per_step = std::max<std::int64_t>(2048, o.max_running);
  ec.overlap = o.overlap;
  engine::engine<B, ds::executor<B>> e(backend, exec, ec);
  double const load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<engine::request<kernels::sampling_request>> reqs;
  std::int64_t prompt_tokens = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    engine::request<kernels::sampling_request> r;
    r.id = i;
    r.prompt = prompts[i];
    r.sampling.temperature = o.temperature;
    r.sampling.top_p = o.top_p;
    r.sampling.top_k = o.top_k;
    r.sampling.seed = o.seed + i;
    r.max_new_tokens = o.max_tokens;
    for (auto const id : c.eos_token_ids) r.stop_token_ids.push_back(std::int32_t(id));
    prompt_tokens += std::int64_t(r.prompt.size());
    reqs.push_back(std::move(r));
  }
  std::vector<text::detokenizer> detok(prompts.size(), text::detokenizer(tok));
  auto const t1 = std::chrono::steady_clock::now();
  auto out = e.generate(std::move(reqs), [&](engine::token_event const& t) {
    if (o.stream) std::cout << "[" << t.id << "] " << detok[t.id].push(t.token) << "\n";
  });
  double const gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::int64_t generated = 0;
  for (auto const& g : out) {
    generated += std::int64_t(g.tokens.size());
    std::cout << "=== prompt " << g.id << " (" << prompts[g.id].size() << " tokens, "
              << g.tokens.size() << " generated, "
              << (g.finished == engine::finish_reason::stop ? "stop" : "length") << ")\n"
              << tok.decode(g.tokens, true) << "\n";
  }
  auto const s = e.stats();
  std::ostringstream dev;
  dev << backend.where();
  std::string const where = dev.str();
  std::printf(
      "\n%zu prompts on %s: %lld prompt + %lld generated tokens in %.3f s: %.1f generated "
      "tokens/s, %.1f total tokens/s, %.2f requests/s; %llu steps, prefix hit rate %.2f; "
      "model ready in %.2f s\n",
      prompts.size(), where.c_str(), (long long)prompt_tokens, (long long)generated, gen_s,
      double(generated) / gen_s, double(generated + prompt_tokens) / gen_s,
      double(prompts.size()) / gen_s, (unsigned long long)s.steps, s.scheduler.prefix_hit_rate(),
      load_s);
  if (s.decode_steps > 0) {
    double const step_ms = s.decode_step_seconds / double(s.decode_steps) * 1e3;
    double const host_ms = s.decode_host_seconds / double(s.decode_steps) * 1e3;
    double const device_ms = s.decode_device_seconds / double(s.decode_steps) * 1e3;
    double const idle_ms = s.decode_idle_seconds / double(s.decode_steps) * 1e3;
    std::printf(
        "decode-only steps (%s): %llu, %.1f rows each, %.3f ms per step; framework host time "
        "%.3f ms per step (%.1f%% of the step's device time %.3f ms); device idle before each "
        "%.3f ms; over all steps: engine %.3f ms, executor %.3f ms\n",
        o.overlap ? "overlapped" : "sequential", (unsigned long long)s.decode_steps,
        double(s.decode_rows) / double(s.decode_steps), step_ms, host_ms,
        device_ms > 0 ? 100.0 * host_ms / device_ms : 100.0 * host_ms / step_ms, device_ms, idle_ms,
        s.engine_host_seconds / double(s.steps) * 1e3,
        s.executor_host_seconds / double(s.steps) * 1e3);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  options const o = parse(argc, argv);
  text::tokenizer const tok = std::filesystem::is_directory(o.tokenizer)
                                  ? text::tokenizer::from_directory(o.tokenizer)
                                  : text::tokenizer::from_file(o.tokenizer);
  std::vector<std::string> lines = o.prompts;
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    LC_CHECK(in, "cannot read --prompts-file " << o.prompts_file);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) lines.push_back(line);
  }
  if (lines.empty()) lines = {"The meaning of life is", "Write a haiku about GPUs."};
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::string const& l : lines) {
    if (l.rfind("ids:", 0) == 0) {
      std::istringstream in(l.substr(4));
      std::vector<std::int32_t> ids;
      for (std::int32_t id; in >> id;) ids.push_back(id);
      LC_CHECK(!ids.empty(), "an ids: line holds no token ids: " << l);
      prompts.push_back(ids);
    } else if (o.chat) {
      text::chat_message const m{"user", l};
      prompts.push_back(
          tok.encode(text::deepseek_v3::chat_prompt({&m, 1}, true, o.flavour), false));
    } else {
      prompts.push_back(tok.encode(l, true));
    }
  }
  bool use_cuda = o.device == "cuda";
#if defined(LIGHTCORE_WITH_CUDA)
  if (o.device == "auto") use_cuda = backend::cuda::device_count() > 0;
  if (use_cuda) {
    backend::cuda gpu(0);
    return run(gpu, o, tok, prompts);
  }
#endif
  LC_CHECK(!use_cuda, "--device cuda: this build has no CUDA backend");
  backend::cpu cpu;
  return run(cpu, o, tok, prompts);
} catch (std::exception const& e) {
  std::cerr << "lightcore_generate: " << e.what() << "\n";
  return 1;
}
