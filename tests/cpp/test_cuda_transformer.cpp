// GPU twin check of the decoder (csrc/gpu_transformer.h) against the CPU decoder
// (csrc/transformer.h, the oracle) on a small random model: teacher-forced logits within fp16
// tolerances for fp32, bf16 and int8 weights; greedy picks equal wherever the CPU's top two
// logits are further apart than that tolerance; generate() equal to a step-by-step loop that
// samples on the host with the CPU sampler from the GPU's logits (seeds, Philox counters and the
// fed-back tokens wired as the CPU generator does); sample() on the device equal to the CPU
// sampler on the same logits; CUDA graph replay equal to eager launches;
// argument errors. Exits 77 (ctest: skipped) without a usable GPU or without libcublas.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "cuda_test_util.h"
#include "errors.h"
#include "gpu_transformer.h"
#include "random_weights.h"
#include "sampling.h"

using test_weights::random_tokens;
using test_weights::RandomWeights;
using vqrt::DType;
using vqrt::GpuDecoderOptions;
using vqrt::GpuModelConfig;
using vqrt::GpuTransformer;
using vqrt::SamplingParams;
using vqrt::TensorView;
using vqrt::Transformer;
using vqrt::TransformerConfig;

namespace {

// fp16 weights and residual stream over two layers: logits of size ~3 agree to a few 1e-2.
constexpr double kAtol = 0.03, kRtol = 0.02;

TransformerConfig cpu_config() {
  TransformerConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  c.vocab_size = 61;
  c.block_size = 40;
  c.max_batch = 3;
  c.min_parallel_macs = 0;
  return c;
}

std::shared_ptr<const vqrt::GpuWeights> upload(const TransformerConfig& c,
                                               const std::map<std::string, TensorView>& views) {
  GpuModelConfig g;
  g.n_layer = c.n_layer;
  g.n_head = c.n_head;
  g.n_embd = c.n_embd;
  g.vocab_size = c.vocab_size;
  g.block_size = c.block_size;
  return vqrt::upload_gpu_weights(g, views);
}

GpuDecoderOptions options(const TransformerConfig& c, bool use_graph = true) {
  GpuDecoderOptions o;
  o.max_batch = c.max_batch;
  o.use_graph = use_graph;
  return o;
}

constexpr int64_t kBatch = 3, kPrefix = 5, kSteps = 12;

// Logits [kSteps + 1, batch, V]: after a prefill of kPrefix tokens, then teacher-forced steps.
template <typename Model>
std::vector<float> forced_logits(Model& model, const std::vector<int64_t>& tokens, int64_t vocab) {
  const int64_t length = kPrefix + kSteps;
  std::vector<float> out((kSteps + 1) * kBatch * vocab);
  std::vector<int64_t> prefix, column(kBatch);
  for (int64_t b = 0; b < kBatch; ++b) {
    prefix.insert(prefix.end(), tokens.begin() + b * length, tokens.begin() + b * length + kPrefix);
  }
  model.prefill(prefix.data(), kBatch, kPrefix, out.data());
  for (int64_t s = 0; s < kSteps; ++s) {
    for (int64_t b = 0; b < kBatch; ++b) column[b] = tokens[b * length + kPrefix + s];
    model.step(column.data(), kBatch, kPrefix + s, out.data() + (s + 1) * kBatch * vocab);
  }
  return out;
}

TEST(teacher_forced_logits_match_the_cpu_for_every_weight_dtype) {
  const TransformerConfig c = cpu_config();
  const std::vector<int64_t> tokens =
      random_tokens(kBatch * (kPrefix + kSteps), c.vocab_size, 3);
  for (DType dtype : {DType::f32, DType::bf16, DType::i8}) {
    RandomWeights w(c, dtype, 7);
    Transformer cpu(c, w.views);
    GpuTransformer gpu(upload(c, w.views), options(c));
    cuda_test::expect_near(forced_logits(gpu, tokens, c.vocab_size),
                           forced_logits(cpu, tokens, c.vocab_size), kAtol, kRtol,
                           std::string("logits, ") + vqrt::dtype_name(dtype));
  }
}

TEST(greedy_picks_match_the_cpu_where_the_margin_exceeds_fp16_error) {
  const TransformerConfig c = cpu_config();
  const int64_t V = c.vocab_size;
  RandomWeights w(c, DType::f32, 11);
  Transformer cpu(c, w.views);
  GpuTransformer gpu(upload(c, w.views), options(c));
  const std::vector<int64_t> tokens = random_tokens(kBatch * (kPrefix + kSteps), V, 5);
  const std::vector<float> ref = forced_logits(cpu, tokens, V);
  const std::vector<float> got = forced_logits(gpu, tokens, V);
  int compared = 0;
  for (size_t row = 0; row < ref.size() / V; ++row) {
    const float* r = ref.data() + row * V;
    std::vector<float> sorted(r, r + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] <= 4 * (kAtol + kRtol * std::fabs(sorted[0]))) continue;
    ++compared;
    const float* g = got.data() + row * V;
    CHECK_EQ(std::max_element(g, g + V) - g, std::max_element(r, r + V) - r);
  }
  CHECK(compared > static_cast<int>(ref.size() / V) / 2);  // most rows are decided clearly
}

// The generate() contract, written out with step() and the CPU sampler on the GPU's logits.
std::vector<int64_t> stepped_generation(GpuTransformer& gpu, const std::vector<int64_t>& prefix,
                                        const std::vector<uint64_t>& seeds,
                                        const SamplingParams& params, int64_t vocab) {
  std::vector<float> logits(kBatch * vocab);
  std::vector<int64_t> column(kBatch), out(kBatch * kSteps);
  gpu.prefill(prefix.data(), kBatch, kPrefix, logits.data());
  for (int64_t k = 0; k < kSteps; ++k) {
    vqrt::sample_logits(logits.data(), kBatch, vocab, seeds.data(), static_cast<uint64_t>(k),
                        params, column.data());
    for (int64_t b = 0; b < kBatch; ++b) out[b * kSteps + k] = column[b];
    if (k + 1 < kSteps) gpu.step(column.data(), kBatch, kPrefix + k, logits.data());
  }
  return out;
}

TEST(generate_equals_steps_with_the_cpu_sampler) {
  const TransformerConfig c = cpu_config();
  RandomWeights w(c, DType::f32, 13);
  GpuTransformer gpu(upload(c, w.views), options(c));
  const std::vector<int64_t> prefix = random_tokens(kBatch * kPrefix, c.vocab_size, 9);
  const std::vector<uint64_t> seeds = {5, 6, 7};
  SamplingParams sampled;
  sampled.top_k = 20;
  sampled.top_p = 0.9f;
  SamplingParams greedy;
  greedy.top_k = 1;
  greedy.greedy = true;
  for (const SamplingParams& params : {sampled, greedy}) {
    std::vector<int64_t> generated(kBatch * kSteps);
    gpu.generate(prefix.data(), kBatch, kPrefix, kSteps, seeds.data(), params, generated.data());
    CHECK(generated == stepped_generation(gpu, prefix, seeds, params, c.vocab_size));
  }
}

// The runtime's loop: sample() on the device from the logits prefill and step left there,
// against the CPU sampler on the same logits fetched to the host.
TEST(sample_draws_what_the_cpu_sampler_draws) {
  const TransformerConfig c = cpu_config();
  RandomWeights w(c, DType::f32, 21);
  GpuTransformer gpu(upload(c, w.views), options(c));
  const std::vector<int64_t> prefix = random_tokens(kBatch * kPrefix, c.vocab_size, 4);
  const std::vector<uint64_t> seeds = {11, 12, 13};
  SamplingParams params;
  params.top_k = 40;
  params.temperature = 1.3f;
  std::vector<float> logits(kBatch * c.vocab_size);
  std::vector<int64_t> drawn(kBatch), cpu(kBatch);
  gpu.prefill(prefix.data(), kBatch, kPrefix, logits.data());
  for (int64_t k = 0; k < kSteps; ++k) {
    gpu.sample(seeds.data(), static_cast<uint64_t>(k), params, drawn.data());
    vqrt::sample_logits(logits.data(), kBatch, c.vocab_size, seeds.data(),
                        static_cast<uint64_t>(k), params, cpu.data());
    CHECK(drawn == cpu);
    gpu.step(drawn.data(), kBatch, kPrefix + k, logits.data());
  }
  gpu.step(drawn.data(), kBatch, kPrefix + kSteps, nullptr);  // logits left on the device
  gpu.sample(seeds.data(), 99, params, drawn.data());
  for (int64_t token : drawn) CHECK(token >= 0 && token < c.vocab_size);
}

TEST(graph_replay_equals_eager_launches) {
  const TransformerConfig c = cpu_config();
  RandomWeights w(c, DType::bf16, 17);
  const auto weights = upload(c, w.views);  // one upload, two decoders
  GpuTransformer graph(weights, options(c, true));
  GpuTransformer eager(weights, options(c, false));
  const std::vector<int64_t> tokens = random_tokens(kBatch * (kPrefix + kSteps), c.vocab_size, 1);
  CHECK(forced_logits(graph, tokens, c.vocab_size) == forced_logits(eager, tokens, c.vocab_size));
  const std::vector<uint64_t> seeds = {1, 2, 3};
  SamplingParams params;
  params.top_k = 30;
  std::vector<int64_t> a(kBatch * kSteps), b(kBatch * kSteps);
  graph.generate(tokens.data(), kBatch, kPrefix, kSteps, seeds.data(), params, a.data());
  eager.generate(tokens.data(), kBatch, kPrefix, kSteps, seeds.data(), params, b.data());
  CHECK(a == b);
}

TEST(arguments_are_checked_before_any_work) {
  const TransformerConfig c = cpu_config();
  RandomWeights w(c, DType::f32, 19);
  GpuTransformer gpu(upload(c, w.views), options(c));
  const std::vector<int64_t> tokens(8, 1);
  std::vector<float> logits(8 * c.vocab_size);
  CHECK_THROWS(gpu.step(tokens.data(), 1, 0, logits.data()), vqrt::Error, "run prefill first");
  CHECK_THROWS(gpu.prefill(tokens.data(), 4, 1, logits.data()), vqrt::Error,
               "outside [1, max batch 3]");
  const std::vector<int64_t> bad = {1, 61};
  CHECK_THROWS(gpu.prefill(bad.data(), 1, 2, logits.data()), vqrt::Error,
               "token 61 at index 1 is outside the vocabulary");
  const std::vector<uint64_t> seeds = {1};
  std::vector<int64_t> drawn(1);
  SamplingParams params;
  params.top_k = 5;
  CHECK_THROWS(gpu.sample(seeds.data(), 0, params, drawn.data()), vqrt::Error,
               "sample before prefill");
  gpu.prefill(tokens.data(), 1, 2, logits.data());
  CHECK_THROWS(gpu.step(tokens.data(), 1, 5, logits.data()), vqrt::Error,
               "position 5 is not the cached length 2");
  std::map<std::string, vqrt::TensorView> missing = w.views;
  missing.erase("ln_f.bias");
  CHECK_THROWS(upload(c, missing), vqrt::Error, "missing tensor ln_f.bias");
}

}  // namespace

int main() {
  const std::string why = vqrt::gpu_unavailable_reason();
  if (!why.empty()) {
    std::printf("SKIP: %s\n", why.c_str());
    return 77;
  }
  return check::run_tests();
}
