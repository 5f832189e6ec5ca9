// Token sampling on the GPU: the CUDA twin of vqrt::sample_logits (csrc/sampling.h), which is its
// oracle. Same rules, same Philox draw (key = the row's seed, counter = step, sub-stream 0), and
// the same arithmetic wherever it decides the token, so both pick the same token from the same
// logits and seed (the one exception, exp, is discussed in sampling.cu).
//
// One block per row; any top_k in [1, V] (radix selection of the k-th value, no k <= 1024 limit).
// Rows with more than 1024 survivors sort and sum in a global workspace; smaller ones stay in
// shared memory. Bad rows (NaN, +inf, all -inf, temperature overflow) are reported per row in
// `status` with token -1; the launcher never synchronises, so it can be captured in a CUDA graph.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "sampling.h"

namespace vqrt::cuda {

// Per-row result codes written to SamplingKernelParams::status.
enum SamplingStatus : int32_t {
  kSampleOk = 0,
  kSampleNaN = 1,                  // a logit is NaN
  kSamplePosInf = 2,               // a logit is +inf
  kSampleAllNegInf = 3,            // every logit is -inf
  kSampleTemperatureOverflow = 4,  // max logit / temperature is not finite
  kSampleInternal = 5,             // survivor count disagreed with the selection (a bug)
};

// The largest vocabulary the kernel takes (its index arithmetic is 32-bit).
constexpr int64_t kSamplingMaxVocab = int64_t(1) << 30;

// Device workspace for sampling_launch: 0 when vocab <= 1024, else 24 bytes per logit.
size_t sampling_workspace_bytes(int64_t batch, int64_t vocab);

struct SamplingKernelParams {
  const float* logits = nullptr;   // [batch, vocab] device, row-major
  const uint64_t* seeds = nullptr; // [batch] device, one seed per row
  int64_t* tokens = nullptr;       // [batch] device out: token id, -1 where status != 0
  int32_t* status = nullptr;       // [batch] device out: SamplingStatus
  int32_t* kept = nullptr;         // [batch] device out or null: tokens in the final distribution
  void* workspace = nullptr;       // device, sampling_workspace_bytes(batch, vocab) bytes
  size_t workspace_bytes = 0;
  int64_t batch = 0;
  int64_t vocab = 0;
  uint64_t step = 0;               // the Philox counter (the image token index)
  SamplingParams params;           // top_k, top_p, temperature, greedy; num_threads is ignored
  // Throws vqrt::Error with the CPU sampler's messages for invalid arguments.
  void check() const;
};

// Enqueues the sampling kernel on `stream` (no allocation, no synchronisation).
void sampling_launch(const SamplingKernelParams& p, cudaStream_t stream);

// Throws vqrt::Error with the CPU sampler's message for the lowest row whose status (host
// [batch], as sampling_launch wrote it) is not kSampleOk; returns when every row drew a token.
// host_logits [batch, vocab] or null: where given, a temperature overflow names the row's
// largest logit, as the CPU's message does.
void check_sampling_status(const int32_t* status, int64_t batch, const SamplingParams& params,
                           const float* host_logits = nullptr, int64_t vocab = 0);

// Host-to-host, with vqrt::sample_logits' contract: copies in, samples, copies out, and throws
// vqrt::Error with the CPU's message for the lowest bad row (out untouched then).
//   logits: [batch, vocab]  seeds: [batch]  out: [batch]  kept: [batch] or null
void sample_logits_cuda(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                        uint64_t step, const SamplingParams& params, int64_t* out,
                        int32_t* kept = nullptr);

}  // namespace vqrt::cuda
