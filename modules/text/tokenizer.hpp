// lightcore::text::tokenizer: a byte-level BPE tokenizer read from a Hugging Face tokenizer.json
// (and, optionally, the tokenizer_config.json beside it), giving the ids Hugging Face `tokenizers`
// gives. DeepSeek-V3/R1's tokenizer is the one it is tested against.
//
// encode(text): added tokens are cut out first (leftmost-longest), the rest is pre-tokenised with
// the file's own regexes (PCRE2) and each piece is BPE-merged. Text that is not valid UTF-8 is
// repaired first: every maximal invalid subpart becomes one U+FFFD, the text Python's
// `raw.decode("utf-8", errors="replace")` gives, so the ids are those Hugging Face gives for that
// string (its API takes only valid text). Valid text is never changed.
// decode(ids): each id's token is turned back into bytes (byte-level alphabet; added tokens are
// their own UTF-8), the bytes are joined and invalid UTF-8 becomes U+FFFD. Ids that have no
// token are skipped, as Hugging Face does.
//
// Supported tokenizer.json: normalizer none (null or an empty Sequence); pre_tokenizer Split /
// ByteLevel / Sequence; model BPE (merges as "a b" strings or [a, b] pairs; unk_token, fuse_unk,
// byte_fallback, ignore_merges); decoder ByteLevel; post_processor ByteLevel, TemplateProcessing,
// BertProcessing, RobertaProcessing or a Sequence of them. Anything else is rejected with an error
// that names it. A tokenizer is immutable after loading and safe to share between threads; copies
// share the loaded data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "modules/text/added_tokens.hpp"

namespace lightcore::text {

using token_id = std::int32_t;

namespace detail {
struct tokenizer_data;
}

class tokenizer {
 public:
  // tokenizer.json's text, and optionally tokenizer_config.json's (empty: none). The config's
  // add_bos_token / add_eos_token (with bos_token / eos_token), when present, decide what
  // encode(..., add_special_tokens = true) adds, as transformers' LlamaTokenizerFast does;
  // otherwise the post_processor does. Throws lightcore::error for a file it cannot read or
  // does not support.
  static tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {});
  // tokenizer.json at `path`; tokenizer_config.json from the same folder when it exists.
  static tokenizer from_file(std::filesystem::path const& path);
  // `dir`/tokenizer.json and, when present, `dir`/tokenizer_config.json.
  static tokenizer from_directory(std::filesystem::path const& dir);

  // The ids of text. add_special_tokens adds the BOS/EOS the config asks for (DeepSeek-V3: the
  // BOS before the text). Special-token strings inside text always become their ids.
  std::vector<token_id> encode(std::string_view text, bool add_special_tokens = false) const;

  // The text of ids; skip_special_tokens leaves out the added tokens marked special.
  std::string decode(std::span<token_id const> ids, bool skip_special_tokens = false) const;

  // The token string of an id as the vocabulary spells it (byte-level alphabet for BPE tokens),
  // or nullopt for an id with no token.
  std::optional<std::string> id_to_token(token_id id) const;
  std::optional<token_id> token_to_id(std::string_view token) const;

  // The bytes an id decodes to (empty for an id with no token), and whether decode may skip it.
  std::string_view token_bytes(token_id id) const;
  bool is_special(token_id id) const;

  // One past the largest id (BPE and added tokens): the rows an embedding must have at least.
  // DeepSeek-V3: 128815 (its model pads the embedding to 129280).
  std::size_t vocab_size() const;

  std::optional<token_id> bos_id() const;  // from tokenizer_config.json's bos_token
  std::optional<token_id> eos_id() const;  // from tokenizer_config.json's eos_token
  std::span<added_token const> added_tokens() const;

  // Drops the BPE word cache (for benchmarks of cold encoding).
  void clear_cache() const;

 private:
  explicit tokenizer(std::shared_ptr<detail::tokenizer_data const> data);
  static tokenizer load(std::string_view tokenizer_json, std::string_view config_json);
  std::shared_ptr<detail::tokenizer_data const> data_;
};

}  // namespace lightcore::text
