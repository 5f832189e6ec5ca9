// GPU twin check of LayerNorm (csrc/cuda/layer_norm.cu, fp16 in/out, fp32 statistics) against
// vqrt::layer_norm (csrc/layer_norm.h, the oracle) on the same fp16 inputs, within fp16 rounding
// of the output. Exits 77 (ctest: skipped) where no CUDA device is usable.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/layer_norm.cuh"
#include "cuda_test_util.h"
#include "errors.h"
#include "layer_norm.h"

namespace {

// One fp16 ulp is at most 2^-10 of the value; allow two, plus an absolute floor for values that
// cancel to near zero.
constexpr double kAtol = 1e-3, kRtol = 2e-3;

void run_case(std::mt19937_64& rng, int64_t rows, int64_t c, float offset, bool in_place) {
  const std::vector<float> x = cuda_test::random_half_values(rng, rows * c, offset, 1.5f);
  const std::vector<float> gamma = cuda_test::random_floats(rng, c, 1.0f, 0.3f);
  const std::vector<float> beta = cuda_test::random_floats(rng, c, 0.0f, 0.5f);
  const float eps = 1e-5f;
  std::vector<float> ref(rows * c);
  vqrt::layer_norm(x.data(), rows, c, gamma.data(), beta.data(), eps, ref.data());

  auto d_x = cuda_test::upload(cuda_test::to_half(x));
  auto d_gamma = cuda_test::upload(gamma);
  auto d_beta = cuda_test::upload(beta);
  vqrt::cuda::DeviceBuffer d_y(rows * c * sizeof(__half));
  vqrt::cuda::LayerNormParams p;
  p.x = d_x.as<__half>();
  p.gamma = d_gamma.as<float>();
  p.beta = d_beta.as<float>();
  p.y = in_place ? d_x.as<__half>() : d_y.as<__half>();
  p.rows = rows;
  p.c = c;
  p.eps = eps;
  vqrt::cuda::layer_norm_launch(p, nullptr);
  const auto got = cuda_test::to_float(
      cuda_test::download<__half>(in_place ? d_x : d_y, static_cast<size_t>(rows * c)));
  cuda_test::expect_near(got, ref, kAtol, kRtol,
                         "layer_norm rows " + std::to_string(rows) + " c " + std::to_string(c) +
                             " offset " + std::to_string(offset) + (in_place ? " in place" : ""));
}

}  // namespace

TEST(layer_norm_matches_cpu) {
  std::mt19937_64 rng(3);
  for (int64_t c : {int64_t(1), int64_t(7), int64_t(64), int64_t(255), int64_t(1024),
                    int64_t(1027), int64_t(4096)}) {
    for (int64_t rows : {int64_t(1), int64_t(3), int64_t(64), int64_t(257)}) {
      run_case(rng, rows, c, 0.0f, false);
    }
  }
}

TEST(layer_norm_with_offset_and_in_place) {
  std::mt19937_64 rng(5);
  for (int64_t c : {int64_t(33), int64_t(1024)}) {
    run_case(rng, 17, c, 40.0f, false);  // mean far from 0: the two-pass variance matters
    run_case(rng, 17, c, 0.5f, true);
  }
}

TEST(layer_norm_checks_arguments) {
  vqrt::cuda::LayerNormParams p;
  p.rows = 2;
  p.c = 0;
  CHECK_THROWS(vqrt::cuda::layer_norm_launch(p, nullptr), vqrt::Error, "c must be in");
  p.c = 8;
  CHECK_THROWS(vqrt::cuda::layer_norm_launch(p, nullptr), vqrt::Error, "null device pointer");
  p.rows = 0;
  vqrt::cuda::layer_norm_launch(p, nullptr);  // nothing to do, nothing read
}

int main() { return cuda_test::run_or_skip(); }
