// Appends new keys and values to one layer's fp16 KV cache on the GPU: the CUDA twin of the cache
// write in Transformer::attention_rows (csrc/transformer.cpp, which copies into its fp32 cache).
//   cache[b, h, positions[b] + t, :] = new[b, t, h, :]   for t < n_new
// The sources are rows of the qkv projection [batch * n_new, 3C] (keys at column C, values at
// 2C, head h at h * D within them), so the kernel takes a row stride rather than a packed copy.
// Rows whose positions[b] + n_new would leave [0, max_len] are not written and set *error to 1.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vqrt::cuda {

struct KvAppendParams {
  const __half* k_new = nullptr;     // [batch, n_new, heads * head_dim], rows src_row_stride apart
  const __half* v_new = nullptr;     // same layout as k_new
  int64_t src_row_stride = 0;        // elements between rows (b, t) and (b, t + 1); >= heads * D
  __half* k_cache = nullptr;         // [batch_max, heads, max_len, head_dim] (one layer's keys)
  __half* v_cache = nullptr;         // same layout (one layer's values)
  const int64_t* positions = nullptr;  // [batch] device: the first new position of row b
  int32_t* error = nullptr;          // [1] device or null
  int64_t batch = 0;                 // rows written (<= the cache's batch_max), in [0, 2^31)
  int64_t n_new = 0;                 // new positions per row, >= 1
  int64_t heads = 0;                 // in [1, 65535]
  int64_t head_dim = 0;              // >= 1
  int64_t max_len = 0;               // T_max, >= 1
  void check() const;                // throws vqrt::Error
};

// One block per (row, new position, head); enqueued on `stream`, no synchronisation.
void kv_append_launch(const KvAppendParams& p, cudaStream_t stream);

}  // namespace vqrt::cuda
