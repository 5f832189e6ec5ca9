// The transformer's small ops: GELU and attention per ISA against their generic kernels, the
// erf / exp approximations against libm, LayerNorm against a double reference, the embedding.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "attention.h"
#include "check.h"
#include "cpu_features.h"
#include "embedding.h"
#include "gelu.h"
#include "layer_norm.h"
#include "linear.h"

using vqrt::CpuIsa;

TEST(gelu_simd_matches_generic) {
  std::vector<float> x;
  for (float v = -12.0f; v <= 12.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  std::vector<float> ref = x;
  vqrt::gelu_kernel(CpuIsa::generic)(ref.data(), static_cast<int64_t>(ref.size()));
  for (size_t i = 0; i < x.size(); ++i) {  // the generic kernel is libm's erf
    CHECK_NEAR(ref[i], 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0))), 1e-6, 1e-6);
  }
  int compared = 0;
  for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512}) {
    if (!vqrt::cpu_isa_runs(isa)) continue;
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(13), static_cast<int64_t>(x.size())}) {
      std::vector<float> got(x.begin(), x.begin() + n);
      vqrt::gelu_kernel(isa)(got.data(), n);
      // erf within 5e-7, so GELU within 5e-7 * |x| / 2 of the generic kernel.
      for (int64_t i = 0; i < n; ++i) CHECK_NEAR(got[i], ref[i], 2e-6, 1e-6);
      ++compared;
    }
  }
  if (compared == 0) SKIP("this CPU has neither AVX2 nor AVX-512");
}

TEST(attention_simd_matches_generic) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int compared = 0;
  for (int64_t d : {5, 12, 16, 64, 70}) {
    for (int64_t n_keys : {1, 2, 17, 257}) {
      std::vector<float> q(d), k(n_keys * d), v(n_keys * d);
      for (float& x : q) x = 3.0f * normal(rng);  // peaked softmax: exp over a wide range
      for (float& x : k) x = normal(rng);
      for (float& x : v) x = normal(rng);
      std::vector<float> scores(n_keys), ref(d), got(d);
      vqrt::AttentionArgs a{q.data(), k.data(), v.data(), n_keys, d,
                            1.0f / std::sqrt(static_cast<float>(d)), scores.data(), ref.data()};
      vqrt::attention_kernel(CpuIsa::generic)(a);
      for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512}) {
        if (!vqrt::cpu_isa_runs(isa)) continue;
        a.out = got.data();
        vqrt::attention_kernel(isa)(a);
        for (int64_t i = 0; i < d; ++i) CHECK_NEAR(got[i], ref[i], 1e-5, 1e-5);
        ++compared;
      }
    }
  }
  if (compared == 0) SKIP("this CPU has neither AVX2 nor AVX-512");
}

// An fp16 cache is read exactly: every kernel on the fp16 rows gives the generic kernel's result
// on their fp32 values.
TEST(attention_over_an_fp16_cache) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t d : {5, 12, 16, 64, 70}) {
    for (int64_t n_keys : {1, 17, 257}) {
      std::vector<float> q(d), k(n_keys * d), v(n_keys * d);
      std::vector<uint16_t> k16(k.size()), v16(v.size());
      for (float& x : q) x = 3.0f * normal(rng);
      for (size_t i = 0; i < k.size(); ++i) {
        k16[i] = vqrt::float_to_half(normal(rng));
        v16[i] = vqrt::float_to_half(normal(rng));
        k[i] = vqrt::half_to_float(k16[i]);
        v[i] = vqrt::half_to_float(v16[i]);
      }
      std::vector<float> scores(n_keys), ref(d), got(d);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      vqrt::attention_kernel(CpuIsa::generic)(
          {q.data(), k.data(), v.data(), n_keys, d, scale, scores.data(), ref.data()});
      for (CpuIsa isa : {CpuIsa::generic, CpuIsa::avx2, CpuIsa::avx512}) {
        if (!vqrt::cpu_isa_runs(isa)) continue;
        vqrt::AttentionArgs a{q.data(), nullptr, nullptr, n_keys, d, scale, scores.data(),
                              got.data()};
        a.k16 = k16.data();
        a.v16 = v16.data();
        vqrt::attention_kernel(isa)(a);
        const double tolerance = isa == CpuIsa::generic ? 0.0 : 1e-5;
        for (int64_t i = 0; i < d; ++i) CHECK_NEAR(got[i], ref[i], tolerance, tolerance);
      }
    }
  }
}

TEST(attention_of_one_key_is_its_value) {
  const float q[3] = {1, 2, 3}, k[3] = {0.5f, -1, 2}, v[3] = {4, 5, 6};
  float scores[1], out[3];
  for (CpuIsa isa : {CpuIsa::generic, CpuIsa::avx2, CpuIsa::avx512}) {
    if (!vqrt::cpu_isa_runs(isa)) continue;
    vqrt::attention_kernel(isa)({q, k, v, 1, 3, 0.5f, scores, out});
    for (int i = 0; i < 3; ++i) CHECK_EQ(out[i], v[i]);
  }
}

TEST(layer_norm_matches_double_reference) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 3, c = 77;
  std::vector<float> x(rows * c), gamma(c), beta(c), y(rows * c);
  for (float& v : x) v = 5.0f + 2.0f * normal(rng);  // an offset mean
  for (float& v : gamma) v = 1.0f + 0.1f * normal(rng);
  for (float& v : beta) v = 0.1f * normal(rng);
  vqrt::layer_norm(x.data(), rows, c, gamma.data(), beta.data(), 1e-5f, y.data());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < c; ++i) mean += x[r * c + i] / double(c);
    for (int64_t i = 0; i < c; ++i) var += (x[r * c + i] - mean) * (x[r * c + i] - mean) / c;
    for (int64_t i = 0; i < c; ++i) {
      const double ref = (x[r * c + i] - mean) / std::sqrt(var + 1e-5) * gamma[i] + beta[i];
      CHECK_NEAR(y[r * c + i], ref, 1e-6, 1e-6);
    }
  }
}

TEST(embedding_adds_token_and_position_rows) {
  const float tok[3 * 2] = {1, 2, 3, 4, 5, 6}, pos[2 * 2] = {10, 20, 30, 40};
  const int64_t tokens[2] = {2, 0}, positions[2] = {1, 0};
  float x[4];
  vqrt::embed_tokens(tokens, positions, 2, 2, tok, pos, x);
  CHECK_EQ(x[0], 35.0f);
  CHECK_EQ(x[1], 46.0f);
  CHECK_EQ(x[2], 11.0f);
  CHECK_EQ(x[3], 22.0f);
}

int main() { return check::run_tests(); }
