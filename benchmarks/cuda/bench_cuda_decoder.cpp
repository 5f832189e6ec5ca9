// GPU benchmark of the decoder (csrc/gpu_transformer.h); not a test. Issue 7's model M:
// 24 layers, 16 heads, 1024 wide, vocabulary 1024, block 257, fp16 weights (random: speed does
// not depend on the values). Each measurement generates 256 tokens per row after one prefix
// token (top-k 100), all on the device, tokens copied back once.
//
//   bench_cuda_decoder [--repeat N] [--batches 1,2,4,...]      (scripts/gpu_check.sh runs it)
//
// Prints one JSON object: the GPU; the device copy bandwidth measured in the same run
// (cudaMemcpy device to device, read + write bytes over time); per batch the median time per
// generated token (from generate() of 256 and of 2 tokens: their difference over 254 steps; a
// decode step plus its sampler launch and history copy, so slightly more than the step), its
// multiple of the HBM bound (the step's fp16 weight bytes over the copy bandwidth; issue
// 7's target: at most 1.5 at batch 1), and tokens/s over the whole generate() (prefill
// included); and at batch 1 the same step without CUDA graphs (eager launches).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"
#include "gpu_transformer.h"
#include "vqrt.h"

namespace {

using vqrt::DType;
using vqrt::TensorView;
using vqrt::GpuDecoderOptions;
using vqrt::GpuModelConfig;
using vqrt::GpuTransformer;

constexpr int64_t kLayers = 24, kHeads = 16, kWidth = 1024, kVocab = 1024, kBlock = 257;
constexpr int64_t kTokens = 256;

// Weights of model M: fp16 matrices with small pseudo-random values, fp32 elsewhere.
struct Weights {
  std::map<std::string, TensorView> views;
  std::vector<std::vector<uint16_t>> halves;
  std::vector<std::vector<float>> floats;
  uint64_t state = 88172645463325252ull;

  float next() {  // xorshift64, uniform in [-0.02, 0.02)
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (static_cast<float>(state >> 40) / 16777216.0f - 0.5f) * 0.04f;
  }
  void add_f32(const std::string& name, std::vector<int64_t> shape, float fill, bool random) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    floats.emplace_back(n, fill);
    if (random) for (float& v : floats.back()) v = next() * 25.0f;
    views[name] = {DType::f32, floats.back().data(), shape};
  }
  void add_matrix(const std::string& name, int64_t n, int64_t k) {
    halves.emplace_back(n * k);
    for (uint16_t& h : halves.back()) {
      const __half v = __float2half_rn(next());
      std::memcpy(&h, &v, sizeof h);
    }
    views[name + ".weight"] = {DType::f16, halves.back().data(), {n, k}};
    add_f32(name + ".bias", {n}, 0.0f, false);
  }
  Weights() {
    const int64_t C = kWidth;
    add_f32("tok_emb", {kVocab, C}, 0.0f, true);
    add_f32("pos_emb", {kBlock, C}, 0.0f, true);
    for (int64_t i = 0; i < kLayers; ++i) {
      const std::string p = "blocks." + std::to_string(i) + ".";
      for (const char* ln : {"ln1", "ln2"}) {
        add_f32(p + ln + ".weight", {C}, 1.0f, false);
        add_f32(p + ln + ".bias", {C}, 0.0f, false);
      }
      add_matrix(p + "attn.qkv", 3 * C, C);
      add_matrix(p + "attn.proj", C, C);
      add_matrix(p + "mlp.fc", 4 * C, C);
      add_matrix(p + "mlp.proj", C, 4 * C);
    }
    add_f32("ln_f.weight", {C}, 1.0f, false);
    add_f32("ln_f.bias", {C}, 0.0f, false);
    add_matrix("head", kVocab, C);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double copy_bandwidth() {  // bytes read + written per second, device to device
  const size_t bytes = size_t(1) << 31;
  vqrt::cuda::DeviceBuffer a(bytes), b(bytes);
  VQRT_CUDA_CHECK(cudaMemset(a.as<void>(), 1, bytes));
  std::vector<double> seconds;
  for (int i = 0; i < 12; ++i) {
    VQRT_CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    VQRT_CUDA_CHECK(cudaMemcpy(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice));
    VQRT_CUDA_CHECK(cudaDeviceSynchronize());
    if (i >= 2) {
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                            .count());
    }
  }
  return 2.0 * bytes / median(seconds);
}

// Seconds of generate() for `steps` tokens per row, median of repeat runs.
double generate_seconds(GpuTransformer& model, int64_t batch, int64_t steps, int repeat) {
  std::vector<int64_t> prefix(batch), tokens(batch * steps);
  std::vector<uint64_t> seeds(batch);
  for (int64_t b = 0; b < batch; ++b) {
    prefix[b] = b % kVocab;
    seeds[b] = 1000 + b;
  }
  vqrt::SamplingParams params;
  params.top_k = 100;
  std::vector<double> seconds;
  for (int i = 0; i < repeat + 1; ++i) {  // the first run captures the graph: not timed
    const auto t0 = std::chrono::steady_clock::now();
    model.generate(prefix.data(), batch, 1, steps, seeds.data(), params, tokens.data());
    if (i > 0) {
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                            .count());
    }
  }
  return median(seconds);
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 5;
  std::vector<int64_t> batches = {1, 2, 4, 8, 16, 32, 64};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--batches") == 0 && i + 1 < argc) {
      batches.clear();
      for (char* s = std::strtok(argv[++i], ","); s != nullptr; s = std::strtok(nullptr, ",")) {
        batches.push_back(std::max(1, std::atoi(s)));
      }
    } else {
      std::fprintf(stderr, "usage: %s [--repeat N] [--batches 1,2,4]\n", argv[0]);
      return 2;
    }
  }
  const std::string why = vqrt::gpu_unavailable_reason();
  if (!why.empty()) {
    std::printf("{\"error\": \"%s\"}\n", why.c_str());
    return 1;
  }
  try {
    cudaDeviceProp prop{};
    VQRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    GpuModelConfig config;
    config.n_layer = kLayers;
    config.n_head = kHeads;
    config.n_embd = kWidth;
    config.vocab_size = kVocab;
    config.block_size = kBlock;
    const auto weights = vqrt::upload_gpu_weights(config, Weights().views);
    const int64_t matrix_bytes = vqrt::gpu_weight_matrix_bytes(*weights);
    GpuDecoderOptions options;
    options.max_batch = *std::max_element(batches.begin(), batches.end());
    GpuTransformer graph(weights, options);
    options.max_batch = 1;
    options.use_graph = false;
    GpuTransformer eager(weights, options);
    const double bandwidth = copy_bandwidth();
    const double bound = matrix_bytes / bandwidth;  // seconds per step at the roofline
    // Printed once at the end, so that an exception half-way leaves one valid JSON object.
    char head[512];
    std::snprintf(head, sizeof head,
                  "{\"gpu\": \"%s\", \"model\": \"M: %lld layers x %lld wide, %lld heads, "
                  "vocab %lld, fp16\", \"weight_bytes\": %lld, \"copy_bandwidth_gb_s\": %.1f, "
                  "\"bound_ms_per_step\": %.4f, \"tokens_per_row\": %lld, \"batches\": [",
                  prop.name, (long long)kLayers, (long long)kWidth, (long long)kHeads,
                  (long long)kVocab, (long long)matrix_bytes, bandwidth / 1e9, bound * 1e3,
                  (long long)kTokens);
    std::string json = head;
    for (size_t i = 0; i < batches.size(); ++i) {
      const int64_t b = batches[i];
      const double whole = generate_seconds(graph, b, kTokens, repeat);
      const double step = (whole - generate_seconds(graph, b, 2, repeat)) / (kTokens - 2);
      char row[256];
      std::snprintf(row, sizeof row,
                    "%s{\"batch\": %lld, \"ms_per_step\": %.4f, \"x_bound\": %.2f, "
                    "\"tokens_per_s\": %.1f}",
                    i ? ", " : "", (long long)b, step * 1e3, step / bound, b * kTokens / whole);
      json += row;
      std::fprintf(stderr, "batch %lld done\n", (long long)b);  // progress, if it is killed
    }
    const double eager_whole = generate_seconds(eager, 1, kTokens, repeat);
    const double eager_step = (eager_whole - generate_seconds(eager, 1, 2, repeat)) / (kTokens - 2);
    char tail[128];
    std::snprintf(tail, sizeof tail, "], \"eager_batch1_ms_per_step\": %.4f}", eager_step * 1e3);
    std::printf("%s%s\n", json.c_str(), tail);
  } catch (const std::exception& e) {
    std::string what = e.what();  // JSON-escaped: CUDA and vqrt messages may hold quotes
    std::ostringstream esc;
    for (char ch : what) {
      if (ch == '"' || ch == '\\') esc << '\\' << ch;
      else if (static_cast<unsigned char>(ch) < 0x20) esc << ' ';
      else esc << ch;
    }
    std::printf("{\"error\": \"%s\"}\n", esc.str().c_str());
    return 1;
  }
  return 0;
}
