// Generation from a bundle (csrc/generate.h) and its C API (vqrt.h) on a tiny random bundle:
// tokens against a full-recomputation oracle (a fresh prefill per token, then the sampler with
// the row's seed and the token index as step), rows alone against rows in a batch, thread
// counts, SOS bundles, the request checks, the bundles it refuses, and the C API's contract
// (NULL on a failed open, outputs untouched on error).
#include <string>
#include <vector>

#include "bundle_fixture.h"
#include "check.h"
#include "errors.h"
#include "generate.h"
#include "sampling.h"
#include "transformer.h"
#include "vqrt.h"

using fixture::replace;
using fixture::TempDir;
using vqrt::Error;
using vqrt::GenerateRequest;
using vqrt::NativeGenerator;

namespace {

// Image token k of one row from a fresh prefill of [prefix, tokens 0..k-1]: the oracle for the
// KV-cached loop. Weights come from a Bundle read separately.
std::vector<int64_t> oracle_row(const std::string& dir, const std::vector<int64_t>& prefix,
                                int64_t total, uint64_t seed, const vqrt::SamplingParams& p) {
  const vqrt::Bundle bundle(dir);
  std::map<std::string, vqrt::TensorView> views;
  for (const auto& [name, t] : bundle.native_weights()->tensors()) {
    views[name] = {vqrt::DType::f32, t.data, t.shape};
  }
  vqrt::TransformerConfig c;
  c.n_layer = fixture::kLayers;
  c.n_head = fixture::kHeads;
  c.n_embd = fixture::kEmbd;
  c.vocab_size = fixture::kVocab;
  c.block_size = fixture::kBlock;
  vqrt::Transformer model(c, views);
  std::vector<int64_t> sequence = prefix, tokens;
  std::vector<float> logits(fixture::kVocab);
  for (int64_t k = 0; k < total; ++k) {
    model.prefill(sequence.data(), 1, static_cast<int64_t>(sequence.size()), logits.data());
    int64_t token = -1;
    vqrt::sample_logits(logits.data(), 1, fixture::kCodes, &seed, static_cast<uint64_t>(k), p,
                        &token);
    tokens.push_back(token);
    sequence.push_back(token);
  }
  return tokens;
}

std::vector<int64_t> generate(const NativeGenerator& g, const GenerateRequest& r) {
  const vqrt::TokenGrid grid = g.check(r);
  std::vector<int64_t> tokens(grid.batch * grid.h * grid.w, -1);
  g.generate(r, tokens.data());
  return tokens;
}

GenerateRequest sampled(std::vector<int64_t> labels, uint64_t seed) {
  GenerateRequest r;
  r.class_labels = std::move(labels);
  r.seed = seed;
  r.top_k = 12;
  r.top_p = 0.9f;
  r.temperature = 0.8f;
  return r;
}

}  // namespace

TEST(tokens_match_the_full_recomputation_oracle) {
  TempDir dir;
  fixture::write_bundle(dir.path);
  const NativeGenerator g(dir.path);
  GenerateRequest r = sampled({3, 1}, 41);
  const std::vector<int64_t> tokens = generate(g, r);  // [2, 4, 4]
  CHECK_EQ(tokens.size(), size_t{32});
  vqrt::SamplingParams p;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.temperature = r.temperature;
  for (int64_t row = 0; row < 2; ++row) {
    const std::vector<int64_t> want =
        oracle_row(dir.path, {r.class_labels[row]}, 16, r.seed + row, p);
    for (int64_t k = 0; k < 16; ++k) CHECK_EQ(tokens[row * 16 + k], want[k]);
  }
  r.greedy = true;
  p.greedy = true;
  const std::vector<int64_t> greedy = generate(g, r);
  const std::vector<int64_t> want = oracle_row(dir.path, {3}, 16, 0, p);
  for (int64_t k = 0; k < 16; ++k) CHECK_EQ(greedy[k], want[k]);
}

TEST(rows_sizes_and_threads) {
  TempDir dir;
  fixture::write_bundle(dir.path);
  const NativeGenerator g(dir.path);
  GenerateRequest r = sampled({0, 2, 4}, 7);
  r.width = 40;  // a 5 x 3 grid (the largest width, a smaller height)
  r.height = 24;
  const vqrt::TokenGrid grid = g.check(r);
  CHECK(grid.batch == 3 && grid.h == 3 && grid.w == 5);
  const std::vector<int64_t> batch = generate(g, r);
  for (int64_t row = 0; row < 3; ++row) {
    GenerateRequest alone = r;
    alone.class_labels = {r.class_labels[row]};
    alone.seed = r.seed + row;
    alone.num_threads = row + 1;
    const std::vector<int64_t> tokens = generate(g, alone);
    for (int64_t k = 0; k < 15; ++k) {
      CHECK_EQ(tokens[k], batch[row * 15 + k]);
      CHECK(tokens[k] >= 0 && tokens[k] < fixture::kCodes);
    }
  }
  GenerateRequest repeated = sampled({2}, 9);  // one label, repeated to the batch
  repeated.batch = 4;
  CHECK_EQ(g.check(repeated).batch, int64_t{4});
  GenerateRequest seed_max = sampled({2}, UINT64_MAX);  // row 1 wraps to seed 0
  seed_max.batch = 2;
  const std::vector<int64_t> wrapped = generate(g, seed_max);
  const std::vector<int64_t> zero = generate(g, sampled({2}, 0));
  for (int64_t k = 0; k < 16; ++k) CHECK_EQ(wrapped[16 + k], zero[k]);
}

TEST(sos_bundles) {
  TempDir dir;
  fixture::write_bundle(dir.path, 2, [](std::string text) {
    text = replace(text, "\"prefix\": \"class_id\"", "\"prefix\": \"sos\"");
    text = replace(text, "\"prefix_tokens\": 1, \"n_classes\": 5, \"sos_token\": null",
                   "\"prefix_tokens\": 2, \"n_classes\": null, \"sos_token\": 60");
    return text;
  });
  const NativeGenerator g(dir.path);
  GenerateRequest r;
  r.greedy = true;
  vqrt::SamplingParams p;
  p.top_k = fixture::kCodes;
  p.greedy = true;
  const std::vector<int64_t> tokens = generate(g, r);
  const std::vector<int64_t> want = oracle_row(dir.path, {60, 60}, 16, 0, p);
  for (int64_t k = 0; k < 16; ++k) CHECK_EQ(tokens[k], want[k]);
  r.class_labels = {1};
  CHECK_THROWS(g.check(r), Error, "this bundle is unconditional: class_labels (--class) do not "
                                  "apply");
}

TEST(requests_outside_the_limits) {
  TempDir dir;
  fixture::write_bundle(dir.path, 1, [](std::string text) {
    return replace(text, "\"max_latent\": [5, 5]", "\"max_latent\": [8, 8]");
  });
  const NativeGenerator g(dir.path);
  const auto expect = [&](auto change, const std::string& message) {
    GenerateRequest r = sampled({1}, 0);
    change(r);
    CHECK_THROWS(g.check(r), Error, message);
  };
  expect([](GenerateRequest& r) { r.class_labels = {5}; },
         "class id 5 is out of range: the bundle has 5 classes (0..4)");
  expect([](GenerateRequest& r) { r.class_labels = {-1}; }, "class id -1 is out of range");
  expect([](GenerateRequest& r) { r.class_labels.clear(); },
         "this bundle is class-conditional (5 classes): pass class_labels");
  expect([](GenerateRequest& r) { r.batch = 5; },
         "requested batch 5 exceeds the bundle's max batch 4 (split the request, or rebuild "
         "with `vqrt build --max-batch 5`)");
  expect([](GenerateRequest& r) { r.batch = -2; }, "batch must be at least 1, got -2");
  expect([](GenerateRequest& r) { r.class_labels = {1, 2}, r.batch = 3; },
         "batch_size 3 does not match the 2 rows of the conditioning");
  expect([](GenerateRequest& r) { r.width = 36, r.height = 32; },
         "size width 36 is not a multiple of the downsampling factor 8 (try 32 or 40)");
  expect([](GenerateRequest& r) { r.width = 32; }, "size height must be >= 1, got 0");
  expect([](GenerateRequest& r) { r.width = 72, r.height = 8; },
         "requested 72x8 pixels (latent 1x9) exceeds the bundle's largest 64x64 (latent 8x8)");
  expect([](GenerateRequest& r) { r.width = 64, r.height = 64; },
         "a 8x8 grid after 1 prefix token(s) needs 64 positions (the last token is never fed "
         "back), more than the transformer's block size 40");
  expect([](GenerateRequest& r) { r.top_k = 51; },
         "top_k 51 exceeds the bundle's vocabulary of 50 image codes");
  expect([](GenerateRequest& r) { r.top_k = -1; }, "top_k must be >= 1 (0 = every code), got -1");
  expect([](GenerateRequest& r) { r.top_p = 0.0f; }, "top_p must be in (0, 1], got 0");
  expect([](GenerateRequest& r) { r.top_p = NAN; }, "top_p must be finite");
  expect([](GenerateRequest& r) { r.temperature = 0.0f, r.greedy = true; },
         "temperature must be > 0, got 0");
  expect([](GenerateRequest& r) { r.num_threads = -1; }, "num_threads must be >= 0");
  GenerateRequest r = sampled({1}, 0);
  r.width = 40;  // a 5 x 8 grid: 40 positions, the block exactly
  r.height = 64;
  CHECK_EQ(g.check(r).h, int64_t{8});
}

TEST(bundles_it_refuses) {
  const auto expect = [](uint32_t seed, auto edit, const std::string& message) {
    TempDir dir;
    fixture::write_bundle(dir.path, seed, edit);
    CHECK_THROWS(NativeGenerator(dir.path), Error, message);
  };
  expect(1, [](std::string t) { return replace(t, "\"net2net\"", "\"vqgan\""); },
         "the bundle is a first stage alone (kind vqgan)");
  expect(1, [](std::string t) { return replace(t, "\"prefix\": \"class_id\"",
                                               "\"prefix\": \"cond_encoder\""); },
         "the bundle's prefix rule is cond_encoder");
  expect(1, [](std::string t) {
    return replace(t, "\"native\": {\"file\": \"native_weights.safetensors\", \"precision\": "
                      "\"fp32\", \"layout\": \"vqrt-native-1\"}", "\"native\": null");
  }, "the bundle has no native weights");
  expect(1, [](std::string t) {
    return replace(t, "\"codebook_size\": 50", "\"codebook_size\": 62");
  },
         "codebook size 62 is outside [1, vocabulary 61]");
  expect(1, [](std::string t) { return replace(t, "\"n_embd\": 48", "\"n_embd\": 64"); },
         "native_weights.safetensors: tensor tok_emb has shape [61, 48], expected [61, 64]");
}

TEST(c_api) {
  TempDir dir;
  fixture::write_bundle(dir.path);
  CHECK(vqrt_model_open((dir.path + "/missing").c_str()) == nullptr);
  CHECK(std::string(vqrt_last_error()).find("missing: no such directory") != std::string::npos);
  CHECK(vqrt_model_open(nullptr) == nullptr);
  vqrt_model* model = vqrt_model_open(dir.path.c_str());
  CHECK(model != nullptr);
  if (model == nullptr) return;
  vqrt_model_info info;
  CHECK_EQ(vqrt_model_get_info(model, &info), int{VQRT_OK});
  CHECK(info.codebook_size == 50 && info.n_classes == 5 && info.grid_h == 4 &&
        info.max_grid_w == 5 && info.max_batch == 4 && info.block_size == 40 &&
        info.downsampling_factor == 8);

  vqrt_generate_request request = vqrt_generate_request_default();
  const int64_t labels[2] = {4, 0};
  request.class_labels = labels;
  request.n_class_labels = 2;
  request.seed = 5;
  request.top_k = 7;
  int64_t shape[3] = {0, 0, 0};
  CHECK_EQ(vqrt_generate_shape(model, &request, shape), int{VQRT_OK});
  CHECK(shape[0] == 2 && shape[1] == 4 && shape[2] == 4);
  std::vector<int64_t> tokens(32, -7);
  CHECK_EQ(vqrt_generate_tokens(model, &request, tokens.data()), int{VQRT_OK});
  const NativeGenerator g(dir.path);  // the C++ API, same request
  GenerateRequest r;
  r.class_labels = {4, 0};
  r.seed = 5;
  r.top_k = 7;
  CHECK(generate(g, r) == tokens);

  std::vector<int64_t> untouched(32, -7);
  request.top_k = 51;
  CHECK_EQ(vqrt_generate_tokens(model, &request, untouched.data()),
           int{VQRT_ERROR_INVALID_ARGUMENT});
  CHECK(std::string(vqrt_last_error()).find("top_k 51 exceeds") != std::string::npos);
  CHECK(untouched == std::vector<int64_t>(32, -7));
  CHECK_EQ(vqrt_generate_shape(model, &request, shape), int{VQRT_ERROR_INVALID_ARGUMENT});
  CHECK(shape[0] == 2 && shape[1] == 4 && shape[2] == 4);
  request.top_k = 7;
  request.class_labels = nullptr;
  CHECK_EQ(vqrt_generate_tokens(model, &request, untouched.data()),
           int{VQRT_ERROR_INVALID_ARGUMENT});
  CHECK(std::string(vqrt_last_error()).find("class_labels is null but n_class_labels is 2") !=
        std::string::npos);
  CHECK_EQ(vqrt_generate_tokens(nullptr, &request, untouched.data()),
           int{VQRT_ERROR_INVALID_ARGUMENT});
  CHECK_EQ(vqrt_generate_tokens(model, nullptr, untouched.data()),
           int{VQRT_ERROR_INVALID_ARGUMENT});
  request.class_labels = labels;
  CHECK_EQ(vqrt_generate_tokens(model, &request, nullptr), int{VQRT_ERROR_INVALID_ARGUMENT});
  CHECK(std::string(vqrt_last_error()).find("tokens is null") != std::string::npos);
  CHECK(untouched == std::vector<int64_t>(32, -7));
  vqrt_model_free(model);
  vqrt_model_free(nullptr);
}

int main() { return check::run_tests(); }
