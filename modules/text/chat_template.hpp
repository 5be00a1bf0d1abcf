// DeepSeek-V3's chat format: what the chat_template of its tokenizer_config.json renders for
// system / user / assistant messages, written out in C++ so that no template engine runs in the
// server.
//
//   <｜begin▁of▁sentence｜>{system prompts, joined by "\n\n"}
//   <｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜><｜User｜>{user}...
//   [<｜Assistant｜> when add_generation_prompt]
//
// Every system message goes into the prefix wherever it stands, as the template does. Encode the
// prompt with add_special_tokens = false: the BOS is already part of the text.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace lightcore::text {

struct chat_message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

namespace deepseek_v3 {

inline constexpr std::string_view bos_token = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view eos_token = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view user_tag = "<｜User｜>";
inline constexpr std::string_view assistant_tag = "<｜Assistant｜>";

// The prompt string for messages; add_generation_prompt appends the assistant tag that the
// model's reply follows. Throws lightcore::error for a role other than system, user, assistant
// (tool calls and tool outputs are not supported).
std::string chat_prompt(std::span<chat_message const> messages, bool add_generation_prompt);

}  // namespace deepseek_v3
}  // namespace lightcore::text
