#include "modules/text/chat_template.hpp"

#include "lightcore/core/error.hpp"

namespace lightcore::text::deepseek_v3 {

chat_flavour parse_chat_flavour(std::string_view name) {
  if (name == "v3") return chat_flavour::v3;
  if (name == "r1") return chat_flavour::r1;
  LC_THROW("chat flavour '" << name << "' is not supported; allowed: v3, r1");
}

std::string_view to_string(chat_flavour flavour) {
  return flavour == chat_flavour::r1 ? "r1" : "v3";
}

std::string_view strip_reasoning(std::string_view content) {
  auto const at = content.rfind(think_close);
  if (at == std::string_view::npos) return content;
  return content.substr(at + think_close.size());
}

std::string chat_prompt(std::span<chat_message const> messages, bool add_generation_prompt,
                        chat_flavour flavour) {
  LC_CHECK(flavour == chat_flavour::v3 || flavour == chat_flavour::r1,
           "chat flavour " << static_cast<int>(flavour) << " is not supported; allowed: v3, r1");
  std::string out(bos_token);
  // The templates first gather every system message into one prompt after the BOS; an empty
  // first one still counts as first, so a later one starts with the blank line.
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
      // R1 was trained without earlier turns' reasoning in the context; its template drops it,
      // the last assistant turn included.
      out += flavour == chat_flavour::r1 ? strip_reasoning(m.content) : std::string_view(m.content);
      out += eos_token;
    }
  }
  if (add_generation_prompt) {
    out += assistant_tag;
    if (flavour == chat_flavour::r1) out += think_open;
  }
  return out;
}

}  // namespace lightcore::text::deepseek_v3
