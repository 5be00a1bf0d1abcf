#define PCRE2_CODE_UNIT_WIDTH 8
#include "modules/text/regex.hpp"

#include <pcre2.h>

#include "lightcore/core/error.hpp"
#include "modules/text/utf8.hpp"

namespace lightcore::text::detail {
namespace {

// Unicode White_Space as a class body (the characters of is_white_space).
constexpr std::string_view white_space_class =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// The JIT's stack grows on demand up to this size; a pattern such as [\p{L}]+ over a very long
// word needs more than PCRE2's 32 KiB default. Beyond it the interpreter takes over.
constexpr std::size_t jit_stack_start = 32 * 1024;
constexpr std::size_t jit_stack_max = 8 * 1024 * 1024;

// Per-thread match state: the match data and the JIT stack are not shareable between threads,
// and allocating them per call would cost more than most matches.
struct thread_state {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(jit_stack_start, jit_stack_max, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  thread_state() {
    LC_CHECK(data != nullptr && stack != nullptr && context != nullptr,
             "PCRE2: out of memory creating match state");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~thread_state() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
  thread_state(thread_state const&) = delete;
  thread_state& operator=(thread_state const&) = delete;
};

thread_state& state() {
  thread_local thread_state s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  int const n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buffer));
}

}  // namespace

std::string oniguruma_compatible(std::string_view p) {
  std::string out;
  out.reserve(p.size());
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    char const c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char const e = p[i + 1];
      ++i;
      if (e == 's') {
        if (in_class) {
          out += white_space_class;
        } else {
          out += '[';
          out += white_space_class;
          out += ']';
        }
        continue;
      }
      if (e == 'S' && !in_class) {
        out += "[^";
        out += white_space_class;
        out += ']';
        continue;
      }
      // \S inside a class has no class-body form; PCRE2's meaning (which differs only at
      // U+180E) is kept. Every other escape is copied as it is.
      out += c;
      out += e;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      // A POSIX class such as [:alpha:] inside a class: copy it whole.
      auto const close = p.find(":]", i + 2);
      if (close != std::string_view::npos) {
        out.append(p.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

std::string escape_literal(std::string_view literal) {
  std::string out;
  for (char const c : literal) {
    auto const u = static_cast<unsigned char>(c);
    bool const plain = u >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                       (c >= 'A' && c <= 'Z') || c == '_';
    if (!plain) out += '\\';
    out += c;
  }
  return out;
}

regex::regex(std::string_view pattern) : pattern_(pattern) {
  std::string const translated = oniguruma_compatible(pattern);
  int code = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                        PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
  LC_CHECK(code_ != nullptr, "tokenizer regex '" << pattern_ << "' does not compile with PCRE2: "
                                                 << pcre2_message(code) << " at offset " << offset
                                                 << " of '" << translated << "'");
  // Without JIT support the interpreter runs the same pattern, only slower.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

regex::~regex() { pcre2_code_free(code_); }

bool regex::find(std::string_view subject, std::size_t from, std::size_t& begin,
                 std::size_t& end) const {
  auto& s = state();
  auto const* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  int rc = pcre2_match(code_, text, subject.size(), from, PCRE2_NO_UTF_CHECK, s.data, s.context);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc = pcre2_match(code_, text, subject.size(), from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, s.data,
                     s.context);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  // rc == 0: the pattern has groups that the one-pair match data cannot hold; the whole match is
  // still there.
  LC_CHECK(rc >= 0, "tokenizer regex '" << pattern_ << "' failed on a " << subject.size()
                                        << "-byte piece: " << pcre2_message(rc));
  PCRE2_SIZE const* ov = pcre2_get_ovector_pointer(s.data);
  begin = ov[0];
  end = ov[1];
  return true;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  static regex const word("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  std::string ch;
  utf8::append(ch, c);
  std::size_t b = 0;
  std::size_t e = 0;
  return word.find(ch, 0, b, e);
}

}  // namespace lightcore::text::detail
