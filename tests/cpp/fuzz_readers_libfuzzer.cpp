// libFuzzer entry over the C++ readers of untrusted bytes (targets in fuzz_targets.h). The
// first byte picks the target: 0 strict JSON, 1 safetensors, 2 a whole bundle whose manifest
// is the rest (its file list filled in with the fixture's native weights). A target failure
// aborts, which libFuzzer reports with the input that caused it.
//   cmake -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DVQRT_CUDA=OFF -DVQRT_LIBFUZZER=ON
//   cmake --build build/fuzz --target fuzz_readers_libfuzzer
//   build/fuzz/fuzz_readers_libfuzzer -max_total_time=60 CORPUS/
#include <cstdio>
#include <cstdlib>

#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t* rest = data + 1;
  const size_t n = size - 1;
  fuzz::Failure failure;
  switch (data[0] % 3) {
    case 0:
      failure = fuzz::json(rest, n);
      break;
    case 1:
      failure = fuzz::safetensors(rest, n);
      break;
    default: {
      static fixture::TempDir dir;  // one directory, rewritten for every input
      static const std::vector<uint8_t> weights =
          fixture::safetensors(fixture::native_tensors(1));
      failure = fuzz::bundle(dir.path, std::string(rest, rest + n), weights);
    }
  }
  if (!failure.empty()) {
    std::fprintf(stderr, "fuzz target failure: %s\n", failure.c_str());
    std::abort();
  }
  return 0;
}
