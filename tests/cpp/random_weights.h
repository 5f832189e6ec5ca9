// Random "vqrt-native-1" weights and tokens for the decoder tests (test_transformer.cpp, the
// CPU decoder; test_cuda_transformer.cpp, its GPU twin).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "linear.h"
#include "transformer.h"

namespace test_weights {

using vqrt::DType;
using vqrt::TensorView;
using vqrt::TransformerConfig;

// Random weights named as "vqrt-native-1", Linear weights stored as `dtype`.
class RandomWeights {
 public:
  RandomWeights(const TransformerConfig& c, DType dtype, uint32_t seed) : rng_(seed) {
    const int64_t C = c.n_embd;
    add_f32("tok_emb", {c.vocab_size, C}, 1.0f);
    add_f32("pos_emb", {c.block_size, C}, 0.5f);
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "blocks." + std::to_string(i) + ".";
      for (const char* ln : {"ln1", "ln2"}) {
        add_f32(p + ln + ".weight", {C}, 0.1f, 1.0f);
        add_f32(p + ln + ".bias", {C}, 0.1f);
      }
      add_linear(p + "attn.qkv", 3 * C, C, dtype);
      add_linear(p + "attn.proj", C, C, dtype);
      add_linear(p + "mlp.fc", 4 * C, C, dtype);
      add_linear(p + "mlp.proj", C, 4 * C, dtype);
    }
    add_f32("ln_f.weight", {C}, 0.1f, 1.0f);
    add_f32("ln_f.bias", {C}, 0.1f);
    add_weight("head.weight", c.vocab_size, C, dtype, 3.0f);
  }
  std::map<std::string, TensorView> views;

 private:
  void add_f32(const std::string& name, std::vector<int64_t> shape, float stddev,
               float mean = 0.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> normal(mean, stddev);
    auto& data = f32_[name];
    for (int64_t i = 0; i < n; ++i) data.push_back(normal(rng_));
    views[name] = {DType::f32, data.data(), shape};
  }
  void add_linear(const std::string& name, int64_t n, int64_t k, DType dtype) {
    add_weight(name + ".weight", n, k, dtype, 1.0f);
    add_f32(name + ".bias", {n}, 0.1f);
  }
  void add_weight(const std::string& name, int64_t n, int64_t k, DType dtype, float gain) {
    add_f32(name, {n, k}, gain / std::sqrt(static_cast<float>(k)));
    if (dtype == DType::f32) return;
    const std::vector<float>& w = f32_[name];
    if (dtype == DType::i8) {
      auto& q = i8_[name];
      auto& scale = f32_[name + "_scale"];
      for (int64_t o = 0; o < n; ++o) {
        float peak = 0.0f;
        for (int64_t i = 0; i < k; ++i) peak = std::max(peak, std::fabs(w[o * k + i]));
        scale.push_back(peak / 127.0f);
        for (int64_t i = 0; i < k; ++i) {
          q.push_back(static_cast<int8_t>(std::lround(w[o * k + i] / scale[o])));
        }
      }
      views[name] = {DType::i8, q.data(), {n, k}};
      views[name + "_scale"] = {DType::f32, scale.data(), {n}};
      return;
    }
    auto& bits = u16_[name];
    for (float v : w) {  // both rounded to nearest even
      bits.push_back(dtype == DType::bf16 ? vqrt::float_to_bf16(v) : vqrt::float_to_half(v));
    }
    views[name] = {dtype, bits.data(), {n, k}};
  }
  std::mt19937 rng_;
  std::map<std::string, std::vector<float>> f32_;
  std::map<std::string, std::vector<uint16_t>> u16_;
  std::map<std::string, std::vector<int8_t>> i8_;
};

inline std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> t(n);
  for (int64_t& v : t) v = static_cast<int64_t>(rng() % vocab);
  return t;
}

}  // namespace test_weights
