// Argument and invariant checks whose messages carry the offending values.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace moe {

/// Invalid user input (a config value, an argument): the message names the field and the value.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace moe

/// MOE_CHECK(cond, "hidden_size ", h, " is not divisible by ", n): throws moe::InvalidArgument.
#define MOE_CHECK(cond, ...)                                                  \
  do {                                                                        \
    if (!(cond)) throw ::moe::InvalidArgument(::moe::detail::concat(__VA_ARGS__)); \
  } while (0)
