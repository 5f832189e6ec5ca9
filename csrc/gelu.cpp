#include "gelu.h"

#include <cmath>

#include "errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include "simd_math.h"
#endif

namespace vqrt {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;

void gelu_generic(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
}

#if defined(__x86_64__) || defined(__i386__)

VQRT_AVX2_FN void gelu_avx2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = simd::erf(_mm256_mul_ps(v, _mm256_set1_ps(kInvSqrt2)));
    const __m256 half_v = _mm256_mul_ps(_mm256_set1_ps(0.5f), v);
    _mm256_storeu_ps(x + i, _mm256_fmadd_ps(half_v, e, half_v));
  }
  if (i < n) {  // the tail through a padded vector, so it gets the same approximation
    float tail[8] = {};
    for (int64_t j = i; j < n; ++j) tail[j - i] = x[j];
    gelu_avx2(tail, 8);
    for (int64_t j = i; j < n; ++j) x[j] = tail[j - i];
  }
}

VQRT_AVX512_FN void gelu_avx512(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 e = simd::erf(_mm512_mul_ps(v, _mm512_set1_ps(kInvSqrt2)));
    const __m512 half_v = _mm512_mul_ps(_mm512_set1_ps(0.5f), v);
    _mm512_mask_storeu_ps(x + i, m, _mm512_fmadd_ps(half_v, e, half_v));
  }
}

#endif

}  // namespace

GeluKernel gelu_kernel(CpuIsa isa) {
  VQRT_CHECK(cpu_isa_runs(isa), "this CPU cannot run the " << cpu_isa_name(isa) << " kernels");
#if defined(__x86_64__) || defined(__i386__)
  if (isa == CpuIsa::avx512) return gelu_avx512;
  if (isa == CpuIsa::avx2) return gelu_avx2;
#endif
  return gelu_generic;
}

}  // namespace vqrt
