// LayerNorm: one block of 256 threads per row. Three passes over the row (mean, the sum of
// squared deviations, the output); the row is re-read from L1/L2 rather than held in shared
// memory, so any width works with the same kernel. Statistics in fp32 with the two-pass
// variance (no E[x^2] - E[x]^2 cancellation).
#include "cuda/layer_norm.cuh"

#include <climits>
#include <cmath>

#include "cuda/block_ops.cuh"
#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    layer_norm_kernel(const __half* x, const float* __restrict__ gamma,
                      const float* __restrict__ beta, __half* y, int c, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __half* xr = x + row * c;  // x and y may alias: no __restrict__
  __half* yr = y + row * c;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < c; i += kThreads) sum += __half2float(xr[i]);
  const float mean = block_all_reduce(sum, SumOp(), scratch) / static_cast<float>(c);
  float squares = 0.0f;
  for (int i = threadIdx.x; i < c; i += kThreads) {
    const float d = __half2float(xr[i]) - mean;
    squares += d * d;
  }
  const float variance = block_all_reduce(squares, SumOp(), scratch) / static_cast<float>(c);
  const float inv_std = 1.0f / sqrtf(variance + eps);
  // Every read of the row happened before the last barrier, so writing in place is safe.
  for (int i = threadIdx.x; i < c; i += kThreads) {
    yr[i] = __float2half_rn((__half2float(xr[i]) - mean) * inv_std * gamma[i] + beta[i]);
  }
}

}  // namespace

void LayerNormParams::check() const {
  VQRT_CHECK(rows >= 0 && rows <= INT32_MAX, "layer_norm: rows must be in [0, " << INT32_MAX
                                                                                << "], got " << rows);
  // The per-thread loop i += kThreads stays below 2^31.
  VQRT_CHECK(c >= 1 && c <= INT32_MAX - kThreads,
             "layer_norm: c must be in [1, " << INT32_MAX - kThreads << "], got " << c);
  VQRT_CHECK(std::isfinite(eps) && eps >= 0.0f, "layer_norm: eps must be finite and >= 0, got " << eps);
  VQRT_CHECK(rows == 0 || (x != nullptr && gamma != nullptr && beta != nullptr && y != nullptr),
             "layer_norm: null device pointer");
}

void layer_norm_launch(const LayerNormParams& p, cudaStream_t stream) {
  p.check();
  if (p.rows == 0) return;
  layer_norm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      p.x, p.gamma, p.beta, p.y, static_cast<int>(p.c), p.eps);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace vqrt::cuda
