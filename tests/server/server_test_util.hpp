// What the server suites share: a byte-level fake tokenizer (one token per byte, DeepSeek-V3's
// special tokens added), DeepSeek-V3's real tokenizer when set-up has fetched it, and a check
// that a parse failed with the expected status, field and message.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "examples/server/api/request.hpp"
#include "modules/text/byte_level.hpp"
#include "modules/text/chat_template.hpp"
#include "modules/text/tokenizer.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::test {

// Ids 0..255 are the bytes; 256 BOS, 257 EOS, 258 <｜User｜>, 259 <｜Assistant｜>. encode() with
// special tokens adds the BOS, as DeepSeek-V3's config asks. No merges: every byte is one token,
// so token counts equal byte counts.
inline text::tokenizer const& fake_tokenizer() {
  static text::tokenizer const tok = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (unsigned b = 0; b < 256; ++b) {
      std::string ch;
      text::utf8::append(ch, text::byte_level::byte_to_char[b]);
      vocab[ch] = b;
    }
    nlohmann::json added = nlohmann::json::array();
    int id = 256;
    for (auto const t : {text::deepseek_v3::bos_token, text::deepseek_v3::eos_token,
                         text::deepseek_v3::user_tag, text::deepseek_v3::assistant_tag}) {
      added.push_back({{"id", id++},
                       {"content", std::string(t)},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
    nlohmann::json const file = {
        {"version", "1.0"},
        {"added_tokens", added},
        {"pre_tokenizer",
         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    nlohmann::json const config = {{"add_bos_token", true},
                                   {"add_eos_token", false},
                                   {"bos_token", std::string(text::deepseek_v3::bos_token)},
                                   {"eos_token", std::string(text::deepseek_v3::eos_token)}};
    return text::tokenizer::from_json(file.dump(), config.dump());
  }();
  return tok;
}
inline constexpr text::token_id fake_bos = 256;

inline std::filesystem::path deepseek_dir() {
  if (char const* env = std::getenv("LIGHTCORE_TOKENIZER_DIR")) return env;
  return LIGHTCORE_TOKENIZER_DIR_DEFAULT;
}

// Loaded once per binary (8 MB of JSON); nullopt when set-up has not fetched it.
inline std::optional<text::tokenizer> const& deepseek_tokenizer() {
  static std::optional<text::tokenizer> const tok = []() -> std::optional<text::tokenizer> {
    if (!std::filesystem::exists(deepseek_dir() / "tokenizer.json")) return std::nullopt;
    return text::tokenizer::from_directory(deepseek_dir());
  }();
  return tok;
}

// A failed parse with this status and param whose message holds every fragment.
template <class T>
::testing::AssertionResult is_error(server::api_result<T> const& r, int status,
                                    std::string_view param,
                                    std::initializer_list<std::string_view> fragments) {
  if (r.ok()) return ::testing::AssertionFailure() << "the request was accepted";
  auto const& e = r.error();
  if (e.status != status || e.param != param) {
    return ::testing::AssertionFailure()
           << "got status " << e.status << " param '" << e.param << "' message: " << e.message;
  }
  for (auto const f : fragments) {
    if (e.message.find(f) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks '" << f << "': " << e.message;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace lightcore::test
