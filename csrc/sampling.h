// The token sampler: top-k, top-p and temperature sampling of one token per row of logits, in
// plain C++. It is the CPU path and the reference the CUDA twin must reproduce.
//
// Rules, per row x = logits[row, :] (V float32 values). Every step is specified, order included,
// so another implementation can reproduce the kept set, the weights and the token exactly.
//
//  0. Checks (vqrt::Error, output untouched): no NaN; no +inf (a masked token is -inf; +inf has no
//     probability meaning, so it is rejected rather than given a made-up share of the mass); not
//     every value -inf.
//  1. greedy: the token is argmax(x), the lowest index among equal maxima; top_k, top_p,
//     temperature and the seed do not change it (top_k and top_p are still range-checked).
//  2. s = x / temperature in float32 (IEEE division; skipped when temperature == 1, where it is the
//     identity). Temperature comes before filtering, as in taming-transformers. The largest s must
//     be finite (a tiny temperature can overflow it: that is an error).
//  3. top-k: t = the k-th largest s, counting repeats (radix selection, no sort; skipped when
//     k == V). Survivors are the tokens with s >= t and s > -inf, so ties at the k-th value are
//     all kept and more than k tokens can survive; -inf tokens have probability 0 and never survive.
//  4. Survivors are sorted by s descending, ties by token index ascending (-0 and +0 are equal).
//     This is the "walk order" used below. weight[j] = exp(double(s[j]) - double(s[0])) (double
//     exp; weight[0] = 1), total = weight[0] + weight[1] + ... summed in walk order, in double.
//  5. top-p (only when top_p < 1): with prob[j] = weight[j] / total and before[j] the sequential
//     double sum prob[0] + ... + prob[j-1] (before[0] = 0), token j and every later one are
//     removed at the first j where before[j] > double(top_p); so at least one token is kept. This
//     is transformers' top_k_top_p_filtering as taming uses it (the shifted "cumprobs > top_p"
//     mask), computed in double. top_p == 1 keeps everything: it deliberately avoids the
//     upstream fp32 quirk where a cumulative sum rounding above 1.0 drops tail tokens.
//     total is then re-summed over the kept prefix, in walk order.
//  6. Draw: u = philox_uniform(seed, step, 0), target = u * total; walking the kept tokens in walk
//     order with cum += weight[j] (double), the token is the first j with cum > target. If
//     rounding lets the walk finish without a pick, the token is the last kept token with a
//     nonzero weight.
//
// Rows are independent and a row's token depends only on its logits, its seed and the step: never
// on the batch around it, the thread count or the CPU ISA (every SIMD kernel below is exact).
// The one platform-dependent operation is exp (libm here, CUDA's exp on the GPU, both within an
// ulp), which can move a token only when u lands within ~1e-16 of a boundary of the CDF.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace vqrt {

struct SamplingParams {
  int64_t top_k = 0;          // 1 <= top_k <= V; there is no default, 0 is rejected
  float top_p = 1.0f;         // 0 < top_p <= 1; 1 disables top-p
  float temperature = 1.0f;   // finite and > 0 unless greedy
  bool greedy = false;        // argmax; temperature and seed are ignored
  int num_threads = 0;        // worker threads over rows, 0 = automatic; never changes results
};

// Row kernels: the hot loops over a row, one set per ISA, chosen at run time. Each is exact (max,
// IEEE division, comparisons), so every variant returns bit-identical results to the generic one.
struct RowKernels {
  CpuIsa isa;
  // Largest of x[0..n), n >= 1; NaN when any element is NaN. (-0 and +0 may come back either way.)
  float (*max)(const float* x, int64_t n);
  // y[i] = x[i] / t for i < n, a true division (not a multiply by 1/t).
  void (*divide)(const float* x, int64_t n, float t, float* y);
  // Writes the indices i with x[i] >= t to idx, ascending, and returns how many; x has no NaN.
  int64_t (*filter_ge)(const float* x, int64_t n, float t, int32_t* idx);
};

const RowKernels& row_kernels_generic();

// The kernels for `isa` (generic always works); throws vqrt::Error when this CPU cannot run them.
const RowKernels& row_kernels(CpuIsa isa);

// The SIMD kernels for avx2 or avx512, defined in sampling_simd.cpp; nullptr for generic and on
// CPUs other than x86. Callers use row_kernels(), which checks the CPU first.
const RowKernels* row_kernels_simd(CpuIsa isa);

// Draws one token per row (rules above). Rows are spread over worker threads; each worker's
// scratch (36 bytes per token of V) is kept between calls in a process-wide pool.
//   logits: [batch, vocab] float32, row-major
//   seeds:  [batch] one seed per row
//   out:    [batch] token ids in [0, vocab)
// Throws vqrt::Error for invalid arguments (out is then untouched); with several bad rows the
// error names the lowest one.
void sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                   uint64_t step, const SamplingParams& params, int64_t* out);
// The same with explicitly chosen row kernels (tests compare the variants through this).
void sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                   uint64_t step, const SamplingParams& params, int64_t* out,
                   const RowKernels& kernels);

// The distribution sample_logits draws from, computed by the same code: probs[row, token] =
// weight / total for kept tokens, 0 elsewhere (one-hot for greedy).
//   logits: [batch, vocab] float32; probs: [batch, vocab] float64
void sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                    const SamplingParams& params, double* probs);
void sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                    const SamplingParams& params, double* probs, const RowKernels& kernels);

// The k-th largest of s[0..n) counting repeats, 1 <= k <= n, s without NaN; cand: [n] scratch.
// Exposed for tests (checked against std::nth_element).
float kth_largest(const float* s, int64_t n, int64_t k, uint32_t* cand);

}  // namespace vqrt
