/* vqrt: C API of the vqrt runtime core (libvqrt.so).
 *
 * Conventions:
 *   - Functions that can fail return a vqrt_status: VQRT_OK (0) on success, a positive code
 *     otherwise. On failure nothing the caller passed is modified, and vqrt_last_error() returns a
 *     one-line message naming the offending value ("top_k must be in [1, V=1024], got 2000").
 *   - Arrays are dense and row-major; shapes are given in brackets, e.g. logits [batch, vocab].
 *   - Every function is thread-safe; calls from different threads do not share state.
 */
#ifndef VQRT_H
#define VQRT_H

#include <stdint.h>

/* libvqrt is built with -fvisibility=hidden: only what this header declares is exported. */
#define VQRT_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

typedef enum vqrt_status {
  VQRT_OK = 0,
  VQRT_ERROR_INVALID_ARGUMENT = 1, /* a bad value from the caller: see vqrt_last_error() */
  VQRT_ERROR_OUT_OF_MEMORY = 2,
  VQRT_ERROR_INTERNAL = 3          /* a bug in vqrt: please report vqrt_last_error() */
} vqrt_status;

/* Message of the last failed call on the calling thread ("" if none has failed). Successful calls
 * leave it unchanged. The pointer is valid until the next failing call on this thread. */
VQRT_API const char* vqrt_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Sampling: one token per row of logits. The rules (taming-transformers order: temperature, then
 * top-k keeping ties at the k-th value, then top-p over the sorted survivors, then an
 * inverse-CDF draw with a Philox4x32-10 uniform keyed by the row's seed and the step) are
 * spelled out in csrc/sampling.h. A row's token depends only on its logits, seed and step, never
 * on the rest of the batch, the thread count or the CPU's instruction set. Logits may contain
 * -inf (masked tokens), never NaN or +inf, and a row may not be all -inf. */

typedef struct vqrt_sampling_params {
  int64_t top_k;     /* 1 <= top_k <= vocab; tokens tied with the k-th largest are kept too */
  float top_p;       /* 0 < top_p <= 1; 1 disables top-p filtering */
  float temperature; /* finite and > 0 unless greedy (0 is an error, not greedy) */
  int32_t greedy;    /* non-zero: argmax, lowest index on ties; temperature and seeds ignored */
  int32_t n_threads; /* worker threads over rows, 0 = automatic; never changes the result */
} vqrt_sampling_params;

/* {top_k, top_p = 1, temperature = 1, greedy = 0, n_threads = 0}. */
VQRT_API vqrt_sampling_params vqrt_sampling_params_default(int64_t top_k);

/* Draws one token per row.
 *   logits     [batch, vocab] float32
 *   seeds      [batch] one seed per row
 *   out_tokens [batch] token ids in [0, vocab), written only on success
 * Returns VQRT_OK, or VQRT_ERROR_INVALID_ARGUMENT for a bad shape, parameter, null pointer or
 * logits row (the message names the lowest bad row). */
VQRT_API int vqrt_sample_logits(const float* logits, int64_t batch, int64_t vocab,
                                const uint64_t* seeds, uint64_t step,
                                const vqrt_sampling_params* params, int64_t* out_tokens);

/* The distribution vqrt_sample_logits draws from, computed by the same code: probabilities of the
 * kept tokens, 0 elsewhere (one-hot when greedy).
 *   logits    [batch, vocab] float32
 *   out_probs [batch, vocab] float64, written only on success
 * Returns as vqrt_sample_logits. */
VQRT_API int vqrt_sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                                 const vqrt_sampling_params* params, double* out_probs);

/* ---------------------------------------------------------------------------------------------
 * Generation from a bundle (a directory written by `vqrt build`) on the CPU, with the native
 * decoder: the rules of the Python vqrt.runtime.Generator (csrc/generate.h), so the same bundle,
 * parameters and seed give the same tokens. The model serves bundles whose prefix is a class id
 * or the SOS token, grids that fit the transformer's block, and makes tokens (not images).
 *
 *   vqrt_model* model = vqrt_model_open("bundle/");          NULL on error: vqrt_last_error()
 *   vqrt_generate_request request = vqrt_generate_request_default();
 *   int64_t label = 3;  request.class_labels = &label;  request.n_class_labels = 1;
 *   int64_t shape[3];                                         batch, h, w
 *   vqrt_generate_shape(model, &request, shape);
 *   int64_t* tokens = malloc(shape[0] * shape[1] * shape[2] * sizeof(int64_t));
 *   vqrt_generate_tokens(model, &request, tokens);           row-major [batch, h, w]
 *   vqrt_model_free(model);
 *
 * A model is read-only once open: any number of threads may generate with one model at once
 * (each call has its own KV cache); vqrt_model_free must not race with those calls. */

typedef struct vqrt_model vqrt_model; /* opaque */

/* Opens and checks the bundle at bundle_dir: its manifest (schema version, fields), that every
 * listed file stays inside the bundle (no absolute path, "..", or symlink) and has its size and
 * SHA-256, and the native weights (every tensor in bounds, with its shape and dtype). Returns
 * NULL on any failure, and vqrt_last_error() names the file and the fix. */
VQRT_API vqrt_model* vqrt_model_open(const char* bundle_dir);

/* Frees a model; NULL is ignored. */
VQRT_API void vqrt_model_free(vqrt_model* model);

typedef struct vqrt_model_info {
  int64_t codebook_size;       /* tokens are image codes in [0, codebook_size) */
  int64_t n_classes;           /* class-conditional: class ids in [0, n_classes); 0 otherwise */
  int64_t downsampling_factor; /* pixels per token along each side */
  int64_t grid_h, grid_w;      /* the token grid at the training size */
  int64_t max_grid_h, max_grid_w; /* the largest grid the bundle accepts */
  int64_t max_batch;
  int64_t block_size;          /* the transformer's longest sequence, prefix included */
} vqrt_model_info;

/* Fills *out. Returns VQRT_OK, or VQRT_ERROR_INVALID_ARGUMENT for a NULL pointer. */
VQRT_API int vqrt_model_get_info(const vqrt_model* model, vqrt_model_info* out);

typedef struct vqrt_generate_request {
  const int64_t* class_labels; /* [n_class_labels]: one class per row, or one for every row;
                                  NULL (and 0) for an unconditional bundle */
  int64_t n_class_labels;
  int64_t batch;        /* rows; 0 = n_class_labels (1 for an unconditional bundle) */
  uint64_t seed;        /* row i samples with seed + i (mod 2^64) */
  int64_t top_k;        /* keep the k most likely codes (ties too); 0 = all codes */
  float top_p;          /* (0, 1]; 1 disables top-p */
  float temperature;    /* > 0 (also when greedy) */
  int32_t greedy;       /* non-zero: the most likely code; seed, top_k, top_p do not matter */
  int64_t width, height; /* pixels, multiples of the downsampling factor; 0, 0 = training size */
  int32_t n_threads;    /* decoder and sampler threads, 0 = one per core; never changes tokens */
} vqrt_generate_request;

/* {NULL, 0, batch 0, seed 0, top_k 0, top_p 1, temperature 1, greedy 0, size 0 x 0,
 *  n_threads 0}: sample from every code at the training size. */
VQRT_API vqrt_generate_request vqrt_generate_request_default(void);

/* Checks a request against the model and writes the shape of its tokens: out_shape [3] =
 * {batch, h, w}. Returns VQRT_OK, or VQRT_ERROR_INVALID_ARGUMENT with a message naming the
 * value and the limit ("requested batch 9 exceeds the bundle's max batch 8 ..."). */
VQRT_API int vqrt_generate_shape(const vqrt_model* model, const vqrt_generate_request* request,
                                 int64_t* out_shape);

/* Generates image tokens.
 *   out_tokens [batch, h, w] int64 (the shape vqrt_generate_shape gives), raster order, written
 *              only on success
 * Returns VQRT_OK; VQRT_ERROR_INVALID_ARGUMENT for a request the model cannot serve (as
 * vqrt_generate_shape); VQRT_ERROR_OUT_OF_MEMORY when the KV cache cannot be allocated. */
VQRT_API int vqrt_generate_tokens(const vqrt_model* model, const vqrt_generate_request* request,
                                  int64_t* out_tokens);

/* ---------------------------------------------------------------------------------------------
 * Build and machine. */

/* The instruction set the CPU kernels use: "generic", "avx2" or "avx512" (the best the CPU has,
 * capped by the environment variable VQRT_CPU_ISA). NULL when VQRT_CPU_ISA is invalid; then
 * vqrt_last_error() says why. */
VQRT_API const char* vqrt_cpu_isa(void);

/* 1 when this library was built with the CUDA kernels, else 0. */
VQRT_API int vqrt_built_with_cuda(void);

/* Number of usable CUDA devices: 0 when built without CUDA or when there is no driver or GPU. */
VQRT_API int vqrt_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif /* VQRT_H */
