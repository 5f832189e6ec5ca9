// The GPT decoder on the GPU: the CUDA twin of vqrt::Transformer (transformer.h, the CPU
// oracle), with the same weights ("vqrt-native-1" tensors of any dtype, converted to fp16 once on
// upload) and the same semantics (upstream minGPT: pre-LN blocks, exact-erf GELU, causal
// attention with scale 1/sqrt(D), LayerNorm eps 1e-5). This header has no CUDA types, so every
// build has it: without CUDA (gpu_transformer_stub.cpp) gpu_unavailable_reason() says why and
// the constructors throw it.
//
// Per layer, on one stream (csrc/cuda/gpu_transformer.cu): LayerNorm -> qkv product (cuBLAS,
// fp16 in and out, fp32 accumulation) -> bias -> KV append -> decode attention over the fp16
// cache -> output product accumulated into the residual (beta = 1) -> bias -> LayerNorm -> fc
// product -> bias + GELU -> projection accumulated into the residual -> bias. The residual
// stream is fp16; LayerNorm statistics, sums and the logits are fp32.
//
// A decode step reads its tokens and positions from device buffers and ends by advancing the
// positions, so the whole step is captured once per batch size in a CUDA graph and replayed
// (use_graph; eager launches otherwise, the oracle for the graph). generate() keeps everything
// on the device: the sampler (csrc/cuda/sampling.cuh, the CPU's Philox stream) writes each token
// where the next step's embedding reads it; tokens are copied back once per call. Prefill runs
// all prefix positions of all rows in one pass.
//
// GpuWeights are uploaded once and read-only: any number of GpuTransformers (one per thread:
// each owns its stream, cuBLAS handle, KV cache fp16 [n_layer, 2, max_batch, n_head, max_len,
// D] and activations for max_batch x max_len rows) share them. Errors (vqrt::Error) are raised
// before any state changes; bad ids or positions found on the device are reported after the call.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "sampling.h"
#include "transformer.h"

namespace vqrt {

struct GpuModelConfig {
  int64_t n_layer = 0, n_head = 0, n_embd = 0, vocab_size = 0, block_size = 0;
  // Logits computed and sampled: the first sample_vocab rows of the head (the codebook, when the
  // vocabulary also holds class tokens); 0 = vocab_size.
  int64_t sample_vocab = 0;
};

// Empty when the GPU decoder can run here (built with CUDA, a device, libcublas loadable); else
// one line saying what is missing and how to get it.
std::string gpu_unavailable_reason();

// The model's weights on the current CUDA device, fp16 matrices and fp32 vectors.
class GpuWeights;

// Checks the config and every tensor as Transformer does, converts and uploads.
std::shared_ptr<const GpuWeights> upload_gpu_weights(
    const GpuModelConfig& config, const std::map<std::string, TensorView>& tensors);

// The config with sample_vocab resolved, and the bytes of the weight matrices a decode step
// reads (fp16): the HBM bound is this over the device bandwidth.
const GpuModelConfig& gpu_weights_config(const GpuWeights& weights);
int64_t gpu_weight_matrix_bytes(const GpuWeights& weights);

struct GpuDecoderOptions {
  int64_t max_batch = 1;  // rows of the cache
  int64_t max_len = 0;    // positions of the cache, <= block_size; 0 = block_size
  bool use_graph = true;  // replay each batch size's decode step as a CUDA graph
};

class GpuTransformer {
 public:
  GpuTransformer(std::shared_ptr<const GpuWeights> weights, const GpuDecoderOptions& options);
  ~GpuTransformer();
  GpuTransformer(const GpuTransformer&) = delete;
  GpuTransformer& operator=(const GpuTransformer&) = delete;

  // tokens: host [batch, length] at positions 0..length-1; forgets what was cached. logits:
  // host [batch, sample_vocab] of the last position, or null to leave them on the device.
  void prefill(const int64_t* tokens, int64_t batch, int64_t length, float* logits);

  // One token per row, host [batch], at position pos == the cached length (batch as the
  // prefill's). logits: host [batch, sample_vocab] or null.
  void step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits);

  // One token per row from the logits of the last prefill or step, drawn on the device as
  // generate() draws (seeds[b], Philox counter `step`); the runtime's loop for this decoder
  // (pass null logits to prefill and step: only the tokens cross to the host). tokens: host
  // [batch], written when the call returns normally; otherwise the CPU sampler's message for the
  // lowest bad row.
  void sample(const uint64_t* seeds, uint64_t step, const SamplingParams& params, int64_t* tokens);

  // A prefill of prefix (host [batch, prefix_length]), then `steps` sampled tokens per row:
  // token k of row b drawn from the logits of position prefix_length + k - 1 with seeds[b] and
  // Philox counter k (the CPU generator's rule), every token but the last fed back. tokens:
  // host [batch, steps], written when the call returns normally.
  void generate(const int64_t* prefix, int64_t batch, int64_t prefix_length, int64_t steps,
                const uint64_t* seeds, const SamplingParams& params, int64_t* tokens);

  const GpuModelConfig& model() const;
  const GpuDecoderOptions& options() const;
  int64_t length() const;  // cached positions
  int64_t batch() const;   // rows of the last prefill (0 before any)

 private:
  struct State;  // device buffers, stream, cuBLAS, graphs (csrc/cuda/gpu_transformer.cu)
  std::unique_ptr<State> state_;
};

}  // namespace vqrt
