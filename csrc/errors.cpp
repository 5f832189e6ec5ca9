#include "errors.h"

namespace vqrt {

void throw_error(const char* file, int line, const std::string& message) {
  // what() is one line: control characters (a key or tensor name from a hostile file may hold
  // a line break, a NUL would end a C string) become \xNN, as runtime/strict_json.py shows them.
  std::string shown;
  for (const char c : message) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7f) {
      shown += c;
      continue;
    }
    static const char kHex[] = "0123456789abcdef";
    shown += "\\x";
    shown += kHex[u >> 4];
    shown += kHex[u & 15];
  }
  throw Error(shown, std::string(file) + ":" + std::to_string(line));
}

}  // namespace vqrt
