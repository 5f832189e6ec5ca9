#include "attention.h"

#include <algorithm>
#include <cmath>

#include "errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_math.h"
#endif

namespace vqrt {

namespace {

void attention_generic(const AttentionArgs& a) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const float* kt = a.k + t * a.d;
    float dot = 0.0f;
    for (int64_t i = 0; i < a.d; ++i) dot += a.q[i] * kt[i];
    a.scores[t] = dot * a.scale;
    max_score = std::max(max_score, a.scores[t]);
  }
  float total = 0.0f;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    a.scores[t] = std::exp(a.scores[t] - max_score);
    total += a.scores[t];
  }
  for (int64_t i = 0; i < a.d; ++i) {
    float acc = 0.0f;
    for (int64_t t = 0; t < a.n_keys; ++t) acc += a.scores[t] * a.v[t * a.d + i];
    a.out[i] = acc / total;
  }
}

#if defined(__x86_64__) || defined(__i386__)

// AVX2 lane mask of the first n < 8 lanes (all when n >= 8), for maskload / maskstore.
VQRT_AVX2 __m256i avx2_first_lanes(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))), lane);
}

VQRT_AVX2_FN void attention_avx2(const AttentionArgs& a) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const float* kt = a.k + t * a.d;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < a.d; i += 8) {
      const __m256i m = avx2_first_lanes(a.d - i);
      acc = _mm256_fmadd_ps(_mm256_maskload_ps(a.q + i, m), _mm256_maskload_ps(kt + i, m), acc);
    }
    a.scores[t] = simd::sum(acc) * a.scale;
    max_score = std::max(max_score, a.scores[t]);
  }
  __m256 total = _mm256_setzero_ps();
  for (int64_t t = 0; t < a.n_keys; t += 8) {
    const __m256i m = avx2_first_lanes(a.n_keys - t);
    const __m256 s = _mm256_sub_ps(_mm256_maskload_ps(a.scores + t, m), _mm256_set1_ps(max_score));
    const __m256 e = _mm256_and_ps(simd::exp(s), _mm256_castsi256_ps(m));
    _mm256_maskstore_ps(a.scores + t, m, e);
    total = _mm256_add_ps(total, e);
  }
  const __m256 inv_total = _mm256_set1_ps(1.0f / simd::sum(total));
  for (int64_t i = 0; i < a.d; i += 8) {
    const __m256i m = avx2_first_lanes(a.d - i);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t t = 0; t < a.n_keys; ++t) {
      acc = _mm256_fmadd_ps(_mm256_set1_ps(a.scores[t]), _mm256_maskload_ps(a.v + t * a.d + i, m),
                            acc);
    }
    _mm256_maskstore_ps(a.out + i, m, _mm256_mul_ps(acc, inv_total));
  }
}

VQRT_AVX512_FN void attention_avx512(const AttentionArgs& a) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const float* kt = a.k + t * a.d;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < a.d; i += 16) {
      const __mmask16 m = simd::first_lanes(a.d - i);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.q + i), _mm512_maskz_loadu_ps(m, kt + i),
                            acc);
    }
    a.scores[t] = simd::sum(acc) * a.scale;
    max_score = std::max(max_score, a.scores[t]);
  }
  __m512 total = _mm512_setzero_ps();
  for (int64_t t = 0; t < a.n_keys; t += 16) {
    const __mmask16 m = simd::first_lanes(a.n_keys - t);
    const __m512 s = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a.scores + t),
                                   _mm512_set1_ps(max_score));
    const __m512 e = _mm512_maskz_mov_ps(m, simd::exp(s));
    _mm512_mask_storeu_ps(a.scores + t, m, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inv_total = _mm512_set1_ps(1.0f / simd::sum(total));
  for (int64_t i = 0; i < a.d; i += 16) {
    const __mmask16 m = simd::first_lanes(a.d - i);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < a.n_keys; ++t) {
      acc = _mm512_fmadd_ps(_mm512_set1_ps(a.scores[t]),
                            _mm512_maskz_loadu_ps(m, a.v + t * a.d + i), acc);
    }
    _mm512_mask_storeu_ps(a.out + i, m, _mm512_mul_ps(acc, inv_total));
  }
}

#endif

}  // namespace

AttentionKernel attention_kernel(CpuIsa isa) {
  VQRT_CHECK(cpu_isa_runs(isa), "this CPU cannot run the " << cpu_isa_name(isa) << " kernels");
#if defined(__x86_64__) || defined(__i386__)
  if (isa == CpuIsa::avx512) return attention_avx512;
  if (isa == CpuIsa::avx2) return attention_avx2;
#endif
  return attention_generic;
}

}  // namespace vqrt
