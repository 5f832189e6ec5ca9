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
