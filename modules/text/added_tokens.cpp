#include "modules/text/added_tokens.hpp"

#include <algorithm>
#include <array>
#include <utility>

#include "modules/text/regex.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::text::detail {
namespace {

// The code point that ends text[0, end) (valid UTF-8, end > 0).
char32_t last_char(std::string_view text, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return utf8::next(text, start);
}

}  // namespace

// A byte trie over the token strings. Nodes hold their children as a sorted list, except the
// root, which has a 256-entry table: most positions of a text start no token, and the root
// lookup is the only work done there.
struct added_token_matcher::trie {
  struct node {
    std::vector<std::pair<unsigned char, std::int32_t>> children;  // sorted by byte
    added_token const* token = nullptr;                            // a token ends here
  };
  std::vector<node> nodes{node{}};
  std::array<std::int32_t, 256> root{};

  std::int32_t child(std::int32_t n, unsigned char b) const {
    if (n == 0) return root[b];
    auto const& c = nodes[std::size_t(n)].children;
    auto const it = std::lower_bound(c.begin(), c.end(), std::pair{b, std::int32_t(-1)});
    return it != c.end() && it->first == b ? it->second : 0;
  }
  void insert(added_token const* token) {
    std::int32_t n = 0;
    for (char const ch : token->content) {
      auto const b = static_cast<unsigned char>(ch);
      std::int32_t next = child(n, b);
      if (next == 0) {
        next = std::int32_t(nodes.size());
        nodes.push_back(node{});
        if (n == 0) {
          root[b] = next;
        } else {
          auto& c = nodes[std::size_t(n)].children;
          c.insert(std::lower_bound(c.begin(), c.end(), std::pair{b, std::int32_t(-1)}), {b, next});
        }
      }
      n = next;
    }
    // Two entries with the same content: the first keeps it (one id per string).
    if (nodes[std::size_t(n)].token == nullptr) nodes[std::size_t(n)].token = token;
  }
};

added_token_matcher::added_token_matcher(std::vector<added_token const*> tokens)
    : tokens_(std::move(tokens)), trie_(std::make_unique<trie>()) {
  for (auto const* t : tokens_) {
    if (!t->content.empty()) trie_->insert(t);
  }
}

added_token_matcher::~added_token_matcher() = default;
added_token_matcher::added_token_matcher(added_token_matcher&&) noexcept = default;
added_token_matcher& added_token_matcher::operator=(added_token_matcher&&) noexcept = default;

added_token const* added_token_matcher::longest_at(std::string_view text, std::size_t pos) const {
  added_token const* best = nullptr;
  std::int32_t n = 0;
  for (std::size_t i = pos; i < text.size(); ++i) {
    n = trie_->child(n, static_cast<unsigned char>(text[i]));
    if (n == 0) break;
    if (auto const* t = trie_->nodes[std::size_t(n)].token) best = t;
  }
  return best;
}

void added_token_matcher::split(std::string_view text, std::vector<text_segment>& out) const {
  std::size_t done = 0;  // text[0, done) is already in out
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (trie_->root[static_cast<unsigned char>(text[pos])] == 0) {
      ++pos;
      continue;
    }
    added_token const* t = longest_at(text, pos);
    if (t == nullptr) {
      ++pos;
      continue;
    }
    std::size_t start = pos;
    std::size_t stop = pos + t->content.size();
    pos = stop;  // a rejected match is still consumed, as in a non-overlapping match iterator
    if (t->single_word) {
      bool const word_before = start > 0 && is_word_char(last_char(text, start));
      std::size_t k = stop;
      bool const word_after = stop < text.size() && is_word_char(utf8::next(text, k));
      if (word_before || word_after) continue;
    }
    if (t->lstrip) {
      std::size_t s = start;
      while (s > done) {
        std::size_t const prev_start = [&] {
          std::size_t p = s - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          return p;
        }();
        std::size_t k = prev_start;
        if (!is_white_space(utf8::next(text, k))) break;
        s = prev_start;
      }
      start = s;
    }
    if (t->rstrip) {
      while (stop < text.size()) {
        std::size_t k = stop;
        if (!is_white_space(utf8::next(text, k))) break;
        stop = k;
      }
      pos = stop;
    }
    if (done < start) out.push_back({text.substr(done, start - done), -1});
    out.push_back({text.substr(start, stop - start), t->id});
    done = stop;
  }
  if (done < text.size()) out.push_back({text.substr(done), -1});
}

}  // namespace lightcore::text::detail
