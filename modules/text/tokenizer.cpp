#include "modules/text/tokenizer.hpp"

#include <algorithm>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lightcore/core/error.hpp"
#include "modules/text/bpe.hpp"
#include "modules/text/byte_level.hpp"
#include "modules/text/pre_tokenizer.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::text {
namespace detail {

using json = nlohmann::json;

struct tokenizer_data {
  std::vector<added_token> added;  // in the file's order
  string_map<token_id> added_ids;  // content -> id
  std::unique_ptr<bpe_model> model;
  std::unique_ptr<pre_tokenizer> pre;
  std::unique_ptr<added_token_matcher> unnormalized;  // cut first, from the raw text
  std::unique_ptr<added_token_matcher> normalized;    // then from what is left
  std::vector<std::string> bytes;                     // id -> the bytes it decodes to
  std::vector<std::string> tokens;                    // id -> its token string ("" for none)
  std::vector<std::uint8_t> has_token;                // id -> 1 when the id has a token
  std::vector<std::uint8_t> special;                  // id -> 1 for special added tokens
  std::vector<token_id> prefix;                       // added by add_special_tokens
  std::vector<token_id> suffix;
  std::optional<token_id> bos;
  std::optional<token_id> eos;
};

namespace {

std::string read_file(std::filesystem::path const& path) {
  std::ifstream in(path, std::ios::binary);
  LC_CHECK(in.good(), "cannot open " << path << " for reading");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

json parse(std::string_view text, char const* what) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (json::parse_error const& e) {
    LC_THROW(what << " is not valid JSON: " << e.what());
  }
}

std::string type_of(json const& v) {
  if (!v.is_object()) return "(not an object)";
  auto const it = v.find("type");
  return it != v.end() && it->is_string() ? it->get<std::string>() : "(no type)";
}

bool get_flag(json const& obj, char const* key, bool fallback) {
  auto const it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  LC_CHECK(it->is_boolean(),
           "tokenizer.json: field '" << key << "' must be true or false; got " << it->dump());
  return it->get<bool>();
}

// The normalizer must be the identity: null, or a Sequence with nothing but identities in it.
void check_normalizer(json const& n) {
  if (n.is_null()) return;
  LC_CHECK(type_of(n) == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array(),
           "tokenizer.json: normalizer '" << type_of(n)
                                          << "' is not supported; allowed: null or an empty "
                                             "Sequence");
  for (auto const& m : n["normalizers"]) check_normalizer(m);
}

// The decoder must be ByteLevel (alone or as the only member of a Sequence).
void check_decoder(json const& d) {
  if (type_of(d) == "Sequence" && d.contains("decoders") && d["decoders"].is_array() &&
      d["decoders"].size() == 1) {
    return check_decoder(d["decoders"][0]);
  }
  LC_CHECK(type_of(d) == "ByteLevel", "tokenizer.json: decoder "
                                          << (d.is_null() ? std::string("null") : type_of(d))
                                          << " is not supported; allowed: ByteLevel");
}

std::unique_ptr<bpe_model> load_model(json const& m) {
  LC_CHECK(m.is_object(), "tokenizer.json: \"model\" is missing or not an object");
  std::string const type = m.contains("type") ? type_of(m) : "BPE";
  LC_CHECK(type == "BPE",
           "tokenizer.json: model type '" << type << "' is not supported; allowed: BPE");
  if (auto const it = m.find("dropout"); it != m.end() && !it->is_null()) {
    LC_CHECK(it->is_number() && it->get<double>() == 0.0,
             "tokenizer.json: BPE dropout " << it->dump()
                                            << " is not supported (encoding must be "
                                               "deterministic); allowed: null or 0");
  }
  for (char const* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto const it = m.find(key);
    LC_CHECK(
        it == m.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()),
        "tokenizer.json: BPE " << key << " " << it->dump() << " is not supported; allowed: null");
  }
  auto const vocab = m.find("vocab");
  LC_CHECK(vocab != m.end() && vocab->is_object(),
           "tokenizer.json: model.vocab must be an object of token: id");
  std::vector<std::pair<std::string, token_id>> v;
  v.reserve(vocab->size());
  for (auto const& [token, id] : vocab->items()) {
    LC_CHECK(
        id.is_number_integer() && id.get<std::int64_t>() >= 0 && id.get<std::int64_t>() < INT32_MAX,
        "tokenizer.json: model.vocab['" << token << "'] must be an id in [0, 2^31 - 1); got "
                                        << id.dump());
    v.emplace_back(token, id.get<token_id>());
  }

  auto const merges = m.find("merges");
  LC_CHECK(merges != m.end() && merges->is_array(),
           "tokenizer.json: model.merges must be an array");
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges->size());
  for (std::size_t i = 0; i < merges->size(); ++i) {
    auto const& e = (*merges)[i];
    if (e.is_string()) {
      // Legacy form "a b": exactly one space (byte-level tokens never contain one).
      auto const s = e.get<std::string>();
      auto const sp = s.find(' ');
      LC_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
               "tokenizer.json: merge " << i << " \"" << s
                                        << "\" must be two tokens separated by one space");
      pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      LC_CHECK(
          e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(),
          "tokenizer.json: merge " << i << " must be \"a b\" or [\"a\", \"b\"]; got " << e.dump());
      pairs.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }

  bpe_options o;
  if (auto const it = m.find("unk_token"); it != m.end() && !it->is_null()) {
    LC_CHECK(it->is_string(), "tokenizer.json: model.unk_token must be a string or null");
    o.unk_token = it->get<std::string>();
  }
  o.fuse_unk = get_flag(m, "fuse_unk", false);
  o.byte_fallback = get_flag(m, "byte_fallback", false);
  o.ignore_merges = get_flag(m, "ignore_merges", false);
  return std::make_unique<bpe_model>(std::move(v), pairs, std::move(o));
}

std::vector<added_token> load_added(json const& file) {
  std::vector<added_token> out;
  auto const it = file.find("added_tokens");
  if (it == file.end() || it->is_null()) return out;
  LC_CHECK(it->is_array(), "tokenizer.json: \"added_tokens\" must be an array");
  for (auto const& a : *it) {
    LC_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() &&
                 a["id"].get<std::int64_t>() >= 0 && a.contains("content") &&
                 a["content"].is_string(),
             "tokenizer.json: each added token needs an \"id\" >= 0 and a \"content\" string; got "
                 << a.dump());
    added_token t;
    t.id = a["id"].get<token_id>();
    t.content = a["content"].get<std::string>();
    LC_CHECK(!t.content.empty() && utf8::is_valid(t.content),
             "tokenizer.json: added token " << t.id << " has empty or invalid UTF-8 content");
    t.special = get_flag(a, "special", false);
    t.single_word = get_flag(a, "single_word", false);
    t.lstrip = get_flag(a, "lstrip", false);
    t.rstrip = get_flag(a, "rstrip", false);
    t.normalized = get_flag(a, "normalized", !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

// The special tokens a post_processor puts around a single sequence.
void load_post_processor(json const& p, tokenizer_data& d) {
  if (p.is_null()) return;
  std::string const type = type_of(p);
  auto id_of = [&](std::string const& token) {
    auto const id = d.added_ids.count(token) ? std::optional(d.added_ids.at(token))
                                             : d.model->token_to_id(token);
    LC_CHECK(id,
             "tokenizer.json: post_processor names the token '" << token << "', which has no id");
    return *id;
  };
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    LC_CHECK(p.contains("processors") && p["processors"].is_array(),
             "tokenizer.json: post_processor Sequence needs a \"processors\" array");
    for (auto const& q : p["processors"]) load_post_processor(q, d);
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // "cls": ["[CLS]", 101], "sep": ["[SEP]", 102]
    for (char const* key : {"cls", "sep"}) {
      LC_CHECK(p.contains(key) && p[key].is_array() && p[key].size() == 2 &&
                   p[key][1].is_number_integer(),
               "tokenizer.json: " << type << " needs \"" << key << "\": [token, id]");
    }
    d.prefix.push_back(p["cls"][1].get<token_id>());
    d.suffix.push_back(p["sep"][1].get<token_id>());
    return;
  }
  if (type == "TemplateProcessing") {
    LC_CHECK(p.contains("single") && p["single"].is_array(),
             "tokenizer.json: TemplateProcessing needs a \"single\" template array");
    bool seen_sequence = false;
    for (auto const& piece : p["single"]) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      LC_CHECK(piece.contains("SpecialToken") && piece["SpecialToken"].contains("id"),
               "tokenizer.json: TemplateProcessing piece " << piece.dump()
                                                           << " is not supported; allowed: "
                                                              "Sequence, SpecialToken");
      auto const name = piece["SpecialToken"]["id"].get<std::string>();
      // The template's special_tokens map names to ids; fall back to the vocabulary.
      std::vector<token_id> ids;
      if (p.contains("special_tokens") && p["special_tokens"].contains(name)) {
        ids = p["special_tokens"][name].at("ids").get<std::vector<token_id>>();
      } else {
        ids.push_back(id_of(name));
      }
      auto& where = seen_sequence ? d.suffix : d.prefix;
      where.insert(where.end(), ids.begin(), ids.end());
    }
    return;
  }
  LC_THROW("tokenizer.json: post_processor '" << type
                                              << "' is not supported; allowed: ByteLevel, "
                                                 "TemplateProcessing, BertProcessing, "
                                                 "RobertaProcessing, Sequence");
}

// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(json const& c, char const* key) {
  auto const it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  LC_CHECK(it->is_object() && it->contains("content") && (*it)["content"].is_string(),
           "tokenizer_config.json: " << key << " must be a string or {\"content\": ...}; got "
                                     << it->dump());
  return (*it)["content"].get<std::string>();
}

// The bytes the ByteLevel decoder makes of one token: its characters mapped back through the
// byte-level alphabet, or, when any character is outside it (added tokens such as <｜User｜>), the
// token's own UTF-8, as Hugging Face does.
std::string byte_level_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  std::size_t i = 0;
  while (i < token.size()) {
    char32_t const cp = utf8::next(token, i);
    int const b = cp < byte_level::code_point_limit ? byte_level::char_to_byte[cp] : -1;
    if (b < 0) return std::string(token);
    out.push_back(char(b));
  }
  return out;
}

}  // namespace
}  // namespace detail

tokenizer::tokenizer(std::shared_ptr<detail::tokenizer_data const> data) : data_(std::move(data)) {}

tokenizer tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json) {
  try {
    return load(tokenizer_json, config_json);
  } catch (detail::json::exception const& e) {
    // A field of the wrong JSON type somewhere the checks above do not look.
    LC_THROW("tokenizer.json or tokenizer_config.json has a malformed field: " << e.what());
  }
}

tokenizer tokenizer::load(std::string_view tokenizer_json, std::string_view config_json) {
  using detail::json;
  json const file = detail::parse(tokenizer_json, "tokenizer.json");
  LC_CHECK(file.is_object(), "tokenizer.json must hold a JSON object");
  for (char const* key : {"truncation", "padding"}) {
    LC_CHECK(!file.contains(key) || file[key].is_null(),
             "tokenizer.json: " << key << " is set; encode() does not truncate or pad, so only "
                                << "null is allowed");
  }
  auto d = std::make_shared<detail::tokenizer_data>();
  detail::check_normalizer(file.value("normalizer", json()));
  detail::check_decoder(file.value("decoder", json()));
  d->model = detail::load_model(file.value("model", json()));
  d->pre = std::make_unique<detail::pre_tokenizer>(file.value("pre_tokenizer", json()));
  LC_CHECK(d->pre->byte_level(),
           "tokenizer.json: the pre_tokenizer has no ByteLevel step; only byte-level BPE (with "
           "the ByteLevel decoder) is supported");
  d->added = detail::load_added(file);

  std::size_t size = std::size_t(d->model->max_id() + 1);
  for (auto const& t : d->added) {
    size = std::max(size, std::size_t(t.id) + 1);
    auto const [it, inserted] = d->added_ids.emplace(t.content, t.id);
    LC_CHECK(inserted || it->second == t.id, "tokenizer.json: added token '"
                                                 << t.content << "' has two ids, " << it->second
                                                 << " and " << t.id);
  }
  d->tokens.assign(size, std::string());
  d->has_token.assign(size, 0);
  d->special.assign(size, 0);
  for (token_id id = 0; id <= d->model->max_id(); ++id) {
    if (auto const* t = d->model->id_to_token(id)) {
      d->tokens[std::size_t(id)] = *t;
      d->has_token[std::size_t(id)] = 1;
    }
  }
  std::vector<added_token const*> unnormalized;
  std::vector<added_token const*> normalized;
  for (auto const& t : d->added) {
    d->tokens[std::size_t(t.id)] = t.content;  // an added token overrides the model's string
    d->has_token[std::size_t(t.id)] = 1;
    if (t.special) d->special[std::size_t(t.id)] = 1;
    (t.normalized ? normalized : unnormalized).push_back(&t);
  }
  d->unnormalized = std::make_unique<detail::added_token_matcher>(std::move(unnormalized));
  d->normalized = std::make_unique<detail::added_token_matcher>(std::move(normalized));
  d->bytes.resize(size);
  for (std::size_t id = 0; id < size; ++id) {
    if (d->has_token[id]) d->bytes[id] = detail::byte_level_bytes(d->tokens[id]);
  }

  json const config =
      config_json.empty() ? json::object() : detail::parse(config_json, "tokenizer_config.json");
  LC_CHECK(config.is_object(), "tokenizer_config.json must hold a JSON object");
  auto token_id_of = [&](std::string const& s, char const* key) {
    auto const it = d->added_ids.find(s);
    auto const id = it != d->added_ids.end() ? std::optional(it->second) : d->model->token_to_id(s);
    LC_CHECK(id, "tokenizer_config.json: " << key << " '" << s << "' is not a token");
    return *id;
  };
  if (auto const s = detail::config_token(config, "bos_token")) d->bos = token_id_of(*s, "bos");
  if (auto const s = detail::config_token(config, "eos_token")) d->eos = token_id_of(*s, "eos");
  if (config.contains("add_bos_token") || config.contains("add_eos_token")) {
    if (detail::get_flag(config, "add_bos_token", false)) {
      LC_CHECK(d->bos, "tokenizer_config.json: add_bos_token is true but bos_token is not set");
      d->prefix.push_back(*d->bos);
    }
    if (detail::get_flag(config, "add_eos_token", false)) {
      LC_CHECK(d->eos, "tokenizer_config.json: add_eos_token is true but eos_token is not set");
      d->suffix.push_back(*d->eos);
    }
  } else {
    detail::load_post_processor(file.value("post_processor", json()), *d);
  }
  return tokenizer(std::move(d));
}

tokenizer tokenizer::from_file(std::filesystem::path const& path) {
  auto const config = path.parent_path() / "tokenizer_config.json";
  return from_json(detail::read_file(path),
                   std::filesystem::exists(config) ? detail::read_file(config) : std::string());
}

tokenizer tokenizer::from_directory(std::filesystem::path const& dir) {
  return from_file(dir / "tokenizer.json");
}

std::vector<token_id> tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  auto const& d = *data_;
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::to_valid(text);
    text = repaired;
  }
  std::vector<token_id> ids;
  ids.reserve(text.size() / 3 + d.prefix.size() + d.suffix.size() + 1);
  if (add_special_tokens) ids.insert(ids.end(), d.prefix.begin(), d.prefix.end());

  std::vector<detail::text_segment> outer;
  std::vector<detail::text_segment> inner;
  std::vector<std::string_view> pieces;
  std::deque<std::string> storage;
  std::string mapped;
  d.unnormalized->split(text, outer);
  for (auto const& seg : outer) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    inner.clear();
    d.normalized->split(seg.text, inner);
    for (auto const& part : inner) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      pieces.clear();
      d.pre->split(part.text, pieces, storage);
      for (auto const piece : pieces) {
        mapped.clear();
        for (char const c : piece) {
          utf8::append(mapped, byte_level::byte_to_char[static_cast<unsigned char>(c)]);
        }
        d.model->tokenize(mapped, ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), d.suffix.begin(), d.suffix.end());
  return ids;
}

std::string tokenizer::decode(std::span<token_id const> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (token_id const id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    bytes += token_bytes(id);
  }
  return utf8::is_valid(bytes) ? bytes : utf8::to_valid(bytes);
}

std::optional<std::string> tokenizer::id_to_token(token_id id) const {
  if (id < 0 || std::size_t(id) >= data_->tokens.size() || !data_->has_token[std::size_t(id)]) {
    return std::nullopt;
  }
  return data_->tokens[std::size_t(id)];
}

std::optional<token_id> tokenizer::token_to_id(std::string_view token) const {
  if (auto const it = data_->added_ids.find(token); it != data_->added_ids.end()) {
    return it->second;
  }
  return data_->model->token_to_id(token);
}

std::string_view tokenizer::token_bytes(token_id id) const {
  if (id < 0 || std::size_t(id) >= data_->bytes.size()) return {};
  return data_->bytes[std::size_t(id)];
}

bool tokenizer::is_special(token_id id) const {
  return id >= 0 && std::size_t(id) < data_->special.size() && data_->special[std::size_t(id)];
}

std::size_t tokenizer::vocab_size() const { return data_->tokens.size(); }
std::optional<token_id> tokenizer::bos_id() const { return data_->bos; }
std::optional<token_id> tokenizer::eos_id() const { return data_->eos; }
std::span<added_token const> tokenizer::added_tokens() const { return data_->added; }
void tokenizer::clear_cache() const { data_->model->clear_cache(); }

}  // namespace lightcore::text
