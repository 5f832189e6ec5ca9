// The sampler (csrc/sampling.h): row kernels against the generic ones, radix selection against
// nth_element, exact distributions on small cases, the whole sampler against a plain full-sort
// reference of the rules, support, frequency, reproducibility and errors.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "check.h"
#include "errors.h"
#include "philox.h"
#include "sampling.h"

using vqrt::CpuIsa;
using vqrt::RowKernels;
using vqrt::SamplingParams;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

SamplingParams params(int64_t k, float top_p = 1.0f, float temperature = 1.0f) {
  SamplingParams p;
  p.top_k = k;
  p.top_p = top_p;
  p.temperature = temperature;
  return p;
}

// Normal logits with standard deviation `scale`; quantised to multiples of `step` (ties) if > 0.
std::vector<float> random_logits(std::mt19937_64& rng, int64_t n, float scale, float step = 0.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) {
    v = normal(rng);
    if (step > 0.0f) v = std::round(v / step) * step;
  }
  return x;
}

std::vector<double> probs_of(const std::vector<float>& x, const SamplingParams& p) {
  std::vector<double> probs(x.size());
  vqrt::sampling_probs(x.data(), 1, static_cast<int64_t>(x.size()), p, probs.data());
  return probs;
}

// The rules of sampling.h written the plain way (full stable sort, no selection, no SIMD): the
// oracle for the sampler. Returns the kept tokens in walk order with their weights.
struct Reference {
  std::vector<int32_t> token;
  std::vector<double> weight;
  double total = 0.0;

  int32_t draw(double u) const {
    double cum = 0.0;
    for (size_t j = 0; j < token.size(); ++j) {
      cum += weight[j];
      if (cum > u * total) return token[j];
    }
    size_t last = token.size() - 1;
    while (last > 0 && weight[last] == 0.0) --last;
    return token[last];
  }
};

Reference reference(const std::vector<float>& x, const SamplingParams& p) {
  const int64_t V = static_cast<int64_t>(x.size());
  Reference r;
  if (p.greedy) {
    r.token = {static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin())};
    r.weight = {1.0};
    r.total = 1.0;
    return r;
  }
  std::vector<float> s(V);
  for (int64_t i = 0; i < V; ++i) s[i] = p.temperature == 1.0f ? x[i] : x[i] / p.temperature;
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  const float kth = s[ids[p.top_k - 1]];
  for (int32_t id : ids) {
    if (s[id] >= kth && s[id] > -kInf) r.token.push_back(id);
  }
  const double s_max = s[r.token[0]];
  for (int32_t id : r.token) {
    r.weight.push_back(std::exp(static_cast<double>(s[id]) - s_max));
    r.total += r.weight.back();
  }
  if (p.top_p < 1.0f) {
    size_t kept = r.token.size();
    double before = 0.0;
    for (size_t j = 0; j < r.token.size(); ++j) {
      if (before > static_cast<double>(p.top_p)) {
        kept = j;
        break;
      }
      before += r.weight[j] / r.total;
    }
    r.token.resize(kept);
    r.weight.resize(kept);
    r.total = 0.0;
    for (double w : r.weight) r.total += w;
  }
  return r;
}

// The ISAs this CPU can run, besides generic; prints the ones it cannot.
std::vector<CpuIsa> simd_isas() {
  std::vector<CpuIsa> isas;
  for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512}) {
    if (vqrt::cpu_isa_runs(isa)) {
      isas.push_back(isa);
    } else {
      std::printf("  skipping %s: this CPU lacks it\n", vqrt::cpu_isa_name(isa));
    }
  }
  return isas;
}

// Lengths around the vector widths (8, 16) plus a few vocabulary-sized ones.
std::vector<int64_t> kernel_lengths() {
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 70; ++n) lengths.push_back(n);
  for (int64_t n : {127, 1000, 1024, 1031, 16384, 16390}) lengths.push_back(n);
  return lengths;
}

bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Row kernels: every variant the CPU runs against the generic one, exactly.

TEST(kernels_match_generic) {
  const std::vector<CpuIsa> isas = simd_isas();
  if (isas.empty()) SKIP("this CPU has no SIMD variant to compare");
  const RowKernels& ref = vqrt::row_kernels_generic();
  std::mt19937_64 rng(7);
  for (CpuIsa isa : isas) {
    const RowKernels& k = vqrt::row_kernels(isa);
    CHECK(k.isa == isa);
    for (int64_t n : kernel_lengths()) {
      std::vector<float> x = random_logits(rng, n, 3.0f, n % 3 == 0 ? 0.5f : 0.0f);
      // Masked tokens, and the maximum in the vector body, the tail or nowhere special.
      for (int64_t i = 0; i < n; i += 5) x[i] = -kInf;
      x[rng() % n] = 9.0f;
      CHECK(same_float(k.max(x.data(), n), ref.max(x.data(), n)));
      x[n - 1] = 11.0f;  // last element, which is in the scalar or masked tail
      CHECK_EQ(k.max(x.data(), n), ref.max(x.data(), n));

      std::vector<float> all_masked(n, -kInf);
      CHECK_EQ(k.max(all_masked.data(), n), -kInf);

      std::vector<float> y(n), y_ref(n);
      for (float t : {0.37f, 1.0f, 2.9f, 1e-3f}) {
        k.divide(x.data(), n, t, y.data());
        ref.divide(x.data(), n, t, y_ref.data());
        CHECK(y == y_ref);
      }

      std::vector<int32_t> idx(n), idx_ref(n);
      for (float t : {x[rng() % n], x[n / 2], -3.0f, -FLT_MAX, -kInf, 100.0f}) {
        const int64_t c = k.filter_ge(x.data(), n, t, idx.data());
        const int64_t c_ref = ref.filter_ge(x.data(), n, t, idx_ref.data());
        CHECK_EQ(c, c_ref);
        CHECK(std::equal(idx.begin(), idx.begin() + c_ref, idx_ref.begin()));
      }
    }
  }
}

TEST(kernel_max_reports_nan_anywhere) {
  std::vector<CpuIsa> isas = simd_isas();
  isas.push_back(CpuIsa::generic);
  for (CpuIsa isa : isas) {
    const RowKernels& k = vqrt::row_kernels(isa);
    for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 100}) {
      for (int64_t at = 0; at < n; ++at) {
        std::vector<float> x(n, 1.0f);
        x[at] = kNaN;
        CHECK(std::isnan(k.max(x.data(), n)));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Radix selection against nth_element.

TEST(kth_largest_matches_nth_element) {
  std::mt19937_64 rng(3);
  for (int64_t n : {1, 2, 3, 10, 100, 1024, 5000}) {
    for (float step : {0.0f, 0.25f, 10.0f}) {  // no ties, some, nearly all equal
      std::vector<float> x = random_logits(rng, n, 2.0f, step);
      for (int64_t i = 0; i < n; i += 7) x[i] = -kInf;
      if (n > 3) x[1] = -0.0f, x[2] = 0.0f;
      std::vector<uint32_t> scratch(n);
      for (int64_t k : {int64_t(1), int64_t(2), n / 3 + 1, n / 2 + 1, n - 1, n}) {
        if (k < 1 || k > n) continue;
        std::vector<float> sorted = x;
        std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
        CHECK_EQ(vqrt::kth_largest(x.data(), n, k, scratch.data()), sorted[k - 1]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Exact distributions on small cases.

TEST(probs_top_k_of_four) {  // llama.cpp test-sampling's case
  const std::vector<float> x = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  const std::vector<double> p = probs_of(x, params(3));
  CHECK_EQ(p[0], 0.0);
  CHECK_NEAR(p[1], 2.0 / 9, 1e-7, 0);
  CHECK_NEAR(p[2], 3.0 / 9, 1e-7, 0);
  CHECK_NEAR(p[3], 4.0 / 9, 1e-7, 0);
  const std::vector<double> all = probs_of(x, params(4));
  for (int i = 0; i < 4; ++i) CHECK_NEAR(all[i], 0.1 * (i + 1), 1e-7, 0);
}

TEST(probs_keep_ties_at_kth_value) {
  const std::vector<float> x = {1, 2, 2, 2, 0};
  const std::vector<double> p = probs_of(x, params(2));
  CHECK_EQ(p[0], 0.0);
  CHECK_EQ(p[4], 0.0);
  for (int i = 1; i <= 3; ++i) CHECK_NEAR(p[i], 1.0 / 3, 1e-15, 0);
  // k = 4 keeps 1 too (and nothing tied with it); k = 1 keeps the three 2's.
  const std::vector<double> p4 = probs_of(x, params(4));
  CHECK(p4[0] > 0.0 && p4[4] == 0.0);
  const std::vector<double> p1 = probs_of(x, params(1));
  for (int i = 1; i <= 3; ++i) CHECK_NEAR(p1[i], 1.0 / 3, 1e-15, 0);
}

TEST(probs_top_p_hand_computed) {
  // probs 0.5, 0.3, 0.15, 0.05 (token order shuffled); mass before each in walk order:
  // 0, 0.5, 0.8, 0.95.
  const std::vector<float> x = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  // top_p = 0.7: 0.8 > 0.7 removes 0.15 and 0.05 -> {0.5, 0.3} / 0.8.
  std::vector<double> p = probs_of(x, params(4, 0.7f));
  CHECK_NEAR(p[1], 0.625, 1e-7, 0);
  CHECK_NEAR(p[3], 0.375, 1e-7, 0);
  CHECK(p[0] == 0.0 && p[2] == 0.0);
  // top_p = 0.85: keeps 0.5, 0.3, 0.15.
  p = probs_of(x, params(4, 0.85f));
  CHECK_NEAR(p[1], 0.5 / 0.95, 1e-7, 0);
  CHECK_NEAR(p[3], 0.3 / 0.95, 1e-7, 0);
  CHECK_NEAR(p[0], 0.15 / 0.95, 1e-7, 0);
  CHECK_EQ(p[2], 0.0);
  // top_p below the largest probability keeps exactly one token.
  p = probs_of(x, params(4, 0.1f));
  CHECK_EQ(p[1], 1.0);
  // top-p applies to the top-k survivors: k = 2 leaves {0.5, 0.3} -> 0.625, 0.375, and
  // top_p = 0.6 then removes 0.3 (0.625 before it > 0.6).
  p = probs_of(x, params(2, 0.6f));
  CHECK_EQ(p[1], 1.0);
  // Uniform ties: before = 0, 0.25, 0.5, 0.75 exactly; top_p = 0.5 keeps three (0.5 is not > 0.5).
  p = probs_of({3, 3, 3, 3}, params(4, 0.5f));
  CHECK(p[0] == 1.0 / 3 && p[1] == 1.0 / 3 && p[2] == 1.0 / 3 && p[3] == 0.0);
}

TEST(probs_temperature_before_filtering) {
  // Temperature 0.5 squares the probabilities: 1, 4, 9, 16 over 30.
  const std::vector<float> x = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  std::vector<double> p = probs_of(x, params(4, 1.0f, 0.5f));
  for (int i = 0; i < 4; ++i) CHECK_NEAR(p[i], (i + 1) * (i + 1) / 30.0, 1e-6, 0);
  // top_p after temperature: before = 0, 16/30, 25/30; top_p = 0.8 keeps {16, 9} / 25.
  p = probs_of(x, params(4, 0.8f, 0.5f));
  CHECK_NEAR(p[3], 16.0 / 25, 1e-6, 0);
  CHECK_NEAR(p[2], 9.0 / 25, 1e-6, 0);
  CHECK(p[0] == 0.0 && p[1] == 0.0);
  // A high temperature flattens: 0 and log 4 at T = 2 are 1 : 2.
  p = probs_of({0.0f, std::log(4.0f)}, params(2, 1.0f, 2.0f));
  CHECK_NEAR(p[0], 1.0 / 3, 1e-6, 0);
}

TEST(probs_masked_tokens) {
  const std::vector<float> x = {-kInf, 0.0f, -kInf, 0.0f, -kInf};
  for (int64_t k : {1, 2, 3, 5}) {  // k beyond the finite tokens keeps just the finite ones
    const std::vector<double> p = probs_of(x, params(k));
    CHECK(p[0] == 0.0 && p[2] == 0.0 && p[4] == 0.0);
    CHECK(p[1] == 0.5 && p[3] == 0.5);
  }
}

TEST(probs_greedy_one_hot_lowest_index) {
  SamplingParams g = params(1);
  g.greedy = true;
  g.temperature = 0.0f;  // ignored when greedy
  const std::vector<double> p = probs_of({0.5f, 3.0f, -kInf, 3.0f, 1.0f}, g);
  CHECK(p == std::vector<double>({0.0, 1.0, 0.0, 0.0, 0.0}));
  std::vector<float> x = {0.5f, 3.0f, -kInf, 3.0f, 1.0f};
  const uint64_t seeds[2] = {1, 999};
  std::vector<float> two(x);
  two.insert(two.end(), x.begin(), x.end());
  int64_t out[2];
  vqrt::sample_logits(two.data(), 2, 5, seeds, 17, g, out);
  CHECK(out[0] == 1 && out[1] == 1);
}

TEST(probs_top_p_one_keeps_the_tail) {
  // 4000 tokens, one of them 30 nats below the rest: still kept with top_p = 1.
  std::vector<float> x(4000, 0.0f);
  x[1234] = -30.0f;
  const std::vector<double> p = probs_of(x, params(4000));
  CHECK(p[1234] > 0.0);
  CHECK_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-12, 0);
}

// ---------------------------------------------------------------------------------------------
// The sampler against the reference: same kept set, same weights, same token.

TEST(sampler_matches_reference) {
  std::mt19937_64 rng(11);
  struct Case {
    int64_t V, k;
    float top_p, temperature, step;
  };
  const Case cases[] = {
      {1, 1, 1.0f, 1.0f, 0.0f},          {5, 2, 1.0f, 1.0f, 1.0f},
      {64, 10, 0.8f, 1.0f, 0.25f},       {64, 64, 0.5f, 0.7f, 0.0f},
      {1024, 1, 1.0f, 1.0f, 0.5f},       {1024, 7, 0.9f, 1.3f, 0.0f},
      {1024, 100, 0.95f, 0.6f, 0.1f},    {1024, 1024, 1.0f, 1.0f, 0.0f},
      {16384, 2000, 0.9f, 1.0f, 0.0f},   {16384, 16384, 0.3f, 0.9f, 0.05f},
      {1000, 999, 0.99f, 2.0f, 0.0f},
  };
  for (const Case& c : cases) {
    const int64_t B = 16;
    std::vector<float> logits;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> row = random_logits(rng, c.V, 2.5f, c.step);
      if (b % 4 == 1 && c.V > 1) {  // mask a third of the tokens
        for (int64_t i = 0; i < c.V; i += 3) row[i] = -kInf;
      }
      logits.insert(logits.end(), row.begin(), row.end());
    }
    std::vector<uint64_t> seeds(B);
    for (uint64_t& s : seeds) s = rng();
    const SamplingParams p = params(c.k, c.top_p, c.temperature);
    std::vector<double> probs(B * c.V);
    vqrt::sampling_probs(logits.data(), B, c.V, p, probs.data());
    for (uint64_t step : {0u, 1u, 1000u}) {
      std::vector<int64_t> out(B);
      vqrt::sample_logits(logits.data(), B, c.V, seeds.data(), step, p, out.data());
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<float> row(logits.begin() + b * c.V, logits.begin() + (b + 1) * c.V);
        const Reference r = reference(row, p);
        CHECK_EQ(out[b], r.draw(vqrt::philox_uniform(seeds[b], step, 0)));
        if (step != 0) continue;
        std::vector<double> expected(c.V, 0.0);
        for (size_t j = 0; j < r.token.size(); ++j) expected[r.token[j]] = r.weight[j] / r.total;
        CHECK(std::equal(expected.begin(), expected.end(), probs.begin() + b * c.V));
      }
    }
  }
}

TEST(sampler_same_tokens_for_every_isa) {
  std::vector<CpuIsa> isas = simd_isas();
  if (isas.empty()) SKIP("this CPU has no SIMD variant to compare");
  std::mt19937_64 rng(5);
  const int64_t B = 64, V = 3001;  // not a multiple of any vector width
  std::vector<float> logits;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<float> row = random_logits(rng, V, 3.0f, b % 2 ? 0.125f : 0.0f);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::vector<uint64_t> seeds(B);
  std::iota(seeds.begin(), seeds.end(), 100);
  for (const SamplingParams& p : {params(50, 0.9f, 0.8f), params(V, 1.0f, 1.0f), params(1)}) {
    std::vector<int64_t> ref(B), got(B);
    std::vector<double> probs_ref(B * V), probs(B * V);
    const RowKernels& generic = vqrt::row_kernels_generic();
    vqrt::sample_logits(logits.data(), B, V, seeds.data(), 3, p, ref.data(), generic);
    vqrt::sampling_probs(logits.data(), B, V, p, probs_ref.data(), generic);
    for (CpuIsa isa : isas) {
      const RowKernels& k = vqrt::row_kernels(isa);
      vqrt::sample_logits(logits.data(), B, V, seeds.data(), 3, p, got.data(), k);
      vqrt::sampling_probs(logits.data(), B, V, p, probs.data(), k);
      CHECK(got == ref);
      CHECK(probs == probs_ref);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Support and frequency over many draws: rows of identical logits with distinct seeds, over
// several steps.

namespace {

// counts[token] over rows x steps draws of one row of logits.
std::vector<int64_t> draw_counts(const std::vector<float>& x, const SamplingParams& p,
                                 int64_t rows, int64_t steps) {
  const int64_t V = static_cast<int64_t>(x.size());
  std::vector<float> logits;
  logits.reserve(rows * V);
  for (int64_t b = 0; b < rows; ++b) logits.insert(logits.end(), x.begin(), x.end());
  std::vector<uint64_t> seeds(rows);
  for (int64_t b = 0; b < rows; ++b) seeds[b] = 0x9e3779b97f4a7c15ull * (b + 1);
  std::vector<int64_t> counts(V, 0), out(rows);
  for (int64_t step = 0; step < steps; ++step) {
    vqrt::sample_logits(logits.data(), rows, V, seeds.data(), step, p, out.data());
    for (int64_t t : out) ++counts[t];
  }
  return counts;
}

// Pearson chi-square against `probs` (cells with expected < 5 pooled) below the Wilson-Hilferty
// critical value at z = 4.5 (p ~ 3e-6), and cosine similarity > 0.99. Draws outside the support
// fail the test outright.
void check_frequencies(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  const double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  double chi2 = 0.0, pooled_obs = 0.0, pooled_exp = 0.0, dot = 0.0, nc = 0.0, np = 0.0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0.0) {
      CHECK_EQ(counts[i], 0);
      continue;
    }
    const double expected = n * probs[i];
    if (expected < 5.0) {
      pooled_obs += counts[i];
      pooled_exp += expected;
    } else {
      chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
      ++cells;
    }
    dot += counts[i] * probs[i];
    nc += double(counts[i]) * counts[i];
    np += probs[i] * probs[i];
  }
  if (pooled_exp > 0.0) {
    chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++cells;
  }
  if (cells > 1) {
    const double df = cells - 1, z = 4.5;
    const double a = 2.0 / (9.0 * df);
    const double critical = df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
    if (!(chi2 < critical)) std::printf("  chi2 %.1f >= %.1f (df %.0f)\n", chi2, critical, df);
    CHECK(chi2 < critical);
  }
  CHECK(dot / std::sqrt(nc * np) > 0.99);
}

}  // namespace

TEST(support_ties_and_top_p) {
  // Heavy ties; every draw must be a kept token (probability > 0), across many seeds.
  std::mt19937_64 rng(21);
  const std::vector<float> x = random_logits(rng, 64, 1.5f, 0.5f);
  for (const SamplingParams& p : {params(3), params(10, 0.7f), params(20, 0.3f, 0.5f)}) {
    const std::vector<double> probs = probs_of(x, p);
    const Reference r = reference(x, p);
    const std::set<int32_t> allowed(r.token.begin(), r.token.end());
    CHECK(static_cast<int64_t>(allowed.size()) >= (p.top_p < 1.0f ? 1 : p.top_k));
    const std::vector<int64_t> counts = draw_counts(x, p, 2000, 5);
    for (int32_t t = 0; t < 64; ++t) {
      if (counts[t] > 0) CHECK(allowed.count(t) == 1 && probs[t] > 0.0);
    }
  }
}

TEST(frequencies_match_distribution) {
  std::mt19937_64 rng(1);
  const int64_t V = 1024;
  const std::vector<float> x = random_logits(rng, V, 2.0f);
  for (const SamplingParams& p : {params(1), params(7), params(100), params(V),
                                  params(100, 0.9f, 0.7f), params(V, 0.6f, 1.5f)}) {
    const std::vector<int64_t> counts = draw_counts(x, p, 1000, 100);  // 10^5 draws
    check_frequencies(counts, probs_of(x, p));
  }
}

// ---------------------------------------------------------------------------------------------
// Reproducibility.

TEST(token_independent_of_batch_position_and_threads) {
  std::mt19937_64 rng(13);
  const int64_t V = 777;
  const std::vector<float> row = random_logits(rng, V, 2.0f);
  const uint64_t seed = 0xdeadbeefcafef00dull;
  const SamplingParams p = params(100, 0.9f, 0.8f);
  for (uint64_t step : {0u, 5u, 77u}) {
    int64_t alone = -1;
    vqrt::sample_logits(row.data(), 1, V, &seed, step, p, &alone);
    for (int64_t B : {2, 5, 33, 200}) {
      for (int64_t at : {int64_t(0), B / 2, B - 1}) {
        std::vector<float> logits;
        std::vector<uint64_t> seeds(B);
        for (int64_t b = 0; b < B; ++b) {
          const std::vector<float> r = b == at ? row : random_logits(rng, V, 2.0f);
          logits.insert(logits.end(), r.begin(), r.end());
          seeds[b] = b == at ? seed : rng();
        }
        for (int threads : {1, 2, 3, 0}) {
          SamplingParams pt = p;
          pt.num_threads = threads;
          std::vector<int64_t> out(B);
          vqrt::sample_logits(logits.data(), B, V, seeds.data(), step, pt, out.data());
          CHECK_EQ(out[at], alone);
        }
      }
    }
  }
}

// Callers on several threads at once (the Python binding releases the GIL) share the workspace
// pool; each call must still give the single-threaded answer.
TEST(concurrent_calls_agree) {
  std::mt19937_64 rng(17);
  const int64_t B = 24, V = 5000;
  const std::vector<float> logits = random_logits(rng, B * V, 2.0f);
  std::vector<uint64_t> seeds(B);
  std::iota(seeds.begin(), seeds.end(), 1);
  const SamplingParams p = params(300, 0.9f, 0.9f);
  std::vector<std::vector<int64_t>> expected(8, std::vector<int64_t>(B));
  for (uint64_t step = 0; step < 8; ++step) {
    vqrt::sample_logits(logits.data(), B, V, seeds.data(), step, p, expected[step].data());
  }
  std::vector<std::vector<int64_t>> got(8, std::vector<int64_t>(B));
  std::vector<std::thread> callers;
  for (uint64_t step = 0; step < 8; ++step) {
    callers.emplace_back([&, step] {
      for (int rep = 0; rep < 5; ++rep) {
        vqrt::sample_logits(logits.data(), B, V, seeds.data(), step, p, got[step].data());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  CHECK(got == expected);
}

TEST(steps_and_seeds_give_different_streams) {
  const int64_t V = 256, B = 512;
  const std::vector<float> flat(V * B, 0.0f);  // uniform: every token equally likely
  std::vector<uint64_t> seeds(B);
  std::iota(seeds.begin(), seeds.end(), 1);
  std::vector<int64_t> s0(B), s1(B), again(B);
  vqrt::sample_logits(flat.data(), B, V, seeds.data(), 0, params(V), s0.data());
  vqrt::sample_logits(flat.data(), B, V, seeds.data(), 1, params(V), s1.data());
  vqrt::sample_logits(flat.data(), B, V, seeds.data(), 0, params(V), again.data());
  CHECK(again == s0);
  int same_step = 0, same_seed_neighbour = 0;
  for (int64_t b = 0; b < B; ++b) {
    same_step += s0[b] == s1[b];
    same_seed_neighbour += b > 0 && s0[b] == s0[b - 1];
  }
  CHECK(same_step < 10);  // about B / V = 2 expected by chance
  CHECK(same_seed_neighbour < 10);
}

// ---------------------------------------------------------------------------------------------
// Errors: vqrt::Error with the value and the limit, output untouched.

TEST(errors_name_the_value) {
  const int64_t V = 1024;
  std::vector<float> logits(4 * V, 0.0f);
  const uint64_t seeds[4] = {1, 2, 3, 4};
  std::vector<int64_t> out(4, -7);
  auto sample = [&](const SamplingParams& p) {
    vqrt::sample_logits(logits.data(), 4, V, seeds, 0, p, out.data());
  };
  CHECK_THROWS(sample(params(0)), vqrt::Error, "top_k must be in [1, V=1024], got 0");
  CHECK_THROWS(sample(params(2000)), vqrt::Error, "top_k must be in [1, V=1024], got 2000");
  CHECK_THROWS(sample(params(5, 1.0f, 0.0f)), vqrt::Error, "temperature must be finite and > 0");
  CHECK_THROWS(sample(params(5, 1.0f, -1.0f)), vqrt::Error, "got -1");
  CHECK_THROWS(sample(params(5, 1.0f, kInf)), vqrt::Error, "got inf");
  CHECK_THROWS(sample(params(5, 1.0f, kNaN)), vqrt::Error, "got nan");
  CHECK_THROWS(sample(params(5, 0.0f)), vqrt::Error, "top_p must be in (0, 1], got 0");
  CHECK_THROWS(sample(params(5, 1.5f)), vqrt::Error, "top_p must be in (0, 1], got 1.5");
  CHECK_THROWS(sample(params(5, kNaN)), vqrt::Error, "top_p must be in (0, 1], got nan");
  SamplingParams threads = params(5);
  threads.num_threads = -1;
  CHECK_THROWS(sample(threads), vqrt::Error, "num_threads must be >= 0");
  CHECK_THROWS(vqrt::sample_logits(logits.data(), 0, V, seeds, 0, params(5), out.data()),
               vqrt::Error, "batch must be >= 1, got 0");
  CHECK_THROWS(vqrt::sample_logits(logits.data(), 4, 0, seeds, 0, params(1), out.data()),
               vqrt::Error, "vocab must be in [1, ");
  CHECK_THROWS(vqrt::sample_logits(logits.data(), 4, V, nullptr, 0, params(5), out.data()),
               vqrt::Error, "seeds is null");

  logits[3 * V + 100] = kNaN;
  logits[2 * V + 5] = kNaN;
  CHECK_THROWS(sample(params(5)), vqrt::Error, "logits row 2 contains NaN");  // the lowest bad row
  logits[2 * V + 5] = 0.0f;
  CHECK_THROWS(sample(params(5)), vqrt::Error, "logits row 3 contains NaN");
  logits[3 * V + 100] = kInf;
  CHECK_THROWS(sample(params(5)), vqrt::Error, "logits row 3 contains +inf");
  std::fill(logits.begin() + 3 * V, logits.end(), -kInf);
  CHECK_THROWS(sample(params(5)), vqrt::Error, "logits row 3 is all -inf");
  std::fill(logits.begin() + 3 * V, logits.end(), 1e30f);
  CHECK_THROWS(sample(params(5, 1.0f, 1e-10f)), vqrt::Error, "overflows float32");
  CHECK(out == std::vector<int64_t>(4, -7));

  // Greedy ignores temperature (0 is fine there) but still checks k and the logits.
  SamplingParams g = params(1, 1.0f, 0.0f);
  g.greedy = true;
  sample(g);
  CHECK(out == std::vector<int64_t>(4, 0));
  g.top_k = 0;
  CHECK_THROWS(sample(g), vqrt::Error, "top_k");
}

int main() { return check::run_tests(); }
