#include "attention.h"

#include <algorithm>
#include <cmath>

#include "errors.h"
#include "linear.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_math.h"
#endif

namespace vqrt {

namespace {

// Cache element i of a row as fp32: from an fp32 or an fp16 cache.
inline float cached(const float* row, int64_t i) { return row[i]; }
inline float cached(const uint16_t* row, int64_t i) { return half_to_float(row[i]); }

template <typename T>
void attention_generic_on(const AttentionArgs& a, const T* k, const T* v) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const T* kt = k + t * a.d;
    float dot = 0.0f;
    for (int64_t i = 0; i < a.d; ++i) dot += a.q[i] * cached(kt, i);
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
    for (int64_t t = 0; t < a.n_keys; ++t) acc += a.scores[t] * cached(v + t * a.d, i);
    a.out[i] = acc / total;
  }
}

void attention_generic(const AttentionArgs& a) {
  if (a.k16 != nullptr) return attention_generic_on(a, a.k16, a.v16);
  attention_generic_on(a, a.k, a.v);
}

#if defined(__x86_64__) || defined(__i386__)

// AVX2 lane mask of the first n < 8 lanes (all when n >= 8), for maskload / maskstore.
VQRT_AVX2 __m256i avx2_first_lanes(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))), lane);
}

// Eight cache elements from i (the first n < 8 where fewer remain, the rest zero) as fp32.
VQRT_AVX2 __m256 avx2_cached(const float* row, int64_t i, int64_t n) {
  return _mm256_maskload_ps(row + i, avx2_first_lanes(n));
}
VQRT_AVX2 __m256 avx2_cached(const uint16_t* row, int64_t i, int64_t n) {
  if (n >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i)));
  alignas(16) uint16_t padded[8] = {};
  for (int64_t j = 0; j < n; ++j) padded[j] = row[i + j];
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(padded)));
}

template <typename T>
VQRT_AVX2 void attention_avx2_on(const AttentionArgs& a, const T* k, const T* v) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const T* kt = k + t * a.d;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < a.d; i += 8) {
      const __m256i m = avx2_first_lanes(a.d - i);
      acc = _mm256_fmadd_ps(_mm256_maskload_ps(a.q + i, m), avx2_cached(kt, i, a.d - i), acc);
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
      acc = _mm256_fmadd_ps(_mm256_set1_ps(a.scores[t]), avx2_cached(v + t * a.d, i, a.d - i),
                            acc);
    }
    _mm256_maskstore_ps(a.out + i, m, _mm256_mul_ps(acc, inv_total));
  }
}

VQRT_AVX2_FN void attention_avx2(const AttentionArgs& a) {
  if (a.k16 != nullptr) return attention_avx2_on(a, a.k16, a.v16);
  attention_avx2_on(a, a.k, a.v);
}

// Sixteen cache elements from i under mask m as fp32 (masked-off lanes are never read).
VQRT_AVX512 __m512 avx512_cached(const float* row, int64_t i, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, row + i);
}
VQRT_AVX512 __m512 avx512_cached(const uint16_t* row, int64_t i, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + i));
}

template <typename T>
VQRT_AVX512 void attention_avx512_on(const AttentionArgs& a, const T* k, const T* v) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.n_keys; ++t) {
    const T* kt = k + t * a.d;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < a.d; i += 16) {
      const __mmask16 m = simd::first_lanes(a.d - i);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.q + i), avx512_cached(kt, i, m), acc);
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
      acc = _mm512_fmadd_ps(_mm512_set1_ps(a.scores[t]), avx512_cached(v + t * a.d, i, m), acc);
    }
    _mm512_mask_storeu_ps(a.out + i, m, _mm512_mul_ps(acc, inv_total));
  }
}

VQRT_AVX512_FN void attention_avx512(const AttentionArgs& a) {
  if (a.k16 != nullptr) return attention_avx512_on(a, a.k16, a.v16);
  attention_avx512_on(a, a.k, a.v);
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
