// The generic matrix-product kernels (the reference) and the dispatch; see linear.h.
#include "linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "errors.h"

namespace vqrt {

namespace {

// Weight element (o, i) widened to fp32 (floating-point dtypes; int8 has its own kernel below).
template <DType D>
float weight_at(const WeightView& w, int64_t o, int64_t i) {
  const int64_t at = o * w.k + i;
  if constexpr (D == DType::f32) return static_cast<const float*>(w.data)[at];
  if constexpr (D == DType::f16) return half_to_float(static_cast<const uint16_t*>(w.data)[at]);
  if constexpr (D == DType::bf16) return bf16_to_float(static_cast<const uint16_t*>(w.data)[at]);
}

// y[r, o] (+)= sum_i W[o, i] x[r, i] + bias[o], the sum in fp32 in index order.
template <DType D>
void linear_generic(const LinearArgs& a) {
  const WeightView& w = *a.w;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * w.k;
    float* y = a.y + r * w.n;
    for (int64_t o = a.col_begin; o < a.col_end; ++o) {
      float sum = 0.0f;
      for (int64_t i = 0; i < w.k; ++i) sum += weight_at<D>(w, o, i) * x[i];
      if (a.bias) sum += a.bias[o];
      y[o] = a.accumulate ? y[o] + sum : sum;
    }
  }
}

// int8: the integer product of linear.h, summed exactly in int64: the reference of the SIMD
// int8 kernels, which must match it bit for bit.
void linear_generic_i8(const LinearArgs& a) {
  const WeightView& w = *a.w;
  const QuantizedRows x = quantize_input(a);
  const int8_t* q = static_cast<const int8_t*>(w.data);
  for (int64_t r = 0; r < a.rows; ++r) {
    float* y = a.y + r * w.n;
    const int16_t* xr = x.xq + r * x.k_padded;
    for (int64_t o = a.col_begin; o < a.col_end; ++o) {
      int64_t sum = 0;
      for (int64_t i = 0; i < w.k; ++i) sum += int64_t{xr[i]} * q[o * w.k + i];
      float v = static_cast<float>(sum) * x.scale[r] * w.scale[o];
      if (a.bias) v += a.bias[o];
      y[o] = a.accumulate ? y[o] + v : v;
    }
  }
}

const LinearKernels kGeneric = {CpuIsa::generic,          linear_generic<DType::f32>,
                                linear_generic<DType::f16>, linear_generic<DType::bf16>,
                                linear_generic_i8,          nullptr};

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i8:
      return "I8";
  }
  return "unknown";
}

// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void quantize_rows_int16(const float* x, int64_t rows, int64_t k, int64_t k_padded, int16_t* xq,
                         float* scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * k;
    int16_t* out = xq + r * k_padded;
    float peak = 0.0f;
    for (int64_t i = 0; i < k; ++i) peak = std::max(peak, std::fabs(xr[i]));
    scale[r] = peak / 32767.0f;
    const float inverse = peak > 0.0f ? 32767.0f / peak : 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      // Round to nearest even without a libm call, so the loop vectorizes: adding and removing
      // 1.5 * 2^23 leaves the integer part (exact for |v| < 2^22). |x * inverse| <= 32767 up to
      // one rounding, which rounding to an integer cannot carry past 32767.
      const float v = xr[i] * inverse;
      out[i] = static_cast<int16_t>((v + 12582912.0f) - 12582912.0f);
    }
    std::fill(out + k, out + k_padded, int16_t{0});
  }
}

QuantizedRows quantize_input(const LinearArgs& a) {
  if (a.quantized != nullptr) return *a.quantized;
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<float> scale;
  const int64_t k_padded = int8_padded_k(a.w->k);
  xq.resize(a.rows * k_padded);
  scale.resize(a.rows);
  quantize_rows_int16(a.x, a.rows, a.w->k, k_padded, xq.data(), scale.data());
  return {xq.data(), scale.data(), k_padded};
}

uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x47800000u) {  // 2^16 and up: infinity (or NaN, kept quiet)
    return static_cast<uint16_t>(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, or zero
    // Adding 0.5 places the half's subnormal step (2^-24) at the float's last mantissa bit, so
    // the float adder rounds to nearest even; the low bits are then the half's mantissa.
    float shifted;
    std::memcpy(&shifted, &magnitude, sizeof shifted);
    shifted += 0.5f;
    uint32_t rounded;
    std::memcpy(&rounded, &shifted, sizeof rounded);
    return static_cast<uint16_t>(sign | (rounded - 0x3f000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest
  // even (0xfff plus the kept lowest bit); a carry into the exponent is the correct result,
  // up to 65504 + half a step, which becomes infinity.
  const uint32_t odd = (magnitude >> 13) & 1u;
  magnitude += 0xc8000000u + 0xfffu + odd;  // 0xc8000000 = (15 - 127) << 23, modulo 2^32
  return static_cast<uint16_t>(sign | (magnitude >> 13));
}

const LinearKernels& linear_kernels_generic() { return kGeneric; }

const LinearKernels& linear_kernels(CpuIsa isa) {
  if (isa == CpuIsa::generic) return kGeneric;
  VQRT_CHECK(cpu_isa_runs(isa), "this CPU cannot run the " << cpu_isa_name(isa) << " kernels");
  const LinearKernels* kernels = linear_kernels_simd(isa);
  VQRT_CHECK(kernels != nullptr, "vqrt was built without " << cpu_isa_name(isa) << " kernels");
  return *kernels;
}

void linear(const LinearKernels& kernels, const LinearArgs& a, bool bf16_activations) {
  switch (a.w->dtype) {
    case DType::f32:
      return kernels.f32(a);
    case DType::f16:
      return kernels.f16(a);
    case DType::bf16: {
      if (!bf16_activations) return kernels.bf16(a);
      if (kernels.bf16_dot) return kernels.bf16_dot(a);
      // Without vdpbf16ps: the same numerics as rounded x times widened weights.
      thread_local std::vector<float> rounded;
      rounded.resize(a.rows * a.w->k);
      for (size_t j = 0; j < rounded.size(); ++j) {
        rounded[j] = bf16_to_float(float_to_bf16(a.x[j]));
      }
      LinearArgs on_rounded = a;
      on_rounded.x = rounded.data();
      return kernels.bf16(on_rounded);
    }
    case DType::i8:
      return kernels.i8(a);
  }
}

}  // namespace vqrt
