// The C API (csrc/include/vqrt.h) over the C++ core. C++ exceptions stop here: each entry point
// runs its body through c_call, which turns them into a vqrt_status and a thread-local message.
#include "vqrt.h"

#include <exception>
#include <new>
#include <string>

#include "cpu_features.h"
#include "errors.h"
#include "generate.h"
#include "sampling.h"

// The opaque handle of vqrt.h.
struct vqrt_model {
  explicit vqrt_model(const char* bundle_dir) : generator(bundle_dir) {}
  vqrt::NativeGenerator generator;
};

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

vqrt::GenerateRequest to_cpp(const vqrt_model* model, const vqrt_generate_request* request) {
  VQRT_CHECK(model != nullptr, "model is null");
  VQRT_CHECK(request != nullptr, "request is null");
  VQRT_CHECK(request->n_class_labels >= 0,
             "n_class_labels must be >= 0, got " << request->n_class_labels);
  VQRT_CHECK(request->class_labels != nullptr || request->n_class_labels == 0,
             "class_labels is null but n_class_labels is " << request->n_class_labels);
  vqrt::GenerateRequest r;
  r.class_labels.assign(request->class_labels, request->class_labels + request->n_class_labels);
  r.batch = request->batch;
  r.seed = request->seed;
  r.top_k = request->top_k;
  r.top_p = request->top_p;
  r.temperature = request->temperature;
  r.greedy = request->greedy != 0;
  r.width = request->width;
  r.height = request->height;
  r.num_threads = request->n_threads;
  return r;
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

vqrt_model* vqrt_model_open(const char* bundle_dir) {
  vqrt_model* model = nullptr;
  c_call([&] {
    VQRT_CHECK(bundle_dir != nullptr, "bundle_dir is null");
    model = new vqrt_model(bundle_dir);
  });
  return model;
}

void vqrt_model_free(vqrt_model* model) { delete model; }

int vqrt_model_get_info(const vqrt_model* model, vqrt_model_info* out) {
  return c_call([&] {
    VQRT_CHECK(model != nullptr, "model is null");
    VQRT_CHECK(out != nullptr, "out is null");
    const vqrt::BundleManifest& m = model->generator.manifest();
    vqrt_model_info info;
    info.codebook_size = m.codebook_size;
    info.n_classes = m.prefix_rule == "class_id" ? m.n_classes : 0;
    info.downsampling_factor = m.downsampling_factor;
    info.grid_h = m.training_grid_h;
    info.grid_w = m.training_grid_w;
    info.max_grid_h = m.max_latent_h;
    info.max_grid_w = m.max_latent_w;
    info.max_batch = m.max_batch;
    info.block_size = m.block_size;
    *out = info;
  });
}

vqrt_generate_request vqrt_generate_request_default(void) {
  vqrt_generate_request r;
  r.class_labels = nullptr;
  r.n_class_labels = 0;
  r.batch = 0;
  r.seed = 0;
  r.top_k = 0;
  r.top_p = 1.0f;
  r.temperature = 1.0f;
  r.greedy = 0;
  r.width = 0;
  r.height = 0;
  r.n_threads = 0;
  return r;
}

int vqrt_generate_shape(const vqrt_model* model, const vqrt_generate_request* request,
                        int64_t* out_shape) {
  return c_call([&] {
    const vqrt::GenerateRequest r = to_cpp(model, request);
    VQRT_CHECK(out_shape != nullptr, "out_shape is null");
    const vqrt::TokenGrid grid = model->generator.check(r);
    out_shape[0] = grid.batch;
    out_shape[1] = grid.h;
    out_shape[2] = grid.w;
  });
}

int vqrt_generate_tokens(const vqrt_model* model, const vqrt_generate_request* request,
                         int64_t* out_tokens) {
  return c_call([&] {
    const vqrt::GenerateRequest r = to_cpp(model, request);  // checks model before it is used
    model->generator.generate(r, out_tokens);
  });
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
