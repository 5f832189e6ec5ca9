// A bounded, deterministic fuzz of the C++ readers (fuzz_targets.h): seeded random mutations of
// valid inputs (bit flips, overwritten, inserted, deleted and duplicated spans, hard values
// spliced in) through the strict JSON parser, the safetensors reader and the whole bundle
// reader. No clang or libFuzzer needed, so it runs under every ctest; with clang,
// -DVQRT_LIBFUZZER=ON builds the coverage-guided twin (tests/cpp/fuzz_readers_libfuzzer.cpp).
// An input that fails is printed (hex) and becomes a case in tests/cpp/test_bundle_reader.cpp.
// VQRT_FUZZ_ITERATIONS=N scales the run (N x the default counts / 100: 100 = default).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bundle_fixture.h"
#include "check.h"
#include "fuzz_targets.h"

// A failed check with a message built at run time (check.h's macros take expressions).
#define CHECK_MSG(cond, message)                                          \
  do {                                                                    \
    if (!(cond)) ::check::fail(__FILE__, __LINE__, message);              \
  } while (0)

namespace {

using Bytes = std::vector<uint8_t>;

const std::vector<std::string> kHard = {
    "0", "-1", "1e999", "18446744073709551616", "9223372036854775807", "-9223372036854775808",
    "null", "[]", "{}", "\"", "\\", std::string(1, '\0'), "\xff", std::string(80, '['), "NaN",
    "4294967296", "\"..\"", "\"/etc/passwd\"", "\"\\u0000\"", "\"\\ud800\"", "1.5", "true"};

Bytes mutate(const Bytes& seed, std::mt19937& rng) {
  Bytes out = seed;
  auto below = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t at = below(out.size() + 1);
    const size_t inside = out.empty() ? 0 : std::min(at, out.size() - 1);
    switch (rng() % 6) {
      case 0:
        if (!out.empty()) out[inside] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (!out.empty()) out[inside] = static_cast<uint8_t>(rng());
        break;
      case 2: {
        Bytes noise(1 + rng() % 8);
        for (uint8_t& b : noise) b = static_cast<uint8_t>(rng());
        out.insert(out.begin() + at, noise.begin(), noise.end());
        break;
      }
      case 3:
        out.erase(out.begin() + at, out.begin() + std::min(out.size(), at + 1 + rng() % 16));
        break;
      case 4: {
        const Bytes span(out.begin() + at, out.begin() + std::min(out.size(), at + 1 + rng() % 32));
        out.insert(out.begin() + at, span.begin(), span.end());
        break;
      }
      default: {
        const std::string& hard = kHard[rng() % kHard.size()];
        out.insert(out.begin() + at, hard.begin(), hard.end());
      }
    }
  }
  return out;
}

std::string hex(const Bytes& bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < 512; ++i) {
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
  return out;
}

int iterations(int standard) {
  const char* scale = std::getenv("VQRT_FUZZ_ITERATIONS");
  return scale ? static_cast<int>(static_cast<long long>(standard) * std::atoi(scale) / 100)
               : standard;
}

// Runs `target` over `count` mutations of the seeds; each failure is a CHECK failure naming it.
template <typename Target>
void run(const char* name, const std::vector<Bytes>& seeds, int count, uint32_t seed,
         Target target) {
  std::mt19937 rng(seed);
  int failures = 0;
  for (const Bytes& s : seeds) {
    const fuzz::Failure f = target(s);
    CHECK_MSG(f.empty(), std::string(name) + " seed: " + f);
  }
  for (int i = 0; i < count && failures < 3; ++i) {
    const Bytes input = mutate(seeds[rng() % seeds.size()], rng);
    const fuzz::Failure f = target(input);
    if (!f.empty()) {
      ++failures;
      CHECK_MSG(false, std::string(name) + " input " + std::to_string(i) + ": " + f +
                           "\n    bytes: " + hex(input));
    }
  }
  std::printf("  %s: %d mutated inputs\n", name, count);
}

Bytes bytes_of(const std::string& text) { return Bytes(text.begin(), text.end()); }

// A small safetensors file: an int8 tensor that misaligns the float one after it, a BF16 one.
Bytes small_safetensors() {
  std::mt19937 rng(3);
  std::vector<fixture::TensorBytes> t;
  t.push_back({"q", "I8", {3}, Bytes{1, 2, 3}});
  t.push_back(fixture::f32_tensor("x", {2, 3}, 1.0f, 0.0f, rng));
  t.push_back({"b", "BF16", {2}, Bytes{0x80, 0x3f, 0x00, 0x40}});
  return fixture::safetensors(t);
}

}  // namespace

TEST(fuzz_json) {
  const std::string manifest = fixture::replace(fixture::manifest_template(), "FILES", "[]");
  run("json", {bytes_of(manifest), bytes_of("[1, -2.5e3, \"\\u00e9\", {\"a\": null}]")},
      iterations(20000), 1, [](const Bytes& b) { return fuzz::json(b.data(), b.size()); });
}

TEST(fuzz_safetensors) {
  run("safetensors", {small_safetensors()}, iterations(20000), 2,
      [](const Bytes& b) { return fuzz::safetensors(b.data(), b.size()); });
}

TEST(fuzz_bundle_manifest) {
  // The manifest mutated (its file entry filled in after), the weights intact.
  fixture::TempDir dir;
  const Bytes weights = fixture::safetensors(fixture::native_tensors(1));
  run("bundle manifest", {bytes_of(fixture::manifest_template())}, iterations(300), 3,
      [&](const Bytes& m) {
        return fuzz::bundle(dir.path, std::string(m.begin(), m.end()), weights);
      });
}

TEST(fuzz_bundle_weights) {
  // The native weights mutated and listed with their true hash, so the bundle reader hands
  // them to the safetensors reader.
  fixture::TempDir dir;
  const std::string manifest = fixture::manifest_template();
  run("bundle weights", {fixture::safetensors(fixture::native_tensors(1))}, iterations(200), 4,
      [&](const Bytes& w) { return fuzz::bundle(dir.path, manifest, w); });
}

TEST(errors_are_one_line) {
  // Found by tests/fuzz_readers.py in the Python reader, fixed in both: names from a hostile
  // file (a key, a tensor name) are shown with their control characters as \xNN.
  const std::string key = R"({"a\nb": 1, "a\nb": 2})";  // the key holds a line break
  CHECK_THROWS(vqrt::parse_json(key.data(), key.size()), vqrt::Error,
               "duplicate key \"a\\x0ab\"");
  const std::string header = R"({"x\ny":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  Bytes file(8, 0);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  file.insert(file.end(), header.begin(), header.end());
  file.resize(file.size() + 8, 0);
  CHECK_THROWS(vqrt::SafetensorsFile(file, "w.safetensors"), vqrt::Error,
               "w.safetensors: tensor x\\x0ay has offsets [0, 8)");
  CHECK(fuzz::safetensors(file.data(), file.size()).empty());  // and the target agrees
}

int main() { return check::run_tests(); }
