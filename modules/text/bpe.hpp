// The BPE model of a Hugging Face tokenizer.json: a vocabulary of token strings and a ranked list
// of merges. A word (one pre-tokenised piece) starts as one symbol per character and the
// adjacent pair of lowest merge rank is merged, leftmost first on ties, until no pair has a merge:
// the same result as Hugging Face `tokenizers`. Pairs wait in a min-heap and symbols sit in a
// linked list, so a word of n characters costs O(n log n), not O(n^2) rescans. Words already seen
// come from a cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace lightcore::text {

using token_id = std::int32_t;

namespace detail {

// Hashing for maps keyed by std::string that are searched with std::string_view.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
template <class V>
using string_map = std::unordered_map<std::string, V, string_hash, std::equal_to<>>;

// The model's fields of tokenizer.json that change what it produces.
struct bpe_options {
  std::optional<std::string> unk_token;  // replaces characters outside the vocabulary; none: drop
  bool fuse_unk = false;                 // consecutive unknown characters become one unk token
  bool byte_fallback = false;            // unknown characters become their bytes' "<0xAB>" tokens
  bool ignore_merges = false;            // a word that is itself in the vocabulary is taken whole
};

class bpe_model {
 public:
  // vocab: (token, id) pairs; merges: (left, right) pairs, rank = position in the list. Throws
  // lightcore::error for a merge whose parts or result are not in the vocabulary.
  bpe_model(std::vector<std::pair<std::string, token_id>> vocab,
            std::vector<std::pair<std::string, std::string>> const& merges, bpe_options options);
  ~bpe_model();
  bpe_model(bpe_model const&) = delete;
  bpe_model& operator=(bpe_model const&) = delete;

  // Appends the ids of one word (valid UTF-8, non-empty). Thread-safe.
  void tokenize(std::string_view word, std::vector<token_id>& out) const;

  std::optional<token_id> token_to_id(std::string_view token) const;
  std::string const* id_to_token(token_id id) const;  // nullptr when the id has no token
  token_id max_id() const { return token_id(id_to_token_.size()) - 1; }
  std::size_t size() const { return vocab_.size(); }
  std::size_t merge_count() const { return merges_.size(); }

  void clear_cache() const;

 private:
  struct merge {
    std::int32_t rank;
    token_id result;
  };
  static std::uint64_t pair_key(token_id a, token_id b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  std::optional<merge> find_merge(token_id a, token_id b) const {
    auto const it = merges_.find(pair_key(a, b));
    if (it == merges_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<token_id> char_id(std::string_view ch, char32_t cp) const;
  void merge_word(std::string_view word, std::vector<token_id>& out) const;

  string_map<token_id> vocab_;
  std::vector<std::string const*> id_to_token_;  // into vocab_'s keys; nullptr for gaps
  std::vector<token_id> small_chars_;  // code point -> id of its one-character token, or -1
  std::unordered_map<std::uint64_t, merge> merges_;
  bpe_options options_;
  std::optional<token_id> unk_id_;

  struct cache;
  std::unique_ptr<cache> cache_;
};

}  // namespace detail
}  // namespace lightcore::text
