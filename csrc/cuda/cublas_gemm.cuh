// fp16 matrix products through cuBLAS, loaded at run time (dlopen of libcublas.so.*), so vqrt
// builds where the CUDA toolkit has no cuBLAS (CI: nvcc only) and links nothing new; on a GPU
// machine the library that ships with the driver stack or the pip wheel (nvidia-cublas) is used.
//
//   y[rows, n] = alpha * x[rows, k] W[n, k]^T + beta * y      (row-major, fp32 accumulation)
//
// x and W are fp16; y is fp16 or fp32. x rows may be x_row_stride apart (>= k), which lets a
// product read every L-th row of a prefill (the last position of each sequence).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace vqrt::cuda {

struct GemmParams {
  const __half* x = nullptr;   // [rows, k], row r at x + r * x_row_stride, device
  int64_t x_row_stride = 0;    // >= k
  const __half* w = nullptr;   // [n, k] row-major, device
  void* y = nullptr;           // [rows, n] row-major, device: __half or float as y_fp32 says
  bool y_fp32 = false;
  int64_t rows = 0, n = 0, k = 0;  // each in [1, 2^31)
  float alpha = 1.0f;
  float beta = 0.0f;               // 1: accumulate into y (the residual connection)
  void check() const;              // throws vqrt::Error
};

// One cuBLAS handle bound to a stream, with a fixed workspace so that products can be captured
// in a CUDA graph (cuBLAS then allocates nothing). Not thread-safe: one per stream.
class CublasGemm {
 public:
  // Throws vqrt::Error when libcublas cannot be loaded, naming what was tried and the fix.
  explicit CublasGemm(cudaStream_t stream);
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  // Enqueues the product on the stream (no synchronisation).
  void run(const GemmParams& p);

 private:
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
};

// Whether libcublas can be loaded here (for tests that skip without it).
bool cublas_available();

}  // namespace vqrt::cuda
