#include "cuda/philox_uniform.cuh"

#include "cuda/cuda_common.cuh"
#include "errors.h"
#include "philox.h"

namespace vqrt::cuda {

__global__ void philox_uniform_kernel(const uint64_t* __restrict__ seeds, double* __restrict__ out,
                                      int64_t n, uint64_t step, uint64_t stream) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = philox_uniform(seeds[i], step, stream);
}

void PhiloxUniformParams::check() const {
  VQRT_CHECK(n >= 0, "philox_uniform: n must be >= 0, got " << n);
  VQRT_CHECK(n == 0 || (seeds != nullptr && out != nullptr), "philox_uniform: null device pointer");
}

void philox_uniform_launch(const PhiloxUniformParams& p, cudaStream_t stream) {
  p.check();
  if (p.n == 0) return;
  const int threads = 256;
  const int64_t blocks = (p.n + threads - 1) / threads;
  philox_uniform_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(p.seeds, p.out, p.n,
                                                                             p.step, p.stream);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

void philox_uniform_host(const uint64_t* seeds, int64_t n, uint64_t step, uint64_t stream, double* out) {
  uint64_t* d_seeds = nullptr;
  double* d_out = nullptr;
  try {
    VQRT_CUDA_CHECK(cudaMalloc(&d_seeds, sizeof(uint64_t) * n));
    VQRT_CUDA_CHECK(cudaMalloc(&d_out, sizeof(double) * n));
    VQRT_CUDA_CHECK(cudaMemcpy(d_seeds, seeds, sizeof(uint64_t) * n, cudaMemcpyHostToDevice));
    philox_uniform_launch({d_seeds, d_out, n, step, stream}, nullptr);
    VQRT_CUDA_CHECK(cudaMemcpy(out, d_out, sizeof(double) * n, cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(d_seeds);
    cudaFree(d_out);
    throw;
  }
  cudaFree(d_seeds);
  cudaFree(d_out);
}

}  // namespace vqrt::cuda
