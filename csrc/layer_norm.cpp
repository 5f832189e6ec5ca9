#include "layer_norm.h"

#include <cmath>

namespace vqrt {

void layer_norm(const float* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    double sum = 0.0;
    for (int64_t i = 0; i < c; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(c);
    double squares = 0.0;
    for (int64_t i = 0; i < c; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const double variance = squares / static_cast<double>(c);
    const float inv_std = static_cast<float>(1.0 / std::sqrt(variance + eps));
    const float mean_f = static_cast<float>(mean);
    for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] - mean_f) * inv_std * gamma[i] + beta[i];
  }
}

}  // namespace vqrt
