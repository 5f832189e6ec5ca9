// The generic matrix-product kernels (the reference) and the dispatch; see linear.h.
#include "linear.h"

#include <cstring>
#include <vector>

#include "errors.h"

namespace vqrt {

namespace {

// Weight element (o, i) widened to fp32; int8 stays unscaled (the scale multiplies the row sum).
template <DType D>
float weight_at(const WeightView& w, int64_t o, int64_t i) {
  const int64_t at = o * w.k + i;
  if constexpr (D == DType::f32) return static_cast<const float*>(w.data)[at];
  if constexpr (D == DType::f16) return half_to_float(static_cast<const uint16_t*>(w.data)[at]);
  if constexpr (D == DType::bf16) return bf16_to_float(static_cast<const uint16_t*>(w.data)[at]);
  if constexpr (D == DType::i8) return static_cast<float>(static_cast<const int8_t*>(w.data)[at]);
}

// y[r, o] (+)= (sum_i W[o, i] x[r, i]) * scale[o] + bias[o], the sum in fp32 in index order.
template <DType D>
void linear_generic(const LinearArgs& a) {
  const WeightView& w = *a.w;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * w.k;
    float* y = a.y + r * w.n;
    for (int64_t o = a.col_begin; o < a.col_end; ++o) {
      float sum = 0.0f;
      for (int64_t i = 0; i < w.k; ++i) sum += weight_at<D>(w, o, i) * x[i];
      if (D == DType::i8) sum *= w.scale[o];
      if (a.bias) sum += a.bias[o];
      y[o] = a.accumulate ? y[o] + sum : sum;
    }
  }
}

const LinearKernels kGeneric = {CpuIsa::generic,          linear_generic<DType::f32>,
                                linear_generic<DType::f16>, linear_generic<DType::bf16>,
                                linear_generic<DType::i8>,  nullptr};

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
