// LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, eps inside the sqrt).
//   x, y:        [rows, c] float32 (y may be x)
//   gamma, beta: [c]
// Mean and variance are accumulated in double: the rows are short and this keeps the result
// within fp32 rounding of torch's however c is split. The plain loop is the CPU path and the
// reference for the CUDA kernel (issue 7).
#pragma once
#include <cstdint>

namespace vqrt {

void layer_norm(const float* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                float eps, float* y);

}  // namespace vqrt
