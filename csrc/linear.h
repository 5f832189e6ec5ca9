// The transformer's matrix products: y = x W^T + b for a few rows of activations x against one
// weight matrix W stored as fp32, fp16, bf16 or weight-only int8 (layout "vqrt-native-1").
//
//   x:    [rows, K] float32, row-major (rows = batch at a decode step, batch x positions in a
//         prefill)
//   W:    [N, K] (out, in), dtype as WeightView::dtype; int8 carries scale [N] float32 with
//         W[o, i] = q[o, i] * scale[o]
//   bias: [N] float32 or null
//   y:    [rows, N] float32; `accumulate` adds the product to y (the residual connection)
//
// A call computes the output columns [col_begin, col_end) for every row, so threads split N. The
// kernels stream each weight row once for all activation rows (up to 8 at a time), so a decode
// step over a batch reads the weights once: at batch 1 the product is a memory-bound
// matrix-vector product.
//
// Numerics, the same for every ISA up to the order of the fp32 sums: W is widened to fp32 exactly
// and multiplied by fp32 x. Two kinds round x first: the bf16-dot kernel (LinearKernels::bf16_dot,
// x to bf16: see there) and int8 weights, whose kernels multiply integers: each row of x is
// quantized to int16 (quantize_rows_int16: s_r = max_i |x[r, i]| / 32767, xq = rint(x / s_r)),
// the sum of xq[r, i] * q[o, i] is exact (int32 lanes, widened to int64 before they could
// overflow), and y = float(sum) * s_r * scale[o] + bias[o]. So int8 results are the same bits on
// every ISA, and x's rounding (at most 2^-16 of its row's largest value) is far below the
// weights' own.
//
// Every output value is computed by the same sequence of operations whatever the number of rows
// in the call, the column range and the thread, so results never depend on the batch around a row
// or on the thread count.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace vqrt {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3 };

// "F32", "F16", "BF16", "I8" (the safetensors names).
const char* dtype_name(DType dtype);

// A borrowed weight matrix [n, k] (the caller keeps the memory alive).
struct WeightView {
  DType dtype = DType::f32;
  const void* data = nullptr;    // [n, k] elements of `dtype`
  const float* scale = nullptr;  // [n] int8 only: per output channel
  int64_t n = 0;                 // output features (rows of W)
  int64_t k = 0;                 // input features
};

// x as the int8 kernels read it (quantize_rows_int16).
struct QuantizedRows {
  const int16_t* xq;   // [rows, k_padded]
  const float* scale;  // [rows]
  int64_t k_padded;
};

// The rows x columns block of y a call computes (see the top of this file).
struct LinearArgs {
  const float* x;        // [rows, k]
  int64_t rows;
  const WeightView* w;
  const float* bias;     // [n] or null
  bool accumulate;       // y += x W^T + b instead of y = x W^T + b
  int64_t col_begin;     // output columns [col_begin, col_end) of [0, n)
  int64_t col_end;
  float* y;              // [rows, n]
  // int8 weights: x already quantized by quantize_rows_int16 (the same for every column chunk
  // of a product), or null to quantize it here.
  const QuantizedRows* quantized = nullptr;
};

// One ISA's kernels; a dtype's entry is null where the ISA has no kernel for it.
struct LinearKernels {
  CpuIsa isa;
  void (*f32)(const LinearArgs& a);
  void (*f16)(const LinearArgs& a);
  void (*bf16)(const LinearArgs& a);
  void (*i8)(const LinearArgs& a);
  // bf16 weights times activations rounded to bf16 (nearest even), with vdpbf16ps: twice the
  // multiply-adds per instruction of the widening kernel, for the batched steps that are
  // compute-bound; products are exact and summed in fp32. Null unless the CPU has AVX512_BF16;
  // its reference is the bf16 kernel on rounded x (what linear() runs where it is null).
  void (*bf16_dot)(const LinearArgs& a);
};

// The plain C++ kernels: the reference for every SIMD variant, and the CPU path without AVX2.
const LinearKernels& linear_kernels_generic();

// The kernels for `isa`; throws vqrt::Error when this CPU cannot run them.
const LinearKernels& linear_kernels(CpuIsa isa);

// The AVX2 and AVX-512 kernels (linear_simd.cpp); nullptr for generic and on non-x86 CPUs.
const LinearKernels* linear_kernels_simd(CpuIsa isa);

// Runs the kernel for a.w->dtype. bf16 weights with bf16_activations use bf16_dot, or where the
// ISA has none the bf16 kernel on x rounded to bf16: the numerics follow the setting, not the CPU.
void linear(const LinearKernels& kernels, const LinearArgs& a, bool bf16_activations);

// int8 kernels' input: x [rows, k] -> xq [rows, k_padded] int16 (zeros past k) and scale
// [rows] with x[r, i] ~ xq[r, i] * scale[r] (see the top of this file; an all-zero row has scale
// 0). One scalar routine for every ISA, so the integers are identical everywhere.
void quantize_rows_int16(const float* x, int64_t rows, int64_t k, int64_t k_padded, int16_t* xq,
                         float* scale);
// k_padded for the int8 kernels: k rounded up to a whole AVX-512 step (32 int16 values).
inline int64_t int8_padded_k(int64_t k) { return (k + 31) / 32 * 32; }

// The int8 kernels' input: a.quantized where the caller made it (once for every chunk of
// columns of a product), else x quantized into this thread's buffers (valid until the thread's
// next call).
QuantizedRows quantize_input(const LinearArgs& a);

// The AVX-512 int8 kernel with vpdpwssd (AVX512_VNNI) or without it (vpmaddwd + vpaddd), both
// on every CPU that runs them: linear_kernels(avx512) picks one; tests compare both with the
// generic kernel. nullptr on non-x86 builds.
using LinearKernel = void (*)(const LinearArgs& a);
LinearKernel linear_avx512_i8(bool vnni);

// Conversions shared by the kernels and the tests.
float half_to_float(uint16_t h);
// IEEE binary32 -> binary16, round to nearest even; overflow to infinity, NaN stays NaN.
uint16_t float_to_half(float f);
inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
// Round to nearest even (no NaN inputs in activations).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace vqrt
