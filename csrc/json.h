// A strict JSON reader (RFC 8259) for the bundle's manifest.json and safetensors headers, which
// are untrusted input: valid UTF-8 only, no comments, trailing commas, NaN / Infinity literals,
// duplicate keys or lone surrogates, at most kMaxDepth nested arrays and objects. Errors are
// vqrt::Error naming the line and column ("invalid JSON at line 3, column 7: expected ':'").
//
// The typed accessors (at, as_int, ...) throw vqrt::Error naming the value by its dotted path
// (`where`, e.g. "manifest.transformer.n_layer"), worded like runtime/bundle.py's messages.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vqrt {

class JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };
  static constexpr int kMaxDepth = 64;

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }

  // The member `key` of an object; throws "<where>.<key> is missing" when absent.
  const JsonValue& at(const std::string& key, const std::string& where) const;
  // The member `key`, or nullptr when absent.
  const JsonValue* find(const std::string& key) const;
  // Throws "<where> has unknown field(s) a, b" unless every key is in `allowed`.
  void check_fields(const std::vector<std::string>& allowed, const std::string& where) const;

  bool as_bool(const std::string& where) const;
  // An integer literal (no fraction or exponent, as Python's json gives int) in int64.
  int64_t as_int(const std::string& where) const;
  double as_number(const std::string& where) const;
  const std::string& as_string(const std::string& where) const;
  const std::vector<JsonValue>& as_array(const std::string& where) const;
  // Members in file order.
  const std::vector<std::pair<std::string, JsonValue>>& as_object(const std::string& where) const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::null;
  bool boolean_ = false;
  bool integral_ = false;  // an integer literal that fits int64: integer_ holds it
  int64_t integer_ = 0;
  double number_ = 0.0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::vector<std::pair<std::string, JsonValue>> object_;
};

// Parses text [size bytes] holding exactly one JSON value (whitespace around it allowed).
JsonValue parse_json(const char* text, size_t size);

}  // namespace vqrt
