// A bundle directory (docs/ARCHITECTURE.md, "Bundle layout") as the C++ runtime reads it.
//
// The checks are runtime/bundle.py's load_bundle, the one reader's semantics, in its order:
//   * the directory and manifest.json exist; manifest.json is strict JSON (csrc/json.h) of at
//     most kMaxManifest bytes, with schema_version SCHEMA_VERSION;
//   * the top-level fields are exactly the schema's, and every section this reader uses
//     (first_stage, transformer, tokenization, conditioning, limits, native, files, the file
//     names of graphs and engines) has exactly its fields with their types;
//   * every file in `files` is a plain relative path inside the bundle (no absolute path, `..`,
//     `.`, empty part, backslash or NUL) whose every component exists and is not a symlink, and
//     is a regular file;
//   * every file a graph, the native weights or an engine names is in `files`;
//   * every listed file has its size and SHA-256. The native weights are read into memory once
//     and hashed there, so the bytes that were checked are the bytes that are used.
// What this reader does not type-check, because nothing here reads it: model_card, kv_cache,
// parity, tools and the graphs' tensor specs (runtime/bundle.py checks them all).
//
// Every failure is a vqrt::Error, one line naming the file at fault and the fix.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "safetensors.h"

namespace vqrt {

constexpr int64_t kBundleSchemaVersion = 1;  // runtime/bundle.py SCHEMA_VERSION

// The manifest's fields that the native runtime uses.
struct BundleManifest {
  std::string kind;  // net2net (a generator) or vqgan (a first stage alone)
  // first_stage
  int64_t codebook_size = 0;
  int64_t downsampling_factor = 0;
  int64_t training_grid_h = 0, training_grid_w = 0;
  // transformer (net2net only)
  bool has_transformer = false;
  int64_t vocab_size = 0, block_size = 0, n_layer = 0, n_head = 0, n_embd = 0;
  // tokenization and conditioning (net2net only)
  std::string order;         // raster
  std::string prefix_rule;   // class_id, sos, cond_encoder or coord
  int64_t prefix_tokens = 0;
  int64_t n_classes = 0;     // 0: not given
  int64_t sos_token = -1;    // -1: not given
  // limits
  int64_t max_batch = 0;
  int64_t max_latent_h = 0, max_latent_w = 0;
  // native ("" when the bundle has no native weights)
  std::string native_file, native_precision, native_layout;
};

class Bundle {
 public:
  // Reads and checks the bundle at `dir` (see the top of this file).
  explicit Bundle(const std::string& dir);

  const std::string& path() const { return path_; }
  const BundleManifest& manifest() const { return manifest_; }
  // The native weights, or nullptr when the bundle has none.
  const SafetensorsFile* native_weights() const { return native_.get(); }

  static constexpr int64_t kMaxManifest = 64 << 20;

 private:
  std::string path_;
  BundleManifest manifest_;
  std::unique_ptr<SafetensorsFile> native_;
};

}  // namespace vqrt
