// GPU twin check of the sampler (csrc/cuda/sampling.cu) against the CPU sampler (csrc/sampling.h,
// the oracle): identical tokens for the same logits, seeds and step, over many seeds, k in
// {1, 7, 100, 1000, V}, top-p and temperature values, V in {1024, 16384} at batch 64, odd shapes,
// ties, -inf masks and signed zeros, vocabularies whose survivors take the merge path, greedy,
// and the same error messages. The kept count (how many tokens the final distribution holds)
// is compared too, which checks the threshold and the top-p cut apart from the draw.
// Exits 77 (ctest: skipped) where no CUDA device is usable.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/sampling.cuh"
#include "cuda_test_util.h"
#include "errors.h"
#include "sampling.h"

using vqrt::SamplingParams;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingParams params(int64_t k, float top_p = 1.0f, float temperature = 1.0f, bool greedy = false) {
  SamplingParams p;
  p.top_k = k;
  p.top_p = top_p;
  p.temperature = temperature;
  p.greedy = greedy;
  return p;
}

std::string describe(int64_t batch, int64_t vocab, const SamplingParams& p, uint64_t step,
                     const std::string& what) {
  std::ostringstream os;
  os << what << " (batch " << batch << ", V " << vocab << ", k " << p.top_k << ", top_p "
     << p.top_p << ", T " << p.temperature << (p.greedy ? ", greedy" : "") << ", step " << step
     << ")";
  return os.str();
}

std::vector<uint64_t> random_seeds(std::mt19937_64& rng, int64_t batch) {
  std::vector<uint64_t> seeds(batch);
  for (uint64_t& s : seeds) s = rng();
  return seeds;
}

// Samples on both sides and requires the same token in every row; with check_kept, also the
// CPU's kept count (its nonzero probabilities: valid while no kept weight underflows to 0).
void compare(const std::vector<float>& logits, int64_t batch, int64_t vocab,
             const SamplingParams& p, const std::vector<uint64_t>& seeds, uint64_t step,
             const std::string& what, bool check_kept = true) {
  std::vector<int64_t> cpu(batch, -2), gpu(batch, -3);
  std::vector<int32_t> kept(batch, -1);
  vqrt::sample_logits(logits.data(), batch, vocab, seeds.data(), step, p, cpu.data());
  vqrt::cuda::sample_logits_cuda(logits.data(), batch, vocab, seeds.data(), step, p, gpu.data(),
                                 kept.data());
  int64_t bad = 0;
  std::ostringstream first;
  for (int64_t r = 0; r < batch; ++r) {
    if (cpu[r] != gpu[r]) {
      if (bad < 3) first << " [row " << r << ": cpu " << cpu[r] << " gpu " << gpu[r] << "]";
      ++bad;
    }
  }
  if (bad > 0) {
    std::ostringstream os;
    os << describe(batch, vocab, p, step, what) << ": " << bad << " tokens differ" << first.str();
    check::fail(__FILE__, __LINE__, os.str());
  }
  if (!check_kept) return;
  std::vector<double> probs(static_cast<size_t>(batch * vocab));
  vqrt::sampling_probs(logits.data(), batch, vocab, p, probs.data());
  int64_t bad_kept = 0;
  std::ostringstream first_kept;
  for (int64_t r = 0; r < batch; ++r) {
    int64_t nonzero = 0;
    for (int64_t i = 0; i < vocab; ++i) nonzero += probs[r * vocab + i] > 0.0;
    if (nonzero != kept[r]) {
      if (bad_kept < 3) first_kept << " [row " << r << ": cpu " << nonzero << " gpu " << kept[r] << "]";
      ++bad_kept;
    }
  }
  if (bad_kept > 0) {
    std::ostringstream os;
    os << describe(batch, vocab, p, step, what) << ": " << bad_kept << " kept counts differ"
       << first_kept.str();
    check::fail(__FILE__, __LINE__, os.str());
  }
}

std::vector<float> normal_logits(std::mt19937_64& rng, int64_t n, float sd, float step = 0.0f) {
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> x(n);
  for (float& v : x) {
    v = normal(rng);
    if (step > 0.0f) v = std::round(v / step) * step;
  }
  return x;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const vqrt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// The grid: V in {1024, 16384}, batch 64, k in {1, 7, 100, 1000, V}, top-p and
// temperature values, two steps each, fresh seeds for every combination.
TEST(tokens_match_cpu_on_random_logits) {
  std::mt19937_64 rng(7);
  const int64_t batch = 64;
  for (int64_t vocab : {int64_t(1024), int64_t(16384)}) {
    const std::vector<float> logits = normal_logits(rng, batch * vocab, 3.0f);
    for (int64_t k : {int64_t(1), int64_t(7), int64_t(100), int64_t(1000), vocab}) {
      for (float top_p : {1.0f, 0.9f, 0.5f}) {
        for (float temperature : {1.0f, 0.7f}) {
          for (uint64_t step : {uint64_t(0), uint64_t(1) + rng() % 1000}) {
            compare(logits, batch, vocab, params(k, top_p, temperature), random_seeds(rng, batch),
                    step, "normal logits");
          }
        }
      }
    }
  }
}

// Many draws from one distribution: 64 steps x 64 rows, plus the benchmark's configuration.
TEST(tokens_match_cpu_over_many_seeds) {
  std::mt19937_64 rng(11);
  const int64_t batch = 64;
  {
    const int64_t vocab = 1024;
    const std::vector<float> logits = normal_logits(rng, batch * vocab, 2.0f);
    const std::vector<uint64_t> seeds = random_seeds(rng, batch);
    for (uint64_t step = 0; step < 64; ++step) {
      compare(logits, batch, vocab, params(100, 0.9f), seeds, step, "many seeds", step < 4);
    }
  }
  {
    const int64_t vocab = 16384;
    const std::vector<float> logits = normal_logits(rng, batch * vocab, 3.0f);
    const std::vector<uint64_t> seeds = random_seeds(rng, batch);
    for (uint64_t step = 0; step < 16; ++step) {
      compare(logits, batch, vocab, params(600), seeds, step, "benchmark config", step < 2);
    }
  }
}

// Odd vocabularies and batches, quantised logits (many ties at the k-th value), -inf masks
// (including rows with fewer finite logits than k), signed zeros and constant rows (every token
// ties: more survivors than k, beyond 1024 the workspace path).
TEST(tokens_match_cpu_on_ties_masks_and_odd_shapes) {
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int64_t vocab : {int64_t(1), int64_t(2), int64_t(3), int64_t(1000), int64_t(1025),
                        int64_t(4097), int64_t(16384)}) {
    for (int64_t batch : {int64_t(1), int64_t(3), int64_t(64)}) {
      std::vector<float> logits = normal_logits(rng, batch * vocab, 2.0f, 0.5f);
      for (int64_t r = 0; r < batch; ++r) {
        float* x = logits.data() + r * vocab;
        switch (r % 5) {
          case 1:  // about a third masked; x[0] stays finite (an all -inf row is an error)
            for (int64_t i = 1; i < vocab; ++i) {
              if (unit(rng) < 0.3f) x[i] = -kInf;
            }
            break;
          case 2:  // at most 3 finite logits
            for (int64_t i = 3; i < vocab; ++i) x[i] = -kInf;
            break;
          case 3:  // signed zeros among a few positives
            for (int64_t i = 0; i < vocab; ++i) {
              x[i] = unit(rng) < 0.5f ? -0.0f : 0.0f;
              if (unit(rng) < 0.01f) x[i] = 1.0f;
            }
            break;
          case 4:  // constant row
            for (int64_t i = 0; i < vocab; ++i) x[i] = 1.5f;
            break;
          default:
            break;
        }
      }
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(100), int64_t(1000), vocab}) {
        if (k > vocab) continue;
        for (float top_p : {1.0f, 0.9f, 0.05f}) {
          for (float temperature : {1.0f, 0.5f}) {
            compare(logits, batch, vocab, params(k, top_p, temperature), random_seeds(rng, batch),
                    rng() % 100, "ties, masks, zeros");
          }
        }
      }
    }
  }
}

// Rows whose survivors exceed 1024 sort as merged runs in the workspace: many merge rounds.
TEST(tokens_match_cpu_on_large_vocabularies) {
  std::mt19937_64 rng(17);
  const int64_t batch = 4;
  for (int64_t vocab : {int64_t(50257), int64_t(65536)}) {
    const std::vector<float> flat = normal_logits(rng, batch * vocab, 0.5f);
    const std::vector<float> ties = normal_logits(rng, batch * vocab, 1.0f, 0.25f);
    for (int64_t k : {int64_t(2000), int64_t(30000), vocab}) {
      for (float top_p : {1.0f, 0.95f}) {
        compare(flat, batch, vocab, params(k, top_p), random_seeds(rng, batch), 3, "large flat");
        compare(ties, batch, vocab, params(k, top_p, 0.9f), random_seeds(rng, batch), 5,
                "large ties");
      }
    }
  }
}

// Logits far apart (weights that underflow to 0) and temperatures that overflow very negative
// logits to -inf without overflowing the maximum.
TEST(tokens_match_cpu_on_extreme_logits) {
  std::mt19937_64 rng(19);
  const int64_t batch = 16, vocab = 2048;
  std::vector<float> logits = normal_logits(rng, batch * vocab, 500.0f);
  for (int64_t i = 0; i < batch * vocab; i += 7) logits[i] = -3.0e38f;
  for (int64_t k : {int64_t(5), int64_t(1500), vocab}) {
    for (float temperature : {1.0f, 0.5f, 3.0f}) {
      compare(logits, batch, vocab, params(k, 0.99f, temperature), random_seeds(rng, batch), 9,
              "extreme", /*check_kept=*/false);
    }
  }
}

TEST(greedy_matches_cpu) {
  std::mt19937_64 rng(23);
  for (int64_t vocab : {int64_t(1), int64_t(5), int64_t(1024), int64_t(16385)}) {
    const int64_t batch = 8;
    std::vector<float> logits = normal_logits(rng, batch * vocab, 1.0f, 1.0f);  // many equal maxima
    for (int64_t i = 0; i < vocab; ++i) logits[3 * vocab + i] = (i % 2) ? 0.0f : -0.0f;
    for (int64_t i = 0; i < vocab; ++i) logits[5 * vocab + i] = i % 3 ? -kInf : -1.0f;
    compare(logits, batch, vocab, params(vocab, 0.3f, 0.1f, true), random_seeds(rng, batch), 0,
            "greedy");
  }
}

// Bad rows report the CPU's message for the lowest bad row; invalid arguments the CPU's too.
TEST(errors_match_cpu) {
  const int64_t batch = 4, vocab = 1500;
  std::mt19937_64 rng(29);
  const std::vector<uint64_t> seeds = random_seeds(rng, batch);
  const std::vector<float> good = normal_logits(rng, batch * vocab, 1.0f);
  auto both = [&](const std::vector<float>& logits, const SamplingParams& p, const char* what) {
    std::vector<int64_t> out(batch, 7);
    const std::string cpu = error_of([&] {
      vqrt::sample_logits(logits.data(), batch, vocab, seeds.data(), 0, p, out.data());
    });
    const std::string gpu = error_of([&] {
      vqrt::cuda::sample_logits_cuda(logits.data(), batch, vocab, seeds.data(), 0, p, out.data());
    });
    if (cpu == "(no error)" || cpu != gpu) {
      check::fail(__FILE__, __LINE__, std::string(what) + ": cpu '" + cpu + "' gpu '" + gpu + "'");
    }
    for (int64_t r = 0; r < batch; ++r) CHECK_EQ(out[r], 7);  // untouched on error
  };
  std::vector<float> x = good;
  x[3 * vocab + 10] = std::numeric_limits<float>::quiet_NaN();
  x[2 * vocab + 4] = kInf;
  both(x, params(10), "+inf before NaN");
  x = good;
  x[1 * vocab + 99] = std::numeric_limits<float>::quiet_NaN();
  x[1 * vocab + 98] = kInf;  // NaN is reported first within a row
  both(x, params(10), "NaN");
  x = good;
  for (int64_t i = 0; i < vocab; ++i) x[2 * vocab + i] = -kInf;
  both(x, params(10), "all -inf");
  x = good;
  x[0 * vocab + 5] = 3.0e38f;
  both(x, params(10, 1.0f, 0.5f), "temperature overflow");
  both(good, params(0), "k = 0");
  both(good, params(vocab + 1), "k > V");
  both(good, params(10, 0.0f), "top_p = 0");
  both(good, params(10, 1.5f), "top_p > 1");
  both(good, params(10, 1.0f, 0.0f), "temperature 0");
  both(good, params(10, 1.0f, kInf), "temperature inf");
}

TEST(launcher_requires_the_workspace) {
  vqrt::cuda::SamplingKernelParams p;
  uint64_t dummy[1];
  p.logits = reinterpret_cast<const float*>(dummy);  // never dereferenced: check() throws first
  p.seeds = dummy;
  p.tokens = reinterpret_cast<int64_t*>(dummy);
  p.status = reinterpret_cast<int32_t*>(dummy);
  p.batch = 2;
  p.vocab = 4096;
  p.params = params(600);
  CHECK(vqrt::cuda::sampling_workspace_bytes(2, 4096) == 2 * 4096 * 24);
  CHECK(vqrt::cuda::sampling_workspace_bytes(2, 1024) == 0);
  CHECK_THROWS(vqrt::cuda::sampling_launch(p, nullptr), vqrt::Error, "workspace needs");
  p.vocab = 0;
  CHECK_THROWS(vqrt::cuda::sampling_launch(p, nullptr), vqrt::Error, "vocab must be in");
}

int main() { return cuda_test::run_or_skip(); }
