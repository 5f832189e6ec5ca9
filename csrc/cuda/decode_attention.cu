// Decode attention: blocks of 128 threads; block (b * heads + h, split) walks its slice of the
// keys in tiles of 128 with an online softmax (running max m, running sum l, output rescaled by
// exp(m_old - m_new) when the max grows).
//   scores: thread j scores key tile + j, reading the key row with 16-byte loads when D % 8 == 0
//           (q is broadcast from shared memory);
//   p.v:    thread (g, d) accumulates dimension d over the tile's keys g, g + G, ... (G = 128 / D
//           groups when D < 128, else one group with dimensions d and d + 128), so a warp reads
//           one value row coalesced; groups are summed at the end.
#include "cuda/decode_attention.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "cuda/block_ops.cuh"
#include "cuda/cuda_common.cuh"
#include "errors.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kTile = kThreads;
constexpr int64_t kMaxLen = INT32_MAX - 2 * kTile;
constexpr int kMaxHeadDim = static_cast<int>(kDecodeAttentionMaxHeadDim);
static_assert(kMaxHeadDim <= 2 * kThreads, "a thread holds at most two output dimensions");
constexpr int kMinKeysPerSplit = 32;
constexpr int kMaxAutoSplits = 64;

struct Args {
  const __half* q;
  int64_t q_row_stride;
  const __half* k_cache;
  const __half* v_cache;
  const int64_t* positions;
  __half* out;
  int64_t out_row_stride;
  int32_t* error;
  int64_t heads;
  int head_dim;
  int max_len;
  float scale;
  int splits;
  float* partial;  // [batch * heads, splits, 2 + head_dim]: m, l, unnormalised output
  int64_t queries_per_row;  // query b reads cache row b / queries_per_row
};

// q . k over D: qs in shared memory (fp32), k one fp16 cache row.
__device__ __forceinline__ float dot_q_k(const float* qs, const __half* k, int D) {
  float acc = 0.0f;
  if ((D & 7) == 0 && (reinterpret_cast<uintptr_t>(k) & 15) == 0) {
    for (int d = 0; d < D; d += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(k + d);
      const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __half22float2(h2[e]);
        acc = fmaf(qs[d + 2 * e], f.x, acc);
        acc = fmaf(qs[d + 2 * e + 1], f.y, acc);
      }
    }
  } else {
    for (int d = 0; d < D; ++d) acc = fmaf(qs[d], __half2float(k[d]), acc);
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads) decode_attention_kernel(const Args a) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float ps[kTile];
  __shared__ float scratch[32];
  __shared__ float group_acc[kThreads];
  const int tid = threadIdx.x;
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int split = blockIdx.y;
  const int D = a.head_dim;

  const int64_t pos = a.positions[b];
  const bool valid = pos >= 0 && pos < a.max_len;
  if (!valid && tid == 0 && split == 0 && h == 0 && a.error != nullptr) *a.error = 1;
  const int n_keys = valid ? static_cast<int>(pos) + 1 : 0;
  const int chunk = (a.max_len + a.splits - 1) / a.splits;
  const int t0 = split * chunk;                 // this block's slice [t0, t1) of the keys
  const int t1 = min(t0 + chunk, n_keys);

  const __half* qh = a.q + b * a.q_row_stride + h * D;
  for (int d = tid; d < D; d += kThreads) qs[d] = __half2float(qh[d]);
  __syncthreads();
  const int64_t cache_row = b / a.queries_per_row;
  const int64_t head = (cache_row * a.heads + h) * static_cast<int64_t>(a.max_len) * D;
  const __half* kh = a.k_cache + head;  // [max_len, D]
  const __half* vh = a.v_cache + head;

  const bool wide = D >= kThreads;
  const int groups = wide ? 1 : kThreads / D;
  const int g = wide ? 0 : tid / D;
  const int d0 = wide ? tid : tid % D;
  const bool pv = g < groups;
  const bool second = wide && tid + kThreads < D;  // this thread's second dimension
  float acc0 = 0.0f, acc1 = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int tile = t0; tile < t1; tile += kTile) {  // block-uniform bounds
    const int n = min(kTile, t1 - tile);
    float s = -INFINITY;
    if (tid < n) s = dot_q_k(qs, kh + static_cast<int64_t>(tile + tid) * D, D) * a.scale;
    const float m_new = fmaxf(m, block_all_reduce(s, MaxOp(), scratch));
    const float p = tid < n ? expf(s - m_new) : 0.0f;
    ps[tid] = p;
    const float tile_sum = block_all_reduce(p, SumOp(), scratch);  // its barriers publish ps
    const float correction = expf(m - m_new);                     // 0 on the first tile
    l = l * correction + tile_sum;
    m = m_new;
    acc0 *= correction;
    acc1 *= correction;
    if (pv) {
      for (int j = g; j < n; j += groups) {
        const float pj = ps[j];
        const __half* vr = vh + static_cast<int64_t>(tile + j) * D;
        acc0 = fmaf(pj, __half2float(vr[d0]), acc0);
        if (second) acc1 = fmaf(pj, __half2float(vr[d0 + kThreads]), acc1);
      }
    }
    __syncthreads();  // ps is rewritten by the next tile
  }

  group_acc[tid] = acc0;
  __syncthreads();
  float total0 = 0.0f;  // dimension tid (< D), summed over the groups
  if (tid < D) {
    for (int gg = 0; gg < groups; ++gg) total0 += group_acc[gg * D + tid];
  }
  if (a.splits == 1) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    __half* o = a.out + b * a.out_row_stride + h * D;
    if (tid < D) o[tid] = __float2half_rn(total0 * inv);
    if (second) o[tid + kThreads] = __float2half_rn(acc1 * inv);
  } else {
    float* part = a.partial + (bh * a.splits + split) * (2 + D);
    if (tid == 0) {
      part[0] = m;  // -inf and 0 for an empty slice
      part[1] = l;
    }
    if (tid < D) part[2 + tid] = total0;
    if (second) part[2 + tid + kThreads] = acc1;
  }
}

// Merges the slices of one (b, h): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void __launch_bounds__(kThreads) decode_attention_merge_kernel(const Args a) {
  __shared__ float weight[kDecodeAttentionMaxSplits];
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int D = a.head_dim, stride = 2 + D;
  const float* part = a.partial + bh * a.splits * stride;
  float M = -INFINITY;
  for (int s = 0; s < a.splits; ++s) M = fmaxf(M, part[s * stride]);
  for (int s = threadIdx.x; s < a.splits; s += kThreads) {
    weight[s] = part[s * stride + 1] > 0.0f ? expf(part[s * stride] - M) : 0.0f;
  }
  __syncthreads();
  float L = 0.0f;
  for (int s = 0; s < a.splits; ++s) L += part[s * stride + 1] * weight[s];
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;  // 0: no keys (a bad position)
  __half* o = a.out + b * a.out_row_stride + h * D;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float acc = 0.0f;
    for (int s = 0; s < a.splits; ++s) acc = fmaf(part[s * stride + 2 + d], weight[s], acc);
    o[d] = __float2half_rn(acc * inv);
  }
}

}  // namespace

int decode_attention_splits(int64_t batch, int64_t heads, int64_t max_len, int sm_count) {
  const int64_t pairs = batch * heads;
  if (pairs <= 0 || sm_count <= 0 || pairs >= sm_count) return 1;
  const int64_t want = (2 * static_cast<int64_t>(sm_count) + pairs - 1) / pairs;
  const int64_t useful = (max_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  return static_cast<int>(std::max<int64_t>(1, std::min({want, useful, int64_t(kMaxAutoSplits)})));
}

size_t decode_attention_workspace_bytes(int64_t batch, int64_t heads, int64_t head_dim, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(batch) * static_cast<size_t>(heads) * static_cast<size_t>(splits) *
         static_cast<size_t>(head_dim + 2) * sizeof(float);
}

void DecodeAttentionParams::check() const {
  VQRT_CHECK(batch >= 0 && heads >= 1 && batch * heads <= INT32_MAX,
             "decode_attention: batch must be >= 0 and heads >= 1 with batch * heads < 2^31, got "
                 << batch << " x " << heads);
  VQRT_CHECK(head_dim >= 1 && head_dim <= kDecodeAttentionMaxHeadDim,
             "decode_attention: head_dim must be in [1, " << kDecodeAttentionMaxHeadDim << "], got "
                                                          << head_dim);
  // The kernel's int arithmetic (a slice's end, the tile loop) stays below 2^31.
  VQRT_CHECK(max_len >= 1 && max_len <= kMaxLen,
             "decode_attention: max_len must be in [1, " << kMaxLen << "], got " << max_len);
  VQRT_CHECK(splits >= 1 && splits <= kDecodeAttentionMaxSplits,
             "decode_attention: splits must be in [1, " << kDecodeAttentionMaxSplits << "], got "
                                                        << splits);
  VQRT_CHECK(q_row_stride >= heads * head_dim && out_row_stride >= heads * head_dim,
             "decode_attention: row strides (q " << q_row_stride << ", out " << out_row_stride
                                                 << ") must be >= heads * head_dim = "
                                                 << heads * head_dim);
  VQRT_CHECK(std::isfinite(scale), "decode_attention: scale must be finite, got " << scale);
  VQRT_CHECK(queries_per_row >= 1 && batch % queries_per_row == 0,
             "decode_attention: batch " << batch << " must be a multiple of queries_per_row "
                                        << queries_per_row << " (>= 1)");
  VQRT_CHECK(batch == 0 || (q != nullptr && k_cache != nullptr && v_cache != nullptr &&
                            positions != nullptr && out != nullptr),
             "decode_attention: null device pointer");
  const size_t need = decode_attention_workspace_bytes(batch, heads, head_dim, splits);
  VQRT_CHECK(need == 0 || (workspace != nullptr && workspace_bytes >= need),
             "decode_attention: " << splits << " splits need a workspace of " << need
                                  << " bytes, got " << (workspace == nullptr ? 0 : workspace_bytes));
}

void decode_attention_launch(const DecodeAttentionParams& p, cudaStream_t stream) {
  p.check();
  if (p.batch == 0) return;
  const Args a{p.q,        p.q_row_stride, p.k_cache,
               p.v_cache,  p.positions,    p.out,
               p.out_row_stride, p.error,  p.heads,
               static_cast<int>(p.head_dim), static_cast<int>(p.max_len), p.scale,
               p.splits,   p.splits > 1 ? p.workspace : nullptr, p.queries_per_row};
  const unsigned pairs = static_cast<unsigned>(p.batch * p.heads);
  decode_attention_kernel<<<dim3(pairs, static_cast<unsigned>(p.splits)), kThreads, 0, stream>>>(a);
  VQRT_CUDA_CHECK(cudaGetLastError());
  if (p.splits > 1) {
    decode_attention_merge_kernel<<<pairs, kThreads, 0, stream>>>(a);
    VQRT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace vqrt::cuda
