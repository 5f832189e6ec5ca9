// Embedding gather: one block of 256 threads per row, reading the two table rows coalesced.
#include "cuda/embedding.cuh"

#include <climits>

#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    embedding_kernel(const int64_t* __restrict__ tokens, const int64_t* __restrict__ positions,
                     const float* __restrict__ tok_emb, const float* __restrict__ pos_emb,
                     __half* __restrict__ x, int32_t* error, int c, int64_t vocab,
                     int64_t block_size) {
  const int64_t row = blockIdx.x;
  const int64_t token = tokens[row], pos = positions[row];
  __half* xr = x + row * c;
  if (token < 0 || token >= vocab || pos < 0 || pos >= block_size) {
    for (int i = threadIdx.x; i < c; i += kThreads) xr[i] = __float2half_rn(0.0f);
    if (threadIdx.x == 0 && error != nullptr) *error = 1;
    return;
  }
  const float* t = tok_emb + token * c;
  const float* p = pos_emb + pos * c;
  for (int i = threadIdx.x; i < c; i += kThreads) xr[i] = __float2half_rn(t[i] + p[i]);
}

}  // namespace

void EmbeddingParams::check() const {
  VQRT_CHECK(rows >= 0 && rows <= INT32_MAX, "embedding: rows must be in [0, " << INT32_MAX
                                                                               << "], got " << rows);
  // The per-thread loop i += kThreads stays below 2^31.
  VQRT_CHECK(c >= 1 && c <= INT32_MAX - kThreads,
             "embedding: c must be in [1, " << INT32_MAX - kThreads << "], got " << c);
  VQRT_CHECK(vocab >= 1 && block_size >= 1, "embedding: vocab and block_size must be >= 1, got "
                                                << vocab << " and " << block_size);
  VQRT_CHECK(rows == 0 || (tokens != nullptr && positions != nullptr && tok_emb != nullptr &&
                           pos_emb != nullptr && x != nullptr),
             "embedding: null device pointer");
}

void embedding_launch(const EmbeddingParams& p, cudaStream_t stream) {
  p.check();
  if (p.rows == 0) return;
  embedding_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      p.tokens, p.positions, p.tok_emb, p.pos_emb, p.x, p.error, static_cast<int>(p.c), p.vocab,
      p.block_size);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace vqrt::cuda
