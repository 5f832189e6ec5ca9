// Decode attention over an fp16 KV cache on the GPU: one query per (row, head) against the keys
// 0..positions[b] of that row's cache, fp32 math, fp16 out. The CUDA twin of the decode step's
// attention (csrc/attention.h, whose generic kernel is the oracle).
//   out[b, h, :] = softmax(q[b, h, :] . k[b, h, t, :] * scale over t <= p) v[b, h, t, :],
//   p = positions[b] (the query's own key is already in the cache: append first).
// Split along the sequence (flash-decoding): with `splits` > 1, each (b, h) gets `splits` blocks,
// one per slice of [0, max_len), each writing a partial (max score, sum of exp, unnormalised
// output) to the workspace, and a second kernel merges them. decode_attention_splits() picks the
// count from the shape alone (never from the positions, which live on the device), so a CUDA
// graph keeps one launch configuration.
// Rows with positions[b] outside [0, max_len) are written as zeros and set *error to 1.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vqrt::cuda {

constexpr int64_t kDecodeAttentionMaxHeadDim = 256;
constexpr int kDecodeAttentionMaxSplits = 256;

struct DecodeAttentionParams {
  const __half* q = nullptr;          // [batch, heads, head_dim]: row b at q + b * q_row_stride
  int64_t q_row_stride = 0;           // >= heads * head_dim (3C inside the qkv projection)
  const __half* k_cache = nullptr;    // [batch_max, heads, max_len, head_dim] (one layer)
  const __half* v_cache = nullptr;    // same layout
  const int64_t* positions = nullptr; // [batch] device: the query's position
  __half* out = nullptr;              // [batch, heads, head_dim]: row b at out + b * out_row_stride
  int64_t out_row_stride = 0;         // >= heads * head_dim
  int32_t* error = nullptr;           // [1] device or null
  int64_t batch = 0;                  // >= 0, batch * heads < 2^31
  int64_t heads = 0;                  // >= 1
  int64_t head_dim = 0;               // in [1, 256]
  int64_t max_len = 0;                // T_max, in [1, 2^31 - 257]
  // A prefill's queries: query b reads cache row b / queries_per_row, so the L positions of a
  // sequence (b = row * L + t, positions[b] = t) attend causally to their own row's cache.
  int64_t queries_per_row = 1;
  float scale = 1.0f;                 // 1 / sqrt(head_dim) unless folded into q
  int splits = 1;                     // in [1, 256]; > 1 needs the workspace
  float* workspace = nullptr;         // decode_attention_workspace_bytes(...) bytes, device
  size_t workspace_bytes = 0;
  void check() const;                 // throws vqrt::Error
};

// Blocks per (row, head): 1 when batch * heads already fills the SMs, else about two blocks per
// SM, each slice holding at least 32 positions of max_len, at most 64 slices.
int decode_attention_splits(int64_t batch, int64_t heads, int64_t max_len, int sm_count);

// Workspace for `splits`: 0 for 1, else batch * heads * splits * (head_dim + 2) floats.
size_t decode_attention_workspace_bytes(int64_t batch, int64_t heads, int64_t head_dim, int splits);

// Enqueues one kernel (splits == 1) or two (partials, then the merge) on `stream`.
void decode_attention_launch(const DecodeAttentionParams& p, cudaStream_t stream);

}  // namespace vqrt::cuda
