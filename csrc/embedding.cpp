#include "embedding.h"

namespace vqrt {

void embed_tokens(const int64_t* tokens, const int64_t* pos, int64_t rows, int64_t c,
                  const float* tok_emb, const float* pos_emb, float* x) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* t = tok_emb + tokens[r] * c;
    const float* p = pos_emb + pos[r] * c;
    float* xr = x + r * c;
    for (int64_t i = 0; i < c; ++i) xr[i] = t[i] + p[i];
  }
}

}  // namespace vqrt
