// The GPT decoder of the transformer stage with a preallocated KV cache, on the CPU.
//
// Semantics (upstream minGPT): x = tok_emb[token] + pos_emb[pos]; per block
// x += proj(attn(ln1(x))), x += mlp(ln2(x)) with mlp = fc, exact-erf GELU, proj; causal
// attention with scale 1/sqrt(D), D = n_embd / n_head (any D); LayerNorm eps 1e-5;
// logits = head(ln_f(x)).
//
// Weights are borrowed (TensorView: pointer, dtype, shape; the caller keeps them alive), named
// and laid out as "vqrt-native-1" (export/native_weights.py). Linear weights are F32, F16, BF16
// or I8 (+ `<name>_scale` F32 [out]); everything else F32.
//
// The KV cache is [n_layer, 2 (key, value), B_max, H, T_max, D], the layout of the ONNX step
// graph, in float32, or in fp16 with kv_f16 (half the memory and half the bytes each step's
// attention reads; keys and values rounded to nearest once, when written; one beyond fp16's
// 65504 becomes infinite and the logits NaN, which the sampler refuses with an error). Rows
// 0..B-1 of a call use rows 0..B-1 of the cache.
//
// Work is split over a persistent thread pool (thread_pool.h) by output columns of every matrix
// product and by (row, head) pairs in attention, in chunks that idle threads claim; a product or
// an attention of fewer than min_parallel_macs multiply-adds runs on the calling thread alone
// (a hand-off would cost more than it saves). Every value is computed by the same operations
// whatever the thread count, the chunking and the other rows of the batch, so results depend on
// none of them.
// Errors (vqrt::Error) are raised before any state changes.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention.h"
#include "cpu_features.h"
#include "gelu.h"
#include "linear.h"

namespace vqrt {

class ThreadPool;

struct TransformerConfig {
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_embd = 0;
  int64_t vocab_size = 0;
  int64_t block_size = 0;
  int64_t max_batch = 1;        // B_max: rows of the cache
  int64_t max_len = 0;          // T_max: positions of the cache, <= block_size; 0 = block_size
  int num_threads = 0;          // 0 = one per core
  // Products and attentions below this many multiply-adds run on the calling thread only;
  // the default is measured (BENCHMARKS.md, "Native decoder threads"); 0 splits
  // everything (tests use it).
  int64_t min_parallel_macs = int64_t{1} << 16;
  bool bf16_activations = false;  // bf16 weights only: x rounded to bf16 before each product
                                  // (vdpbf16ps where the CPU has it); see linear.h
  // The KV cache in fp16 (see above); default (nullopt): when any Linear weight is not F32, so
  // reduced-precision weights get the smaller cache and fp32 weights keep fp32 numerics. The
  // constructor resolves it: config().kv_f16 always holds a value.
  std::optional<bool> kv_f16;
  std::optional<CpuIsa> isa;    // kernels to use; default cpu_isa_active()
};

// A borrowed tensor: C-contiguous elements of `dtype` with `shape`.
struct TensorView {
  DType dtype = DType::f32;
  const void* data = nullptr;
  std::vector<int64_t> shape;
};

// The checked pieces of a "vqrt-native-1" tensor map, shared by the CPU and GPU decoders
// (vqrt::Error names the tensor and both shapes or dtypes): an F32 tensor of `shape`, and a
// Linear weight [n, k] of any supported dtype (I8 also needs `<name>_scale` F32 [n]).
const float* f32_tensor(const std::map<std::string, TensorView>& tensors, const std::string& name,
                        const std::vector<int64_t>& shape);
WeightView weight_view(const std::map<std::string, TensorView>& tensors, const std::string& name,
                       int64_t n, int64_t k);

class Transformer {
 public:
  // Checks the config and that every tensor the config needs is present with its shape and an
  // allowed dtype (vqrt::Error names the tensor and both shapes); extra tensors are ignored.
  Transformer(const TransformerConfig& config, const std::map<std::string, TensorView>& tensors);
  ~Transformer();

  // Runs tokens [batch, length] at positions 0..length-1 in one pass (matrix products over all
  // positions, in chunks that bound the scratch memory), fills the cache and writes the logits
  // of the last position to logits [batch, vocab]. Forgets anything cached before.
  void prefill(const int64_t* tokens, int64_t batch, int64_t length, float* logits);

  // Runs one token per row, tokens [batch], at position pos <= length() (positions >= pos are
  // forgotten first, so stepping back is a rewind), attending to cache positions 0..pos; writes
  // logits [batch, vocab]. batch must equal the prefill's.
  void step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits);

  // Keeps cache positions [0, length), length <= length(). rewind(0) resets.
  void rewind(int64_t length);

  int64_t length() const { return length_; }  // cached positions
  int64_t batch() const { return batch_; }    // rows of the last prefill (0 before any)
  const TransformerConfig& config() const { return config_; }
  CpuIsa isa() const { return isa_; }
  int num_threads() const;

 private:
  struct Layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    WeightView qkv, proj, fc, mlp_proj;
    const float *qkv_b, *proj_b, *fc_b, *mlp_proj_b;
  };

  void check_tokens(const int64_t* tokens, int64_t count) const;
  // Positions [start, start + count) for `batch` rows; tokens [batch, count]; logits of position
  // start + count - 1 into logits [batch, vocab] when logits is not null.
  void forward(const int64_t* tokens, int64_t batch, int64_t start, int64_t count, float* logits);
  // Chunks for `macs` multiply-adds over `items` independent items: 1 (the calling thread)
  // below min_parallel_macs, else a few per thread.
  int64_t chunk_count(int64_t macs, int64_t items) const;
  // y [rows, w.n] (+)= x [rows, w.k] W^T + bias over the pool, then GELU in place if `gelu`.
  void product(const WeightView& w, const float* x, int64_t rows, const float* bias,
               bool accumulate, float* y, bool gelu);
  // Writes keys and values of rows (b, 0..count-1) for head h into the cache, then attends.
  void attention_rows(int64_t layer, int64_t start, int64_t count, int64_t b, int64_t h,
                      float* scores);
  // Element offset of cache row (layer, key or value, b, h, position t).
  int64_t cache_offset(int64_t layer, int64_t kv, int64_t b, int64_t h, int64_t t) const;

  TransformerConfig config_;
  int64_t head_dim_ = 0;
  int64_t max_rows_ = 0;  // activation rows per pass: batch x positions of a prefill chunk
  CpuIsa isa_ = CpuIsa::generic;
  const LinearKernels* linear_ = nullptr;
  GeluKernel gelu_ = nullptr;
  AttentionKernel attention_ = nullptr;

  const float *tok_emb_ = nullptr, *pos_emb_ = nullptr, *ln_f_w_ = nullptr, *ln_f_b_ = nullptr;
  WeightView head_;
  std::vector<Layer> layers_;

  std::vector<float> kv_cache_;       // float32 cache, or
  std::vector<uint16_t> kv_cache16_;  // the fp16 cache (kv_f16)
  int64_t length_ = 0;
  int64_t batch_ = 0;

  // Scratch, [max_rows, ...]: residual stream x, fused q|k|v, attention output, MLP hidden.
  std::vector<float> x_, qkv_, attn_, hidden_;
  // LayerNorm output [max_rows, C]; per thread: attention scores [T_max].
  std::vector<float> normed_;
  std::vector<std::vector<float>> scores_;
  // int8 weights: a product's input quantized once for all its column chunks, [max_rows, 4C
  // rounded up] int16 and [max_rows] scales (linear.h, quantize_rows_int16).
  std::vector<int16_t> quantized_x_;
  std::vector<float> quantized_scale_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace vqrt
