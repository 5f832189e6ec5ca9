// LayerNorm on the GPU, fp16 in and out with fp32 statistics: the CUDA twin of vqrt::layer_norm
// (csrc/layer_norm.h, the oracle; it accumulates in double, so the two differ by rounding only).
//   y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta   (biased variance, as torch)
#pragma once
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vqrt::cuda {

struct LayerNormParams {
  const __half* x = nullptr;     // [rows, c] device
  const float* gamma = nullptr;  // [c] device
  const float* beta = nullptr;   // [c] device
  __half* y = nullptr;           // [rows, c] device; may be x (in place)
  int64_t rows = 0;              // >= 0 (0: nothing to do)
  int64_t c = 0;                 // in [1, 2^31 - 257]
  float eps = 1e-5f;             // finite, >= 0
  void check() const;            // throws vqrt::Error
};

// One block per row; enqueued on `stream`, no synchronisation.
void layer_norm_launch(const LayerNormParams& p, cudaStream_t stream);

}  // namespace vqrt::cuda
