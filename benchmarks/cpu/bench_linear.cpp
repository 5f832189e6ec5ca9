// One matrix product y = x W^T as a decode step runs it: the columns split over a thread pool,
// the weights streamed from DRAM (a ring of distinct matrices larger than the last-level cache,
// so no product finds its weights cached), for the shapes of models S and M.
//
//   bench_linear [--threads N] [--repeats R] [--bf16-activations]
//   (VQRT_CPU_ISA=avx2 etc. caps the kernels; --bf16-activations runs bf16 weights as
//   TransformerConfig::bf16_activations does: vdpbf16ps where the CPU has it)
//
// Prints, per dtype x shape x rows: the median time of one product over R timed rounds and the
// weight bytes it streamed per second. A program, not a test: numbers go to BENCHMARKS.md by
// hand, each beside a read-bandwidth figure measured in the same run.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "linear.h"
#include "thread_pool.h"

namespace {

using vqrt::DType;

constexpr int64_t kRingBytes = 256ll << 20;  // well past any L3 here (32 MB)

struct Shape {
  const char* what;
  int64_t n, k;
};

// Every weight dtype's bytes per element.
int64_t element_bytes(DType d) { return d == DType::f32 ? 4 : d == DType::i8 ? 1 : 2; }

// A ring of distinct random matrices of one shape and dtype, kRingBytes in all.
struct Ring {
  std::vector<std::vector<uint8_t>> data;
  std::vector<float> scale;  // int8 only, shared
  std::vector<vqrt::WeightView> views;

  Ring(DType dtype, Shape s, std::mt19937& rng) {
    const int64_t bytes = s.n * s.k * element_bytes(dtype);
    const int64_t count = std::max<int64_t>(4, kRingBytes / bytes);
    std::normal_distribution<float> normal(0.0f, 0.03f);
    scale.assign(s.n, 1.0f / 127);
    for (int64_t m = 0; m < count; ++m) {
      std::vector<uint8_t> w(bytes);
      for (int64_t i = 0; i < s.n * s.k; ++i) {
        const float v = normal(rng);
        switch (dtype) {
          case DType::f32: std::memcpy(&w[i * 4], &v, 4); break;
          case DType::f16: {
            const uint16_t h = vqrt::float_to_half(v);
            std::memcpy(&w[i * 2], &h, 2);
            break;
          }
          case DType::bf16: {
            const uint16_t b = vqrt::float_to_bf16(v);
            std::memcpy(&w[i * 2], &b, 2);
            break;
          }
          case DType::i8: {  // steps of 0.1 / 127, clamped (timings do not depend on values)
            const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(v * 1270.0f)));
            w[i] = static_cast<uint8_t>(static_cast<int8_t>(q));
            break;
          }
        }
      }
      data.push_back(std::move(w));
    }
    for (auto& w : data) {
      vqrt::WeightView v;
      v.dtype = dtype;
      v.data = w.data();
      v.scale = dtype == DType::i8 ? scale.data() : nullptr;
      v.n = s.n;
      v.k = s.k;
      views.push_back(v);
    }
  }
};

// Median seconds of one product over `repeats` rounds of the whole ring.
double time_product(const vqrt::LinearKernels& kernels, vqrt::ThreadPool& pool, const Ring& ring,
                    int64_t rows, int repeats, bool bf16_activations) {
  const int64_t n = ring.views[0].n, k = ring.views[0].k;
  std::vector<float> x(rows * k), y(rows * n);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  const int threads = pool.size();
  auto round = [&] {
    for (const vqrt::WeightView& w : ring.views) {
      pool.run(threads, [&](int, int64_t t) {
        vqrt::LinearArgs a{x.data(), rows, &w, nullptr, false, n * t / threads,
                           n * (t + 1) / threads, y.data()};
        vqrt::linear(kernels, a, bf16_activations);
      });
    }
  };
  round();  // warm-up: page faults, thread start
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    round();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                    ring.views.size());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int usage() {
  std::fprintf(stderr, "usage: bench_linear [--threads N] [--repeats R] [--bf16-activations]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, repeats = 7;
  bool bf16_activations = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bf16-activations") {
      bf16_activations = true;
      continue;
    }
    if (i + 1 >= argc) return usage();
    if (arg == "--threads") {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--repeats") {
      repeats = std::atoi(argv[++i]);
    } else {
      return usage();
    }
  }
  if (threads < 1 || repeats < 1) return usage();
  const vqrt::CpuIsa isa = vqrt::cpu_isa_active();
  const vqrt::LinearKernels& kernels = vqrt::linear_kernels(isa);
  vqrt::ThreadPool pool(threads);
  std::printf("isa %s%s, %d threads, median of %d rounds over a %lld MB ring of matrices\n",
              vqrt::cpu_isa_name(isa), bf16_activations ? " (bf16 activations)" : "", pool.size(), repeats,
              static_cast<long long>(kRingBytes >> 20));
  std::printf("%-5s %-22s %4s %10s %10s\n", "dtype", "shape (n x k)", "rows", "us", "GB/s");
  const Shape shapes[] = {{"S qkv 2304x768", 2304, 768},
                          {"S fc1 3072x768", 3072, 768},
                          {"S fc2 768x3072", 768, 3072},
                          {"M fc1 4096x1024", 4096, 1024}};
  std::mt19937 rng(0);
  const std::vector<DType> dtypes = bf16_activations ? std::vector<DType>{DType::bf16}
                                                     : std::vector<DType>{DType::bf16, DType::i8,
                                                                          DType::f32};
  for (DType dtype : dtypes) {
    for (const Shape& s : shapes) {
      const Ring ring(dtype, s, rng);
      for (int64_t rows : {1, 8}) {
        const double seconds = time_product(kernels, pool, ring, rows, repeats, bf16_activations);
        const double bytes = static_cast<double>(s.n * s.k * element_bytes(dtype));
        std::printf("%-5s %-22s %4lld %10.1f %10.1f\n", vqrt::dtype_name(dtype), s.what,
                    static_cast<long long>(rows), seconds * 1e6, bytes / seconds / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
