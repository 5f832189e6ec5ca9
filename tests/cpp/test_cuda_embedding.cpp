// GPU twin check of the embedding gather (csrc/cuda/embedding.cu) against vqrt::embed_tokens
// (csrc/embedding.h, the oracle): the same fp32 sum rounded once to fp16, so equal bit for bit;
// ids outside their table leave a zero row and raise the error flag. Exits 77 (ctest: skipped)
// where no CUDA device is usable.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/embedding.cuh"
#include "cuda_test_util.h"
#include "embedding.h"
#include "errors.h"

namespace {

struct Result {
  std::vector<__half> x;
  int32_t error;
};

Result run_gpu(const std::vector<int64_t>& tokens, const std::vector<int64_t>& pos,
               const std::vector<float>& tok_emb, const std::vector<float>& pos_emb, int64_t c,
               int64_t vocab, int64_t block_size) {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  auto d_tokens = cuda_test::upload(tokens);
  auto d_pos = cuda_test::upload(pos);
  auto d_tok = cuda_test::upload(tok_emb);
  auto d_pemb = cuda_test::upload(pos_emb);
  auto d_error = cuda_test::upload(std::vector<int32_t>{0});
  vqrt::cuda::DeviceBuffer d_x(rows * c * sizeof(__half));
  vqrt::cuda::EmbeddingParams p;
  p.tokens = d_tokens.as<int64_t>();
  p.positions = d_pos.as<int64_t>();
  p.tok_emb = d_tok.as<float>();
  p.pos_emb = d_pemb.as<float>();
  p.x = d_x.as<__half>();
  p.error = d_error.as<int32_t>();
  p.rows = rows;
  p.c = c;
  p.vocab = vocab;
  p.block_size = block_size;
  vqrt::cuda::embedding_launch(p, nullptr);
  return {cuda_test::download<__half>(d_x, static_cast<size_t>(rows * c)),
          cuda_test::download<int32_t>(d_error, 1)[0]};
}

uint16_t bits(__half h) {
  uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}

}  // namespace

TEST(embedding_matches_cpu_bit_for_bit) {
  std::mt19937_64 rng(3);
  for (int64_t c : {int64_t(1), int64_t(7), int64_t(256), int64_t(1024), int64_t(1027)}) {
    for (int64_t rows : {int64_t(1), int64_t(3), int64_t(64), int64_t(300)}) {
      const int64_t vocab = 1031, block_size = 257;
      const std::vector<float> tok_emb = cuda_test::random_floats(rng, vocab * c, 0.0f, 0.5f);
      const std::vector<float> pos_emb = cuda_test::random_floats(rng, block_size * c, 0.0f, 0.2f);
      std::vector<int64_t> tokens(rows), pos(rows);
      for (int64_t r = 0; r < rows; ++r) {
        tokens[r] = static_cast<int64_t>(rng() % vocab);
        pos[r] = static_cast<int64_t>(rng() % block_size);
      }
      tokens[0] = vocab - 1;  // the tables' last rows
      pos[rows - 1] = block_size - 1;
      std::vector<float> ref(rows * c);
      vqrt::embed_tokens(tokens.data(), pos.data(), rows, c, tok_emb.data(), pos_emb.data(),
                         ref.data());
      const Result got = run_gpu(tokens, pos, tok_emb, pos_emb, c, vocab, block_size);
      CHECK_EQ(got.error, 0);
      int64_t bad = 0;
      for (int64_t i = 0; i < rows * c; ++i) bad += bits(got.x[i]) != bits(__float2half_rn(ref[i]));
      if (bad != 0) {
        check::fail(__FILE__, __LINE__, "embedding rows " + std::to_string(rows) + " c " +
                                            std::to_string(c) + ": " + std::to_string(bad) +
                                            " values differ");
      }
    }
  }
}

TEST(embedding_flags_ids_out_of_range) {
  std::mt19937_64 rng(5);
  const int64_t c = 9, vocab = 10, block_size = 4;
  const std::vector<float> tok_emb = cuda_test::random_floats(rng, vocab * c, 1.0f, 0.5f);
  const std::vector<float> pos_emb = cuda_test::random_floats(rng, block_size * c, 1.0f, 0.5f);
  const std::vector<int64_t> tokens = {3, 10, -1, 2};
  const std::vector<int64_t> pos = {0, 1, 2, 4};
  const Result got = run_gpu(tokens, pos, tok_emb, pos_emb, c, vocab, block_size);
  CHECK_EQ(got.error, 1);
  for (int64_t i = 0; i < c; ++i) {  // row 0 is fine, rows 1-3 each have a bad id
    CHECK_EQ(bits(got.x[i]), bits(__float2half_rn(tok_emb[3 * c + i] + pos_emb[i])));
    for (int64_t r = 1; r < 4; ++r) CHECK_EQ(__half2float(got.x[r * c + i]), 0.0f);
  }
}

TEST(embedding_checks_arguments) {
  vqrt::cuda::EmbeddingParams p;
  p.rows = 1;
  p.c = 4;
  p.vocab = 0;
  p.block_size = 1;
  CHECK_THROWS(vqrt::cuda::embedding_launch(p, nullptr), vqrt::Error, "must be >= 1");
  p.vocab = 5;
  CHECK_THROWS(vqrt::cuda::embedding_launch(p, nullptr), vqrt::Error, "null device pointer");
}

int main() { return cuda_test::run_or_skip(); }
