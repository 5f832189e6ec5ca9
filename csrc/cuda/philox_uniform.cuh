// Philox uniforms on the device: the GPU twin of philox_uniform() in csrc/philox.h, used by the
// sampling kernels (issue 7) and tested bit for bit against the CPU stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace vqrt::cuda {

struct PhiloxUniformParams {
  const uint64_t* seeds;  // [n] device, one seed per row
  double* out;            // [n] device, out[i] = philox_uniform(seeds[i], step, stream)
  int64_t n;
  uint64_t step;
  uint64_t stream;
  void check() const;
};

void philox_uniform_launch(const PhiloxUniformParams& p, cudaStream_t stream);

// Host-to-host convenience for tests: copies seeds in, runs the kernel, copies uniforms out.
void philox_uniform_host(const uint64_t* seeds, int64_t n, uint64_t step, uint64_t stream, double* out);

}  // namespace vqrt::cuda
