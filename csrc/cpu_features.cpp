#include "cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"

namespace vqrt {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks (through XGETBV) that the OS saves the YMM/ZMM state.
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512_vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

struct CapSetting {
  bool valid;
  CpuIsa cap;
  std::string raw;
};

// Read once: getenv is not safe against a concurrent setenv, and the level must not change while
// the process runs.
const CapSetting& cap_setting() {
  static const CapSetting setting = [] {
    const char* value = std::getenv("VQRT_CPU_ISA");
    try {
      return CapSetting{true, cpu_isa_parse_cap(value), value ? value : ""};
    } catch (const Error&) {
      return CapSetting{false, CpuIsa::generic, value};
    }
  }();
  return setting;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

bool cpu_isa_runs(CpuIsa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case CpuIsa::generic:
      return true;
    case CpuIsa::avx2:
      return f.avx2 && f.fma && f.f16c;
    case CpuIsa::avx512:
      return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl;
  }
  return false;
}

CpuIsa cpu_isa_supported() {
  if (cpu_isa_runs(CpuIsa::avx512)) return CpuIsa::avx512;
  if (cpu_isa_runs(CpuIsa::avx2)) return CpuIsa::avx2;
  return CpuIsa::generic;
}

CpuIsa cpu_isa_parse_cap(const char* value) {
  if (value == nullptr || value[0] == '\0') return CpuIsa::avx512;
  for (CpuIsa isa : {CpuIsa::generic, CpuIsa::avx2, CpuIsa::avx512}) {
    if (std::strcmp(value, cpu_isa_name(isa)) == 0) return isa;
  }
  throw_error(__FILE__, __LINE__,
              std::string("VQRT_CPU_ISA must be generic, avx2 or avx512, got '") + value + "'");
}

CpuIsa cpu_isa_active() {
  const CapSetting& setting = cap_setting();
  VQRT_CHECK(setting.valid,
             "VQRT_CPU_ISA must be generic, avx2 or avx512, got '" << setting.raw << "'");
  const CpuIsa supported = cpu_isa_supported();
  return static_cast<int>(setting.cap) < static_cast<int>(supported) ? setting.cap : supported;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::generic:
      return "generic";
    case CpuIsa::avx2:
      return "avx2";
    case CpuIsa::avx512:
      return "avx512";
  }
  return "unknown";
}

}  // namespace vqrt
