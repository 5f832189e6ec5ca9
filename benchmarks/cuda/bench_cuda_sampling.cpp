// GPU micro-benchmark of the sampling kernel (csrc/cuda/sampling.cu); not a test. Issue 7's
// target: top-k 600 over a 16384 vocabulary at batch 64 in at most 20 microseconds.
//
//   bench_cuda_sampling [--repeat N]      (scripts/gpu_check.sh runs it)
//
// Prints one JSON object: the GPU, then per configuration the kernel time from CUDA events
// around each launch (median, p10, p90, min over N launches) and the mean over N back-to-back
// launches (launch overhead overlapped, as in a CUDA graph), plus whether the GPU's tokens equal
// the CPU sampler's for that configuration. Logits are N(0, 3^2), as in sampler_bench.py.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"
#include "cuda/sampling.cuh"
#include "sampling.h"
#include "vqrt.h"

namespace {

struct Config {
  int64_t vocab, batch, top_k;
  float top_p, temperature;
  bool greedy;
};

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

std::string run(const Config& c, int repeat, std::mt19937_64& rng) {
  using vqrt::cuda::DeviceBuffer;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(c.batch * c.vocab));
  for (float& v : logits) v = normal(rng);
  std::vector<uint64_t> seeds(c.batch);
  for (uint64_t& s : seeds) s = rng();
  vqrt::SamplingParams sp;
  sp.top_k = c.top_k;
  sp.top_p = c.top_p;
  sp.temperature = c.temperature;
  sp.greedy = c.greedy;

  DeviceBuffer d_logits(logits.size() * sizeof(float)), d_seeds(seeds.size() * sizeof(uint64_t));
  DeviceBuffer d_tokens(c.batch * sizeof(int64_t)), d_status(c.batch * sizeof(int32_t));
  DeviceBuffer d_ws(vqrt::cuda::sampling_workspace_bytes(c.batch, c.vocab));
  d_logits.upload(logits.data(), d_logits.bytes());
  d_seeds.upload(seeds.data(), d_seeds.bytes());
  vqrt::cuda::SamplingKernelParams p;
  p.logits = d_logits.as<float>();
  p.seeds = d_seeds.as<uint64_t>();
  p.tokens = d_tokens.as<int64_t>();
  p.status = d_status.as<int32_t>();
  p.workspace = d_ws.as<void>();
  p.workspace_bytes = d_ws.bytes();
  p.batch = c.batch;
  p.vocab = c.vocab;
  p.params = sp;

  cudaStream_t stream;
  VQRT_CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  VQRT_CUDA_CHECK(cudaEventCreate(&start));
  VQRT_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 20; ++i) {  // warm-up (module load, clocks)
    p.step = i;
    vqrt::cuda::sampling_launch(p, stream);
  }
  VQRT_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> us(repeat);
  for (int i = 0; i < repeat; ++i) {
    p.step = 1000 + i;
    VQRT_CUDA_CHECK(cudaEventRecord(start, stream));
    vqrt::cuda::sampling_launch(p, stream);
    VQRT_CUDA_CHECK(cudaEventRecord(stop, stream));
    VQRT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    VQRT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    us[i] = ms * 1000.0;
  }
  VQRT_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < repeat; ++i) {
    p.step = 5000 + i;
    vqrt::cuda::sampling_launch(p, stream);
  }
  VQRT_CUDA_CHECK(cudaEventRecord(stop, stream));
  VQRT_CUDA_CHECK(cudaEventSynchronize(stop));
  float total_ms = 0.0f;
  VQRT_CUDA_CHECK(cudaEventElapsedTime(&total_ms, start, stop));

  // The same step on both sides: the GPU tokens must be the CPU's.
  p.step = 42;
  vqrt::cuda::sampling_launch(p, stream);
  std::vector<int64_t> gpu(c.batch), cpu(c.batch);
  VQRT_CUDA_CHECK(cudaStreamSynchronize(stream));
  d_tokens.download(gpu.data(), d_tokens.bytes());
  vqrt::sample_logits(logits.data(), c.batch, c.vocab, seeds.data(), 42, sp, cpu.data());
  const bool match = gpu == cpu;
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);

  char line[512];
  std::snprintf(line, sizeof line,
                "{\"vocab\": %lld, \"batch\": %lld, \"top_k\": %lld, \"top_p\": %g, "
                "\"temperature\": %g, \"greedy\": %s, \"us_median\": %.2f, \"us_p10\": %.2f, "
                "\"us_p90\": %.2f, \"us_min\": %.2f, \"us_back_to_back\": %.2f, "
                "\"tokens_match_cpu\": %s}",
                (long long)c.vocab, (long long)c.batch, (long long)c.top_k, c.top_p,
                c.temperature, c.greedy ? "true" : "false", percentile(us, 0.5),
                percentile(us, 0.1), percentile(us, 0.9), percentile(us, 0.0),
                total_ms * 1000.0 / repeat, match ? "true" : "false");
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 200;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--repeat N]\n", argv[0]);
      return 2;
    }
  }
  if (vqrt_cuda_device_count() == 0) {
    std::printf("{\"error\": \"no CUDA device\"}\n");
    return 1;
  }
  try {
    int device = 0;
    cudaDeviceProp prop;
    VQRT_CUDA_CHECK(cudaGetDevice(&device));
    VQRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    const Config configs[] = {
        {16384, 64, 600, 1.0f, 1.0f, false},  // issue 7's target configuration
        {16384, 64, 600, 0.9f, 1.0f, false},  {16384, 64, 600, 1.0f, 0.7f, false},
        {16384, 1, 600, 1.0f, 1.0f, false},   {16384, 64, 100, 1.0f, 1.0f, false},
        {16384, 64, 16384, 1.0f, 1.0f, false}, {1024, 64, 100, 0.9f, 1.0f, false},
        {1024, 1, 100, 1.0f, 1.0f, false},    {16384, 64, 1, 1.0f, 1.0f, true},
    };
    std::mt19937_64 rng(1);
    std::string results;
    bool all_match = true;
    double target_us = 0.0;
    for (const Config& c : configs) {
      const std::string r = run(c, repeat, rng);
      all_match = all_match && r.find("\"tokens_match_cpu\": true") != std::string::npos;
      if (results.empty()) target_us = std::atof(r.c_str() + r.find("\"us_median\": ") + 13);
      results += (results.empty() ? "\n  " : ",\n  ") + r;
    }
    std::printf("{\"gpu\": \"%s\", \"sm_count\": %d, \"repeat\": %d,\n \"target\": {\"config\": "
                "\"V 16384, batch 64, top_k 600\", \"limit_us\": 20, \"us_median\": %.2f, "
                "\"met\": %s},\n \"all_tokens_match_cpu\": %s,\n \"results\": [%s\n]}\n",
                prop.name, prop.multiProcessorCount, repeat, target_us,
                target_us <= 20.0 ? "true" : "false", all_match ? "true" : "false",
                results.c_str());
    return all_match ? 0 : 1;
  } catch (const std::exception& e) {
    std::string what = e.what();  // as a JSON string: no quotes or backslashes inside
    std::replace(what.begin(), what.end(), '"', '\'');
    std::replace(what.begin(), what.end(), '\\', '/');
    std::printf("{\"error\": \"%s\"}\n", what.c_str());
    return 1;
  }
}
