// Tiny bundles written by the C++ tests: random "vqrt-native-1" F32 weights of a small GPT in a
// safetensors file, and a manifest of schema version 1 listing it with its size and SHA-256.
// Tests change the manifest text or the files to make each broken bundle.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "sha256.h"

namespace fixture {

// The model: 2 layers, 4 heads, 48 wide, vocabulary 61 (50 image codes, 5 classes), block 40,
// a 4 x 4 training grid (f = 8, 32 x 32 pixels), up to 5 x 5, batch <= 4.
constexpr int64_t kLayers = 2, kHeads = 4, kEmbd = 48, kVocab = 61, kBlock = 40;
constexpr int64_t kCodes = 50, kClasses = 5;
const char kNativeFile[] = "native_weights.safetensors";

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
struct TempDir {
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    path = std::string(base && *base ? base : "/tmp") + "/vqrt-test-XXXXXX";
    if (mkdtemp(&path[0]) == nullptr) std::abort();
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string path;
};

inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline void write_file(const std::string& path, const std::string& text) {
  write_file(path, std::vector<uint8_t>(text.begin(), text.end()));
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Replaces the first `from` in text (which must hold it) with `to`.
inline std::string replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  if (at == std::string::npos) std::abort();
  return text.replace(at, from.size(), to);
}

// A safetensors file: 8-byte header length, JSON header padded to 8 bytes, the tensors in order.
struct TensorBytes {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline std::vector<uint8_t> safetensors(const std::vector<TensorBytes>& tensors) {
  std::string header = "{\"__metadata__\":{\"layout\":\"vqrt-native-1\"}";
  size_t offset = 0;
  for (const TensorBytes& t : tensors) {
    std::string shape;
    for (int64_t d : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += ",\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  file += header;
  for (const TensorBytes& t : tensors) file.append(t.bytes.begin(), t.bytes.end());
  return std::vector<uint8_t>(file.begin(), file.end());
}

inline TensorBytes f32_tensor(const std::string& name, std::vector<int64_t> shape, float stddev,
                              float mean, std::mt19937& rng) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<float> values(n);
  for (float& v : values) v = normal(rng);
  TensorBytes t{name, "F32", shape, std::vector<uint8_t>(n * 4)};
  std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// The tensors of the model, named and shaped as export/native_weights.py writes them.
inline std::vector<TensorBytes> native_tensors(uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t C = kEmbd;
  std::vector<TensorBytes> t;
  t.push_back(f32_tensor("tok_emb", {kVocab, C}, 1.0f, 0.0f, rng));
  t.push_back(f32_tensor("pos_emb", {kBlock, C}, 0.5f, 0.0f, rng));
  auto linear = [&](const std::string& name, int64_t n, int64_t k) {
    t.push_back(f32_tensor(name + ".weight", {n, k}, 1.0f / std::sqrt(float(k)), 0.0f, rng));
    t.push_back(f32_tensor(name + ".bias", {n}, 0.1f, 0.0f, rng));
  };
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    for (const char* ln : {"ln1", "ln2"}) {
      t.push_back(f32_tensor(p + ln + ".weight", {C}, 0.1f, 1.0f, rng));
      t.push_back(f32_tensor(p + ln + ".bias", {C}, 0.1f, 0.0f, rng));
    }
    linear(p + "attn.qkv", 3 * C, C);
    linear(p + "attn.proj", C, C);
    linear(p + "mlp.fc", 4 * C, C);
    linear(p + "mlp.proj", C, 4 * C);
  }
  t.push_back(f32_tensor("ln_f.weight", {C}, 0.1f, 1.0f, rng));
  t.push_back(f32_tensor("ln_f.bias", {C}, 0.1f, 0.0f, rng));
  t.push_back(f32_tensor("head.weight", {kVocab, C}, 3.0f / std::sqrt(float(C)), 0.0f, rng));
  t.push_back(f32_tensor("codebook", {kCodes, 8}, 1.0f, 0.0f, rng));
  return t;
}

// The manifest of a class-conditional bundle whose only file is the native weights
// (`FILES` is replaced by the file list).
inline std::string manifest_template() {
  return R"({
  "schema_version": 1,
  "created": "2025-01-01T00:00:00Z",
  "kind": "net2net",
  "requested_precision": "fp32",
  "backends": ["native"],
  "model_card": {"source": "tests/cpp"},
  "first_stage": {"image_channels": 3, "training_size": [32, 32], "downsampling_factor": 8,
                  "training_grid": [4, 4], "codebook_size": 50, "codebook_dim": 8,
                  "quantizer": "vq", "value_range": [-1.0, 1]},
  "transformer": {"vocab_size": 61, "block_size": 40, "n_layer": 2, "n_head": 4, "n_embd": 48,
                  "head_dim": 12, "n_unmasked": 0},
  "tokenization": {"order": "raster", "layout": ["cond", "image"], "prefix": "class_id"},
  "conditioning": {"kind": "class", "prefix_tokens": 1, "n_classes": 5, "sos_token": null,
                   "cond_stage_key": "class_label", "cond_channels": null, "cond_resize": null,
                   "coord_down_factor": null, "coord_n_embed": null},
  "limits": {"max_batch": 4, "max_latent": [5, 5], "max_sequence": 40},
  "graphs": {},
  "kv_cache": null,
  "native": {"file": "native_weights.safetensors", "precision": "fp32", "layout": "vqrt-native-1"},
  "tensorrt": null,
  "tiled_decoder": null,
  "files": FILES,
  "tools": {"vqrt": "test"},
  "parity": {"inputs": "none", "checks": [], "passed": true, "drift_allowed": false},
  "quantization": null,
  "notes": ["written by tests/cpp/bundle_fixture.h \u00e9"]
}
)";
}

inline std::string file_entry(const std::string& path, const std::vector<uint8_t>& bytes) {
  return "{\"path\": \"" + path + "\", \"sha256\": \"" +
         vqrt::sha256_hex(bytes.data(), bytes.size()) + "\", \"size\": " +
         std::to_string(bytes.size()) + "}";
}

// Writes a bundle into dir: the native weights (random, from seed) and the manifest, with
// `edit` applied to the manifest text first.
template <typename Edit>
void write_bundle(const std::string& dir, uint32_t seed, Edit edit) {
  const std::vector<uint8_t> weights = safetensors(native_tensors(seed));
  write_file(dir + "/" + kNativeFile, weights);
  const std::string files = "[" + file_entry(kNativeFile, weights) + "]";
  write_file(dir + "/manifest.json", edit(replace(manifest_template(), "FILES", files)));
}

inline void write_bundle(const std::string& dir, uint32_t seed = 1) {
  write_bundle(dir, seed, [](std::string text) { return text; });
}

}  // namespace fixture
