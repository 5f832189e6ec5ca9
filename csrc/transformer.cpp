// The CPU GPT decoder; semantics, layouts and guarantees in transformer.h.
#include "transformer.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>

#include "embedding.h"
#include "errors.h"
#include "layer_norm.h"
#include "thread_pool.h"

namespace vqrt {

namespace {

constexpr float kLayerNormEps = 1e-5f;
// A prefill runs up to this many (row, position) pairs per pass: enough rows to reuse each
// weight many times, while the scratch stays at max_rows x 4C floats.
constexpr int64_t kPrefillRows = 64;
// Chunks of output columns start at multiples of this (whole kernel tiles per chunk).
constexpr int64_t kColumnAlign = 16;
// Chunks per thread of a parallel product: more than one, so that threads which get a core
// take over the share of one that does not (see thread_pool.h).
constexpr int64_t kChunksPerThread = 4;

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

const TensorView& find_tensor(const std::map<std::string, TensorView>& tensors,
                              const std::string& name, const std::vector<int64_t>& shape) {
  const auto it = tensors.find(name);
  VQRT_CHECK(it != tensors.end(), "missing tensor " << name << " " << shape_string(shape));
  const TensorView& t = it->second;
  VQRT_CHECK(t.shape == shape, "tensor " << name << " has shape " << shape_string(t.shape)
                                         << ", expected " << shape_string(shape));
  VQRT_CHECK(t.data != nullptr, "tensor " << name << " has no data");
  return t;
}

// Chunk `chunk` of `chunks` over n items, cut at multiples of `align`: [begin, end).
std::pair<int64_t, int64_t> chunk_range(int64_t n, int64_t chunk, int64_t chunks, int64_t align) {
  const int64_t units = (n + align - 1) / align;
  return {std::min(n, units * chunk / chunks * align),
          std::min(n, units * (chunk + 1) / chunks * align)};
}

}  // namespace

const float* f32_tensor(const std::map<std::string, TensorView>& tensors, const std::string& name,
                        const std::vector<int64_t>& shape) {
  const TensorView& t = find_tensor(tensors, name, shape);
  VQRT_CHECK(t.dtype == DType::f32,
             "tensor " << name << " has dtype " << dtype_name(t.dtype) << ", expected F32");
  return static_cast<const float*>(t.data);
}

WeightView weight_view(const std::map<std::string, TensorView>& tensors, const std::string& name,
                       int64_t n, int64_t k) {
  const TensorView& t = find_tensor(tensors, name, {n, k});
  WeightView w;
  w.dtype = t.dtype;
  w.data = t.data;
  w.n = n;
  w.k = k;
  if (t.dtype == DType::i8) w.scale = f32_tensor(tensors, name + "_scale", {n});
  return w;
}

Transformer::Transformer(const TransformerConfig& config,
                         const std::map<std::string, TensorView>& tensors)
    : config_(config) {
  TransformerConfig& c = config_;
  VQRT_CHECK(c.n_layer >= 1, "n_layer must be >= 1, got " << c.n_layer);
  VQRT_CHECK(c.n_head >= 1, "n_head must be >= 1, got " << c.n_head);
  VQRT_CHECK(c.n_embd >= 1 && c.n_embd % c.n_head == 0,
             "n_embd must be a positive multiple of n_head " << c.n_head << ", got " << c.n_embd);
  VQRT_CHECK(c.vocab_size >= 1, "vocab_size must be >= 1, got " << c.vocab_size);
  VQRT_CHECK(c.block_size >= 1, "block_size must be >= 1, got " << c.block_size);
  VQRT_CHECK(c.max_batch >= 1, "max_batch must be >= 1, got " << c.max_batch);
  if (c.max_len == 0) c.max_len = c.block_size;
  VQRT_CHECK(c.max_len >= 1 && c.max_len <= c.block_size,
             "max_len must be in [1, block size " << c.block_size << "], got " << c.max_len);
  VQRT_CHECK(c.num_threads >= 0, "num_threads must be >= 0 (0 = one per core), got "
                                     << c.num_threads);
  VQRT_CHECK(c.min_parallel_macs >= 0,
             "min_parallel_macs must be >= 0, got " << c.min_parallel_macs);
  isa_ = c.isa ? *c.isa : cpu_isa_active();
  linear_ = &linear_kernels(isa_);
  gelu_ = gelu_kernel(isa_);
  attention_ = attention_kernel(isa_);

  const int64_t C = c.n_embd;
  head_dim_ = C / c.n_head;
  tok_emb_ = f32_tensor(tensors, "tok_emb", {c.vocab_size, C});
  pos_emb_ = f32_tensor(tensors, "pos_emb", {c.block_size, C});
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Layer l;
    l.ln1_w = f32_tensor(tensors, p + "ln1.weight", {C});
    l.ln1_b = f32_tensor(tensors, p + "ln1.bias", {C});
    l.ln2_w = f32_tensor(tensors, p + "ln2.weight", {C});
    l.ln2_b = f32_tensor(tensors, p + "ln2.bias", {C});
    l.qkv = weight_view(tensors, p + "attn.qkv.weight", 3 * C, C);
    l.qkv_b = f32_tensor(tensors, p + "attn.qkv.bias", {3 * C});
    l.proj = weight_view(tensors, p + "attn.proj.weight", C, C);
    l.proj_b = f32_tensor(tensors, p + "attn.proj.bias", {C});
    l.fc = weight_view(tensors, p + "mlp.fc.weight", 4 * C, C);
    l.fc_b = f32_tensor(tensors, p + "mlp.fc.bias", {4 * C});
    l.mlp_proj = weight_view(tensors, p + "mlp.proj.weight", C, 4 * C);
    l.mlp_proj_b = f32_tensor(tensors, p + "mlp.proj.bias", {C});
    layers_.push_back(l);
  }
  ln_f_w_ = f32_tensor(tensors, "ln_f.weight", {C});
  ln_f_b_ = f32_tensor(tensors, "ln_f.bias", {C});
  head_ = weight_view(tensors, "head.weight", c.vocab_size, C);
  if (c.bf16_activations) {
    const WeightView* head = &head_;
    for (const Layer& l : layers_) {
      for (const WeightView* w : {&l.qkv, &l.proj, &l.fc, &l.mlp_proj, head}) {
        VQRT_CHECK(w->dtype == DType::bf16, "bf16_activations needs BF16 Linear weights, got "
                                                << dtype_name(w->dtype));
      }
    }
  }

  const int threads = c.num_threads > 0
                          ? c.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool_ = std::make_unique<ThreadPool>(threads);

  max_rows_ = std::max(c.max_batch, kPrefillRows);
  if (!c.kv_f16) {
    bool reduced = head_.dtype != DType::f32;
    for (const Layer& l : layers_) {
      for (const WeightView* w : {&l.qkv, &l.proj, &l.fc, &l.mlp_proj}) {
        reduced = reduced || w->dtype != DType::f32;
      }
    }
    c.kv_f16 = reduced;
  }
  const int64_t cache_size = c.n_layer * 2 * c.max_batch * c.n_head * c.max_len * head_dim_;
  if (*c.kv_f16) {
    kv_cache16_.assign(cache_size, 0);
  } else {
    kv_cache_.assign(cache_size, 0.0f);
  }
  x_.resize(max_rows_ * C);
  qkv_.resize(max_rows_ * 3 * C);
  attn_.resize(max_rows_ * C);
  hidden_.resize(max_rows_ * 4 * C);
  normed_.resize(max_rows_ * C);
  quantized_x_.resize(max_rows_ * int8_padded_k(4 * C));
  quantized_scale_.resize(max_rows_);
  scores_.assign(pool_->size(), std::vector<float>(c.max_len));
}

Transformer::~Transformer() = default;

int Transformer::num_threads() const { return pool_->size(); }

void Transformer::check_tokens(const int64_t* tokens, int64_t count) const {
  VQRT_CHECK(tokens != nullptr, "tokens is null");
  for (int64_t i = 0; i < count; ++i) {
    VQRT_CHECK(tokens[i] >= 0 && tokens[i] < config_.vocab_size,
               "token " << tokens[i] << " at index " << i << " is outside the vocabulary [0, "
                        << config_.vocab_size << ")");
  }
}

void Transformer::prefill(const int64_t* tokens, int64_t batch, int64_t length, float* logits) {
  VQRT_CHECK(batch >= 1 && batch <= config_.max_batch,
             "batch " << batch << " is outside [1, max batch " << config_.max_batch << "]");
  VQRT_CHECK(length >= 1 && length <= config_.max_len,
             "prefill length " << length << " is outside [1, max length " << config_.max_len
                               << "]");
  VQRT_CHECK(logits != nullptr, "logits is null");
  check_tokens(tokens, batch * length);
  length_ = 0;
  batch_ = batch;
  // Position chunks of `per_pass` for all rows; tokens are regrouped per chunk.
  const int64_t per_pass = std::max<int64_t>(1, max_rows_ / batch);
  std::vector<int64_t> chunk_tokens;
  for (int64_t start = 0; start < length; start += per_pass) {
    const int64_t count = std::min(per_pass, length - start);
    chunk_tokens.resize(batch * count);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(tokens + b * length + start, tokens + b * length + start + count,
                chunk_tokens.begin() + b * count);
    }
    forward(chunk_tokens.data(), batch, start, count, start + count == length ? logits : nullptr);
  }
  length_ = length;
}

void Transformer::step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits) {
  VQRT_CHECK(batch_ > 0, "step before prefill: run prefill first");
  VQRT_CHECK(batch == batch_, "step batch " << batch << " does not match the prefill batch "
                                            << batch_);
  VQRT_CHECK(pos >= 0 && pos <= length_,
             "position " << pos << " is outside [0, cached length " << length_ << "]");
  VQRT_CHECK(pos < config_.max_len, "position " << pos << " is beyond the max length "
                                                << config_.max_len << " (block size "
                                                << config_.block_size << ")");
  VQRT_CHECK(logits != nullptr, "logits is null");
  check_tokens(tokens, batch);
  forward(tokens, batch, pos, 1, logits);
  length_ = pos + 1;
}

void Transformer::rewind(int64_t length) {
  VQRT_CHECK(length >= 0 && length <= length_,
             "rewind length " << length << " is outside [0, cached length " << length_ << "]");
  length_ = length;
}

int64_t Transformer::cache_offset(int64_t layer, int64_t kv, int64_t b, int64_t h,
                                  int64_t t) const {
  const TransformerConfig& c = config_;
  return ((((layer * 2 + kv) * c.max_batch + b) * c.n_head + h) * c.max_len + t) * head_dim_;
}

int64_t Transformer::chunk_count(int64_t macs, int64_t items) const {
  if (pool_->size() == 1 || macs < config_.min_parallel_macs) return 1;
  return std::max<int64_t>(1, std::min(items, pool_->size() * kChunksPerThread));
}

void Transformer::product(const WeightView& w, const float* x, int64_t rows, const float* bias,
                          bool accumulate, float* y, bool gelu) {
  const int64_t chunks = chunk_count(rows * w.n * w.k, (w.n + kColumnAlign - 1) / kColumnAlign);
  QuantizedRows quantized{};
  if (w.dtype == DType::i8 && chunks > 1) {  // once here, not in every chunk
    quantized = {quantized_x_.data(), quantized_scale_.data(), int8_padded_k(w.k)};
    quantize_rows_int16(x, rows, w.k, quantized.k_padded, quantized_x_.data(),
                        quantized_scale_.data());
  }
  pool_->run(chunks, [&](int, int64_t chunk) {
    const auto [begin, end] = chunk_range(w.n, chunk, chunks, kColumnAlign);
    if (begin == end) return;
    LinearArgs args{x, rows, &w, bias, accumulate, begin, end, y};
    if (quantized.xq != nullptr) args.quantized = &quantized;
    linear(*linear_, args, config_.bf16_activations);
    for (int64_t r = 0; gelu && r < rows; ++r) gelu_(y + r * w.n + begin, end - begin);
  });
}

void Transformer::forward(const int64_t* tokens, int64_t batch, int64_t start, int64_t count,
                          float* logits) {
  const TransformerConfig& c = config_;
  const int64_t C = c.n_embd, rows = batch * count;
  std::vector<int64_t> positions(rows);
  for (int64_t r = 0; r < rows; ++r) positions[r] = start + r % count;
  embed_tokens(tokens, positions.data(), rows, C, tok_emb_, pos_emb_, x_.data());
  float* normed = normed_.data();  // [rows, C]
  // Attention of (row, head) pairs: q.k and p.v over the keys of `count` positions each.
  const int64_t pairs = batch * c.n_head;
  const int64_t attention_macs = pairs * count * (start + count) * 2 * head_dim_;
  const int64_t attention_chunks = chunk_count(attention_macs, pairs);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& layer = layers_[l];
    layer_norm(x_.data(), rows, C, layer.ln1_w, layer.ln1_b, kLayerNormEps, normed);
    product(layer.qkv, normed, rows, layer.qkv_b, false, qkv_.data(), false);
    pool_->run(attention_chunks, [&](int thread, int64_t chunk) {
      const auto [p0, p1] = chunk_range(pairs, chunk, attention_chunks, 1);
      for (int64_t p = p0; p < p1; ++p) {
        attention_rows(l, start, count, p / c.n_head, p % c.n_head, scores_[thread].data());
      }
    });
    product(layer.proj, attn_.data(), rows, layer.proj_b, true, x_.data(), false);
    layer_norm(x_.data(), rows, C, layer.ln2_w, layer.ln2_b, kLayerNormEps, normed);
    product(layer.fc, normed, rows, layer.fc_b, false, hidden_.data(), true);
    product(layer.mlp_proj, hidden_.data(), rows, layer.mlp_proj_b, true, x_.data(), false);
  }
  if (logits == nullptr) return;
  for (int64_t b = 0; b < batch; ++b) {  // the last position of each row
    layer_norm(x_.data() + (b * count + count - 1) * C, 1, C, ln_f_w_, ln_f_b_, kLayerNormEps,
               normed + b * C);
  }
  product(head_, normed, batch, nullptr, false, logits, false);
}

// Row (b, j) of a pass is activation row b * count + j, at position start + j.
void Transformer::attention_rows(int64_t layer, int64_t start, int64_t count, int64_t b,
                                 int64_t h, float* scores) {
  const int64_t C = config_.n_embd, D = head_dim_;
  const int64_t k_at = cache_offset(layer, 0, b, h, 0), v_at = cache_offset(layer, 1, b, h, 0);
  for (int64_t j = 0; j < count; ++j) {  // rows [T_max, D] of this head, at start + j
    const float* qkv = qkv_.data() + (b * count + j) * 3 * C;  // q | k | v, head h at h * D
    const int64_t row = (start + j) * D;
    if (*config_.kv_f16) {
      for (int64_t i = 0; i < D; ++i) {
        kv_cache16_[k_at + row + i] = float_to_half(qkv[C + h * D + i]);
        kv_cache16_[v_at + row + i] = float_to_half(qkv[2 * C + h * D + i]);
      }
    } else {
      std::copy(qkv + C + h * D, qkv + C + (h + 1) * D, kv_cache_.data() + k_at + row);
      std::copy(qkv + 2 * C + h * D, qkv + 2 * C + (h + 1) * D, kv_cache_.data() + v_at + row);
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    const int64_t r = b * count + j;
    AttentionArgs a;
    a.q = qkv_.data() + r * 3 * C + h * D;
    if (*config_.kv_f16) {
      a.k16 = kv_cache16_.data() + k_at;
      a.v16 = kv_cache16_.data() + v_at;
    } else {
      a.k = kv_cache_.data() + k_at;
      a.v = kv_cache_.data() + v_at;
    }
    a.n_keys = start + j + 1;  // causal: positions 0..start+j
    a.d = D;
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    a.scores = scores;
    a.out = attn_.data() + r * C + h * D;
    attention_(a);
  }
}

}  // namespace vqrt
