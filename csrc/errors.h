// Errors: C++ code throws vqrt::Error through VQRT_CHECK; the C API (c_api.cpp) and the Cython
// binding (`except +`) translate it once at the boundary. A library never calls exit().
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace vqrt {

// Invalid argument from the caller (a bad k, a NaN logit); Cython maps it to ValueError.
// what() is the one-line message for users; `where` is file:line of the check, for C++ users.
struct Error : std::invalid_argument {
  Error(const std::string& message, std::string where_)
      : std::invalid_argument(message), where(std::move(where_)) {}
  std::string where;
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

}  // namespace vqrt

// VQRT_CHECK(k >= 1, "top_k must be >= 1, got " << k): the message names the offending value.
#define VQRT_CHECK(cond, msg)                                           \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::ostringstream vqrt_check_os_;                                \
      vqrt_check_os_ << msg;                                            \
      ::vqrt::throw_error(__FILE__, __LINE__, vqrt_check_os_.str());    \
    }                                                                   \
  } while (0)
