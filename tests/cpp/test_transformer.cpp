// The CPU decoder (csrc/transformer.h) on a small random model (D = 12, not a multiple of 8):
// cached steps against a full prefill recomputation, chunked prefill, batch rows against the
// same rows alone, thread counts, ISAs against the generic kernels, every weight dtype, rewind,
// and the argument errors.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "random_weights.h"
#include "errors.h"
#include "transformer.h"

using vqrt::CpuIsa;
using vqrt::DType;
using vqrt::TensorView;
using vqrt::Transformer;
using vqrt::TransformerConfig;

using test_weights::random_tokens;
using test_weights::RandomWeights;

namespace {

TransformerConfig small_config() {
  TransformerConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 48;
  c.vocab_size = 61;
  c.block_size = 40;
  c.max_batch = 9;
  return c;
}

// Logits of every position 1..length-1 by prefill(1) and cached steps: [length, batch, vocab].
std::vector<float> stepped_logits(Transformer& model, const std::vector<int64_t>& tokens,
                                  int64_t batch, int64_t length) {
  const int64_t V = model.config().vocab_size;
  std::vector<float> out(length * batch * V);
  std::vector<int64_t> column(batch);
  for (int64_t b = 0; b < batch; ++b) column[b] = tokens[b * length];
  model.prefill(column.data(), batch, 1, out.data());
  for (int64_t t = 1; t < length; ++t) {
    for (int64_t b = 0; b < batch; ++b) column[b] = tokens[b * length + t];
    model.step(column.data(), batch, t, out.data() + t * batch * V);
  }
  return out;
}

}  // namespace

TEST(cached_steps_match_full_prefill) {
  const TransformerConfig c = small_config();
  for (DType dtype : {DType::f32, DType::f16, DType::bf16, DType::i8}) {
    RandomWeights w(c, dtype, 1);
    Transformer model(c, w.views);
    const int64_t batch = 3, length = 30;  // 30 > 64 / 3 positions: the prefill runs in chunks
    const std::vector<int64_t> tokens = random_tokens(batch * length, c.vocab_size, 2);
    const std::vector<float> stepped = stepped_logits(model, tokens, batch, length);
    const int64_t V = c.vocab_size;
    std::vector<float> full(batch * V);
    for (int64_t t : {1, 9, 21, 29}) {  // a fresh prefill of positions 0..t
      std::vector<int64_t> prefix;
      for (int64_t b = 0; b < batch; ++b) {
        const auto row = tokens.begin() + b * length;
        prefix.insert(prefix.end(), row, row + t + 1);
      }
      model.prefill(prefix.data(), batch, t + 1, full.data());
      for (int64_t j = 0; j < batch * V; ++j) CHECK_EQ(full[j], stepped[t * batch * V + j]);
    }
  }
}

TEST(batch_rows_match_rows_alone_and_threads_do_not_matter) {
  for (bool kv_f16 : {false, true}) {  // either cache
    TransformerConfig base = small_config();
    base.kv_f16 = kv_f16;
    RandomWeights w(base, DType::bf16, 4);
    const int64_t batch = 9, length = 12, V = base.vocab_size;
    const std::vector<int64_t> tokens = random_tokens(batch * length, V, 5);
    TransformerConfig c = base;
    c.num_threads = 2;
    c.min_parallel_macs = 0;  // split every product and attention into chunks, however small
    Transformer batched(c, w.views);
    const std::vector<float> all = stepped_logits(batched, tokens, batch, length);
    for (int threads : {1, 3}) {
      c.num_threads = threads;
      Transformer model(c, w.views);
      for (int64_t b : {0, 4, 8}) {
        const std::vector<int64_t> row(tokens.begin() + b * length,
                                       tokens.begin() + (b + 1) * length);
        const std::vector<float> alone = stepped_logits(model, row, 1, length);
        for (int64_t t = 0; t < length; ++t) {
          for (int64_t v = 0; v < V; ++v) {
            CHECK_EQ(alone[t * V + v], all[(t * batch + b) * V + v]);
          }
        }
      }
    }
  }
}

// An fp16 cache holds keys and values rounded to fp16 (11 significant bits): the logits move by
// a few 1e-3 of their size, and a prefill writes the same rounded rows that steps write.
TEST(fp16_cache_is_close_to_fp32_and_consistent) {
  TransformerConfig c = small_config();
  RandomWeights w(c, DType::f32, 8);
  const int64_t batch = 3, length = 25, V = c.vocab_size;
  const std::vector<int64_t> tokens = random_tokens(batch * length, V, 9);
  Transformer exact(c, w.views);
  CHECK(!*exact.config().kv_f16);  // the default for fp32 weights
  CHECK(*Transformer(c, RandomWeights(c, DType::bf16, 8).views).config().kv_f16);
  c.kv_f16 = true;
  Transformer half(c, w.views);
  const std::vector<float> ref = stepped_logits(exact, tokens, batch, length);
  const std::vector<float> got = stepped_logits(half, tokens, batch, length);
  for (size_t j = 0; j < ref.size(); ++j) CHECK_NEAR(got[j], ref[j], 1e-2, 1e-2);
  std::vector<float> full(batch * V);
  half.prefill(tokens.data(), batch, length, full.data());
  for (int64_t j = 0; j < batch * V; ++j) CHECK_EQ(full[j], got[(length - 1) * batch * V + j]);
}

TEST(isas_match_generic) {
  TransformerConfig c = small_config();
  // An fp32 cache: an fp16 one would round keys that differ by a float rounding between ISAs
  // to different halves (test_transformer_ops.cpp checks the fp16-cache kernels on equal rows).
  c.kv_f16 = false;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16, DType::i8}) {
    RandomWeights w(c, dtype, 6);
    const int64_t batch = 2, length = 20;
    const std::vector<int64_t> tokens = random_tokens(batch * length, c.vocab_size, 7);
    c.isa = CpuIsa::generic;
    Transformer reference(c, w.views);
    const std::vector<float> ref = stepped_logits(reference, tokens, batch, length);
    for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512}) {
      if (!vqrt::cpu_isa_runs(isa)) continue;
      c.isa = isa;
      Transformer model(c, w.views);
      const std::vector<float> got = stepped_logits(model, tokens, batch, length);
      // int8 products quantize their input to int16 (steps of 1/32767 of the row's peak), so
      // an ISA's other ops (GELU, attention: within a float rounding of generic) can move an
      // input by one step: a few 1e-5 of the row's peak per product, compounding over layers.
      const double tolerance = dtype == DType::i8 ? 3e-4 : 2e-5;
      for (size_t j = 0; j < ref.size(); ++j) CHECK_NEAR(got[j], ref[j], tolerance, tolerance);
    }
  }
}

TEST(bf16_activations_follow_the_setting_not_the_cpu) {
  TransformerConfig c = small_config();
  c.bf16_activations = true;
  c.kv_f16 = false;  // as in isas_match_generic: fp16 keys would amplify ISA roundings
  RandomWeights w(c, DType::bf16, 8);
  const std::vector<int64_t> tokens = random_tokens(2 * 15, c.vocab_size, 9);
  c.isa = CpuIsa::generic;
  Transformer reference(c, w.views);
  const std::vector<float> ref = stepped_logits(reference, tokens, 2, 15);
  c.isa = vqrt::cpu_isa_supported();
  Transformer model(c, w.views);
  const std::vector<float> got = stepped_logits(model, tokens, 2, 15);
  for (size_t j = 0; j < ref.size(); ++j) CHECK_NEAR(got[j], ref[j], 1e-4, 1e-4);
}

TEST(rewind_and_step_back) {
  const TransformerConfig c = small_config();
  RandomWeights w(c, DType::f32, 10);
  Transformer model(c, w.views);
  const int64_t V = c.vocab_size;
  const std::vector<int64_t> tokens = random_tokens(8, V, 11);
  const std::vector<float> first = stepped_logits(model, tokens, 1, 8);
  std::vector<float> again(V);
  model.rewind(5);
  CHECK_EQ(model.length(), 5);
  model.step(&tokens[5], 1, 5, again.data());
  for (int64_t v = 0; v < V; ++v) CHECK_EQ(again[v], first[5 * V + v]);
  model.step(&tokens[3], 1, 3, again.data());  // stepping back is a rewind
  CHECK_EQ(model.length(), 4);
  for (int64_t v = 0; v < V; ++v) CHECK_EQ(again[v], first[3 * V + v]);
}

TEST(argument_errors) {
  TransformerConfig c = small_config();
  RandomWeights w(c, DType::i8, 12);
  {
    auto views = w.views;
    views.erase("blocks.1.ln2.bias");
    CHECK_THROWS(Transformer(c, views), vqrt::Error, "missing tensor blocks.1.ln2.bias [48]");
    views = w.views;
    views["blocks.0.attn.qkv.weight"].shape = {144, 47};
    CHECK_THROWS(Transformer(c, views), vqrt::Error,
                 "tensor blocks.0.attn.qkv.weight has shape [144, 47], expected [144, 48]");
    views = w.views;
    views.erase("head.weight_scale");
    CHECK_THROWS(Transformer(c, views), vqrt::Error, "missing tensor head.weight_scale [61]");
    views = w.views;
    views["ln_f.bias"].dtype = DType::bf16;
    CHECK_THROWS(Transformer(c, views), vqrt::Error, "ln_f.bias has dtype BF16, expected F32");
  }
  c.bf16_activations = true;
  CHECK_THROWS(Transformer(c, w.views), vqrt::Error,
               "bf16_activations needs BF16 Linear weights, got I8");
  c.bf16_activations = false;
  c.max_len = 41;
  CHECK_THROWS(Transformer(c, w.views), vqrt::Error, "max_len must be in [1, block size 40]");
  c.max_len = 0;
  c.min_parallel_macs = -1;
  CHECK_THROWS(Transformer(c, w.views), vqrt::Error, "min_parallel_macs must be >= 0, got -1");
  c.min_parallel_macs = 0;
  Transformer model(c, w.views);
  std::vector<int64_t> tokens(10 * 41, 1);
  std::vector<float> logits(10 * c.vocab_size);
  CHECK_THROWS(model.step(tokens.data(), 1, 0, logits.data()), vqrt::Error, "step before prefill");
  CHECK_THROWS(model.prefill(tokens.data(), 10, 1, logits.data()), vqrt::Error,
               "batch 10 is outside [1, max batch 9]");
  CHECK_THROWS(model.prefill(tokens.data(), 1, 41, logits.data()), vqrt::Error,
               "prefill length 41 is outside [1, max length 40]");
  tokens[3] = 61;
  CHECK_THROWS(model.prefill(tokens.data(), 1, 5, logits.data()), vqrt::Error,
               "token 61 at index 3 is outside the vocabulary [0, 61)");
  tokens[3] = 1;
  model.prefill(tokens.data(), 2, 40, logits.data());
  CHECK_THROWS(model.step(tokens.data(), 1, 40, logits.data()), vqrt::Error,
               "step batch 1 does not match the prefill batch 2");
  CHECK_THROWS(model.step(tokens.data(), 2, 40, logits.data()), vqrt::Error,
               "position 40 is beyond the max length 40 (block size 40)");
  model.rewind(3);
  CHECK_THROWS(model.step(tokens.data(), 2, 4, logits.data()), vqrt::Error,
               "position 4 is outside [0, cached length 3]");
}

int main() { return check::run_tests(); }
