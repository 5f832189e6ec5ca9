// Bias + GELU (erf form, torch.nn.GELU()) on the GPU, fp16 in and out, fp32 math: the CUDA twin
// of the MLP's `fc` epilogue, bias add then vqrt::gelu_kernel (csrc/gelu.h, the oracle).
//   y[r, i] = g(x[r, i] + bias[i]),  g(v) = v/2 (1 + erf(v / sqrt 2))
// With gelu false it is the bias add alone (the other products' epilogue), g(v) = v.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vqrt::cuda {

struct BiasGeluParams {
  const __half* x = nullptr;     // [rows, n] device
  const float* bias = nullptr;   // [n] device, or null for GELU alone
  __half* y = nullptr;           // [rows, n] device; may be x (in place)
  int64_t rows = 0;              // >= 0
  int64_t n = 0;                 // in [1, 2^31)
  bool gelu = true;              // false: y = x + bias
  void check() const;            // throws vqrt::Error
};

// Enqueued on `stream`, no synchronisation.
void bias_gelu_launch(const BiasGeluParams& p, cudaStream_t stream);

}  // namespace vqrt::cuda
