// Shared by the .cu files: CUDA error checks that throw (never exit), reported with the call,
// the CUDA error string, and file:line.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace vqrt::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ") in " + expr + " at " + file + ":" +
                           std::to_string(line));
}

}  // namespace vqrt::cuda

#define VQRT_CUDA_CHECK(expr)                                                         \
  do {                                                                                \
    cudaError_t vqrt_cuda_err_ = (expr);                                              \
    if (vqrt_cuda_err_ != cudaSuccess) {                                              \
      ::vqrt::cuda::throw_cuda_error(vqrt_cuda_err_, #expr, __FILE__, __LINE__);      \
    }                                                                                 \
  } while (0)
