// Image tokens from a bundle on the CPU: the native decoder (transformer.h) and the sampler
// (sampling.h) in the loop of runtime/generator.py, with its rules and its messages:
//
//   * the sequence is [prefix, image tokens in raster order]; the prefix is the class id
//     (tokenization prefix "class_id": class c is token c) or prefix_tokens SOS tokens ("sos");
//   * image token k of a row is drawn from the first codebook_size logits of position P + k - 1
//     (P prefix tokens) with the row's seed and step k; row i of a batch uses seed + i mod 2^64,
//     so a row's tokens depend on its seed, its class and the sampling parameters only;
//   * every token but the last is fed back, so a grid needs P + h*w - 1 <= block size positions.
//
// What runtime/generator.py does and this does not: spatial conditions (cond_encoder, coord:
// they need the ONNX graphs), image prefixes, and grids beyond the block (sliding windows).
// Such bundles are refused when opened, such requests when checked.
//
// A NativeGenerator is read-only after construction: any number of threads may call generate()
// at once; each call makes its own KV cache and thread pool.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bundle.h"
#include "sampling.h"
#include "transformer.h"

namespace vqrt {

// runtime/params.py GenerationParams plus the conditioning, for class-id and SOS bundles.
struct GenerateRequest {
  std::vector<int64_t> class_labels;  // class-conditional: one per row, or one for every row
  int64_t batch = 0;                  // rows; 0 = the rows of the conditioning
  uint64_t seed = 0;                  // row i samples with seed + i (mod 2^64)
  int64_t top_k = 0;                  // 0 = every image code
  float top_p = 1.0f;                 // (0, 1]
  float temperature = 1.0f;           // > 0, also when greedy (as GenerationParams)
  bool greedy = false;
  int64_t width = 0, height = 0;      // pixels, multiples of the downsampling factor; 0, 0 =
                                      // the training size
  int num_threads = 0;                // decoder and sampler, 0 = one per core; never changes
                                      // the tokens
};

// The shape of a request's tokens, [batch, h, w].
struct TokenGrid {
  int64_t batch = 0, h = 0, w = 0;
};

class NativeGenerator {
 public:
  // Loads and checks the bundle (bundle.h), that this generator can serve it, and its weights.
  explicit NativeGenerator(const std::string& bundle_dir);

  // Checks a request against the bundle (vqrt::Error naming the value and the limit) and
  // returns the shape of its tokens.
  TokenGrid check(const GenerateRequest& request) const;

  // tokens: [batch, h, w] as check() says; written only when generate() returns normally.
  void generate(const GenerateRequest& request, int64_t* tokens) const;

  const BundleManifest& manifest() const { return bundle_.manifest(); }

 private:
  struct Plan {
    TokenGrid grid;
    std::vector<int64_t> prefix;  // [batch, prefix_length]
    int64_t prefix_length = 0;
    SamplingParams sampling;
  };
  Plan plan(const GenerateRequest& request) const;

  Bundle bundle_;
  std::map<std::string, TensorView> weights_;  // views into bundle_'s native weights
  TransformerConfig config_;                   // the model's sizes; batch and length per call
};

}  // namespace vqrt
