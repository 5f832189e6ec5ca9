// The CPU's arithmetic ceiling for the matrix kernels: multiply-adds per second with no memory
// traffic at all (16 independent accumulator chains per thread, enough to hide the latency), on
// 1 and on N threads, for the two instructions the bf16 products can use:
//   vfmadd231ps  fp32 x fp32 (the exact kernels: bf16 weights widened to fp32), 32 flops
//   vdpbf16ps    bf16 pairs summed into fp32 (bf16 activations), 64 flops
// A step can go no faster than its products' flops over these rates; BENCHMARKS.md sets issue
// 5's batched targets against them.
//
//   bench_peak_flops [--threads N]      (default: every core; other CPUs: says so, exits)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace {

constexpr long kIterations = 50000000;
constexpr int kChains = 16;

__attribute__((target("avx512f"))) double fp32_fma_flops() {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(c * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
  for (long it = 0; it < kIterations; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  float sum = 0;
  for (int c = 0; c < kChains; ++c) sum += _mm512_reduce_add_ps(acc[c]);
  if (sum == 1234.5f) std::puts("");  // keeps the loop's result live
  return double(kIterations) * kChains * 16 * 2;
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) double bf16_dot_flops() {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(c * 1e-3f);
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3800);
  for (long it = 0; it < kIterations; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  float sum = 0;
  for (int c = 0; c < kChains; ++c) sum += _mm512_reduce_add_ps(acc[c]);
  if (sum == 1234.5f) std::puts("");
  return double(kIterations) * kChains * 32 * 2;
}

// GFLOP/s of `loop` run at once on `threads` threads (the sum of their rates).
double rate(double (*loop)(), int threads) {
  std::vector<double> per_thread(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto start = std::chrono::steady_clock::now();
      const double flops = loop();
      per_thread[t] =
          flops / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    });
  }
  for (std::thread& t : pool) t.join();
  double total = 0;
  for (double r : per_thread) total += r;
  return total / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (argc == 3 && std::strcmp(argv[1], "--threads") == 0) {
    threads = std::atoi(argv[2]);
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: bench_peak_flops [--threads N]\n");
    return 2;
  }
  const vqrt::CpuFeatures& f = vqrt::cpu_features();
  if (!f.avx512f || !f.avx512bw || !f.avx512_bf16) {
    std::fprintf(stderr, "bench_peak_flops: this CPU lacks AVX-512 BF16; nothing to measure\n");
    return 0;
  }
  for (int n : {1, threads}) {
    std::printf("%d thread(s): vfmadd231ps fp32 %.1f GFLOP/s, vdpbf16ps %.1f GFLOP/s\n", n,
                rate(fp32_fma_flops, n), rate(bf16_dot_flops, n));
    if (threads == 1) break;
  }
  return 0;
}

#else
int main() {
  std::fprintf(stderr, "bench_peak_flops: x86-64 only\n");
  return 0;
}
#endif
