// Throughput of the text stack on one core, with DeepSeek-V3's tokenizer: encode (word cache
// warm, as in a server, and cold), decode, and streaming detokenisation, in MB/s of UTF-8 text
// and tokens/s. The corpus is generated (deterministic, 1 MiB): English prose, code, Chinese,
// emoji and digits, mixed the way chat prompts mix them, cut into 4 KiB prompts. Needs the
// tokenizer that scripts/setup.sh fetches (or LIGHTCORE_TOKENIZER_DIR); each benchmark reports
// an error without it.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "modules/text/detokenizer.hpp"
#include "modules/text/tokenizer.hpp"

namespace {

using lightcore::text::detokenizer;
using lightcore::text::token_id;
using lightcore::text::tokenizer;

constexpr std::size_t corpus_bytes = std::size_t(1) << 20;
constexpr std::size_t prompt_bytes = 4096;

std::optional<tokenizer> const& deepseek() {
  static std::optional<tokenizer> const tok = []() -> std::optional<tokenizer> {
    char const* env = std::getenv("LIGHTCORE_TOKENIZER_DIR");
    std::filesystem::path const dir = env ? env : LIGHTCORE_TOKENIZER_DIR_DEFAULT;
    if (!std::filesystem::exists(dir / "tokenizer.json")) return std::nullopt;
    return tokenizer::from_directory(dir);
  }();
  return tok;
}

struct rng {
  std::uint64_t state;
  std::uint64_t next() {  // splitmix64
    std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
  template <class C>
  auto const& pick(C const& c) {
    return c[next() % std::size(c)];
  }
};

enum class mix { mixed, english, chinese, code };

// Prompts of about prompt_bytes each, cut at a piece boundary so that every one is valid UTF-8.
std::vector<std::string> make_corpus(mix kind) {
  static char const* const words[] = {
      "the",      "model",   "serves", "tokens", "with",    "a",          "batch",     "of",
      "requests", "while",   "cache",  "memory", "is",      "reused",     "across",    "layers",
      "and",      "latency", "stays",  "low",    "because", "scheduling", "happens",   "during",
      "decode",   "steps",   "in",     "Hopper", "GPUs",    "DeepSeek",   "attention", "expert"};
  static char const* const code[] = {
      "for (int i = 0; i < n; ++i) {\n    sum += x[i] * w[i];\n}\n",
      "def forward(self, x):\n        return self.proj(torch.relu(x))\n",
      "{\"role\": \"user\", \"content\": \"hi\", \"max_tokens\": 256}\n",
      "    if (err != cudaSuccess) return -1;\t// check\n"};
  static char const* const chinese[] = {"我们", "今天", "讨论", "模型", "推理", "服务", "性能",
                                        "非常", "出色", "，",   "。",   "深度", "求索", "发布"};
  static char const* const emoji[] = {"😀",  "👍🏽", "👨‍👩‍👧‍👦",
                                      "🇯🇵", "🚀",        "❤️"};
  rng r{0x5EED'0000'0000'0001ull + std::uint64_t(kind)};
  std::vector<std::string> prompts;
  std::string p;
  std::size_t total = 0;
  while (total < corpus_bytes) {
    int choice = 0;  // 0 english, 1 code, 2 chinese, 3 emoji, 4 digits
    switch (kind) {
      case mix::mixed: {
        auto const x = r.next() % 100;
        choice = x < 55 ? 0 : x < 75 ? 1 : x < 92 ? 2 : x < 96 ? 3 : 4;
        break;
      }
      case mix::english: choice = 0; break;
      case mix::chinese: choice = 2; break;
      case mix::code: choice = 1; break;
    }
    std::string piece;
    switch (choice) {
      case 0:
        for (int i = 0; i < 8; ++i) (piece += ' ') += r.pick(words);
        piece += r.next() % 4 == 0 ? ".\n" : ",";
        break;
      case 1: piece = r.pick(code); break;
      case 2:
        for (int i = 0; i < 6; ++i) piece += r.pick(chinese);
        break;
      case 3: (piece = " ") += r.pick(emoji); break;
      default:
        piece.push_back(' ');
        piece.append(std::to_string(r.next() % 10'000'000));
        break;
    }
    p += piece;
    total += piece.size();
    if (p.size() >= prompt_bytes) {
      prompts.push_back(std::move(p));
      p.clear();
    }
  }
  if (!p.empty()) prompts.push_back(std::move(p));
  return prompts;
}

std::size_t bytes_of(std::vector<std::string> const& prompts) {
  std::size_t n = 0;
  for (auto const& p : prompts) n += p.size();
  return n;
}

void set_rates(benchmark::State& state, std::size_t bytes, std::size_t tokens) {
  state.counters["MB/s"] =
      benchmark::Counter(double(bytes) / 1e6, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] =
      benchmark::Counter(double(tokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/token"] = double(bytes) / double(tokens);
}

void BM_encode(benchmark::State& state, mix kind, bool cold) {
  auto const& tok = deepseek();
  if (!tok) return state.SkipWithError("DeepSeek-V3 tokenizer not found: run scripts/setup.sh");
  auto const prompts = make_corpus(kind);
  std::size_t tokens = 0;
  for (auto const& p : prompts) tokens += tok->encode(p).size();  // warms the cache too
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      tok->clear_cache();
      state.ResumeTiming();
    }
    for (auto const& p : prompts) benchmark::DoNotOptimize(tok->encode(p));
  }
  set_rates(state, bytes_of(prompts), tokens);
}

void BM_decode(benchmark::State& state) {
  auto const& tok = deepseek();
  if (!tok) return state.SkipWithError("DeepSeek-V3 tokenizer not found: run scripts/setup.sh");
  auto const prompts = make_corpus(mix::mixed);
  std::vector<std::vector<token_id>> ids;
  std::size_t tokens = 0;
  for (auto const& p : prompts) tokens += ids.emplace_back(tok->encode(p)).size();
  for (auto _ : state) {
    for (auto const& x : ids) benchmark::DoNotOptimize(tok->decode(x));
  }
  set_rates(state, bytes_of(prompts), tokens);
}

// One id at a time, as a server streams a reply.
void BM_detokenize_stream(benchmark::State& state) {
  auto const& tok = deepseek();
  if (!tok) return state.SkipWithError("DeepSeek-V3 tokenizer not found: run scripts/setup.sh");
  auto const prompts = make_corpus(mix::mixed);
  std::vector<std::vector<token_id>> ids;
  std::size_t tokens = 0;
  for (auto const& p : prompts) tokens += ids.emplace_back(tok->encode(p)).size();
  detokenizer d(*tok);
  for (auto _ : state) {
    for (auto const& x : ids) {
      for (token_id const id : x) benchmark::DoNotOptimize(d.push(id));
      benchmark::DoNotOptimize(d.flush());
    }
  }
  set_rates(state, bytes_of(prompts), tokens);
}

BENCHMARK_CAPTURE(BM_encode, mixed_warm, mix::mixed, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, mixed_cold, mix::mixed, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, english_warm, mix::english, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, chinese_warm, mix::chinese, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_encode, code_warm, mix::code, false)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_detokenize_stream)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
