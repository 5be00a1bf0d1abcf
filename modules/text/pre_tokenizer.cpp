#include "modules/text/pre_tokenizer.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

#include "lightcore/core/error.hpp"

namespace lightcore::text::detail {
namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenisation pattern, which ByteLevel applies when use_regex is true.
constexpr std::string_view gpt2_pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

split_behavior parse_behavior(json const& v) {
  std::string const b = v.is_string() ? v.get<std::string>() : v.dump();
  if (b == "Removed") return split_behavior::removed;
  if (b == "Isolated") return split_behavior::isolated;
  if (b == "MergedWithPrevious") return split_behavior::merged_with_previous;
  if (b == "MergedWithNext") return split_behavior::merged_with_next;
  if (b == "Contiguous") return split_behavior::contiguous;
  LC_THROW("tokenizer.json: Split behavior " << b
                                             << " is not supported; allowed: Removed, Isolated, "
                                                "MergedWithPrevious, MergedWithNext, Contiguous");
}

bool flag(json const& obj, char const* key, bool fallback) {
  auto const it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  LC_CHECK(it->is_boolean(), "tokenizer.json: pre_tokenizer field '"
                                 << key << "' must be true or false; got " << it->dump());
  return it->get<bool>();
}

// A matched or unmatched stretch [begin, end) of a piece.
struct segment {
  std::size_t begin;
  std::size_t end;
  bool match;
};

}  // namespace

pre_tokenizer::pre_tokenizer(json const& config) {
  if (!config.is_null()) add_steps(config, true);
}

pre_tokenizer::~pre_tokenizer() = default;
pre_tokenizer::pre_tokenizer(pre_tokenizer&&) noexcept = default;
pre_tokenizer& pre_tokenizer::operator=(pre_tokenizer&&) noexcept = default;

void pre_tokenizer::add_steps(json const& config, bool last) {
  LC_CHECK(config.is_object() && config.contains("type") && config["type"].is_string(),
           "tokenizer.json: a pre_tokenizer must be an object with a \"type\"; got "
               << config.dump().substr(0, 200));
  std::string const type = config["type"].get<std::string>();
  if (type == "Sequence") {
    auto const it = config.find("pretokenizers");
    LC_CHECK(it != config.end() && it->is_array(),
             "tokenizer.json: pre_tokenizer Sequence needs a \"pretokenizers\" array");
    for (std::size_t i = 0; i < it->size(); ++i) add_steps((*it)[i], last && i + 1 == it->size());
    return;
  }
  LC_CHECK(!byte_level_, "tokenizer.json: pre_tokenizer " << type << " follows ByteLevel; only "
                                                          << "ByteLevel as the last step is "
                                                             "supported");
  if (type == "Split") {
    auto const p = config.find("pattern");
    LC_CHECK(p != config.end() && p->is_object() && p->size() == 1,
             "tokenizer.json: Split needs \"pattern\": {\"Regex\": ...} or {\"String\": ...}");
    step s;
    if (p->contains("Regex") && (*p)["Regex"].is_string()) {
      s.pattern = std::make_unique<regex>((*p)["Regex"].get<std::string>());
    } else if (p->contains("String") && (*p)["String"].is_string()) {
      auto const literal = (*p)["String"].get<std::string>();
      LC_CHECK(!literal.empty(), "tokenizer.json: Split with an empty String pattern");
      s.pattern = std::make_unique<regex>(escape_literal(literal));
    } else {
      LC_THROW("tokenizer.json: Split pattern " << p->dump()
                                                << " is not supported; allowed: {\"Regex\": "
                                                   "\"...\"} or {\"String\": \"...\"}");
    }
    LC_CHECK(config.contains("behavior"), "tokenizer.json: Split needs a \"behavior\"");
    s.behavior = parse_behavior(config["behavior"]);
    s.invert = flag(config, "invert", false);
    steps_.push_back(std::move(s));
    return;
  }
  if (type == "ByteLevel") {
    LC_CHECK(last,
             "tokenizer.json: pre_tokenizer ByteLevel must be the last step; other steps "
             "after it are not supported");
    byte_level_ = true;
    step s;
    s.add_prefix_space = flag(config, "add_prefix_space", true);
    if (flag(config, "use_regex", true)) s.pattern = std::make_unique<regex>(gpt2_pattern);
    if (s.add_prefix_space || s.pattern) steps_.push_back(std::move(s));
    return;
  }
  LC_THROW("tokenizer.json: pre_tokenizer type '" << type
                                                  << "' is not supported; allowed: Sequence, "
                                                     "Split, ByteLevel");
}

void pre_tokenizer::split(std::string_view text, std::vector<std::string_view>& pieces,
                          std::deque<std::string>& storage) const {
  std::size_t const first = pieces.size();
  if (!text.empty()) pieces.push_back(text);
  std::vector<std::string_view> next;
  for (auto const& s : steps_) {
    next.clear();
    for (std::size_t i = first; i < pieces.size(); ++i) apply(s, pieces[i], next, storage);
    pieces.resize(first);
    pieces.insert(pieces.end(), next.begin(), next.end());
  }
}

void pre_tokenizer::apply(step const& s, std::string_view piece, std::vector<std::string_view>& out,
                          std::deque<std::string>& storage) {
  if (s.add_prefix_space && piece.front() != ' ') {
    auto& spaced = storage.emplace_back();
    spaced.reserve(piece.size() + 1);
    spaced += ' ';
    spaced += piece;
    piece = spaced;
  }
  if (!s.pattern) {
    out.push_back(piece);
    return;
  }
  // The piece as alternating unmatched / matched segments.
  std::vector<segment> segs;
  std::size_t prev = 0;
  std::size_t from = 0;
  std::size_t b = 0;
  std::size_t e = 0;
  while (from < piece.size() && s.pattern->find(piece, from, b, e)) {
    if (e == b) {
      // An empty match splits nothing; step over one character and search on.
      from = b + 1;
      while (from < piece.size() && (static_cast<unsigned char>(piece[from]) & 0xC0) == 0x80) {
        ++from;
      }
      continue;
    }
    if (prev != b) segs.push_back({prev, b, s.invert});
    segs.push_back({b, e, !s.invert});
    prev = from = e;
  }
  if (prev != piece.size()) segs.push_back({prev, piece.size(), s.invert});

  // Hugging Face's folds, one per behaviour.
  std::vector<segment> kept;
  bool previous_match = false;
  switch (s.behavior) {
    case split_behavior::isolated: kept = std::move(segs); break;
    case split_behavior::removed:
      for (auto const& g : segs) {
        if (!g.match) kept.push_back(g);
      }
      break;
    case split_behavior::merged_with_previous:
      for (auto const& g : segs) {
        if (g.match && !previous_match && !kept.empty()) {
          kept.back().end = g.end;
        } else {
          kept.push_back(g);
        }
        previous_match = g.match;
      }
      break;
    case split_behavior::merged_with_next:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case split_behavior::contiguous:
      for (auto const& g : segs) {
        if (g.match == previous_match && !kept.empty()) {
          kept.back().end = g.end;
        } else {
          kept.push_back(g);
        }
        previous_match = g.match;
      }
      break;
  }
  for (auto const& g : kept) {
    if (g.end > g.begin) out.push_back(piece.substr(g.begin, g.end - g.begin));
  }
}

}  // namespace lightcore::text::detail
