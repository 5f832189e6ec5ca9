// Run-time CPU feature detection and the ISA level the CPU kernels dispatch on.
//
// SIMD variants are compiled per function with __attribute__((target(...))) and never with -march,
// so one binary runs everywhere; this file decides which variant runs. The environment variable
// VQRT_CPU_ISA=generic|avx2|avx512 caps the level (tests and benchmarks compare variants with it);
// it is read once, on first use.
#pragma once

namespace vqrt {

// Levels in increasing order: each one requires the ones below it.
//   avx2:   AVX2 + FMA + F16C (every AVX2 CPU has F16C; the fp16-weight kernels need it)
//   avx512: AVX-512F, BW and VL (plus everything avx2 needs)
enum class CpuIsa : int { generic = 0, avx2 = 1, avx512 = 2 };

// What the CPU (and the OS, which must save the wider registers) supports. avx512_bf16 selects
// the vdpbf16ps matrix kernel, avx512_vnni the vpdpwssd int8 kernel (csrc/linear.h).
struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
};

// Detected once; all false on non-x86 CPUs.
const CpuFeatures& cpu_features();

// The highest level the CPU supports, ignoring VQRT_CPU_ISA.
CpuIsa cpu_isa_supported();

// True when the CPU can run the kernels of `isa`.
bool cpu_isa_runs(CpuIsa isa);

// The level the kernels use: the supported level capped by VQRT_CPU_ISA. Throws vqrt::Error when
// VQRT_CPU_ISA holds something other than generic, avx2 or avx512 (on every call, so a
// misspelt setting is never silently ignored).
CpuIsa cpu_isa_active();

// "generic", "avx2" or "avx512".
const char* cpu_isa_name(CpuIsa isa);

// Parses a VQRT_CPU_ISA value (nullptr or "" means no cap, i.e. avx512). Throws vqrt::Error on
// anything else. Exposed for tests.
CpuIsa cpu_isa_parse_cap(const char* value);

}  // namespace vqrt
