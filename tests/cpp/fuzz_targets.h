// Fuzz targets over the C++ readers of untrusted bytes, shared by the bounded mutation loop that
// ctest runs (tests/cpp/test_fuzz_readers.cpp) and the libFuzzer harness
// (tests/cpp/fuzz_readers_libfuzzer.cpp, built with -DVQRT_LIBFUZZER=ON under clang).
//
// A target either accepts its input or throws vqrt::Error with a one-line message; anything
// else (another exception, a message with a line break, an accepted tensor whose bytes do not
// match its shape, a crash or, under sanitizers, an out-of-bounds access) is a failure,
// reported through `failure` with the reason.
#pragma once
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "bundle.h"
#include "bundle_fixture.h"
#include "errors.h"
#include "json.h"
#include "safetensors.h"

namespace fuzz {

// What went wrong with one input; empty when the reader behaved.
using Failure = std::string;

inline Failure check_message(const vqrt::Error& e) {
  const std::string what = e.what();
  return what.find('\n') == std::string::npos && what.find('\r') == std::string::npos
             ? Failure()
             : "multi-line error: " + what;
}

// Touches every value of a parsed document (under ASan, reads of freed or foreign memory show).
inline size_t walk(const vqrt::JsonValue& v, int depth = 0) {
  size_t n = 1;
  switch (v.kind()) {
    case vqrt::JsonValue::Kind::array:
      for (const auto& item : v.as_array("v")) n += walk(item, depth + 1);
      break;
    case vqrt::JsonValue::Kind::object:
      for (const auto& [key, item] : v.as_object("v")) n += key.size() + walk(item, depth + 1);
      break;
    case vqrt::JsonValue::Kind::string:
      n += v.as_string("v").size();
      break;
    case vqrt::JsonValue::Kind::number:
      try {
        n += static_cast<size_t>(v.as_int("v") & 1);
      } catch (const vqrt::Error&) {
        n += v.as_number("v") > 0;  // not an int64 integer: a double
      }
      break;
    default:
      break;
  }
  return n;
}

template <typename Body>
Failure guarded(Body body) {
  try {
    body();
  } catch (const vqrt::Error& e) {
    return check_message(e);
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  } catch (...) {
    return "unexpected non-standard exception";
  }
  return Failure();
}

inline Failure json(const uint8_t* data, size_t size) {
  return guarded([&] {
    const vqrt::JsonValue doc = vqrt::parse_json(reinterpret_cast<const char*>(data), size);
    walk(doc);
  });
}

inline Failure safetensors(const uint8_t* data, size_t size) {
  Failure bad;
  Failure thrown = guarded([&] {
    const vqrt::SafetensorsFile file(std::vector<uint8_t>(data, data + size), "fuzz");
    for (const auto& [name, t] : file.tensors()) {
      uint64_t elements = 1;
      for (const int64_t d : t.shape) elements *= static_cast<uint64_t>(d);
      const int64_t item = vqrt::safetensors_item_size(t.dtype);
      if (item == 0 || static_cast<uint64_t>(t.bytes) != elements * item ||
          reinterpret_cast<uintptr_t>(t.data) % item != 0) {
        bad = "accepted tensor " + name + " whose bytes, dtype or alignment do not match";
        return;
      }
      unsigned sum = 0;  // every byte of an accepted tensor is readable
      const uint8_t* bytes = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < t.bytes; ++i) sum += bytes[i];
      if (sum == 0xFFFFFFFFu) bad = "unreachable";  // keeps the loop from being optimised out
    }
  });
  return bad.empty() ? thrown : bad;
}

// A bundle directory holding `manifest` and the native weights `weights`, read by vqrt::Bundle.
// A FILES placeholder in the manifest text (as in fixture::manifest_template()) becomes a file
// list naming the weights with their real size and SHA-256, so mutated weights reach the
// safetensors reader instead of failing the hash.
inline Failure bundle(const std::string& dir, const std::string& manifest,
                      const std::vector<uint8_t>& weights) {
  fixture::write_file(dir + "/" + fixture::kNativeFile, weights);
  std::string text = manifest;
  const size_t at = text.find("FILES");
  if (at != std::string::npos) {
    text.replace(at, 5, "[" + fixture::file_entry(fixture::kNativeFile, weights) + "]");
  }
  fixture::write_file(dir + "/manifest.json", text);
  return guarded([&] {
    const vqrt::Bundle b(dir);
    if (const vqrt::SafetensorsFile* w = b.native_weights()) {
      for (const auto& [name, t] : w->tensors()) (void)name, (void)t;
    }
  });
}

}  // namespace fuzz
