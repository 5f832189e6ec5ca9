// AVX2 and AVX-512 matrix-product kernels (LinearKernels in linear.h).
//
// Floating-point weights: each kernel is one template written once: `Weights` widens a run of weights of one dtype to
// fp32 lanes, and the tile computes R output columns for BT activation rows, holding R x BT
// accumulators in registers so every weight loaded serves BT rows. Per output value the
// operations are fixed (lane-wise FMAs along k in steps of the vector width, the zero-padded
// tail as one more step, the same reduction tree, then scale, bias, accumulate), so R, BT, the
// column range and the thread never change a result. Functions carry target attributes and run
// only where linear_kernels() has checked the CPU; tests/cpp/test_linear.cpp compares each one
// with the generic kernels.
#include "linear.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd_math.h"

namespace vqrt {

namespace {

constexpr int kMaxBatchTile = 8;  // activation rows sharing one pass over the weights

// Output columns per tile for BT activation rows: R x BT accumulators plus BT activation vectors
// must fit the register file (16 ymm for AVX2, 32 zmm for AVX-512).
constexpr int columns_per_tile_avx512(int bt) {
  return bt == 1 ? 8 : bt == 2 ? 6 : bt <= 4 ? 4 : 2;
}
constexpr int columns_per_tile_avx2(int bt) { return bt == 1 ? 4 : bt == 2 ? 3 : 1; }

// Asks for the next tile's weights while this tile computes. A tile reads R rows of W, which
// lie back to back: one block of R x k weights, read as R interleaved streams. At a step that
// read offset i of each row, the lines at the same fraction of the next block are requested, in
// address order, into L2 (L1 is too small for a whole block when k is long), so the next block
// is in flight as a single sequential stream. Without it, short rows (k = 768: 24 lines per
// bf16 row) restart the hardware prefetcher every tile and batched tiles, which spend long on
// each load, wait on DRAM (measured per shape in BENCHMARKS.md). Prefetches past the matrix are
// dropped, never fault. L: weights per row per step. A generic function, so every ISA's copy
// below may inline it.
template <int R, int L, class T>
inline __attribute__((always_inline)) void prefetch_next_tile(const T* w, int64_t k, int64_t i) {
  // One-row tiles (AVX2's batched tiles, the last columns) read one stream, which the hardware
  // follows on its own; the AVX2 ones are compute-bound, so an extra instruction costs time.
  if (R == 1) return;
  constexpr int64_t kBytesPerStep = L * R * sizeof(T);
  // In integers: the address may lie past the matrix, where pointer arithmetic is undefined.
  const uintptr_t next = reinterpret_cast<uintptr_t>(w) + (R * k + i * R) * sizeof(T);
  if (kBytesPerStep < 64) {
    // Once per line: in the step whose bytes hold the line's first byte (that line holds the
    // step's last byte). Weights need not start on a line.
    const uintptr_t last = next + kBytesPerStep - 1;
    if (last % 64 < kBytesPerStep) _mm_prefetch(reinterpret_cast<const char*>(last), _MM_HINT_T1);
    return;
  }
#pragma GCC unroll 8
  for (int64_t off = 0; off < kBytesPerStep; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T1);
  }
}

// Adds the finished sum to y as linear.h specifies: (sum * scale) + bias, stored or accumulated.
inline void store_output(const LinearArgs& a, int64_t row, int64_t col, float sum) {
  if (a.w->scale) sum *= a.w->scale[col];
  if (a.bias) sum += a.bias[col];
  float& y = a.y[row * a.w->n + col];
  y = a.accumulate ? y + sum : sum;
}

// ---------------------------------------------------------------------------------------------
// AVX2: 8 lanes. Weights<T>::load(p) widens p[0..8); load_tail(p, n) the first n < 8, zero-padded.

struct Avx2F32 {
  using T = float;
  static VQRT_AVX2 __m256 load(const T* p) { return _mm256_loadu_ps(p); }
};
struct Avx2F16 {
  using T = uint16_t;
  static VQRT_AVX2 __m256 load(const T* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
struct Avx2Bf16 {
  using T = uint16_t;
  static VQRT_AVX2 __m256 load(const T* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};

template <class W>
VQRT_AVX2 __m256 avx2_load_tail(const typename W::T* p, int64_t n) {
  typename W::T padded[8] = {};
  std::memcpy(padded, p, n * sizeof(typename W::T));
  return W::load(padded);
}

VQRT_AVX2 __m256 avx2_load_x_tail(const float* p, int64_t n) {
  float padded[8] = {};
  std::memcpy(padded, p, n * sizeof(float));
  return _mm256_loadu_ps(padded);
}

// Columns [col, col + R) for activation rows [row, row + BT).
template <class W, int R, int BT>
VQRT_AVX2 void avx2_tile(const LinearArgs& a, int64_t row, int64_t col) {
  const int64_t k = a.w->k;
  const typename W::T* w = static_cast<const typename W::T*>(a.w->data) + col * k;
  const float* x = a.x + row * k;
  __m256 acc[R][BT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) acc[r][b] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    prefetch_next_tile<R, 8>(w, k, i);
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = W::load(w + r * k + i);
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) {
      const __m256 xv = _mm256_loadu_ps(x + b * k + i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  if (i < k) {
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) {
      const __m256 xv = avx2_load_x_tail(x + b * k + i, k - i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][b] = _mm256_fmadd_ps(avx2_load_tail<W>(w + r * k + i, k - i), xv, acc[r][b]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) store_output(a, row + b, col + r, simd::sum(acc[r][b]));
}

template <class W, int BT>
VQRT_AVX2 void avx2_columns(const LinearArgs& a, int64_t row) {
  constexpr int R = columns_per_tile_avx2(BT);
  int64_t col = a.col_begin;
  for (; col + R <= a.col_end; col += R) avx2_tile<W, R, BT>(a, row, col);
  for (; col < a.col_end; ++col) avx2_tile<W, 1, BT>(a, row, col);
}

template <class W>
VQRT_AVX2_FN void linear_avx2(const LinearArgs& a) {
  for (int64_t row = 0; row < a.rows; row += 4) {  // AVX2 tiles hold at most 4 rows
    switch (std::min<int64_t>(4, a.rows - row)) {
      case 1: avx2_columns<W, 1>(a, row); break;
      case 2: avx2_columns<W, 2>(a, row); break;
      case 3: avx2_columns<W, 3>(a, row); break;
      default: avx2_columns<W, 4>(a, row); break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512: 16 lanes; the tail is one masked step (masked-off lanes are never read).

struct Avx512F32 {
  using T = float;
  static VQRT_AVX512 __m512 load(const T* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct Avx512F16 {
  using T = uint16_t;
  static VQRT_AVX512 __m512 load(const T* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct Avx512Bf16 {
  using T = uint16_t;
  static VQRT_AVX512 __m512 load(const T* p, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
};

template <class W, int R, int BT>
VQRT_AVX512 void avx512_tile(const LinearArgs& a, int64_t row, int64_t col) {
  const int64_t k = a.w->k;
  const typename W::T* w = static_cast<const typename W::T*>(a.w->data) + col * k;
  const float* x = a.x + row * k;
  __m512 acc[R][BT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = simd::first_lanes(k - i);
    __m512 xv[BT];
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) xv[b] = _mm512_maskz_loadu_ps(m, x + b * k + i);
    prefetch_next_tile<R, 16>(w, k, i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = W::load(w + r * k + i, m);
#pragma GCC unroll 8
      for (int b = 0; b < BT; ++b) acc[r][b] = _mm512_fmadd_ps(wv, xv[b], acc[r][b]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) store_output(a, row + b, col + r, simd::sum(acc[r][b]));
}

template <class W, int BT>
VQRT_AVX512 void avx512_columns(const LinearArgs& a, int64_t row) {
  constexpr int R = columns_per_tile_avx512(BT);
  int64_t col = a.col_begin;
  for (; col + R <= a.col_end; col += R) avx512_tile<W, R, BT>(a, row, col);
  for (; col < a.col_end; ++col) avx512_tile<W, 1, BT>(a, row, col);
}

template <class W>
VQRT_AVX512_FN void linear_avx512(const LinearArgs& a) {
  for (int64_t row = 0; row < a.rows; row += kMaxBatchTile) {
    switch (std::min<int64_t>(kMaxBatchTile, a.rows - row)) {
      case 1: avx512_columns<W, 1>(a, row); break;
      case 2: avx512_columns<W, 2>(a, row); break;
      case 3: avx512_columns<W, 3>(a, row); break;
      case 4: avx512_columns<W, 4>(a, row); break;
      case 5: avx512_columns<W, 5>(a, row); break;
      case 6: avx512_columns<W, 6>(a, row); break;
      case 7: avx512_columns<W, 7>(a, row); break;
      default: avx512_columns<W, 8>(a, row); break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX512_BF16: x rounded to bf16 once per call (vcvtneps2bf16, nearest even), then vdpbf16ps on
// pairs of k, 32 weights per instruction. The reference is the bf16 kernel on rounded x.

template <int R, int BT>
VQRT_AVX512_BF16 void bf16_dot_tile(const LinearArgs& a, const uint16_t* xb, int64_t k_padded,
                                    int64_t row, int64_t col) {
  const int64_t k = a.w->k;
  const uint16_t* w = static_cast<const uint16_t*>(a.w->data) + col * k;
  const uint16_t* x = xb + row * k_padded;
  __m512 acc[R][BT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 32) {
    const __mmask32 m = k - i >= 32 ? ~__mmask32(0) : __mmask32((1u << (k - i)) - 1);
    __m512bh xv[BT];
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) {
      xv[b] = (__m512bh)_mm512_loadu_si512(x + b * k_padded + i);  // zero-padded past k
    }
    prefetch_next_tile<R, 32>(w, k, i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + r * k + i);
#pragma GCC unroll 8
      for (int b = 0; b < BT; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv, xv[b]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int b = 0; b < BT; ++b) store_output(a, row + b, col + r, simd::sum(acc[r][b]));
}

template <int BT>
VQRT_AVX512_BF16 void bf16_dot_columns(const LinearArgs& a, const uint16_t* xb, int64_t k_padded,
                                       int64_t row) {
  constexpr int R = columns_per_tile_avx512(BT);
  int64_t col = a.col_begin;
  for (; col + R <= a.col_end; col += R) bf16_dot_tile<R, BT>(a, xb, k_padded, row, col);
  for (; col < a.col_end; ++col) bf16_dot_tile<1, BT>(a, xb, k_padded, row, col);
}

VQRT_AVX512_BF16_FN void linear_avx512_bf16_dot(const LinearArgs& a) {
  const int64_t k = a.w->k;
  const int64_t k_padded = (k + 31) / 32 * 32;
  thread_local std::vector<uint16_t> rounded;  // [rows, k_padded] bf16 bits of x, zero-padded
  rounded.assign(a.rows * k_padded, 0);
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 m = simd::first_lanes(k - i);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, a.x + r * k + i));
      _mm256_mask_storeu_epi16(rounded.data() + r * k_padded + i, m, (__m256i)h);
    }
  }
  for (int64_t row = 0; row < a.rows; row += kMaxBatchTile) {
    const uint16_t* xb = rounded.data();
    switch (std::min<int64_t>(kMaxBatchTile, a.rows - row)) {
      case 1: bf16_dot_columns<1>(a, xb, k_padded, row); break;
      case 2: bf16_dot_columns<2>(a, xb, k_padded, row); break;
      case 3: bf16_dot_columns<3>(a, xb, k_padded, row); break;
      case 4: bf16_dot_columns<4>(a, xb, k_padded, row); break;
      case 5: bf16_dot_columns<5>(a, xb, k_padded, row); break;
      case 6: bf16_dot_columns<6>(a, xb, k_padded, row); break;
      case 7: bf16_dot_columns<7>(a, xb, k_padded, row); break;
      default: bf16_dot_columns<8>(a, xb, k_padded, row); break;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// int8 (linear.h): integer products of int16 x and int8 weights, csrc/linear_i8.inc stamped once
// per instruction set under its #pragma GCC target (each copy in its own namespace).

#define VQRT_I8_INLINE inline __attribute__((always_inline))
// #pragma GCC target does not expand macros; _Pragma of a stringized argument does.
#define VQRT_DO_PRAGMA(x) _Pragma(#x)
#define VQRT_TARGET_PRAGMA(isa) VQRT_DO_PRAGMA(GCC target(isa))

#pragma GCC push_options
VQRT_TARGET_PRAGMA(VQRT_TARGET_AVX2)
namespace i8_avx2 {
using Vec = __m256i;
#define VQRT_I8_LANES 16
#define VQRT_I8_MAX_BT 4
#define VQRT_I8_COLUMNS(bt) columns_per_tile_avx2(bt)
VQRT_I8_INLINE Vec zero() { return _mm256_setzero_si256(); }
VQRT_I8_INLINE Vec load_x(const int16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
VQRT_I8_INLINE Vec load_w(const int8_t* p, int64_t n) {  // 16 int8 widened to int16
  if (n == 16) return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  int8_t padded[16] = {};
  for (int64_t j = 0; j < n; ++j) padded[j] = p[j];
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(padded)));
}
VQRT_I8_INLINE Vec dot(Vec acc, Vec x, Vec w) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
}
VQRT_I8_INLINE int64_t lane_sum(Vec v) {
  const __m256i wide = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), wide);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#include "linear_i8.inc"
#undef VQRT_I8_LANES
#undef VQRT_I8_MAX_BT
#undef VQRT_I8_COLUMNS
}  // namespace i8_avx2
#pragma GCC pop_options

// AVX-512 twice: vpmaddwd + vpaddd, and vpdpwssd where the CPU has AVX512_VNNI.
#define VQRT_I8_AVX512_HELPERS                                                                  \
  using Vec = __m512i;                                                                          \
  VQRT_I8_INLINE Vec zero() { return _mm512_setzero_si512(); }                                  \
  VQRT_I8_INLINE Vec load_x(const int16_t* p) { return _mm512_loadu_si512(p); }                \
  VQRT_I8_INLINE Vec load_w(const int8_t* p, int64_t n) { /* 32 int8 widened to int16 */      \
    const __mmask32 m = n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1);                    \
    return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, p));                                 \
  }                                                                                             \
  VQRT_I8_INLINE int64_t lane_sum(Vec v) {                                                      \
    return _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v))) +          \
           _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));     \
  }
#define VQRT_I8_LANES 32
#define VQRT_I8_MAX_BT 8  // a number: linear_i8.inc tests it with #if
static_assert(VQRT_I8_MAX_BT == kMaxBatchTile, "the int8 and fp32 tiles hold as many rows");
#define VQRT_I8_COLUMNS(bt) columns_per_tile_avx512(bt)

#pragma GCC push_options
VQRT_TARGET_PRAGMA(VQRT_TARGET_AVX512)
namespace i8_avx512 {
VQRT_I8_AVX512_HELPERS
VQRT_I8_INLINE Vec dot(Vec acc, Vec x, Vec w) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w));
}
#include "linear_i8.inc"
}  // namespace i8_avx512
#pragma GCC pop_options

#pragma GCC push_options
VQRT_TARGET_PRAGMA(VQRT_TARGET_AVX512_VNNI)
namespace i8_avx512_vnni {
VQRT_I8_AVX512_HELPERS
VQRT_I8_INLINE Vec dot(Vec acc, Vec x, Vec w) { return _mm512_dpwssd_epi32(acc, x, w); }
#include "linear_i8.inc"
}  // namespace i8_avx512_vnni
#pragma GCC pop_options
#undef VQRT_I8_LANES
#undef VQRT_I8_MAX_BT
#undef VQRT_I8_COLUMNS
#undef VQRT_I8_AVX512_HELPERS

namespace {

// The int8 entry points: x quantized (scalar, linear.cpp), then the stamped row loop.
template <void (*Rows)(const LinearArgs&, const QuantizedRows&)>
void linear_i8(const LinearArgs& a) {
  Rows(a, quantize_input(a));
}

const LinearKernels kAvx2 = {CpuIsa::avx2,           linear_avx2<Avx2F32>, linear_avx2<Avx2F16>,
                             linear_avx2<Avx2Bf16>,  linear_i8<i8_avx2::linear_i8_rows>,
                             nullptr};
const LinearKernels kAvx512 = {CpuIsa::avx512,           linear_avx512<Avx512F32>,
                               linear_avx512<Avx512F16>, linear_avx512<Avx512Bf16>,
                               linear_i8<i8_avx512::linear_i8_rows>, nullptr};

}  // namespace

LinearKernel linear_avx512_i8(bool vnni) {
  return vnni ? linear_i8<i8_avx512_vnni::linear_i8_rows> : linear_i8<i8_avx512::linear_i8_rows>;
}

const LinearKernels* linear_kernels_simd(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx2:
      return &kAvx2;
    case CpuIsa::avx512: {
      // The AVX-512 kernels with this CPU's optional extensions.
      static const LinearKernels kernels = [] {
        LinearKernels k = kAvx512;
        if (cpu_features().avx512_bf16) k.bf16_dot = linear_avx512_bf16_dot;
        if (cpu_features().avx512_vnni) k.i8 = linear_avx512_i8(true);
        return k;
      }();
      return &kernels;
    }
    case CpuIsa::generic:
      break;
  }
  return nullptr;
}

}  // namespace vqrt

#else  // not x86: the generic kernels only

namespace vqrt {

const LinearKernels* linear_kernels_simd(CpuIsa) { return nullptr; }

}  // namespace vqrt

#endif
