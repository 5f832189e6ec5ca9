// The bundle reader on hostile input: SHA-256 against the FIPS 180-4 vectors, the strict JSON
// parser, the safetensors reader (truncated files, header lengths, offsets, shapes, dtypes), and
// the bundle checks of runtime/bundle.py (schema version, fields, paths leaving the bundle,
// symlinks, unlisted files, sizes and hashes).
#include <unistd.h>

#include <string>
#include <vector>

#include "bundle.h"
#include "bundle_fixture.h"
#include "check.h"
#include "errors.h"
#include "json.h"
#include "safetensors.h"
#include "sha256.h"

using fixture::replace;
using fixture::TempDir;
using vqrt::Error;

namespace {

std::string sha(const std::string& text) { return vqrt::sha256_hex(text.data(), text.size()); }

vqrt::JsonValue json(const std::string& text) { return vqrt::parse_json(text.data(), text.size()); }

vqrt::SafetensorsFile safetensors(const std::vector<uint8_t>& bytes) {
  return vqrt::SafetensorsFile(bytes, "w.safetensors");
}

// Little-endian u64 at the start of a safetensors file.
void set_header_length(std::vector<uint8_t>& bytes, uint64_t n) {
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(n >> (8 * i));
}

// A bundle whose manifest text went through `edit`.
template <typename Edit>
void expect_bundle_error(Edit edit, const std::string& message) {
  TempDir dir;
  fixture::write_bundle(dir.path, 1, edit);
  CHECK_THROWS(vqrt::Bundle(dir.path), Error, message);
}

}  // namespace

TEST(sha256_known_vectors) {
  CHECK_EQ(sha(""),
           std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_EQ(sha("abc"),
           std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK_EQ(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
           std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  // One million 'a', fed in uneven pieces (the buffering across update() calls).
  vqrt::Sha256 hash;
  const std::string piece(997, 'a');
  size_t fed = 0;
  while (fed < 1000000) {
    const size_t n = std::min(piece.size(), 1000000 - fed);
    hash.update(piece.data(), n);
    fed += n;
  }
  CHECK_EQ(vqrt::to_hex(hash.finish()),
           std::string("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
  // 55, 56 and 64 bytes: the padding boundaries.
  CHECK_EQ(sha(std::string(55, 'x')),
           std::string("d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"));
  CHECK_EQ(sha(std::string(56, 'x')),
           std::string("04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"));
  CHECK_EQ(sha(std::string(64, 'a')),
           std::string("ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"));
}

TEST(json_values) {
  const vqrt::JsonValue v = json(
      " {\"a\": [1, -0, 2.5e2, true, false, null], \"s\": \"\\u00e9\\ud83d\\ude00\\n\\\"\","
      " \"big\": 12345678901234567890, \"u\": \"\xc3\xa9\"} ");
  const auto& a = v.at("a", "v").as_array("v.a");
  CHECK_EQ(a.size(), size_t{6});
  CHECK_EQ(a[0].as_int("a0"), int64_t{1});
  CHECK_EQ(a[1].as_int("a1"), int64_t{0});
  CHECK_EQ(a[2].as_number("a2"), 250.0);
  CHECK_THROWS(a[2].as_int("v.a[2]"), Error, "v.a[2] must be int");
  CHECK_EQ(a[3].as_bool("a3"), true);
  CHECK_EQ(a[4].as_bool("a4"), false);
  CHECK(a[5].is_null());
  CHECK_EQ(v.at("s", "v").as_string("v.s"), std::string("\xc3\xa9\xf0\x9f\x98\x80\n\""));
  CHECK_EQ(v.at("u", "v").as_string("v.u"), std::string("\xc3\xa9"));
  CHECK_THROWS(v.at("big", "v").as_int("v.big"), Error, "v.big must be int");
  CHECK_THROWS(v.at("nope", "v"), Error, "v.nope is missing");
  CHECK_THROWS(v.check_fields({"a", "s"}, "v"), Error, "v has unknown field(s) big, u");
  CHECK_THROWS(v.as_array("v"), Error, "v must be a list, got an object");
}

TEST(json_rejects_what_is_not_strict_json) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "line 1, column 1: unexpected end of input"},
      {"{\"a\": 1,}", "expected a string key"},
      {"[1, 2,]", "expected a value"},
      {"{\"a\": 1, \"a\": 2}", "duplicate key \"a\""},
      {"NaN", "expected a value"},
      {"[Infinity]", "expected a value"},
      {"1e999", "number out of range"},
      {"01", "unexpected text after the JSON value"},
      {"1.", "expected digits after '.'"},
      {"{\"a\" 1}", "expected ':'"},
      {"[1] [2]", "unexpected text after"},
      {"// comment\n1", "expected a value"},
      {"\"tab\there\"", "control character in a string"},
      {"\"\\x\"", "bad escape \\x"},
      {"\"\\ud800\"", "lone high surrogate"},
      {"\"\\udc00\"", "lone low surrogate"},
      {"\"\xff\"", "invalid UTF-8"},
      {"\"\xc0\xaf\"", "invalid UTF-8"},          // overlong '/'
      {"\"\xed\xa0\x80\"", "invalid UTF-8"},      // an encoded surrogate
      {"\xef\xbb\xbf{}", "expected a value"},     // a byte order mark
      {"\"abc", "unterminated string"},
      {"{\"a\":\n  tru}", "line 2, column 3: expected a value"},
  };
  for (const auto& [text, message] : bad) CHECK_THROWS(json(text), Error, message);
  std::string deep(vqrt::JsonValue::kMaxDepth + 1, '[');
  deep += std::string(vqrt::JsonValue::kMaxDepth + 1, ']');
  CHECK_THROWS(json(deep), Error, "nested deeper than the limit");
  std::string ok(vqrt::JsonValue::kMaxDepth, '[');
  ok += std::string(vqrt::JsonValue::kMaxDepth, ']');
  json(ok);
}

TEST(safetensors_reads_tensors_in_bounds) {
  std::vector<uint8_t> i8(3, 0x7f);  // 3 bytes: the F32 tensor after it is misaligned
  std::vector<uint8_t> f32(8);
  const float values[2] = {1.5f, -2.0f};
  std::memcpy(f32.data(), values, 8);
  const auto bytes = fixture::safetensors({{"q", "I8", {3}, i8}, {"x", "F32", {2, 1}, f32}});
  const vqrt::SafetensorsFile file = safetensors(bytes);
  CHECK_EQ(file.metadata().at("layout"), std::string("vqrt-native-1"));
  const vqrt::SafetensorsTensor& x = file.tensors().at("x");
  CHECK_EQ(x.dtype, std::string("F32"));
  CHECK(x.shape == (std::vector<int64_t>{2, 1}));
  CHECK_EQ(reinterpret_cast<uintptr_t>(x.data) % 4, uintptr_t{0});  // realigned copy
  CHECK_EQ(static_cast<const float*>(x.data)[1], -2.0f);
  CHECK_EQ(file.tensors().at("q").bytes, int64_t{3});
}

TEST(safetensors_rejects_bad_files) {
  std::vector<uint8_t> f32(16, 0);
  const auto good = fixture::safetensors({{"x", "F32", {2, 2}, f32}});
  // Truncated: short of the 8-byte length, inside the header, inside the data.
  CHECK_THROWS(safetensors({1, 2, 3}), Error, "w.safetensors: too short for a safetensors file");
  CHECK_THROWS(safetensors(std::vector<uint8_t>(good.begin(), good.begin() + 20)), Error,
               "does not fit the file");
  CHECK_THROWS(safetensors(std::vector<uint8_t>(good.begin(), good.end() - 1)), Error,
               "tensor x has offsets [0, 16) that do not match");
  // A header length beyond the file, or beyond the limit (never allocated).
  auto bytes = good;
  set_header_length(bytes, uint64_t{1} << 62);
  CHECK_THROWS(safetensors(bytes), Error, "header length 4611686018427387904 does not fit");
  // Offsets outside the data, reversed, or not matching shape x dtype.
  auto with_entry = [](const std::string& entry) {  // one tensor x, 16 bytes of data
    const std::string header = "{\"x\":" + entry + "}";
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
    file += header + std::string(16, '\0');
    return std::vector<uint8_t>(file.begin(), file.end());
  };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,32]})", "offsets [0, 32)"},
      {R"({"dtype":"F32","shape":[2,2],"data_offsets":[16,0]})", "offsets [16, 0)"},
      {R"({"dtype":"F32","shape":[2,2],"data_offsets":[-16,0]})", "offsets [-16, 0)"},
      {R"({"dtype":"F32","shape":[3,2],"data_offsets":[0,16]})", "do not match its shape"},
      {R"({"dtype":"F16","shape":[2,2],"data_offsets":[0,16]})", "and dtype F16"},
      {R"({"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,0]})",
       "do not match its shape"},  // elements overflow 64 bits
      {R"({"dtype":"F32","shape":[0,-4],"data_offsets":[0,0]})", "negative dimension -4"},
      {R"({"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]})", "shape[] must be int"},
      {R"({"dtype":"Q4","shape":[2,2],"data_offsets":[0,16]})", "Q4 is not a safetensors dtype"},
      {R"({"dtype":"F32","shape":[2,2],"data_offsets":[0]})", "must have 2 entries"},
      {R"({"dtype":"F32","shape":[2,2]})", "tensor x.data_offsets is missing"},
      {R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"x":1})", "unknown field(s) x"},
      {R"([1, 2])", "tensor x must be an object"},
  };
  for (const auto& [entry, message] : bad) {
    CHECK_THROWS(safetensors(with_entry(entry)), Error, message);
  }
  CHECK(safetensors(with_entry(R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})"))
            .tensors()
            .size() == 1);
}

TEST(bundle_loads) {
  TempDir dir;
  fixture::write_bundle(dir.path);
  const vqrt::Bundle bundle(dir.path);
  const vqrt::BundleManifest& m = bundle.manifest();
  CHECK_EQ(m.kind, std::string("net2net"));
  CHECK_EQ(m.codebook_size, fixture::kCodes);
  CHECK_EQ(m.n_classes, fixture::kClasses);
  CHECK_EQ(m.sos_token, int64_t{-1});
  CHECK_EQ(m.max_latent_w, int64_t{5});
  CHECK_EQ(m.prefix_rule, std::string("class_id"));
  CHECK(bundle.native_weights() != nullptr);
  CHECK_EQ(bundle.native_weights()->tensors().count("head.weight"), size_t{1});
}

TEST(bundle_rejects_bad_manifests) {
  CHECK_THROWS(vqrt::Bundle("/nonexistent/bundle"), Error,
               "/nonexistent/bundle: no such directory; pass a bundle directory");
  {
    TempDir empty;
    CHECK_THROWS(vqrt::Bundle(empty.path), Error, "manifest.json: missing, so");
  }
  const auto edit = [](const std::string& from, const std::string& to) {
    return [=](std::string text) { return replace(text, from, to); };
  };
  expect_bundle_error(edit("\"schema_version\": 1", "\"schema_version\": 2"),
                      "manifest.json: schema version 2 is not supported (this vqrt reads "
                      "version 1)");
  expect_bundle_error(edit("\"schema_version\": 1", "\"schema_version\": \"1\""),
                      "schema version (not a number) is not supported");
  expect_bundle_error(edit("\"schema_version\": 1,", ""), "schema version missing");
  expect_bundle_error(edit("\"notes\"", "\"extra\": 1, \"notes\""),
                      "manifest has unknown field(s) extra");
  expect_bundle_error(edit("\"tools\": {\"vqrt\": \"test\"},", ""), "manifest.tools is missing");
  expect_bundle_error(edit("\"n_layer\": 2", "\"n_layer\": 2.5"),
                      "manifest.transformer.n_layer must be int");
  expect_bundle_error(edit("\"codebook_size\": 50", "\"codebook_size\": true"),
                      "manifest.first_stage.codebook_size must be int, got a boolean");
  expect_bundle_error(edit("\"head_dim\": 12,", "\"head_dim\": 12, \"heads\": 4,"),
                      "manifest.transformer has unknown field(s) heads");
  expect_bundle_error(edit("\"max_latent\": [5, 5]", "\"max_latent\": [5]"),
                      "manifest.limits.max_latent must have 2 entries");
  expect_bundle_error(edit("\"schema_version\": 1,", "\"schema_version\": 1, \"kind\": \"x\","),
                      "duplicate key \"kind\"");
  expect_bundle_error(edit("\"graphs\": {}", "\"graphs\": {\"decoder\": {\"file\": "
                                             "\"decoder.onnx\", \"precision\": \"fp32\", "
                                             "\"opset\": 17, \"inputs\": [], \"outputs\": []}}"),
                      "manifest.json: graph decoder names decoder.onnx, which is not in the "
                      "file list");
  expect_bundle_error(edit("{\n", "[\n"), "manifest.json: invalid JSON at line");
}

TEST(bundle_rejects_paths_that_leave_it) {
  for (const std::string& path : {"../native_weights.safetensors", "/etc/passwd", "a/../b",
                                  "./native_weights.safetensors", "a//b", "a\\\\b", "",
                                  "x\\u0000y"}) {
    expect_bundle_error(
        [&](std::string text) {
          return replace(text, "\"path\": \"native_weights.safetensors\"",
                         "\"path\": \"" + path + "\"");
        },
        "leaves the bundle or is not a plain relative path");
  }
  // A symlink to the real file, inside the bundle: refused, as is a symlinked directory.
  for (const bool directory : {false, true}) {
    TempDir dir;
    const std::string target = directory ? "sub/native_weights.safetensors" : "link.safetensors";
    fixture::write_bundle(dir.path, 1, [&](std::string text) {
      text = replace(text, "\"path\": \"native_weights.safetensors\"",
                     "\"path\": \"" + target + "\"");
      return replace(text, "\"file\": \"native_weights.safetensors\"",
                     "\"file\": \"" + target + "\"");
    });
    if (directory) {
      CHECK_EQ(symlink(".", (dir.path + "/sub").c_str()), 0);
    } else {
      CHECK_EQ(symlink("native_weights.safetensors", (dir.path + "/" + target).c_str()), 0);
    }
    CHECK_THROWS(vqrt::Bundle(dir.path), Error,
                 "is a symlink, which a bundle may not contain");
  }
  expect_bundle_error(
      [](std::string text) {
        return replace(text, "\"path\": \"native_weights.safetensors\"", "\"path\": \"gone.bin\"");
      },
      "gone.bin: missing from the bundle");
}

TEST(bundle_rejects_changed_files) {
  TempDir dir;
  fixture::write_bundle(dir.path);
  const std::string weights = dir.path + "/" + fixture::kNativeFile;
  std::vector<uint8_t> bytes = fixture::read_file(weights);
  bytes[bytes.size() / 2] ^= 1;  // same size, one bit changed
  fixture::write_file(weights, bytes);
  CHECK_THROWS(vqrt::Bundle(dir.path), Error,
               "native_weights.safetensors: SHA-256 does not match the manifest");
  bytes.pop_back();
  fixture::write_file(weights, bytes);
  CHECK_THROWS(vqrt::Bundle(dir.path), Error, "the manifest says " +
                                                  std::to_string(bytes.size() + 1) +
                                                  " (changed or truncated after the build)");
}

TEST(bundle_checks_the_weights_it_hashed) {
  // A manifest that lists a truncated safetensors file with its true hash: the hash passes,
  // the safetensors reader refuses it.
  TempDir dir;
  fixture::write_bundle(dir.path);
  const std::string weights = dir.path + "/" + fixture::kNativeFile;
  std::vector<uint8_t> bytes = fixture::read_file(weights);
  bytes.resize(bytes.size() - 4);
  fixture::write_file(weights, bytes);
  const std::string manifest = dir.path + "/manifest.json";
  std::vector<uint8_t> text = fixture::read_file(manifest);
  std::string edited(text.begin(), text.end());
  const size_t at = edited.find("{\"path\"");
  const size_t end = edited.find('}', at);
  edited.replace(at, end + 1 - at, fixture::file_entry(fixture::kNativeFile, bytes));
  fixture::write_file(manifest, edited);
  CHECK_THROWS(vqrt::Bundle(dir.path), Error, "native_weights.safetensors: tensor codebook has "
                                              "offsets");
}

int main() { return check::run_tests(); }
