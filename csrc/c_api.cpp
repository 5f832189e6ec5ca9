// The C API (csrc/include/vqrt.h) over the C++ core. C++ exceptions stop here: each entry point
// runs its body through c_call, which turns them into a vqrt_status and a thread-local message.
#include "vqrt.h"

#include <exception>
#include <new>
#include <string>

#include "cpu_features.h"
#include "errors.h"
#include "sampling.h"

namespace {

thread_local std::string last_error;

template <typename Body>
int c_call(Body body) {
  try {
    body();
    return VQRT_OK;
  } catch (const vqrt::Error& e) {
    last_error = e.what();
    return VQRT_ERROR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return VQRT_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    last_error = std::string("internal error: ") + e.what();
    return VQRT_ERROR_INTERNAL;
  } catch (...) {
    last_error = "internal error: unknown exception";
    return VQRT_ERROR_INTERNAL;
  }
}

vqrt::SamplingParams to_cpp(const vqrt_sampling_params* params) {
  VQRT_CHECK(params != nullptr, "params is null");
  vqrt::SamplingParams p;
  p.top_k = params->top_k;
  p.top_p = params->top_p;
  p.temperature = params->temperature;
  p.greedy = params->greedy != 0;
  p.num_threads = params->n_threads;
  return p;
}

}  // namespace

extern "C" {

const char* vqrt_last_error(void) { return last_error.c_str(); }

vqrt_sampling_params vqrt_sampling_params_default(int64_t top_k) {
  vqrt_sampling_params p;
  p.top_k = top_k;
  p.top_p = 1.0f;
  p.temperature = 1.0f;
  p.greedy = 0;
  p.n_threads = 0;
  return p;
}

int vqrt_sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                       uint64_t step, const vqrt_sampling_params* params, int64_t* out_tokens) {
  return c_call([&] {
    vqrt::sample_logits(logits, batch, vocab, seeds, step, to_cpp(params), out_tokens);
  });
}

int vqrt_sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                        const vqrt_sampling_params* params, double* out_probs) {
  return c_call([&] { vqrt::sampling_probs(logits, batch, vocab, to_cpp(params), out_probs); });
}

const char* vqrt_cpu_isa(void) {
  const char* name = nullptr;
  c_call([&] { name = vqrt::cpu_isa_name(vqrt::cpu_isa_active()); });
  return name;
}

int vqrt_built_with_cuda(void) {
#ifdef VQRT_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

#ifndef VQRT_WITH_CUDA
// Built without CUDA; the CUDA build's version is in csrc/cuda/cuda_info.cu.
int vqrt_cuda_device_count(void) { return 0; }
#endif

}  // extern "C"
