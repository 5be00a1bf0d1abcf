#include "modules/text/bpe.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>

#include "lightcore/core/error.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::text::detail {
namespace {

// Code points below this get their one-character token from a table instead of a hash lookup:
// it covers the byte-level alphabet (< U+0144) and most scripts' letters.
constexpr char32_t small_char_limit = 0x800;

// The word cache: words recur (spaces plus common words), and a hit skips the merge loop.
// Sharded, so that threads encoding at the same time rarely wait on one another; a full shard
// is cleared, which keeps the memory bounded without bookkeeping on the hot path.
constexpr std::size_t cache_shards = 16;
constexpr std::size_t cache_shard_capacity = 4096;
// Longer words are not cached: they are rare, and would fill the cache with one-off entries.
constexpr std::size_t cache_max_word_bytes = 256;

}  // namespace

struct bpe_model::cache {
  struct shard {
    std::mutex mutex;
    string_map<std::vector<token_id>> words;
  };
  std::array<shard, cache_shards> shards;

  shard& for_word(std::string_view word) { return shards[string_hash{}(word) % cache_shards]; }
};

bpe_model::bpe_model(std::vector<std::pair<std::string, token_id>> vocab,
                     std::vector<std::pair<std::string, std::string>> const& merges,
                     bpe_options options)
    : options_(std::move(options)), cache_(std::make_unique<cache>()) {
  token_id max = -1;
  vocab_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    LC_CHECK(id >= 0, "tokenizer.json: model.vocab gives token '" << token << "' the id " << id
                                                                  << "; ids must be >= 0");
    max = std::max(max, id);
    auto const [it, inserted] = vocab_.emplace(std::move(token), id);
    LC_CHECK(inserted, "tokenizer.json: model.vocab lists the token '" << it->first << "' twice");
  }
  id_to_token_.assign(std::size_t(max + 1), nullptr);
  small_chars_.assign(small_char_limit, -1);
  for (auto const& [token, id] : vocab_) {
    LC_CHECK(id_to_token_[std::size_t(id)] == nullptr,
             "tokenizer.json: model.vocab gives the id "
                 << id << " to both '" << *id_to_token_[std::size_t(id)] << "' and '" << token
                 << "'; every id must be unique");
    id_to_token_[std::size_t(id)] = &token;
    if (!token.empty() && utf8::is_valid(token)) {
      std::size_t i = 0;
      char32_t const cp = utf8::next(token, i);
      if (i == token.size() && cp < small_char_limit) small_chars_[cp] = id;
    }
  }

  merges_.reserve(merges.size());
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    auto const& [a, b] = merges[rank];
    auto const ia = token_to_id(a);
    auto const ib = token_to_id(b);
    LC_CHECK(ia && ib, "tokenizer.json: merge " << rank << " ('" << a << "' '" << b
                                                << "') names a token that is not in model.vocab");
    auto const ir = token_to_id(a + b);
    LC_CHECK(ir, "tokenizer.json: merge " << rank << " ('" << a << "' '" << b << "') makes '" << a
                                          << b << "', which is not in model.vocab");
    // A repeated pair takes its last rank, as Hugging Face's map building does.
    merges_[pair_key(*ia, *ib)] = merge{std::int32_t(rank), *ir};
  }

  if (options_.unk_token) {
    unk_id_ = token_to_id(*options_.unk_token);
    LC_CHECK(unk_id_, "tokenizer.json: model.unk_token '" << *options_.unk_token
                                                          << "' is not in model.vocab");
  }
}

bpe_model::~bpe_model() = default;

std::optional<token_id> bpe_model::token_to_id(std::string_view token) const {
  auto const it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string const* bpe_model::id_to_token(token_id id) const {
  if (id < 0 || std::size_t(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[std::size_t(id)];
}

void bpe_model::clear_cache() const {
  for (auto& s : cache_->shards) {
    std::lock_guard lock(s.mutex);
    s.words.clear();
  }
}

std::optional<token_id> bpe_model::char_id(std::string_view ch, char32_t cp) const {
  if (cp < small_char_limit) {
    token_id const id = small_chars_[cp];
    if (id < 0) return std::nullopt;
    return id;
  }
  return token_to_id(ch);
}

void bpe_model::tokenize(std::string_view word, std::vector<token_id>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto const id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  if (word.size() > cache_max_word_bytes) {
    merge_word(word, out);
    return;
  }
  auto& shard = cache_->for_word(word);
  {
    std::lock_guard lock(shard.mutex);
    auto const it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::size_t const first = out.size();
  merge_word(word, out);
  std::vector<token_id> ids(out.begin() + std::ptrdiff_t(first), out.end());
  std::lock_guard lock(shard.mutex);
  if (shard.words.size() >= cache_shard_capacity) shard.words.clear();
  shard.words.emplace(std::string(word), std::move(ids));
}

void bpe_model::merge_word(std::string_view word, std::vector<token_id>& out) const {
  // One symbol per character (or per unknown-character replacement), linked both ways.
  struct symbol {
    token_id id;
    std::int32_t prev;
    std::int32_t next;
    bool alive;
  };
  std::vector<symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](token_id id) {
    auto const n = std::int32_t(symbols.size());
    symbols.push_back(symbol{id, n - 1, n + 1, true});
  };

  std::optional<token_id> pending_unk;  // an unk symbol not yet added, for fuse_unk
  std::size_t i = 0;
  while (i < word.size()) {
    std::size_t const start = i;
    char32_t const cp = utf8::next(word, i);
    std::string_view const ch = word.substr(start, i - start);
    if (auto const id = char_id(ch, cp)) {
      if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
      add(*id);
      continue;
    }
    if (options_.byte_fallback) {
      // Every byte must have its "<0xAB>" token, or the character falls through to unk.
      std::array<token_id, 4> bytes{};
      bool all = true;
      for (std::size_t k = 0; k < ch.size() && all; ++k) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(ch[k]));
        auto const id = token_to_id(name);
        all = id.has_value();
        if (all) bytes[k] = *id;
      }
      if (all) {
        if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
        for (std::size_t k = 0; k < ch.size(); ++k) add(bytes[k]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !options_.fuse_unk) add(*pending_unk);
      pending_unk = unk_id_;
    }
    // Without unk_token the character is dropped, as Hugging Face does.
  }
  if (pending_unk) add(*pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct candidate {
    std::int32_t rank;
    std::int32_t pos;  // the left symbol
    token_id result;
  };
  // Lowest rank first, then leftmost.
  auto const later = [](candidate const& x, candidate const& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  std::vector<candidate> heap;
  heap.reserve(symbols.size());
  auto push_pair = [&](std::int32_t left) {
    std::int32_t const right = symbols[std::size_t(left)].next;
    if (right < 0) return;
    if (auto const m = find_merge(symbols[std::size_t(left)].id, symbols[std::size_t(right)].id)) {
      heap.push_back(candidate{m->rank, left, m->result});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (std::int32_t k = 0; k + 1 < std::int32_t(symbols.size()); ++k) push_pair(k);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    candidate const top = heap.back();
    heap.pop_back();
    symbol& left = symbols[std::size_t(top.pos)];
    if (!left.alive || left.next < 0) continue;
    symbol& right = symbols[std::size_t(left.next)];
    // Stale entry: one side has been merged into something else since it was queued.
    auto const now = find_merge(left.id, right.id);
    if (!now || now->result != top.result) continue;
    left.id = top.result;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[std::size_t(left.next)].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (std::int32_t k = 0; k >= 0; k = symbols[std::size_t(k)].next) {
    out.push_back(symbols[std::size_t(k)].id);
  }
}

}  // namespace lightcore::text::detail
