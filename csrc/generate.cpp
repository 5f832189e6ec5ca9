// The generation loop over a bundle; rules in generate.h.
#include "generate.h"

#include <algorithm>
#include <cmath>

#include "errors.h"

namespace vqrt {

namespace {

const char kNativeLayout[] = "vqrt-native-1";  // export/native_weights.py LAYOUT

DType native_dtype(const std::string& name, const std::string& tensor) {
  if (name == "F32") return DType::f32;
  if (name == "F16") return DType::f16;
  if (name == "BF16") return DType::bf16;
  if (name == "I8") return DType::i8;
  VQRT_CHECK(false, "native weights: tensor " << tensor << " has dtype " << name
                                              << ", which the native decoder does not read");
}

}  // namespace

NativeGenerator::NativeGenerator(const std::string& bundle_dir) : bundle_(bundle_dir) {
  const BundleManifest& m = bundle_.manifest();
  const std::string& dir = bundle_.path();
  VQRT_CHECK(m.kind == "net2net" && m.has_transformer && !m.prefix_rule.empty(),
             dir << ": the bundle is a first stage alone (kind " << m.kind
                 << "): it encodes and decodes but has no transformer to generate with");
  VQRT_CHECK(bundle_.native_weights() != nullptr,
             dir << ": the bundle has no native weights, which the C++ runtime runs; rebuild it "
                    "with `vqrt build --backend native` (or auto)");
  VQRT_CHECK(m.native_layout == kNativeLayout,
             dir << ": native weights layout " << m.native_layout << " is not " << kNativeLayout
                 << "; rebuild it with this vqrt");
  VQRT_CHECK(m.order == "raster", dir << ": token order " << m.order << " is not raster");
  VQRT_CHECK(m.prefix_rule == "class_id" || m.prefix_rule == "sos",
             dir << ": the bundle's prefix rule is " << m.prefix_rule
                 << " (a spatial condition through the ONNX graphs), which the C++ runtime does "
                    "not make; use the Python runtime (vqrt.runtime.Generator)");
  VQRT_CHECK(m.codebook_size >= 1 && m.codebook_size <= m.vocab_size,
             dir << ": codebook size " << m.codebook_size << " is outside [1, vocabulary "
                 << m.vocab_size << "]");
  VQRT_CHECK(m.downsampling_factor >= 1 && m.training_grid_h >= 1 && m.training_grid_w >= 1 &&
                 m.max_batch >= 1,
             dir << ": the manifest's downsampling factor, training grid and max batch must be "
                    ">= 1");
  if (m.prefix_rule == "class_id") {
    VQRT_CHECK(m.n_classes >= 1 && m.n_classes <= m.vocab_size,
               dir << ": class count " << m.n_classes << " is outside [1, vocabulary "
                   << m.vocab_size << "]");
  } else {
    VQRT_CHECK(m.sos_token >= 0 && m.sos_token < m.vocab_size && m.prefix_tokens >= 1,
               dir << ": SOS token " << m.sos_token << " x " << m.prefix_tokens
                   << " is not a prefix in the vocabulary of " << m.vocab_size);
  }
  for (const auto& [name, t] : bundle_.native_weights()->tensors()) {
    weights_[name] = {native_dtype(t.dtype, name), t.data, t.shape};
  }
  config_.n_layer = m.n_layer;
  config_.n_head = m.n_head;
  config_.n_embd = m.n_embd;
  config_.vocab_size = m.vocab_size;
  config_.block_size = m.block_size;
  TransformerConfig probe = config_;  // checks every tensor's name, shape and dtype now
  probe.max_len = 1;
  probe.num_threads = 1;
  try {
    Transformer check_weights(probe, weights_);
  } catch (const Error& e) {
    VQRT_CHECK(false, dir << "/" << m.native_file << ": " << e.what());
  }
}

NativeGenerator::Plan NativeGenerator::plan(const GenerateRequest& r) const {
  const BundleManifest& m = bundle_.manifest();
  // GenerationParams.__post_init__
  VQRT_CHECK(r.top_k >= 0, "top_k must be >= 1 (0 = every code), got " << r.top_k);
  VQRT_CHECK(std::isfinite(r.top_p), "top_p must be finite, got " << r.top_p);
  VQRT_CHECK(r.top_p > 0.0f && r.top_p <= 1.0f, "top_p must be in (0, 1], got " << r.top_p);
  VQRT_CHECK(std::isfinite(r.temperature), "temperature must be finite, got " << r.temperature);
  VQRT_CHECK(r.temperature > 0.0f, "temperature must be > 0, got "
                                       << r.temperature
                                       << " (for the most likely token use greedy)");
  const bool training_size = r.width == 0 && r.height == 0;
  VQRT_CHECK(training_size || r.width >= 1, "size width must be >= 1, got " << r.width);
  VQRT_CHECK(training_size || r.height >= 1, "size height must be >= 1, got " << r.height);
  VQRT_CHECK(r.num_threads >= 0, "num_threads must be >= 0 (0 = one per core), got "
                                     << r.num_threads);
  // FirstStage.latent_grid and check_latent
  Plan p;
  const int64_t f = m.downsampling_factor;
  if (training_size) {
    p.grid.h = m.training_grid_h;
    p.grid.w = m.training_grid_w;
  } else {
    for (const auto& [side, value] : {std::pair{"width", r.width}, std::pair{"height", r.height}}) {
      VQRT_CHECK(value % f == 0, "size " << side << " " << value
                                         << " is not a multiple of the downsampling factor " << f
                                         << " (try " << std::max(f, value - value % f) << " or "
                                         << value - value % f + f << ")");
    }
    p.grid.h = r.height / f;
    p.grid.w = r.width / f;
    VQRT_CHECK(p.grid.h <= m.max_latent_h && p.grid.w <= m.max_latent_w,
               "requested " << r.width << "x" << r.height << " pixels (latent " << p.grid.h << "x"
                            << p.grid.w << ") exceeds the bundle's largest "
                            << m.max_latent_w * f << "x" << m.max_latent_h * f << " (latent "
                            << m.max_latent_h << "x" << m.max_latent_w
                            << "); rebuild with `vqrt build --max-size WxH` for more");
  }
  VQRT_CHECK(r.top_k <= m.codebook_size, "top_k " << r.top_k
                                                  << " exceeds the bundle's vocabulary of "
                                                  << m.codebook_size << " image codes");
  // Conditioner.prefix
  std::vector<int64_t> rows;  // [given, P]
  int64_t given = 1;
  if (m.prefix_rule == "class_id") {
    VQRT_CHECK(!r.class_labels.empty(), "this bundle is class-conditional ("
                                            << m.n_classes
                                            << " classes): pass class_labels (--class N)");
    for (int64_t label : r.class_labels) {
      VQRT_CHECK(label >= 0 && label < m.n_classes,
                 "class id " << label << " is out of range: the bundle has " << m.n_classes
                             << " classes (0.." << m.n_classes - 1 << ")");
    }
    rows = r.class_labels;
    given = static_cast<int64_t>(rows.size());
    p.prefix_length = 1;
  } else {
    VQRT_CHECK(r.class_labels.empty(),
               "this bundle is unconditional: class_labels (--class) do not apply");
    rows.assign(m.prefix_tokens, m.sos_token);
    p.prefix_length = m.prefix_tokens;
  }
  // batch_rows and FirstStage.check_batch
  p.grid.batch = r.batch == 0 ? given : r.batch;
  VQRT_CHECK(p.grid.batch == given || given == 1,
             "batch_size " << r.batch << " does not match the " << given
                           << " rows of the conditioning (give one row to repeat it, or leave "
                              "batch_size out)");
  VQRT_CHECK(p.grid.batch >= 1, "batch must be at least 1, got " << p.grid.batch);
  VQRT_CHECK(p.grid.batch <= m.max_batch,
             "requested batch " << p.grid.batch << " exceeds the bundle's max batch "
                                << m.max_batch << " (split the request, or rebuild with `vqrt "
                                                  "build --max-batch "
                                << p.grid.batch << "`)");
  const int64_t total = p.grid.h * p.grid.w;
  VQRT_CHECK(p.prefix_length + total - 1 <= m.block_size,
             "a " << p.grid.h << "x" << p.grid.w << " grid after " << p.prefix_length
                  << " prefix token(s) needs " << p.prefix_length + total - 1
                  << " positions (the last token is never fed back), more than the "
                     "transformer's block size "
                  << m.block_size << "; the C API samples grids that fit the block (larger "
                  << "grids: the Python runtime's sliding windows)");
  for (int64_t b = 0; b < p.grid.batch; ++b) {
    const int64_t row = given == 1 ? 0 : b;
    p.prefix.insert(p.prefix.end(), rows.begin() + row * p.prefix_length,
                    rows.begin() + (row + 1) * p.prefix_length);
  }
  p.sampling.top_k = r.top_k == 0 ? m.codebook_size : r.top_k;
  p.sampling.top_p = r.top_p;
  p.sampling.temperature = r.temperature;
  p.sampling.greedy = r.greedy;
  p.sampling.num_threads = r.num_threads;
  return p;
}

TokenGrid NativeGenerator::check(const GenerateRequest& request) const {
  return plan(request).grid;
}

void NativeGenerator::generate(const GenerateRequest& request, int64_t* tokens) const {
  VQRT_CHECK(tokens != nullptr, "tokens is null");
  const Plan p = plan(request);
  const int64_t batch = p.grid.batch, total = p.grid.h * p.grid.w, P = p.prefix_length;
  const int64_t V = config_.vocab_size, codes = bundle_.manifest().codebook_size;
  TransformerConfig c = config_;
  c.max_batch = batch;
  c.max_len = P + total - 1;  // positions 0 .. P + h*w - 2: the last token is not fed back
  c.num_threads = request.num_threads;
  Transformer model(c, weights_);

  std::vector<float> logits(batch * V), image_logits(batch * codes);  // [B, V], [B, codes]
  std::vector<uint64_t> seeds(batch);
  for (int64_t b = 0; b < batch; ++b) seeds[b] = request.seed + static_cast<uint64_t>(b);
  std::vector<int64_t> drawn(batch * total), token(batch);  // [B, h*w], [B]
  model.prefill(p.prefix.data(), batch, P, logits.data());
  for (int64_t k = 0; k < total; ++k) {
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(logits.begin() + b * V, logits.begin() + b * V + codes,
                image_logits.begin() + b * codes);
    }
    sample_logits(image_logits.data(), batch, codes, seeds.data(), static_cast<uint64_t>(k),
                  p.sampling, token.data());
    for (int64_t b = 0; b < batch; ++b) drawn[b * total + k] = token[b];
    if (k + 1 < total) model.step(token.data(), batch, P + k, logits.data());
  }
  std::copy(drawn.begin(), drawn.end(), tokens);
}

}  // namespace vqrt
