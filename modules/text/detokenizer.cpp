#include "modules/text/detokenizer.hpp"

#include "modules/text/utf8.hpp"

namespace lightcore::text {

std::string detokenizer::take() {
  std::string out;
  std::size_t const used = utf8::append_lossy(out, pending_, false);
  pending_.erase(0, used);
  return out;
}

std::string detokenizer::push(token_id id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  return take();
}

std::string detokenizer::push(std::span<token_id const> ids) {
  for (token_id const id : ids) {
    if (!(skip_special_ && tok_.is_special(id))) pending_ += tok_.token_bytes(id);
  }
  return take();
}

std::string detokenizer::flush() {
  std::string out;
  utf8::append_lossy(out, pending_, true);
  pending_.clear();
  return out;
}

}  // namespace lightcore::text
