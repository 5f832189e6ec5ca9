// cuBLAS through dlopen: the handful of entry points vqrt calls, declared here with the C ABI
// and the enum values of cublas_api.h / library_types.h (stable since CUDA 11), so no cuBLAS
// header or library is needed at build time.
#include "cuda/cublas_gemm.cuh"

#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

using Status = int;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
constexpr int kOpN = 0, kOpT = 1;               // cublasOperation_t
constexpr int kComputeF32 = 68;                 // CUBLAS_COMPUTE_32F
constexpr int kGemmDefault = -1;                // CUBLAS_GEMM_DEFAULT
constexpr size_t kWorkspaceBytes = 32u << 20;   // cuBLAS's recommendation for Hopper

struct Api {
  Status (*create)(void** handle);
  Status (*destroy)(void* handle);
  Status (*set_stream)(void* handle, cudaStream_t stream);
  Status (*set_workspace)(void* handle, void* workspace, size_t bytes);
  Status (*gemm_ex)(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                    const void* a, cudaDataType a_type, int lda, const void* b,
                    cudaDataType b_type, int ldb, const void* beta, void* c, cudaDataType c_type,
                    int ldc, int compute_type, int algo);
  std::string error;  // why loading failed; empty when every entry point was found
};

const Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    // Versioned names first: libcublas.so is a development symlink to any major version.
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (lib == nullptr) {
      a.error = "libcublas.so (CUDA 12 or 13) could not be loaded: install cuBLAS (the CUDA "
                "toolkit; or pip install nvidia-cublas, whose CUDA 13 library lies in "
                "site-packages/nvidia/cu13/lib) and put it on LD_LIBRARY_PATH";
      return;
    }
    auto find = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      if (fn == nullptr && a.error.empty()) a.error = std::string("libcublas lacks ") + symbol;
    };
    find(a.create, "cublasCreate_v2");
    find(a.destroy, "cublasDestroy_v2");
    find(a.set_stream, "cublasSetStream_v2");
    find(a.set_workspace, "cublasSetWorkspace_v2");
    find(a.gemm_ex, "cublasGemmEx");
  });
  return a;
}

// A failing cuBLAS call is the machine's fault, not the caller's: std::runtime_error (as the
// CUDA checks), not vqrt::Error.
void check_status(Status status, const char* call) {
  if (status != 0) {
    throw std::runtime_error(std::string("cuBLAS ") + call + " failed with status " +
                             std::to_string(status));
  }
}

}  // namespace

bool cublas_available() { return api().error.empty(); }

void GemmParams::check() const {
  VQRT_CHECK(x != nullptr && w != nullptr && y != nullptr, "gemm: null device pointer");
  VQRT_CHECK(rows >= 1 && rows <= INT_MAX && n >= 1 && n <= INT_MAX && k >= 1 && k <= INT_MAX,
             "gemm: rows, n, k must be in [1, 2^31), got " << rows << ", " << n << ", " << k);
  VQRT_CHECK(x_row_stride >= k && x_row_stride <= INT_MAX,
             "gemm: x_row_stride must be in [k, 2^31), got " << x_row_stride);
}

CublasGemm::CublasGemm(cudaStream_t stream) {
  const Api& a = api();
  VQRT_CHECK(a.error.empty(), a.error);
  check_status(a.create(&handle_), "cublasCreate");
  try {
    check_status(a.set_stream(handle_, stream), "cublasSetStream");
    VQRT_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
    check_status(a.set_workspace(handle_, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
  } catch (...) {
    if (workspace_ != nullptr) cudaFree(workspace_);
    a.destroy(handle_);
    throw;
  }
}

CublasGemm::~CublasGemm() {
  api().destroy(handle_);
  cudaFree(workspace_);
}

void CublasGemm::run(const GemmParams& p) {
  p.check();
  // Row-major y = x W^T is column-major y^T = W x^T: W's buffer read as column-major [k, n]
  // and transposed, x's as column-major [k, rows] with leading dimension x_row_stride.
  check_status(api().gemm_ex(handle_, kOpT, kOpN, static_cast<int>(p.n), static_cast<int>(p.rows),
                             static_cast<int>(p.k), &p.alpha, p.w, CUDA_R_16F,
                             static_cast<int>(p.k), p.x, CUDA_R_16F,
                             static_cast<int>(p.x_row_stride), &p.beta, p.y,
                             p.y_fp32 ? CUDA_R_32F : CUDA_R_16F, static_cast<int>(p.n),
                             kComputeF32, kGemmDefault),
               "cublasGemmEx");
}

}  // namespace vqrt::cuda
