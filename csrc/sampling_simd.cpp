// AVX2 and AVX-512 variants of the sampler's row kernels (RowKernels in sampling.h).
//
// Each function carries its own target attribute, so the file builds without -march and the
// variants run only where cpu_features says they can (row_kernels() checks). Every kernel is exact
// (max, IEEE division, comparisons): the results are bit-identical to the generic kernels in
// sampling.cpp, which tests/cpp/test_sampling.cpp checks for each ISA the CPU has.
#include "sampling.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cmath>
#include <limits>

namespace vqrt {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// AVX2: 8 lanes, a scalar loop for the last n % 8 elements.

__attribute__((target("avx2,fma"))) float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-kInf);
  __m256 nan = _mm256_setzero_ps();  // lanes that ever saw a NaN (all bits set)
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    m = _mm256_max_ps(m, v);
  }
  __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  r = _mm_max_ps(r, _mm_movehl_ps(r, r));
  r = _mm_max_ss(r, _mm_shuffle_ps(r, r, 1));
  float result = _mm_cvtss_f32(r);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (; i < n; ++i) {
    has_nan |= std::isnan(x[i]);
    result = x[i] > result ? x[i] : result;
  }
  return has_nan ? std::numeric_limits<float>::quiet_NaN() : result;
}

__attribute__((target("avx2,fma"))) void divide_avx2(const float* x, int64_t n, float t, float* y) {
  const __m256 vt = _mm256_set1_ps(t);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vt));
  for (; i < n; ++i) y[i] = x[i] / t;
}

__attribute__((target("avx2,fma"))) int64_t filter_ge_avx2(const float* x, int64_t n, float t,
                                                           int32_t* idx) {
  const __m256 vt = _mm256_set1_ps(t);
  int64_t count = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    unsigned mask = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vt, _CMP_GE_OQ)));
    while (mask != 0) {  // set bits in ascending order keep the indices ascending
      idx[count++] = static_cast<int32_t>(i + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  for (; i < n; ++i) {
    if (x[i] >= t) idx[count++] = static_cast<int32_t>(i);
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// AVX-512F: 16 lanes; the tail is one masked iteration (masked-off lanes are never read).

__attribute__((target("avx512f"))) inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << remaining) - 1);
}

__attribute__((target("avx512f"))) float max_avx512(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-kInf);
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(live, x + i);
    nan |= _mm512_mask_cmp_ps_mask(live, v, v, _CMP_UNORD_Q);
    m = _mm512_mask_max_ps(m, live, m, v);  // masked-off lanes keep m
  }
  if (nan != 0) return std::numeric_limits<float>::quiet_NaN();
  // A scalar reduction: GCC 12's _mm512_reduce_max_ps trips -Wmaybe-uninitialized (GCC bug 105593).
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  float result = lanes[0];
  for (int j = 1; j < 16; ++j) result = lanes[j] > result ? lanes[j] : result;
  return result;
}

__attribute__((target("avx512f"))) void divide_avx512(const float* x, int64_t n, float t,
                                                      float* y) {
  const __m512 vt = _mm512_set1_ps(t);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, live, _mm512_div_ps(_mm512_maskz_loadu_ps(live, x + i), vt));
  }
}

__attribute__((target("avx512f"))) int64_t filter_ge_avx512(const float* x, int64_t n, float t,
                                                            int32_t* idx) {
  const __m512 vt = _mm512_set1_ps(t);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = tail_mask(n - i);
    const __mmask16 hit =
        _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, x + i), vt, _CMP_GE_OQ);
    if (hit == 0) continue;  // the common case when few tokens survive
    const __m512i ids = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(i)));
    if (hit == 0xffff) {
      _mm512_storeu_si512(idx + count, ids);
    } else {
      // Compressing stores are slow on some CPUs (AMD Zen 4), hence the two cases above.
      _mm512_mask_compressstoreu_epi32(idx + count, hit, ids);
    }
    count += __builtin_popcount(hit);
  }
  return count;
}

const RowKernels kAvx2 = {CpuIsa::avx2, max_avx2, divide_avx2, filter_ge_avx2};
const RowKernels kAvx512 = {CpuIsa::avx512, max_avx512, divide_avx512, filter_ge_avx512};

}  // namespace

const RowKernels* row_kernels_simd(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx2:
      return &kAvx2;
    case CpuIsa::avx512:
      return &kAvx512;
    case CpuIsa::generic:
      break;
  }
  return nullptr;
}

}  // namespace vqrt

#else  // not x86: the generic kernels only

namespace vqrt {

const RowKernels* row_kernels_simd(CpuIsa) { return nullptr; }

}  // namespace vqrt

#endif
