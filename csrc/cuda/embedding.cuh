// Token + position embedding gather on the GPU, fp32 tables (as the bundle stores them), fp16
// out: the CUDA twin of vqrt::embed_tokens (csrc/embedding.h, the oracle). The fp32 sum is the
// CPU's, rounded once to fp16, so the result is exact: half(tok_emb[tokens[r]] + pos_emb[pos[r]]).
// Ids outside their table are not read: the row is written as zeros and *error is set to 1.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vqrt::cuda {

struct EmbeddingParams {
  const int64_t* tokens = nullptr;     // [rows] device, each in [0, vocab)
  const int64_t* positions = nullptr;  // [rows] device, each in [0, block_size)
  const float* tok_emb = nullptr;      // [vocab, c] device
  const float* pos_emb = nullptr;      // [block_size, c] device
  __half* x = nullptr;                 // [rows, c] device out
  int32_t* error = nullptr;            // [1] device or null: set to 1 on an id out of range
  int64_t rows = 0;                    // in [0, 2^31)
  int64_t c = 0;                       // in [1, 2^31 - 257]
  int64_t vocab = 0;                   // >= 1
  int64_t block_size = 0;              // >= 1
  void check() const;                  // throws vqrt::Error
};

// One block per row; enqueued on `stream`, no synchronisation.
void embedding_launch(const EmbeddingParams& p, cudaStream_t stream);

}  // namespace vqrt::cuda
