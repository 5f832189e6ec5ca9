// The matrix-product kernels (csrc/linear.h): every SIMD variant against the generic kernels for
// each weight dtype, on lengths that are not multiples of the vector width, partial column
// ranges, accumulation and bias; rows and column ranges never change a value; the bf16_dot
// kernel against the bf16 kernel on rounded activations; the int8 kernels' integer products
// (every variant bit for bit, across the chunks that keep int32 lanes from overflowing, and
// close to the fp32 product of the dequantized weights).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "check.h"
#include "cpu_features.h"
#include "linear.h"

using vqrt::CpuIsa;
using vqrt::DType;
using vqrt::LinearArgs;
using vqrt::LinearKernels;
using vqrt::WeightView;

namespace {

// A random [n, k] weight stored as `dtype` (int8: symmetric per row with scales).
struct Weight {
  Weight(DType dtype, int64_t n, int64_t k, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(k)));
    std::vector<float> w(n * k);
    for (float& v : w) v = normal(rng);
    view.dtype = dtype;
    view.n = n;
    view.k = k;
    if (dtype == DType::f32) {
      f32 = w;
      view.data = f32.data();
    } else if (dtype == DType::f16) {
      for (float v : w) u16.push_back(float_to_half(v));
      view.data = u16.data();
    } else if (dtype == DType::bf16) {
      for (float v : w) u16.push_back(vqrt::float_to_bf16(v));
      view.data = u16.data();
    } else {
      scale.resize(n);
      for (int64_t o = 0; o < n; ++o) {
        float peak = 0.0f;
        for (int64_t i = 0; i < k; ++i) peak = std::max(peak, std::fabs(w[o * k + i]));
        scale[o] = peak / 127.0f;
        for (int64_t i = 0; i < k; ++i) {
          i8.push_back(static_cast<int8_t>(std::lround(w[o * k + i] / scale[o])));
        }
      }
      view.data = i8.data();
      view.scale = scale.data();
    }
  }
  // float -> half by truncation (tiny values to zero): test inputs need only some half values.
  static uint16_t float_to_half(float f) {
    uint32_t bits;
    __builtin_memcpy(&bits, &f, 4);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
    if (exponent <= 0) return static_cast<uint16_t>(sign);  // tiny values become zero
    return static_cast<uint16_t>(sign | (exponent << 10) | ((bits >> 13) & 0x3ffu));
  }
  WeightView view;
  std::vector<float> f32, scale;
  std::vector<uint16_t> u16;
  std::vector<int8_t> i8;
};

void (*kernel_of(const LinearKernels& k, DType d))(const LinearArgs&) {
  switch (d) {
    case DType::f32: return k.f32;
    case DType::f16: return k.f16;
    case DType::bf16: return k.bf16;
    case DType::i8: return k.i8;
  }
  return nullptr;
}

std::vector<float> random_vector(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// y = x W^T + b over columns [begin, end) of `rows` rows, starting from y0.
std::vector<float> product(void (*kernel)(const LinearArgs&), const Weight& w,
                           const std::vector<float>& x, int64_t rows, const float* bias,
                           bool accumulate, int64_t begin, int64_t end,
                           const std::vector<float>& y0) {
  std::vector<float> y = y0;
  kernel({x.data(), rows, &w.view, bias, accumulate, begin, end, y.data()});
  return y;
}

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16, DType::i8};

}  // namespace

TEST(simd_kernels_match_generic) {
  std::mt19937 rng(7);
  const LinearKernels& generic = vqrt::linear_kernels_generic();
  int compared = 0;
  for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512}) {
    if (!vqrt::cpu_isa_runs(isa)) continue;
    const LinearKernels& simd = vqrt::linear_kernels(isa);
    for (DType dtype : kDtypes) {
      for (int64_t k : {1, 7, 12, 17, 45, 48, 100, 259}) {
        for (int64_t rows : {1, 2, 3, 5, 8, 11}) {
          const int64_t n = 23;
          Weight w(dtype, n, k, rng);
          const std::vector<float> x = random_vector(rows * k, rng);
          const std::vector<float> bias = random_vector(n, rng);
          const std::vector<float> y0 = random_vector(rows * n, rng);
          for (bool accumulate : {false, true}) {
            const auto ref = product(kernel_of(generic, dtype), w, x, rows, bias.data(),
                                     accumulate, 2, n - 1, y0);
            const auto got = product(kernel_of(simd, dtype), w, x, rows, bias.data(),
                                     accumulate, 2, n - 1, y0);
            for (int64_t j = 0; j < rows * n; ++j) CHECK_NEAR(got[j], ref[j], 1e-5, 1e-5);
            ++compared;
          }
        }
      }
    }
  }
  if (compared == 0) SKIP("this CPU has neither AVX2 nor AVX-512");
}

// A value must not depend on the rows or columns computed with it (batch and thread invariance).
TEST(rows_and_column_ranges_do_not_change_values) {
  std::mt19937 rng(11);
  for (CpuIsa isa : {CpuIsa::generic, CpuIsa::avx2, CpuIsa::avx512}) {
    if (!vqrt::cpu_isa_runs(isa)) continue;
    const LinearKernels& kernels = vqrt::linear_kernels(isa);
    for (DType dtype : kDtypes) {
      const int64_t n = 37, k = 70, rows = 11;
      Weight w(dtype, n, k, rng);
      const std::vector<float> x = random_vector(rows * k, rng);
      const std::vector<float> zero(rows * n, 0.0f);
      const auto all = product(kernel_of(kernels, dtype), w, x, rows, nullptr, false, 0, n, zero);
      for (int64_t r = 0; r < rows; ++r) {
        const std::vector<float> xr(x.begin() + r * k, x.begin() + (r + 1) * k);
        std::vector<float> one(n, 0.0f);
        for (int64_t c0 = 0; c0 < n; c0 += 5) {  // columns in pieces of 5
          one = product(kernel_of(kernels, dtype), w, xr, 1, nullptr, false, c0,
                        std::min(n, c0 + 5), one);
        }
        for (int64_t o = 0; o < n; ++o) CHECK_EQ(one[o], all[r * n + o]);
      }
    }
  }
}

TEST(bf16_dot_matches_bf16_on_rounded_activations) {
  if (!vqrt::cpu_isa_runs(CpuIsa::avx512) || !vqrt::cpu_features().avx512_bf16) {
    SKIP("this CPU has no AVX512_BF16");
  }
  const LinearKernels& kernels = vqrt::linear_kernels(CpuIsa::avx512);
  CHECK(kernels.bf16_dot != nullptr);
  std::mt19937 rng(5);
  for (int64_t k : {1, 12, 31, 33, 48, 100, 770}) {
    for (int64_t rows : {1, 3, 8, 10}) {
      const int64_t n = 19;
      Weight w(DType::bf16, n, k, rng);
      const std::vector<float> x = random_vector(rows * k, rng);
      const std::vector<float> bias = random_vector(n, rng);
      const std::vector<float> zero(rows * n, 0.0f);
      std::vector<float> rounded(x.size());
      for (size_t j = 0; j < x.size(); ++j) {
        rounded[j] = vqrt::bf16_to_float(vqrt::float_to_bf16(x[j]));
      }
      const auto ref = product(vqrt::linear_kernels_generic().bf16, w, rounded, rows,
                               bias.data(), false, 1, n, zero);
      const auto got = product(kernels.bf16_dot, w, x, rows, bias.data(), false, 1, n, zero);
      for (int64_t j = 0; j < rows * n; ++j) CHECK_NEAR(got[j], ref[j], 1e-5, 1e-5);
      // linear() without a bf16_dot kernel rounds and runs the bf16 kernel: the same numbers.
      std::vector<float> fallback = zero;
      vqrt::linear(vqrt::linear_kernels_generic(),
                   {x.data(), rows, &w.view, bias.data(), false, 1, n, fallback.data()}, true);
      for (int64_t j = 0; j < rows * n; ++j) CHECK_EQ(fallback[j], ref[j]);
    }
  }
}

TEST(int8_kernels_are_exact_integer_products) {
  std::vector<vqrt::LinearKernel> kernels;
  if (vqrt::cpu_isa_runs(CpuIsa::avx2)) kernels.push_back(vqrt::linear_kernels(CpuIsa::avx2).i8);
  if (vqrt::cpu_isa_runs(CpuIsa::avx512)) {
    kernels.push_back(vqrt::linear_avx512_i8(false));
    if (vqrt::cpu_features().avx512_vnni) kernels.push_back(vqrt::linear_avx512_i8(true));
  }
  if (kernels.empty()) SKIP("this CPU has neither AVX2 nor AVX-512");
  std::mt19937 rng(3);
  // 8200 and 9000 cross both chunk lengths (4096 int16 per AVX2 lane set, 8192 per AVX-512).
  for (int64_t k : {5, 31, 33, 100, 4100, 8200, 9000}) {
    for (int64_t rows : {1, 4, 9}) {
      const int64_t n = 11;
      Weight w(DType::i8, n, k, rng);
      std::vector<float> x = random_vector(rows * k, rng);
      if (k >= 4100) {  // the worst case for int32 lanes: every product at its largest
        std::fill(w.i8.begin(), w.i8.begin() + k, int8_t{127});
        std::fill(x.begin(), x.begin() + k, -3.0f);
      }
      const std::vector<float> zero(rows * n, 0.0f);
      const auto ref = product(vqrt::linear_kernels_generic().i8, w, x, rows, nullptr, false, 0,
                               n, zero);
      for (vqrt::LinearKernel kernel : kernels) {
        const auto got = product(kernel, w, x, rows, nullptr, false, 0, n, zero);
        for (int64_t j = 0; j < rows * n; ++j) CHECK_EQ(got[j], ref[j]);
      }
      if (k >= 4100) {  // row 0, column 0: k * 32767 * 127 exceeds int32, and is exact here
        CHECK_EQ(ref[0], static_cast<float>(-k * int64_t{32767} * 127) * (3.0f / 32767.0f) *
                             w.scale[0]);
      }
      // The input's rounding is far below the weights': the product of the dequantized weights
      // with fp32 x differs by at most half a step (peak / 32767) times sum |w| per output.
      for (int64_t r = 0; r < rows; ++r) {
        float peak = 0.0f;
        for (int64_t i = 0; i < k; ++i) peak = std::max(peak, std::fabs(x[r * k + i]));
        for (int64_t o = 0; o < n; ++o) {
          double exact = 0.0, bound = 0.0;
          for (int64_t i = 0; i < k; ++i) {
            const double weight = double(w.i8[o * k + i]) * w.scale[o];
            exact += weight * x[r * k + i];
            bound += std::fabs(weight);
          }
          bound = bound * peak / 32767.0 * 0.5 + 1e-5 * std::fabs(exact) + 1e-6;
          CHECK(std::fabs(ref[r * n + o] - exact) <= bound);
        }
      }
    }
  }
}

#if defined(__x86_64__)
// The hardware's conversion (vcvtps2ph, round to nearest even) as the oracle of float_to_half.
__attribute__((target("f16c"))) uint16_t f16c_half(float f) {
  return static_cast<uint16_t>(
      _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
}
#endif

TEST(float_to_half_rounds_to_nearest_even) {
  CHECK_EQ(vqrt::float_to_half(1.0f), 0x3c00);
  CHECK_EQ(vqrt::float_to_half(65504.0f), 0x7bff);
  CHECK_EQ(vqrt::float_to_half(65520.0f), 0x7c00);                // half a step above: inf
  CHECK_EQ(vqrt::float_to_half(std::ldexp(1.0f, -24)), 0x0001);    // smallest subnormal
  CHECK_EQ(vqrt::float_to_half(std::ldexp(1.0f, -25)), 0x0000);    // a tie, to even (zero)
  CHECK_EQ(vqrt::float_to_half(-std::ldexp(3.0f, -25)), 0x8002);   // a tie, to even (2)
  CHECK_EQ(vqrt::float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // a tie, to even
#if defined(__x86_64__)
  if (!vqrt::cpu_features().f16c) SKIP("this CPU has no F16C to compare with");
  std::mt19937 rng(9);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {  // every exponent: normals, subnormals, inf, NaN
    const uint32_t bits = any_bits(rng);
    float f;
    std::memcpy(&f, &bits, sizeof f);
    if (std::isnan(f)) {
      CHECK_EQ(vqrt::float_to_half(f) & 0x7e00, 0x7e00);
      continue;
    }
    CHECK_EQ(vqrt::float_to_half(f), f16c_half(f));
  }
#endif
}

TEST(half_to_float_known_values) {
  CHECK_EQ(vqrt::half_to_float(0x3c00), 1.0f);
  CHECK_EQ(vqrt::half_to_float(0xc000), -2.0f);
  CHECK_EQ(vqrt::half_to_float(0x7bff), 65504.0f);
  CHECK_EQ(vqrt::half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK_EQ(vqrt::half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  CHECK(std::isinf(vqrt::half_to_float(0x7c00)));
  CHECK(std::isnan(vqrt::half_to_float(0x7e00)));
  CHECK_EQ(vqrt::bf16_to_float(vqrt::float_to_bf16(1.00390625f)), 1.0f);  // tie to even
  CHECK_EQ(vqrt::bf16_to_float(vqrt::float_to_bf16(1.01171875f)), 1.015625f);
}

int main() { return check::run_tests(); }
