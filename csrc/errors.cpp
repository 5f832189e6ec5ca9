#include "errors.h"

namespace vqrt {

void throw_error(const char* file, int line, const std::string& message) {
  throw Error(message, std::string(file) + ":" + std::to_string(line));
}

}  // namespace vqrt
