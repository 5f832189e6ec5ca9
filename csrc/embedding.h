// Token plus position embedding, the transformer's input.
//   tokens:  [rows] token ids, each in [0, vocab) (checked by the caller)
//   pos:     [rows] positions, each in [0, block_size)
//   tok_emb: [vocab, c]   pos_emb: [block_size, c]
//   x:       [rows, c] = tok_emb[tokens[r]] + pos_emb[pos[r]]
// The CPU path and the reference for the CUDA gather kernel (issue 7).
#pragma once
#include <cstdint>

namespace vqrt {

void embed_tokens(const int64_t* tokens, const int64_t* pos, int64_t rows, int64_t c,
                  const float* tok_emb, const float* pos_emb, float* x);

}  // namespace vqrt
