#include "modules/text/chat_template.hpp"

#include "lightcore/core/error.hpp"

namespace lightcore::text::deepseek_v3 {

std::string chat_prompt(std::span<chat_message const> messages, bool add_generation_prompt) {
  std::string out(bos_token);
  // The template first gathers every system message into one prompt after the BOS.
  bool first_system = true;
  for (auto const& m : messages) {
    LC_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant",
             "chat message role '" << m.role << "' is not supported; allowed: system, user, "
                                   << "assistant");
    if (m.role != "system") continue;
    if (!first_system) out += "\n\n";
    out += m.content;
    first_system = false;
  }
  for (auto const& m : messages) {
    if (m.role == "user") {
      out += user_tag;
      out += m.content;
    } else if (m.role == "assistant") {
      out += assistant_tag;
      out += m.content;
      out += eos_token;
    }
  }
  if (add_generation_prompt) out += assistant_tag;
  return out;
}

}  // namespace lightcore::text::deepseek_v3
