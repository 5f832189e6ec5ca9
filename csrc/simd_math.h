// Target attributes and vector math (exp, erf) shared by the AVX2 / AVX-512 kernels.
//
// Include only from x86 translation units. Functions here are always_inline with the target of
// their ISA, so they inline into kernels compiled for that ISA (and no -march is ever needed).
//   exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 7, times
//        2^n; about 2 ulp, 0 below -87, for x <= 88 (callers pass scores minus their max).
//   erf: odd rational approximation x P(x^2) / Q(x^2) on [-4, 4] (clamped outside, where erf is
//        +-1 in fp32); absolute error below 5e-7 (tests/cpp/test_transformer_ops.cpp).
#pragma once
#include <immintrin.h>

// GCC 12's AVX-512 intrinsics (_mm512_max_ps, _mm512_roundscale_ps, ...) start from an
// "undefined" register that -Wmaybe-uninitialized reports wherever they inline (GCC bug 105593,
// fixed in GCC 13); the warning is about the header, not our code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define VQRT_TARGET_AVX2 "avx2,fma,f16c"
#define VQRT_TARGET_AVX512 "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
#define VQRT_TARGET_AVX512_BF16 "avx512bf16,avx512f,avx512bw,avx512vl,avx2,fma,f16c"
#define VQRT_TARGET_AVX512_VNNI "avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma,f16c"
// A kernel entry point, and an inline helper, of each ISA.
#define VQRT_AVX2_FN __attribute__((target(VQRT_TARGET_AVX2)))
#define VQRT_AVX2 __attribute__((target(VQRT_TARGET_AVX2), always_inline)) inline
#define VQRT_AVX512_FN __attribute__((target(VQRT_TARGET_AVX512)))
#define VQRT_AVX512 __attribute__((target(VQRT_TARGET_AVX512), always_inline)) inline
#define VQRT_AVX512_BF16_FN __attribute__((target(VQRT_TARGET_AVX512_BF16)))
#define VQRT_AVX512_BF16 __attribute__((target(VQRT_TARGET_AVX512_BF16), always_inline)) inline

namespace vqrt {
namespace simd {

// Coefficients of the erf approximation: numerator (odd powers 1..13), denominator (even 0..8).
constexpr float kErfP[7] = {-1.60960333262415e-02f, -2.95459980854025e-03f,
                            -7.34990630326855e-04f, -5.69250639462346e-05f,
                            -2.10102402082508e-06f, 2.77068142495902e-08f,
                            -2.72614225801306e-10f};
constexpr float kErfQ[5] = {-1.42647390514189e-02f, -7.37332916720468e-03f,
                            -1.68282697438203e-03f, -2.13374055278905e-04f,
                            -1.45660718464996e-05f};
constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi exact in 12 bits
constexpr float kLn2Lo = 1.428606765330187e-06f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kExpMin = -87.0f;  // exp below this is taken as 0 (fp32 normal range ends there)

VQRT_AVX2 float sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

VQRT_AVX512 float sum(__m512 v) {
  return sum(_mm256_add_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

// Taylor terms 1/k! for k = 7 down to 0, in Horner order.
constexpr float kExpTaylor[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24,
                                 1.0f / 6,    0.5f,       1.0f,       1.0f};

VQRT_AVX2 __m256 exp(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpMin));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpTaylor[0]);
  for (int j = 1; j < 8; ++j) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpTaylor[j]));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                           _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(two_n)));
}

VQRT_AVX512 __m512 exp(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
  for (int j = 1; j < 8; ++j) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[j]));
  return _mm512_maskz_scalef_ps(live, p, n);
}

VQRT_AVX2 __m256 erf(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kErfP[6]);
  for (int j = 5; j >= 0; --j) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfP[j]));
  __m256 q = _mm256_set1_ps(kErfQ[4]);
  for (int j = 3; j >= 0; --j) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfQ[j]));
  return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}

VQRT_AVX512 __m512 erf(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kErfP[6]);
  for (int j = 5; j >= 0; --j) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfP[j]));
  __m512 q = _mm512_set1_ps(kErfQ[4]);
  for (int j = 3; j >= 0; --j) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfQ[j]));
  return _mm512_div_ps(_mm512_mul_ps(x, p), q);
}

// Mask of the first n lanes (n >= 16: all).
VQRT_AVX512 __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

}  // namespace simd
}  // namespace vqrt
