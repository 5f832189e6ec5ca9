// GPU twin check: the device Philox stream equals the CPU stream bit for bit. Exits 77 (ctest:
// skipped) where no CUDA device is usable, e.g. CI.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda/philox_uniform.cuh"
#include "philox.h"
#include "vqrt.h"

int main() {
  if (vqrt_cuda_device_count() == 0) {
    std::printf("SKIP: no CUDA device (built with CUDA, but no GPU or driver here)\n");
    return 77;
  }
  const int64_t n = 100000;
  std::vector<uint64_t> seeds(n);
  for (int64_t i = 0; i < n; ++i) seeds[i] = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
  int failures = 0;
  for (uint64_t step : {uint64_t(0), uint64_t(1), uint64_t(1) << 40}) {
    std::vector<double> gpu(n);
    vqrt::cuda::philox_uniform_host(seeds.data(), n, step, 0, gpu.data());
    for (int64_t i = 0; i < n; ++i) {
      const double cpu = vqrt::philox_uniform(seeds[i], step, 0);
      if (cpu != gpu[i]) {
        if (failures < 5) std::printf("mismatch step %llu row %lld: cpu %.17g gpu %.17g\n",
                                      (unsigned long long)step, (long long)i, cpu, gpu[i]);
        ++failures;
      }
    }
  }
  std::printf("%d passed, %d failed\n", failures == 0 ? 1 : 0, failures == 0 ? 0 : 1);
  return failures == 0 ? 0 : 1;
}
