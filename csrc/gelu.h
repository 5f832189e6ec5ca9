// GELU with the exact erf form, as torch.nn.GELU(): y = x/2 (1 + erf(x / sqrt 2)), in place.
//   x: [n] float32
// generic: std::erf (the reference); AVX2 / AVX-512: the rational erf of simd_math.h (absolute
// error below 5e-7 in erf). Chosen at run time like the other CPU kernels.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace vqrt {

using GeluKernel = void (*)(float* x, int64_t n);

// The kernel for `isa`; throws vqrt::Error when this CPU cannot run it.
GeluKernel gelu_kernel(CpuIsa isa);

}  // namespace vqrt
