// GPU twin check of bias + GELU (csrc/cuda/bias_gelu.cu, fp16 in/out) against the CPU: the bias
// added in fp32, then vqrt::gelu_kernel(generic) (csrc/gelu.h, libm's erf: the oracle), within
// fp16 rounding. Exits 77 (ctest: skipped) where no CUDA device is usable.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cpu_features.h"
#include "cuda/bias_gelu.cuh"
#include "cuda_test_util.h"
#include "errors.h"
#include "gelu.h"

namespace {

constexpr double kAtol = 1e-4, kRtol = 2e-3;  // two fp16 ulps, and a floor near zero

void run_case(std::mt19937_64& rng, int64_t rows, int64_t n, bool with_bias, bool in_place,
              bool gelu = true) {
  const std::vector<float> x = cuda_test::random_half_values(rng, rows * n, 0.0f, 3.0f);
  const std::vector<float> bias = cuda_test::random_floats(rng, n, 0.0f, 1.0f);
  std::vector<float> ref(rows * n);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) ref[r * n + i] = x[r * n + i] + (with_bias ? bias[i] : 0.0f);
  }
  if (gelu) vqrt::gelu_kernel(vqrt::CpuIsa::generic)(ref.data(), rows * n);

  auto d_x = cuda_test::upload(cuda_test::to_half(x));
  auto d_bias = cuda_test::upload(bias);
  vqrt::cuda::DeviceBuffer d_y(rows * n * sizeof(__half));
  vqrt::cuda::BiasGeluParams p;
  p.x = d_x.as<__half>();
  p.bias = with_bias ? d_bias.as<float>() : nullptr;
  p.y = in_place ? d_x.as<__half>() : d_y.as<__half>();
  p.rows = rows;
  p.n = n;
  p.gelu = gelu;
  vqrt::cuda::bias_gelu_launch(p, nullptr);
  const auto got = cuda_test::to_float(
      cuda_test::download<__half>(in_place ? d_x : d_y, static_cast<size_t>(rows * n)));
  cuda_test::expect_near(got, ref, kAtol, kRtol,
                         "bias_gelu rows " + std::to_string(rows) + " n " + std::to_string(n) +
                             (with_bias ? "" : " no bias") + (in_place ? " in place" : "") +
                             (gelu ? "" : " bias only"));
}

}  // namespace

TEST(bias_gelu_matches_cpu) {
  std::mt19937_64 rng(3);
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(255), int64_t(1024), int64_t(4099)}) {
    for (int64_t rows : {int64_t(1), int64_t(5), int64_t(64)}) {
      run_case(rng, rows, n, true, false);
    }
  }
  run_case(rng, 7, 100, false, false);
  run_case(rng, 7, 100, true, true);
  // gelu = false: the bias add alone, the epilogue of the qkv, proj and mlp.proj products.
  run_case(rng, 7, 100, true, false, false);
  run_case(rng, 5, 4099, true, true, false);
}

TEST(bias_gelu_strides_over_more_rows_than_the_grid) {
  std::mt19937_64 rng(5);
  run_case(rng, 70000, 3, true, false);  // grid.y is capped at 65535
}

TEST(bias_gelu_checks_arguments) {
  vqrt::cuda::BiasGeluParams p;
  p.rows = 1;
  p.n = 0;
  CHECK_THROWS(vqrt::cuda::bias_gelu_launch(p, nullptr), vqrt::Error, "n must be in");
  p.n = 4;
  CHECK_THROWS(vqrt::cuda::bias_gelu_launch(p, nullptr), vqrt::Error, "null device pointer");
}

int main() { return cuda_test::run_or_skip(); }
