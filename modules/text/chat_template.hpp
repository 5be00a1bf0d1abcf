// DeepSeek-V3's and DeepSeek-R1's chat formats: what the chat_template of each model's
// tokenizer_config.json renders for system / user / assistant messages, written out in C++ so
// that no template engine runs in the server.
//
//   <｜begin▁of▁sentence｜>{system prompts, joined by "\n\n"}
//   <｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜><｜User｜>{user}...
//   [<｜Assistant｜> when add_generation_prompt; R1: <｜Assistant｜><think>\n]
//
// Every system message goes into the prefix wherever it stands, as the templates do. R1 drops
// the reasoning of assistant turns: only the text after the last "</think>" stays. Encode the
// prompt with add_special_tokens = false: the BOS is already part of the text.
// tests/data/text/chat_golden.json (tools/chat_golden.py renders the Hugging Face templates) is
// the reference both flavours are tested against.
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
// R1's reasoning markers: the generation prompt opens the reasoning, and history keeps only what
// follows the closing one.
inline constexpr std::string_view think_open = "<think>\n";
inline constexpr std::string_view think_close = "</think>";

// Which model's template: the two share the tokenizer and special tokens.
enum class chat_flavour {
  v3,  // DeepSeek-V3 (and V3-0324): assistant turns verbatim, generation prompt <｜Assistant｜>
  r1,  // DeepSeek-R1: reasoning stripped from assistant turns, generation prompt opens <think>
};

// "v3" or "r1"; throws lightcore::error naming the allowed values for anything else.
chat_flavour parse_chat_flavour(std::string_view name);
std::string_view to_string(chat_flavour flavour);

// The prompt string for messages in the given flavour; add_generation_prompt appends the
// assistant tag that the model's reply follows (for R1 with "<think>\n" after it). Throws
// lightcore::error for a role other than system, user, assistant (tool calls and tool outputs
// are not supported).
std::string chat_prompt(std::span<chat_message const> messages, bool add_generation_prompt,
                        chat_flavour flavour = chat_flavour::v3);

// What R1's template keeps of an assistant turn: the text after the last "</think>", or all of
// it when there is none (an unclosed "<think>" is kept as it is).
std::string_view strip_reasoning(std::string_view content);

}  // namespace deepseek_v3
}  // namespace lightcore::text
