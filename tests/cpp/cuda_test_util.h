// Shared by the GPU twin tests (test_cuda_*.cpp): the skip rule, fp16 conversions, random
// inputs, and the value-scaled comparison. A GPU test binary exits 77 (ctest: skipped) where no
// CUDA device is usable, so CI (no GPU) compiles and registers it without failing.
#pragma once
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/cuda_common.cuh"
#include "vqrt.h"

namespace cuda_test {

// main() of every GPU twin test: 77 without a device, else the registered tests.
inline int run_or_skip() {
  if (vqrt_cuda_device_count() == 0) {
    std::printf("SKIP: no CUDA device (built with CUDA, but no GPU or driver here)\n");
    return 77;
  }
  return check::run_tests();
}

inline std::vector<__half> to_half(const std::vector<float>& x) {
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = __float2half_rn(x[i]);
  return h;
}

inline std::vector<float> to_float(const std::vector<__half>& h) {
  std::vector<float> x(h.size());
  for (size_t i = 0; i < h.size(); ++i) x[i] = __half2float(h[i]);
  return x;
}

// Normal values (mean, sd) rounded to fp16, so the CPU oracle sees exactly what the GPU reads.
inline std::vector<float> random_half_values(std::mt19937_64& rng, size_t n, float mean, float sd) {
  std::normal_distribution<float> normal(mean, sd);
  std::vector<float> x(n);
  for (float& v : x) v = __half2float(__float2half_rn(normal(rng)));
  return x;
}

inline std::vector<float> random_floats(std::mt19937_64& rng, size_t n, float mean, float sd) {
  std::normal_distribution<float> normal(mean, sd);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

// Checks |got - ref| <= atol + rtol * |ref| elementwise (llm.c's tolerance that scales with the
// value); one failure line per call naming the worst element and how many failed.
inline void expect_near(const std::vector<float>& got, const std::vector<float>& ref, double atol,
                        double rtol, const std::string& what) {
  if (got.size() != ref.size()) {
    check::fail(__FILE__, __LINE__, what + ": size mismatch");
    return;
  }
  size_t bad = 0, worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(ref[i]));
    const double allowed = atol + rtol * std::fabs(double(ref[i]));
    const double excess = std::isnan(err) ? 1e300 : err - allowed;
    if (excess > 0.0) ++bad;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (bad > 0) {
    std::ostringstream os;
    os.precision(9);
    os << what << ": " << bad << " of " << got.size() << " elements off; worst [" << worst
       << "] got " << got[worst] << " ref " << ref[worst] << " (atol " << atol << ", rtol "
       << rtol << ")";
    check::fail(__FILE__, __LINE__, os.str());
  }
}

// Host vector <-> device buffer.
template <typename T>
vqrt::cuda::DeviceBuffer upload(const std::vector<T>& host) {
  vqrt::cuda::DeviceBuffer d(host.size() * sizeof(T));
  d.upload(host.data(), d.bytes());
  return d;
}

template <typename T>
std::vector<T> download(const vqrt::cuda::DeviceBuffer& d, size_t n) {
  std::vector<T> host(n);
  d.download(host.data(), n * sizeof(T));
  return host;
}

}  // namespace cuda_test
