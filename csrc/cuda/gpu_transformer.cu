// The GPU decoder; semantics, layouts and guarantees in csrc/gpu_transformer.h.
#include "gpu_transformer.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cuda/bias_gelu.cuh"
#include "cuda/cublas_gemm.cuh"
#include "cuda/cuda_common.cuh"
#include "cuda/decode_attention.cuh"
#include "cuda/embedding.cuh"
#include "cuda/kv_append.cuh"
#include "cuda/layer_norm.cuh"
#include "cuda/sampling.cuh"
#include "errors.h"
#include "vqrt.h"

namespace vqrt {

namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr const char* kDeviceError =
    "the GPU decoder met a token id or position outside its tables (the cache is cleared: "
    "prefill again)";

__global__ void advance_positions_kernel(int64_t* positions, int64_t batch) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < batch) positions[b] += 1;
}

// Row o of a Linear weight widened to fp32 exactly as the CPU kernels read it (int8 times its
// row's scale), then rounded once to fp16.
void linear_row_to_half(const WeightView& w, int64_t o, __half* out) {
  for (int64_t i = 0; i < w.k; ++i) {
    const int64_t at = o * w.k + i;
    float v = 0.0f;
    switch (w.dtype) {
      case DType::f32: v = static_cast<const float*>(w.data)[at]; break;
      case DType::f16: v = half_to_float(static_cast<const uint16_t*>(w.data)[at]); break;
      case DType::bf16: v = bf16_to_float(static_cast<const uint16_t*>(w.data)[at]); break;
      case DType::i8: v = static_cast<const int8_t*>(w.data)[at] * w.scale[o]; break;
    }
    out[i] = __float2half_rn(v);
  }
}

// Device allocations owned by an object, freed with it; zero-filled unless an upload is about
// to overwrite them.
class DeviceArena {
 public:
  template <typename T>
  T* allocate(size_t count, bool zero = true) {
    buffers_.emplace_back(std::max<size_t>(1, count) * sizeof(T));
    if (zero) VQRT_CUDA_CHECK(cudaMemset(buffers_.back().as<void>(), 0, buffers_.back().bytes()));
    return buffers_.back().as<T>();
  }

 private:
  std::vector<cuda::DeviceBuffer> buffers_;
};

}  // namespace

class GpuWeights {
 public:
  struct Layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *qkv_b, *proj_b, *fc_b, *mlp_proj_b;
    const __half *qkv, *proj, *fc, *mlp_proj;
  };

  GpuWeights(const GpuModelConfig& config, const std::map<std::string, TensorView>& tensors)
      : config_(config) {
    GpuModelConfig& c = config_;
    VQRT_CHECK(c.n_layer >= 1 && c.n_head >= 1 && c.vocab_size >= 1 && c.block_size >= 1,
               "n_layer, n_head, vocab_size and block_size must be >= 1");
    VQRT_CHECK(c.n_embd >= 1 && c.n_embd % c.n_head == 0,
               "n_embd must be a positive multiple of n_head " << c.n_head << ", got "
                                                               << c.n_embd);
    VQRT_CHECK(c.n_embd / c.n_head <= cuda::kDecodeAttentionMaxHeadDim,
               "head size " << c.n_embd / c.n_head << " is above the GPU attention's limit "
                            << cuda::kDecodeAttentionMaxHeadDim);
    VQRT_CHECK(c.n_head <= 65535, "n_head " << c.n_head << " is above the GPU kernels' 65535");
    VQRT_CUDA_CHECK(cudaGetDevice(&device_));
    if (c.sample_vocab == 0) c.sample_vocab = c.vocab_size;
    VQRT_CHECK(c.sample_vocab >= 1 && c.sample_vocab <= c.vocab_size,
               "sample_vocab must be in [1, vocab " << c.vocab_size << "], got "
                                                    << c.sample_vocab);
    const int64_t C = c.n_embd;
    tok_emb = upload_f32(tensors, "tok_emb", {c.vocab_size, C});
    pos_emb = upload_f32(tensors, "pos_emb", {c.block_size, C});
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "blocks." + std::to_string(i) + ".";
      Layer l;
      l.ln1_w = upload_f32(tensors, p + "ln1.weight", {C});
      l.ln1_b = upload_f32(tensors, p + "ln1.bias", {C});
      l.ln2_w = upload_f32(tensors, p + "ln2.weight", {C});
      l.ln2_b = upload_f32(tensors, p + "ln2.bias", {C});
      l.qkv = upload_linear(tensors, p + "attn.qkv.weight", 3 * C, C, 3 * C);
      l.qkv_b = upload_f32(tensors, p + "attn.qkv.bias", {3 * C});
      l.proj = upload_linear(tensors, p + "attn.proj.weight", C, C, C);
      l.proj_b = upload_f32(tensors, p + "attn.proj.bias", {C});
      l.fc = upload_linear(tensors, p + "mlp.fc.weight", 4 * C, C, 4 * C);
      l.fc_b = upload_f32(tensors, p + "mlp.fc.bias", {4 * C});
      l.mlp_proj = upload_linear(tensors, p + "mlp.proj.weight", C, 4 * C, C);
      l.mlp_proj_b = upload_f32(tensors, p + "mlp.proj.bias", {C});
      layers.push_back(l);
    }
    ln_f_w = upload_f32(tensors, "ln_f.weight", {C});
    ln_f_b = upload_f32(tensors, "ln_f.bias", {C});
    head = upload_linear(tensors, "head.weight", c.vocab_size, C, c.sample_vocab);
    // The zero fills and uploads ran on the legacy stream; decoders use their own
    // non-blocking streams, so everything must have landed before this returns.
    VQRT_CUDA_CHECK(cudaDeviceSynchronize());
  }

  const GpuModelConfig& config() const { return config_; }
  int64_t matrix_bytes() const { return matrix_bytes_; }
  int device() const { return device_; }

  const float *tok_emb = nullptr, *pos_emb = nullptr, *ln_f_w = nullptr, *ln_f_b = nullptr;
  const __half* head = nullptr;  // [sample_vocab, C]
  std::vector<Layer> layers;

 private:
  // The checks are the CPU decoder's (f32_tensor, weight_view in transformer.h).
  const float* upload_f32(const std::map<std::string, TensorView>& tensors,
                          const std::string& name, const std::vector<int64_t>& shape) {
    const float* host = f32_tensor(tensors, name, shape);
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    float* device = arena_.allocate<float>(count, false);
    VQRT_CUDA_CHECK(cudaMemcpy(device, host, count * sizeof(float), cudaMemcpyHostToDevice));
    return device;
  }

  // The first `rows` output rows of Linear weight `name` [n, k] as fp16 on the device.
  const __half* upload_linear(const std::map<std::string, TensorView>& tensors,
                              const std::string& name, int64_t n, int64_t k, int64_t rows) {
    const WeightView w = weight_view(tensors, name, n, k);
    std::vector<__half> host(static_cast<size_t>(rows * k));
    for (int64_t o = 0; o < rows; ++o) linear_row_to_half(w, o, host.data() + o * k);
    __half* device = arena_.allocate<__half>(host.size(), false);
    VQRT_CUDA_CHECK(cudaMemcpy(device, host.data(), host.size() * sizeof(__half),
                               cudaMemcpyHostToDevice));
    matrix_bytes_ += static_cast<int64_t>(host.size() * sizeof(__half));
    return device;
  }

  GpuModelConfig config_;
  int64_t matrix_bytes_ = 0;
  int device_ = 0;
  DeviceArena arena_;
};

std::string gpu_unavailable_reason() {
  if (vqrt_cuda_device_count() == 0) {
    return "no CUDA device is usable here (no GPU, or no NVIDIA driver)";
  }
  if (!cuda::cublas_available()) {
    return "libcublas (CUDA 12 or 13) cannot be loaded: install cuBLAS (the CUDA toolkit; or "
           "pip install nvidia-cublas, whose CUDA 13 library lies in "
           "site-packages/nvidia/cu13/lib) and put its lib folder on LD_LIBRARY_PATH";
  }
  return "";
}

std::shared_ptr<const GpuWeights> upload_gpu_weights(
    const GpuModelConfig& config, const std::map<std::string, TensorView>& tensors) {
  const std::string why = gpu_unavailable_reason();
  VQRT_CHECK(why.empty(), "the GPU decoder cannot run: " << why);
  return std::make_shared<const GpuWeights>(config, tensors);
}

const GpuModelConfig& gpu_weights_config(const GpuWeights& weights) { return weights.config(); }

int64_t gpu_weight_matrix_bytes(const GpuWeights& weights) { return weights.matrix_bytes(); }

struct GpuTransformer::State {
  State(std::shared_ptr<const GpuWeights> weights, const GpuDecoderOptions& options);
  ~State();

  // Enqueues a pass over rows = batch * length (tokens in `tokens`, query positions in
  // query_positions, first new cache position per row in start_positions) and the head on the
  // last position of each row into `logits`.
  void enqueue_forward(int64_t batch, int64_t length, const int64_t* query_positions,
                       const int64_t* start_positions, int splits);
  void enqueue_decode_step(int64_t batch);  // forward of one token per row, then positions + 1
  void run_decode_step(int64_t batch);      // graph replay or eager
  // Syncs, then reads and clears the kernels' error word: true when a token id or position
  // was out of range (the cache is then forgotten).
  bool take_device_error();
  void copy_logits(int64_t batch, float* host);
  // The sampler over `logits` [batch, sample_vocab] with seeds from `seeds`, writing `tokens`
  // (where the next step's embedding reads its input); arguments checked, step 0.
  cuda::SamplingKernelParams sampling(int64_t batch, const SamplingParams& params) const;
  void check_tokens(const int64_t* host, int64_t count) const;

  std::shared_ptr<const GpuWeights> weights;
  const GpuModelConfig& model;
  GpuDecoderOptions options;
  int64_t head_dim = 0, rows_max = 0, batch = 0, length = 0;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::CublasGemm> gemm;
  DeviceArena arena;

  __half *x = nullptr, *normed = nullptr, *qkv = nullptr, *attn = nullptr, *hidden = nullptr,
         *kv_cache = nullptr;
  float* logits = nullptr;                 // [max_batch, sample_vocab]
  int64_t* tokens = nullptr;               // [rows_max] the pass's input tokens
  int64_t* query_positions = nullptr;      // [rows_max] a prefill's positions
  int64_t* zero_positions = nullptr;       // [max_batch] a prefill's first cache position
  int64_t* step_positions = nullptr;       // [max_batch] a decode step's position per row
  int64_t* history = nullptr;              // [max_batch, max_len] generated tokens
  uint64_t* seeds = nullptr;               // [max_batch]
  int32_t* sample_status = nullptr;        // [max_batch]
  int32_t* error = nullptr;                // [1] set by kernels on a bad id or position
  void* sampling_workspace = nullptr;
  size_t sampling_workspace_bytes = 0;
  float* attention_workspace = nullptr;
  size_t attention_workspace_bytes = 0;
  std::map<int64_t, cudaGraphExec_t> graphs;  // decode step per batch size
};

GpuTransformer::State::State(std::shared_ptr<const GpuWeights> w, const GpuDecoderOptions& o)
    : weights(std::move(w)), model(weights->config()), options(o) {
  VQRT_CHECK(options.max_batch >= 1, "max_batch must be >= 1, got " << options.max_batch);
  if (options.max_len == 0) options.max_len = model.block_size;
  VQRT_CHECK(options.max_len >= 1 && options.max_len <= model.block_size,
             "max_len must be in [1, block size " << model.block_size << "], got "
                                                  << options.max_len);
  const int64_t C = model.n_embd, B = options.max_batch;
  head_dim = C / model.n_head;
  rows_max = B * options.max_len;
  int device = 0;
  VQRT_CUDA_CHECK(cudaGetDevice(&device));
  VQRT_CHECK(device == weights->device(),
             "the weights live on CUDA device " << weights->device() << " but this thread's "
                                                << "current device is " << device
                                                << ": cudaSetDevice(" << weights->device()
                                                << ") first");
  VQRT_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  VQRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  try {
    gemm = std::make_unique<cuda::CublasGemm>(stream);
    const size_t rows = static_cast<size_t>(rows_max);
    x = arena.allocate<__half>(rows * C);
    normed = arena.allocate<__half>(rows * C);
    qkv = arena.allocate<__half>(rows * 3 * C);
    attn = arena.allocate<__half>(rows * C);
    hidden = arena.allocate<__half>(rows * 4 * C);
    kv_cache = arena.allocate<__half>(static_cast<size_t>(model.n_layer * 2) * rows * C);
    logits = arena.allocate<float>(static_cast<size_t>(B * model.sample_vocab));
    tokens = arena.allocate<int64_t>(rows);
    query_positions = arena.allocate<int64_t>(rows);
    zero_positions = arena.allocate<int64_t>(B);
    step_positions = arena.allocate<int64_t>(B);
    history = arena.allocate<int64_t>(rows);
    seeds = arena.allocate<uint64_t>(B);
    sample_status = arena.allocate<int32_t>(B);
    error = arena.allocate<int32_t>(1);
    sampling_workspace_bytes = cuda::sampling_workspace_bytes(B, model.sample_vocab);
    sampling_workspace = arena.allocate<unsigned char>(sampling_workspace_bytes);
    for (int64_t b = 1; b <= B; ++b) {  // the split count depends on the batch
      const int splits = cuda::decode_attention_splits(b, model.n_head, options.max_len, sm_count);
      attention_workspace_bytes = std::max(
          attention_workspace_bytes,
          cuda::decode_attention_workspace_bytes(b, model.n_head, head_dim, splits));
    }
    attention_workspace = arena.allocate<float>(attention_workspace_bytes / sizeof(float));
    VQRT_CUDA_CHECK(cudaDeviceSynchronize());  // the zero fills ran on the legacy stream
  } catch (...) {
    gemm.reset();
    cudaStreamDestroy(stream);
    throw;
  }
}

GpuTransformer::State::~State() {
  for (auto& [rows, exec] : graphs) cudaGraphExecDestroy(exec);
  gemm.reset();
  cudaStreamDestroy(stream);
}

void GpuTransformer::State::enqueue_forward(int64_t batch_rows, int64_t length_per_row,
                                            const int64_t* query_pos, const int64_t* start_pos,
                                            int splits) {
  const GpuWeights& w = *weights;
  const int64_t C = model.n_embd, rows = batch_rows * length_per_row;
  const size_t layer_cache =
      static_cast<size_t>(options.max_batch * model.n_head * options.max_len * head_dim);

  cuda::EmbeddingParams e;
  e.tokens = tokens;
  e.positions = query_pos;
  e.tok_emb = w.tok_emb;
  e.pos_emb = w.pos_emb;
  e.x = x;
  e.error = error;
  e.rows = rows;
  e.c = C;
  e.vocab = model.vocab_size;
  e.block_size = model.block_size;
  cuda::embedding_launch(e, stream);

  auto norm = [&](const float* gamma, const float* beta) {
    cuda::LayerNormParams n;
    n.x = x;
    n.gamma = gamma;
    n.beta = beta;
    n.y = normed;
    n.rows = rows;
    n.c = C;
    n.eps = kLayerNormEps;
    cuda::layer_norm_launch(n, stream);
  };
  auto product = [&](const __half* in, int64_t k, const __half* weight, int64_t n, __half* out,
                     float beta) {
    cuda::GemmParams g;
    g.x = in;
    g.x_row_stride = k;
    g.w = weight;
    g.y = out;
    g.rows = rows;
    g.n = n;
    g.k = k;
    g.beta = beta;
    gemm->run(g);
  };
  auto bias = [&](__half* y, const float* b, int64_t n, bool gelu) {
    cuda::BiasGeluParams p;
    p.x = y;
    p.bias = b;
    p.y = y;
    p.rows = rows;
    p.n = n;
    p.gelu = gelu;
    cuda::bias_gelu_launch(p, stream);
  };

  for (int64_t l = 0; l < model.n_layer; ++l) {
    const GpuWeights::Layer& layer = w.layers[l];
    __half* k_cache = kv_cache + 2 * l * layer_cache;
    __half* v_cache = k_cache + layer_cache;
    norm(layer.ln1_w, layer.ln1_b);
    product(normed, C, layer.qkv, 3 * C, qkv, 0.0f);
    bias(qkv, layer.qkv_b, 3 * C, false);

    cuda::KvAppendParams kv;
    kv.k_new = qkv + C;
    kv.v_new = qkv + 2 * C;
    kv.src_row_stride = 3 * C;
    kv.k_cache = k_cache;
    kv.v_cache = v_cache;
    kv.positions = start_pos;
    kv.error = error;
    kv.batch = batch_rows;
    kv.n_new = length_per_row;
    kv.heads = model.n_head;
    kv.head_dim = head_dim;
    kv.max_len = options.max_len;
    cuda::kv_append_launch(kv, stream);

    cuda::DecodeAttentionParams a;
    a.q = qkv;
    a.q_row_stride = 3 * C;
    a.k_cache = k_cache;
    a.v_cache = v_cache;
    a.positions = query_pos;
    a.out = attn;
    a.out_row_stride = C;
    a.error = error;
    a.batch = rows;
    a.heads = model.n_head;
    a.head_dim = head_dim;
    a.max_len = options.max_len;
    a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    a.queries_per_row = length_per_row;
    a.splits = splits;
    a.workspace = attention_workspace;
    a.workspace_bytes = attention_workspace_bytes;
    cuda::decode_attention_launch(a, stream);

    product(attn, C, layer.proj, C, x, 1.0f);  // x += attn W^T
    bias(x, layer.proj_b, C, false);
    norm(layer.ln2_w, layer.ln2_b);
    product(normed, C, layer.fc, 4 * C, hidden, 0.0f);
    bias(hidden, layer.fc_b, 4 * C, true);
    product(hidden, 4 * C, layer.mlp_proj, C, x, 1.0f);
    bias(x, layer.mlp_proj_b, C, false);
  }
  // ln_f over every row (a prefill's other positions cost little), the head on each row's last.
  norm(w.ln_f_w, w.ln_f_b);
  cuda::GemmParams head;
  head.x = normed + (length_per_row - 1) * C;
  head.x_row_stride = length_per_row * C;
  head.w = w.head;
  head.y = logits;
  head.y_fp32 = true;
  head.rows = batch_rows;
  head.n = model.sample_vocab;
  head.k = C;
  gemm->run(head);
}

void GpuTransformer::State::enqueue_decode_step(int64_t rows) {
  const int splits =
      cuda::decode_attention_splits(rows, model.n_head, options.max_len, sm_count);
  enqueue_forward(rows, 1, step_positions, step_positions, splits);
  advance_positions_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128, 0, stream>>>(
      step_positions, rows);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

void GpuTransformer::State::run_decode_step(int64_t rows) {
  if (!options.use_graph) return enqueue_decode_step(rows);
  auto it = graphs.find(rows);
  if (it == graphs.end()) {
    cudaGraph_t graph = nullptr;
    VQRT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_decode_step(rows);
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      throw;
    }
    VQRT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    VQRT_CUDA_CHECK(status);
    it = graphs.emplace(rows, exec).first;
  }
  VQRT_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
}

bool GpuTransformer::State::take_device_error() {
  int32_t flag = 0;
  VQRT_CUDA_CHECK(cudaMemcpyAsync(&flag, error, sizeof flag, cudaMemcpyDeviceToHost, stream));
  VQRT_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (flag == 0) return false;
  VQRT_CUDA_CHECK(cudaMemsetAsync(error, 0, sizeof flag, stream));
  VQRT_CUDA_CHECK(cudaStreamSynchronize(stream));
  batch = length = 0;  // the cache holds rows the kernels refused to write
  return true;
}

void GpuTransformer::State::copy_logits(int64_t rows, float* host) {
  if (host == nullptr) return;
  VQRT_CUDA_CHECK(cudaMemcpyAsync(host, logits,
                                  static_cast<size_t>(rows * model.sample_vocab) * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  VQRT_CUDA_CHECK(cudaStreamSynchronize(stream));
}

cuda::SamplingKernelParams GpuTransformer::State::sampling(int64_t rows,
                                                           const SamplingParams& params) const {
  cuda::SamplingKernelParams p;
  p.logits = logits;
  p.seeds = seeds;
  p.tokens = tokens;
  p.status = sample_status;
  p.workspace = sampling_workspace;
  p.workspace_bytes = sampling_workspace_bytes;
  p.batch = rows;
  p.vocab = model.sample_vocab;
  p.params = params;
  p.check();
  return p;
}

void GpuTransformer::State::check_tokens(const int64_t* host, int64_t count) const {
  VQRT_CHECK(host != nullptr, "tokens is null");
  for (int64_t i = 0; i < count; ++i) {
    VQRT_CHECK(host[i] >= 0 && host[i] < model.vocab_size,
               "token " << host[i] << " at index " << i << " is outside the vocabulary [0, "
                        << model.vocab_size << ")");
  }
}

GpuTransformer::GpuTransformer(std::shared_ptr<const GpuWeights> weights,
                               const GpuDecoderOptions& options) {
  VQRT_CHECK(weights != nullptr, "weights is null");
  state_ = std::make_unique<State>(std::move(weights), options);
}

GpuTransformer::~GpuTransformer() = default;

const GpuModelConfig& GpuTransformer::model() const { return state_->model; }
const GpuDecoderOptions& GpuTransformer::options() const { return state_->options; }
int64_t GpuTransformer::length() const { return state_->length; }
int64_t GpuTransformer::batch() const { return state_->batch; }

void GpuTransformer::prefill(const int64_t* tokens, int64_t batch, int64_t length,
                             float* logits) {
  State& s = *state_;
  VQRT_CHECK(batch >= 1 && batch <= s.options.max_batch,
             "batch " << batch << " is outside [1, max batch " << s.options.max_batch << "]");
  VQRT_CHECK(length >= 1 && length <= s.options.max_len,
             "prefill length " << length << " is outside [1, max length " << s.options.max_len
                               << "]");
  s.check_tokens(tokens, batch * length);
  std::vector<int64_t> positions(static_cast<size_t>(batch * length));
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int64_t>(i) % length;
  const size_t bytes = positions.size() * sizeof(int64_t);
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.tokens, tokens, bytes, cudaMemcpyHostToDevice, s.stream));
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.query_positions, positions.data(), bytes,
                                  cudaMemcpyHostToDevice, s.stream));
  s.enqueue_forward(batch, length, s.query_positions, s.zero_positions, 1);
  s.batch = batch;
  s.length = length;
  VQRT_CHECK(!s.take_device_error(), kDeviceError);
  s.copy_logits(batch, logits);
}

void GpuTransformer::step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits) {
  State& s = *state_;
  VQRT_CHECK(s.batch > 0, "step before prefill: run prefill first");
  VQRT_CHECK(batch == s.batch, "step batch " << batch << " does not match the prefill batch "
                                             << s.batch);
  VQRT_CHECK(pos == s.length, "position " << pos << " is not the cached length " << s.length);
  VQRT_CHECK(pos < s.options.max_len,
             "position " << pos << " is beyond the max length " << s.options.max_len);
  s.check_tokens(tokens, batch);
  const std::vector<int64_t> positions(static_cast<size_t>(batch), pos);
  const size_t bytes = positions.size() * sizeof(int64_t);
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.tokens, tokens, bytes, cudaMemcpyHostToDevice, s.stream));
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.step_positions, positions.data(), bytes,
                                  cudaMemcpyHostToDevice, s.stream));
  s.run_decode_step(batch);
  s.length = pos + 1;
  VQRT_CHECK(!s.take_device_error(), kDeviceError);
  s.copy_logits(batch, logits);
}

void GpuTransformer::sample(const uint64_t* seeds, uint64_t step, const SamplingParams& params,
                            int64_t* tokens) {
  State& s = *state_;
  VQRT_CHECK(s.batch > 0, "sample before prefill: run prefill first");
  VQRT_CHECK(seeds != nullptr && tokens != nullptr, "seeds or tokens is null");
  cuda::SamplingKernelParams p = s.sampling(s.batch, params);
  p.step = step;
  const size_t rows = static_cast<size_t>(s.batch);
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.seeds, seeds, rows * sizeof(uint64_t),
                                  cudaMemcpyHostToDevice, s.stream));
  cuda::sampling_launch(p, s.stream);
  std::vector<int64_t> drawn(rows);
  std::vector<int32_t> status(rows);
  VQRT_CUDA_CHECK(cudaMemcpyAsync(drawn.data(), s.tokens, rows * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, s.stream));
  VQRT_CUDA_CHECK(cudaMemcpyAsync(status.data(), s.sample_status, rows * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, s.stream));
  VQRT_CUDA_CHECK(cudaStreamSynchronize(s.stream));
  cuda::check_sampling_status(status.data(), s.batch, params);
  std::memcpy(tokens, drawn.data(), rows * sizeof(int64_t));
}

void GpuTransformer::generate(const int64_t* prefix, int64_t batch, int64_t prefix_length,
                              int64_t steps, const uint64_t* seeds, const SamplingParams& params,
                              int64_t* tokens) {
  State& s = *state_;
  VQRT_CHECK(batch >= 1 && batch <= s.options.max_batch,
             "batch " << batch << " is outside [1, max batch " << s.options.max_batch << "]");
  VQRT_CHECK(steps >= 1, "steps must be >= 1, got " << steps);
  VQRT_CHECK(prefix_length >= 1 && prefix_length + steps - 1 <= s.options.max_len,
             prefix_length << " prefix tokens + " << steps << " steps - 1 exceed the max length "
                           << s.options.max_len);
  VQRT_CHECK(seeds != nullptr && tokens != nullptr, "seeds or tokens is null");
  cuda::SamplingKernelParams sample = s.sampling(batch, params);
  prefill(prefix, batch, prefix_length, nullptr);  // checks batch and the prefix
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.seeds, seeds, batch * sizeof(uint64_t),
                                  cudaMemcpyHostToDevice, s.stream));
  const std::vector<int64_t> positions(static_cast<size_t>(batch), prefix_length);
  VQRT_CUDA_CHECK(cudaMemcpyAsync(s.step_positions, positions.data(), batch * sizeof(int64_t),
                                  cudaMemcpyHostToDevice, s.stream));
  for (int64_t k = 0; k < steps; ++k) {
    sample.step = static_cast<uint64_t>(k);
    cuda::sampling_launch(sample, s.stream);
    // history[b, k] = tokens[b]: a strided column copy, on the device.
    VQRT_CUDA_CHECK(cudaMemcpy2DAsync(s.history + k, steps * sizeof(int64_t), s.tokens,
                                      sizeof(int64_t), sizeof(int64_t), batch,
                                      cudaMemcpyDeviceToDevice, s.stream));
    if (k + 1 < steps) s.run_decode_step(batch);
  }
  s.length = prefix_length + steps - 1;
  std::vector<int64_t> out(static_cast<size_t>(batch * steps));
  VQRT_CUDA_CHECK(cudaMemcpyAsync(out.data(), s.history, out.size() * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, s.stream));
  const bool device_error = s.take_device_error();  // a failed draw feeds back -1: check it first
  for (size_t i = 0; i < out.size(); ++i) {
    VQRT_CHECK(out[i] >= 0, "sampling failed for row "
                                << i / steps << " at step " << i % steps
                                << " (a NaN or +inf logit, every logit -inf, or the temperature "
                                   "overflowing the largest logit)");
  }
  VQRT_CHECK(!device_error, kDeviceError);
  std::memcpy(tokens, out.data(), out.size() * sizeof(int64_t));
}

}  // namespace vqrt
