// Bias + GELU: a 2-D grid, blocks of 256 columns by one row at a time (striding over rows), so
// the column of each element is known without a 64-bit division. Elementwise: every output
// depends on its own input only, which is what makes in-place use safe.
#include "cuda/bias_gelu.cuh"

#include <algorithm>
#include <climits>

#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;
constexpr float kInvSqrt2 = 0.70710678118654752f;

__global__ void __launch_bounds__(kThreads)
    bias_gelu_kernel(const __half* x, const float* __restrict__ bias, __half* y, int64_t rows, int n,
                     bool gelu) {
  const int col = blockIdx.x * kThreads + threadIdx.x;
  if (col >= n) return;
  const float b = bias != nullptr ? bias[col] : 0.0f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t i = r * n + col;
    const float v = __half2float(x[i]) + b;
    y[i] = __float2half_rn(gelu ? 0.5f * v * (1.0f + erff(v * kInvSqrt2)) : v);  // gelu.cpp's
  }
}

}  // namespace

void BiasGeluParams::check() const {
  VQRT_CHECK(rows >= 0, "bias_gelu: rows must be >= 0, got " << rows);
  VQRT_CHECK(n >= 1 && n <= INT32_MAX - kThreads, "bias_gelu: n must be in [1, "
                                                       << INT32_MAX - kThreads << "], got " << n);
  VQRT_CHECK(rows == 0 || (x != nullptr && y != nullptr), "bias_gelu: null device pointer");
}

void bias_gelu_launch(const BiasGeluParams& p, cudaStream_t stream) {
  p.check();
  if (p.rows == 0) return;
  const dim3 grid(static_cast<unsigned>((p.n + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(p.rows, kMaxGridY)));
  bias_gelu_kernel<<<grid, kThreads, 0, stream>>>(p.x, p.bias, p.y, p.rows, static_cast<int>(p.n),
                                                  p.gelu);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace vqrt::cuda
