// lightcore::error and the LC_CHECK family: every failure carries file:line and a message that
// names the bad value and what is allowed.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace lightcore {

// The one exception type lightcore throws. what() reads
//   "<message> [<file>:<line>: check `<condition>` failed]"
// so that a log line both explains the problem and points at the code.
class error : public std::runtime_error {
 public:
  error(std::string message, char const* file, int line, char const* condition = nullptr)
      : std::runtime_error(format(message, file, line, condition)),
        message_(std::move(message)),
        file_(file),
        line_(line) {}

  // The message alone, without the location (for user-facing replies such as HTTP errors).
  std::string const& message() const noexcept { return message_; }
  char const* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  static std::string format(std::string const& message, char const* file, int line,
                            char const* condition) {
    std::ostringstream os;
    os << message << " [" << base_name(file) << ':' << line;
    if (condition != nullptr) os << ": check `" << condition << "` failed";
    os << ']';
    return os.str();
  }
  static std::string_view base_name(std::string_view path) {
    auto const slash = path.find_last_of('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
  }

  std::string message_;
  char const* file_;
  int line_;
};

namespace detail {
[[noreturn]] inline void throw_error(char const* file, int line, char const* condition,
                                     std::string message) {
  throw error(std::move(message), file, line, condition);
}
}  // namespace detail

}  // namespace lightcore

// LC_CHECK(cond, "what was wrong: " << value << "; allowed: ...")
// The message is a stream expression, evaluated only when the check fails.
#define LC_CHECK(cond, msg)                                                            \
  do {                                                                                 \
    if (!(cond)) [[unlikely]] {                                                        \
      std::ostringstream lc_check_os_;                                                 \
      lc_check_os_ << msg;                                                             \
      ::lightcore::detail::throw_error(__FILE__, __LINE__, #cond, lc_check_os_.str()); \
    }                                                                                  \
  } while (0)

// LC_THROW("message " << value): an unconditional failure with the same format.
#define LC_THROW(msg)                                                                  \
  do {                                                                                 \
    std::ostringstream lc_throw_os_;                                                   \
    lc_throw_os_ << msg;                                                               \
    ::lightcore::detail::throw_error(__FILE__, __LINE__, nullptr, lc_throw_os_.str()); \
  } while (0)
