// KV append: grid (batch * n_new, heads), each block copies one head's D keys and D values.
#include "cuda/kv_append.cuh"

#include <climits>

#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    kv_append_kernel(const __half* __restrict__ k_new, const __half* __restrict__ v_new,
                     int64_t src_row_stride, __half* __restrict__ k_cache,
                     __half* __restrict__ v_cache, const int64_t* __restrict__ positions,
                     int32_t* error, int64_t n_new, int64_t heads, int head_dim, int64_t max_len) {
  const int64_t bt = blockIdx.x;  // row b * n_new + t of the sources
  const int64_t b = bt / n_new, t = bt % n_new;
  const int64_t h = blockIdx.y;
  const int64_t start = positions[b];
  if (start < 0 || start > max_len - n_new) {
    if (threadIdx.x == 0 && t == 0 && h == 0 && error != nullptr) *error = 1;
    return;
  }
  const int64_t src = bt * src_row_stride + h * head_dim;
  const int64_t dst = ((b * heads + h) * max_len + start + t) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += kThreads) {
    k_cache[dst + d] = k_new[src + d];
    v_cache[dst + d] = v_new[src + d];
  }
}

}  // namespace

void KvAppendParams::check() const {
  VQRT_CHECK(batch >= 0 && n_new >= 1 && batch * n_new <= INT32_MAX,
             "kv_append: batch must be >= 0 and n_new >= 1 with batch * n_new < 2^31, got batch "
                 << batch << ", n_new " << n_new);
  VQRT_CHECK(heads >= 1 && heads <= 65535, "kv_append: heads must be in [1, 65535], got " << heads);
  VQRT_CHECK(head_dim >= 1 && head_dim <= INT32_MAX / 2,
             "kv_append: head_dim must be >= 1, got " << head_dim);
  VQRT_CHECK(max_len >= 1, "kv_append: max_len must be >= 1, got " << max_len);
  VQRT_CHECK(n_new <= max_len, "kv_append: n_new " << n_new << " exceeds max_len " << max_len);
  VQRT_CHECK(src_row_stride >= heads * head_dim, "kv_append: src_row_stride "
                                                     << src_row_stride << " is below heads * head_dim = "
                                                     << heads * head_dim);
  VQRT_CHECK(batch == 0 || (k_new != nullptr && v_new != nullptr && k_cache != nullptr &&
                            v_cache != nullptr && positions != nullptr),
             "kv_append: null device pointer");
}

void kv_append_launch(const KvAppendParams& p, cudaStream_t stream) {
  p.check();
  if (p.batch == 0) return;
  const dim3 grid(static_cast<unsigned>(p.batch * p.n_new), static_cast<unsigned>(p.heads));
  kv_append_kernel<<<grid, kThreads, 0, stream>>>(p.k_new, p.v_new, p.src_row_stride, p.k_cache,
                                                  p.v_cache, p.positions, p.error, p.n_new,
                                                  p.heads, static_cast<int>(p.head_dim), p.max_len);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace vqrt::cuda
