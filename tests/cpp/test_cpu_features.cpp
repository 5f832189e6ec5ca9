// CPU feature detection and the VQRT_CPU_ISA cap.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "check.h"
#include "cpu_features.h"
#include "errors.h"

using vqrt::CpuIsa;

namespace {

// The flags line of /proc/cpuinfo ("" when there is none, e.g. not Linux).
std::string cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) return line + " ";
  }
  return "";
}

bool has_flag(const std::string& flags, const char* flag) {
  return flags.find(std::string(" ") + flag + " ") != std::string::npos;
}

}  // namespace

TEST(detection_matches_proc_cpuinfo) {
  const std::string flags = cpuinfo_flags();
  if (flags.empty()) SKIP("no /proc/cpuinfo flags line");
  const vqrt::CpuFeatures& f = vqrt::cpu_features();
  CHECK_EQ(f.avx2, has_flag(flags, "avx2"));
  CHECK_EQ(f.fma, has_flag(flags, "fma"));
  CHECK_EQ(f.f16c, has_flag(flags, "f16c"));
  CHECK_EQ(f.avx512f, has_flag(flags, "avx512f"));
  CHECK_EQ(f.avx512bw, has_flag(flags, "avx512bw"));
  CHECK_EQ(f.avx512vl, has_flag(flags, "avx512vl"));
  CHECK_EQ(f.avx512_vnni, has_flag(flags, "avx512_vnni"));
  CHECK_EQ(f.avx512_bf16, has_flag(flags, "avx512_bf16"));
  std::printf("  cpu: avx2=%d fma=%d avx512f=%d bw=%d vl=%d vnni=%d bf16=%d, supported=%s\n",
              f.avx2, f.fma, f.avx512f, f.avx512bw, f.avx512vl, f.avx512_vnni, f.avx512_bf16,
              vqrt::cpu_isa_name(vqrt::cpu_isa_supported()));
}

TEST(levels_are_nested) {
  CHECK(vqrt::cpu_isa_runs(CpuIsa::generic));
  if (vqrt::cpu_isa_runs(CpuIsa::avx512)) CHECK(vqrt::cpu_isa_runs(CpuIsa::avx2));
  CHECK(vqrt::cpu_isa_runs(vqrt::cpu_isa_supported()));
}

TEST(parse_cap) {
  CHECK(vqrt::cpu_isa_parse_cap(nullptr) == CpuIsa::avx512);
  CHECK(vqrt::cpu_isa_parse_cap("") == CpuIsa::avx512);
  CHECK(vqrt::cpu_isa_parse_cap("generic") == CpuIsa::generic);
  CHECK(vqrt::cpu_isa_parse_cap("avx2") == CpuIsa::avx2);
  CHECK(vqrt::cpu_isa_parse_cap("avx512") == CpuIsa::avx512);
  CHECK_THROWS(vqrt::cpu_isa_parse_cap("AVX2"), vqrt::Error, "got 'AVX2'");
  CHECK_THROWS(vqrt::cpu_isa_parse_cap("sse"), vqrt::Error, "generic, avx2 or avx512");
}

// The active level is the supported one capped by VQRT_CPU_ISA (ctest runs this test without it;
// tests/test_sampling.py runs the library with each value).
TEST(active_is_capped_supported) {
  const char* env = std::getenv("VQRT_CPU_ISA");
  const CpuIsa cap = vqrt::cpu_isa_parse_cap(env);
  const CpuIsa supported = vqrt::cpu_isa_supported();
  const CpuIsa expected = static_cast<int>(cap) < static_cast<int>(supported) ? cap : supported;
  CHECK(vqrt::cpu_isa_active() == expected);
  std::printf("  active: %s (VQRT_CPU_ISA=%s)\n", vqrt::cpu_isa_name(vqrt::cpu_isa_active()),
              env ? env : "unset");
}

TEST(names) {
  CHECK(std::strcmp(vqrt::cpu_isa_name(CpuIsa::generic), "generic") == 0);
  CHECK(std::strcmp(vqrt::cpu_isa_name(CpuIsa::avx2), "avx2") == 0);
  CHECK(std::strcmp(vqrt::cpu_isa_name(CpuIsa::avx512), "avx512") == 0);
}

int main() { return check::run_tests(); }
