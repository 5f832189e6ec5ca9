/* The C API from plain C, through vqrt.h and libvqrt.so only (not even libm). */
#include <math.h> /* NAN only */
#include <stdio.h>
#include <string.h>

#include "vqrt.h"

static int failed = 0, passed = 0;

static int near(double a, double b) { return a - b < 1e-6 && b - a < 1e-6; }

#define EXPECT(cond)                                              \
  do {                                                            \
    if (cond) {                                                   \
      ++passed;                                                   \
    } else {                                                      \
      ++failed;                                                   \
      printf("  %s:%d: EXPECT(%s)\n", __FILE__, __LINE__, #cond); \
    }                                                             \
  } while (0)

int main(void) {
  /* Two rows of log([0.1, 0.2, 0.3, 0.4]). */
  const float log_p[4] = {-2.30258509f, -1.60943791f, -1.20397280f, -0.91629073f};
  float logits[8];
  uint64_t seeds[2] = {12345u, 67890u};
  int64_t out[2] = {-7, -7};
  double probs[8];
  int i;
  for (i = 0; i < 8; ++i) logits[i] = log_p[i % 4];

  vqrt_sampling_params p = vqrt_sampling_params_default(3);
  EXPECT(p.top_k == 3 && p.top_p == 1.0f && p.temperature == 1.0f && p.greedy == 0 &&
         p.n_threads == 0);

  /* top-k 3: token 0 is never drawn; the probabilities are 2/9, 3/9, 4/9. */
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, out) == VQRT_OK);
  EXPECT(out[0] >= 1 && out[0] <= 3 && out[1] >= 1 && out[1] <= 3);
  EXPECT(vqrt_sampling_probs(logits, 2, 4, &p, probs) == VQRT_OK);
  EXPECT(probs[0] == 0.0 && near(probs[1], 2.0 / 9) && near(probs[2], 3.0 / 9));
  EXPECT(near(probs[3], 4.0 / 9) && near(probs[7], 4.0 / 9));

  /* Same seed and step, same token. */
  {
    int64_t again[2];
    EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, again) == VQRT_OK);
    EXPECT(again[0] == out[0] && again[1] == out[1]);
  }

  /* Greedy: the argmax whatever the temperature field says. */
  p.greedy = 1;
  p.temperature = 0.0f;
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 9, &p, out) == VQRT_OK);
  EXPECT(out[0] == 3 && out[1] == 3);

  /* A bad k: an error code, a message naming the value, the output untouched. */
  p = vqrt_sampling_params_default(0);
  out[0] = out[1] = -7;
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, out) == VQRT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(vqrt_last_error(), "top_k must be in [1, V=4], got 0") != NULL);
  EXPECT(out[0] == -7 && out[1] == -7);
  p.top_k = 5;
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, out) == VQRT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(vqrt_last_error(), "got 5") != NULL);

  /* Temperature 0 without greedy is an error, not greedy. */
  p = vqrt_sampling_params_default(2);
  p.temperature = 0.0f;
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, out) == VQRT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(vqrt_last_error(), "temperature") != NULL);

  /* NaN in row 1; null params. */
  p = vqrt_sampling_params_default(2);
  logits[5] = NAN;
  EXPECT(vqrt_sample_logits(logits, 2, 4, seeds, 0, &p, out) == VQRT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(vqrt_last_error(), "logits row 1 contains NaN") != NULL);
  EXPECT(vqrt_sampling_probs(logits, 2, 4, NULL, probs) == VQRT_ERROR_INVALID_ARGUMENT);
  EXPECT(strstr(vqrt_last_error(), "params is null") != NULL);
  EXPECT(out[0] == -7 && out[1] == -7);

  /* Build and machine. */
  {
    const char* isa = vqrt_cpu_isa();
    EXPECT(isa != NULL && (strcmp(isa, "generic") == 0 || strcmp(isa, "avx2") == 0 ||
                           strcmp(isa, "avx512") == 0));
    EXPECT(vqrt_built_with_cuda() == 0 || vqrt_built_with_cuda() == 1);
    EXPECT(vqrt_cuda_device_count() >= 0);
    if (!vqrt_built_with_cuda()) EXPECT(vqrt_cuda_device_count() == 0);
    printf("  cpu isa %s, built with cuda %d, cuda devices %d\n", isa ? isa : "(null)",
           vqrt_built_with_cuda(), vqrt_cuda_device_count());
  }

  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
