// Attention of one query over a head's cached keys and values (the decode step's attention; a
// prefill runs it once per new position with the keys up to that position).
//   q:      [d]          one head of one query
//   k, v:   [n_keys, d]  that head's cache rows 0..n_keys-1 (row stride d: the KV cache is
//                        [n_layer, 2, B_max, H, T_max, D], so a head's rows are contiguous)
//   scores: [n_keys]     scratch
//   out:    [d]          softmax(q k^T * scale) v
// The cache rows are fp32 (k, v) or fp16 bit patterns (k16, v16, when set; widened exactly, so
// an fp16 cache gives the fp32 kernel's result on the rounded values).
// generic: plain loops and std::exp (the reference, and the CPU twin of issue 7's decode
// attention); AVX2 / AVX-512: vector dot products and the exp of simd_math.h.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace vqrt {

struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  int64_t n_keys;  // >= 1
  int64_t d;
  float scale;     // 1 / sqrt(d)
  float* scores;
  float* out;
  const uint16_t* k16 = nullptr;  // fp16 cache rows [n_keys, d] instead of k and v
  const uint16_t* v16 = nullptr;
};

using AttentionKernel = void (*)(const AttentionArgs& a);

// The kernel for `isa`; throws vqrt::Error when this CPU cannot run it.
AttentionKernel attention_kernel(CpuIsa isa);

}  // namespace vqrt
