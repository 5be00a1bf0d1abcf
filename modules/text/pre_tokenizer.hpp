// The pre-tokenizer of a tokenizer.json: cuts text into the pieces ("words") that BPE sees
// separately. Supported: Split (Regex or String pattern, every behaviour, invert), ByteLevel
// (add_prefix_space, use_regex with GPT-2's pattern) as the last step, and a Sequence of these.
// The byte-level mapping itself is left to the caller (it maps each piece's bytes as it hands
// them to BPE), so that the pieces stay views into the input.
#pragma once

#include <deque>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "modules/text/regex.hpp"

namespace lightcore::text::detail {

// How a Split step treats the matches of its pattern (Hugging Face's SplitDelimiterBehavior).
enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

class pre_tokenizer {
 public:
  // From the "pre_tokenizer" value of tokenizer.json (null: the text is one piece). Throws
  // lightcore::error naming the unsupported type or field and what is allowed.
  explicit pre_tokenizer(nlohmann::json const& config);
  ~pre_tokenizer();
  pre_tokenizer(pre_tokenizer&&) noexcept;
  pre_tokenizer& operator=(pre_tokenizer&&) noexcept;

  // Cuts text into non-empty pieces, appended to `pieces`. Pieces are views into text, or into
  // strings kept in `storage` (when a prefix space is added).
  void split(std::string_view text, std::vector<std::string_view>& pieces,
             std::deque<std::string>& storage) const;

  // Whether the pieces are to be shown in the byte-level alphabet before BPE.
  bool byte_level() const { return byte_level_; }

 private:
  struct step {
    std::unique_ptr<regex> pattern;  // Split's pattern, or GPT-2's for ByteLevel with use_regex
    split_behavior behavior = split_behavior::isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel only: applied before its pattern
  };
  void add_steps(nlohmann::json const& config, bool last);
  static void apply(step const& s, std::string_view piece, std::vector<std::string_view>& out,
                    std::deque<std::string>& storage);

  std::vector<step> steps_;
  bool byte_level_ = false;
};

}  // namespace lightcore::text::detail
