// The strict JSON reader; rules in json.h.
#include "json.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "errors.h"

namespace vqrt {

class JsonParser {
 public:
  JsonParser(const char* text, size_t size) : p_(text), begin_(text), end_(text + size) {}

  JsonValue document() {
    JsonValue value = parse_value(0);
    skip_space();
    if (p_ != end_) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    int64_t line = 1, column = 1;
    for (const char* c = begin_; c < p_ && c < end_; ++c) {
      if (*c == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    VQRT_CHECK(false, "invalid JSON at line " << line << ", column " << column << ": " << what);
  }

  void skip_space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  bool consume(const char* word) {
    const size_t n = std::char_traits<char>::length(word);
    if (static_cast<size_t>(end_ - p_) < n || std::char_traits<char>::compare(p_, word, n) != 0) {
      return false;
    }
    p_ += n;
    return true;
  }

  void expect(char c) {
    skip_space();
    if (p_ == end_ || *p_ != c) fail(std::string("expected '") + c + "'");
    ++p_;
  }

  JsonValue parse_value(int depth) {
    skip_space();
    if (p_ == end_) fail("unexpected end of input");
    JsonValue v;
    if (*p_ == '{' || *p_ == '[') {
      if (depth >= JsonValue::kMaxDepth) fail("nested deeper than the limit");
      if (*p_ == '{') {
        parse_object(v, depth + 1);
      } else {
        parse_array(v, depth + 1);
      }
    } else if (*p_ == '"') {
      v.kind_ = JsonValue::Kind::string;
      v.string_ = parse_string();
    } else if (consume("true")) {
      v.kind_ = JsonValue::Kind::boolean;
      v.boolean_ = true;
    } else if (consume("false")) {
      v.kind_ = JsonValue::Kind::boolean;
    } else if (consume("null")) {
      v.kind_ = JsonValue::Kind::null;
    } else {
      parse_number(v);
    }
    return v;
  }

  void parse_object(JsonValue& v, int depth) {
    v.kind_ = JsonValue::Kind::object;
    ++p_;  // '{'
    skip_space();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      return;
    }
    for (;;) {
      skip_space();
      if (p_ == end_ || *p_ != '"') fail("expected a string key");
      std::string key = parse_string();
      expect(':');
      JsonValue member = parse_value(depth);
      v.object_.emplace_back(std::move(key), std::move(member));
      skip_space();
      if (p_ < end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      expect('}');
      break;
    }
    // Duplicate keys (which Python's json would silently resolve to the last one) in
    // O(n log n), so a hostile header with millions of keys cannot stall the reader.
    std::vector<const std::string*> keys;
    for (const auto& member : v.object_) keys.push_back(&member.first);
    std::sort(keys.begin(), keys.end(), [](auto a, auto b) { return *a < *b; });
    for (size_t i = 1; i < keys.size(); ++i) {
      if (*keys[i] == *keys[i - 1]) fail("duplicate key \"" + *keys[i] + "\"");
    }
  }

  void parse_array(JsonValue& v, int depth) {
    v.kind_ = JsonValue::Kind::array;
    ++p_;  // '['
    skip_space();
    if (p_ < end_ && *p_ == ']') {
      ++p_;
      return;
    }
    for (;;) {
      v.array_.push_back(parse_value(depth));
      skip_space();
      if (p_ < end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      expect(']');
      return;
    }
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  void parse_number(JsonValue& v) {
    const char* start = p_;
    auto digits = [&] {
      const char* from = p_;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
      return p_ - from;
    };
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ < end_ && *p_ == '0') {
      ++p_;
    } else if (digits() == 0) {
      p_ = start;
      fail("expected a value");
    }
    bool integral = true;
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      integral = false;
      if (digits() == 0) fail("expected digits after '.'");
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      integral = false;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    v.kind_ = JsonValue::Kind::number;
    const auto parsed = std::from_chars(start, p_, v.number_);
    if (parsed.ec != std::errc() || !std::isfinite(v.number_)) fail("number out of range");
    if (integral) {
      v.integral_ = std::from_chars(start, p_, v.integer_).ec == std::errc();
    }
  }

  unsigned hex4() {
    if (end_ - p_ < 4) fail("truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const char c = *p_;
      const int digit = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
      if (digit < 0) fail("bad \\u escape");
      code = code * 16 + static_cast<unsigned>(digit);
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  // One well-formed UTF-8 sequence (no overlong forms, surrogates or code points > U+10FFFF).
  void copy_utf8(std::string& out) {
    const auto byte = [&](ptrdiff_t i) { return static_cast<unsigned char>(p_[i]); };
    const unsigned lead = byte(0);
    const int length = lead >= 0xF0 && lead <= 0xF4 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC2 ? 2 : 0;
    if (lead >= 0xF5 || length == 0 || end_ - p_ < length) fail("invalid UTF-8");
    for (int i = 1; i < length; ++i) {
      if ((byte(i) & 0xC0) != 0x80) fail("invalid UTF-8");
    }
    const unsigned second = byte(1);
    if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second >= 0xA0) ||
        (lead == 0xF0 && second < 0x90) || (lead == 0xF4 && second >= 0x90)) {
      fail("invalid UTF-8");
    }
    out.append(p_, length);
    p_ += length;
  }

  std::string parse_string() {
    ++p_;  // '"'
    std::string out;
    for (;;) {
      if (p_ == end_) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c < 0x20) fail("control character in a string");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      ++p_;
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (p_ == end_) fail("unterminated string");
      const char e = *p_++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = hex4();
          if (code >= 0xDC00 && code <= 0xDFFF) fail("lone low surrogate");
          if (code >= 0xD800 && code <= 0xDBFF) {
            if (!consume("\\u")) fail("lone high surrogate");
            const unsigned low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("lone high surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default:
          fail(std::string("bad escape \\") + e);
      }
    }
  }

  const char* p_;
  const char* begin_;
  const char* end_;
};

JsonValue parse_json(const char* text, size_t size) { return JsonParser(text, size).document(); }

namespace {

const char* kind_name(JsonValue::Kind kind) {
  switch (kind) {
    case JsonValue::Kind::null: return "null";
    case JsonValue::Kind::boolean: return "a boolean";
    case JsonValue::Kind::number: return "a number";
    case JsonValue::Kind::string: return "a string";
    case JsonValue::Kind::array: return "a list";
    case JsonValue::Kind::object: return "an object";
  }
  return "unknown";
}

}  // namespace

const JsonValue* JsonValue::find(const std::string& key) const {
  for (const auto& member : object_) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

const JsonValue& JsonValue::at(const std::string& key, const std::string& where) const {
  as_object(where);
  const JsonValue* member = find(key);
  VQRT_CHECK(member != nullptr, where << "." << key << " is missing");
  return *member;
}

void JsonValue::check_fields(const std::vector<std::string>& allowed,
                             const std::string& where) const {
  std::string unknown;
  for (const auto& member : as_object(where)) {
    if (std::find(allowed.begin(), allowed.end(), member.first) == allowed.end()) {
      unknown += (unknown.empty() ? "" : ", ") + member.first;
    }
  }
  VQRT_CHECK(unknown.empty(), where << " has unknown field(s) " << unknown);
}

bool JsonValue::as_bool(const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::boolean, where << " must be bool, got " << kind_name(kind_));
  return boolean_;
}

int64_t JsonValue::as_int(const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::number && integral_,
             where << " must be int, got " << (kind_ == Kind::number ? "a number that is not an "
                                                                       "int64 integer"
                                                                     : kind_name(kind_)));
  return integer_;
}

double JsonValue::as_number(const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::number, where << " must be a number, got " << kind_name(kind_));
  return number_;
}

const std::string& JsonValue::as_string(const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::string, where << " must be str, got " << kind_name(kind_));
  return string_;
}

const std::vector<JsonValue>& JsonValue::as_array(const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::array, where << " must be a list, got " << kind_name(kind_));
  return array_;
}

const std::vector<std::pair<std::string, JsonValue>>& JsonValue::as_object(
    const std::string& where) const {
  VQRT_CHECK(kind_ == Kind::object, where << " must be an object, got " << kind_name(kind_));
  return object_;
}

}  // namespace vqrt
