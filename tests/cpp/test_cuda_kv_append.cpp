// GPU twin check of the fp16 KV-cache append (csrc/cuda/kv_append.cu) against the cache write of
// Transformer::attention_rows (csrc/transformer.cpp), replayed here on the host with the same
// index arithmetic: cache[b, h, positions[b] + t, :] = qkv row (b, t), columns C + h D (keys) and
// 2C + h D (values). A copy, so equal bit for bit, and nothing else in the cache changes.
// Exits 77 (ctest: skipped) where no CUDA device is usable.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/kv_append.cuh"
#include "cuda_test_util.h"
#include "errors.h"

namespace {

bool same_bits(const std::vector<__half>& a, const std::vector<__half>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(__half)) == 0;
}

// Appends n_new positions per row of a qkv buffer [batch * n_new, 3C + pad] into caches of
// batch_max rows; positions[b] may be invalid (that row must stay untouched, error set).
void run_case(std::mt19937_64& rng, int64_t batch, int64_t batch_max, int64_t heads, int64_t D,
              int64_t max_len, int64_t n_new, const std::vector<int64_t>& positions) {
  const int64_t C = heads * D, stride = 3 * C + 5;
  const auto qkv = cuda_test::to_half(cuda_test::random_floats(rng, batch * n_new * stride, 0, 1));
  const size_t cache_n = static_cast<size_t>(batch_max * heads * max_len * D);
  const auto k0 = cuda_test::to_half(cuda_test::random_floats(rng, cache_n, 0, 1));
  const auto v0 = cuda_test::to_half(cuda_test::random_floats(rng, cache_n, 0, 1));

  std::vector<__half> k_ref = k0, v_ref = v0;
  bool any_bad = false;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = positions[b];
    if (start < 0 || start + n_new > max_len) {
      any_bad = true;
      continue;
    }
    for (int64_t t = 0; t < n_new; ++t) {
      const __half* row = qkv.data() + (b * n_new + t) * stride;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t dst = ((b * heads + h) * max_len + start + t) * D;
        std::memcpy(&k_ref[dst], row + C + h * D, D * sizeof(__half));
        std::memcpy(&v_ref[dst], row + 2 * C + h * D, D * sizeof(__half));
      }
    }
  }

  auto d_qkv = cuda_test::upload(qkv);
  auto d_k = cuda_test::upload(k0);
  auto d_v = cuda_test::upload(v0);
  auto d_pos = cuda_test::upload(positions);
  auto d_error = cuda_test::upload(std::vector<int32_t>{0});
  vqrt::cuda::KvAppendParams p;
  p.k_new = d_qkv.as<__half>() + C;
  p.v_new = d_qkv.as<__half>() + 2 * C;
  p.src_row_stride = stride;
  p.k_cache = d_k.as<__half>();
  p.v_cache = d_v.as<__half>();
  p.positions = d_pos.as<int64_t>();
  p.error = d_error.as<int32_t>();
  p.batch = batch;
  p.n_new = n_new;
  p.heads = heads;
  p.head_dim = D;
  p.max_len = max_len;
  vqrt::cuda::kv_append_launch(p, nullptr);
  const std::string what = "kv_append batch " + std::to_string(batch) + " heads " +
                           std::to_string(heads) + " D " + std::to_string(D) + " n_new " +
                           std::to_string(n_new);
  if (!same_bits(cuda_test::download<__half>(d_k, cache_n), k_ref)) {
    check::fail(__FILE__, __LINE__, what + ": keys differ");
  }
  if (!same_bits(cuda_test::download<__half>(d_v, cache_n), v_ref)) {
    check::fail(__FILE__, __LINE__, what + ": values differ");
  }
  CHECK_EQ(cuda_test::download<int32_t>(d_error, 1)[0], any_bad ? 1 : 0);
}

}  // namespace

TEST(kv_append_matches_cpu_cache_write) {
  std::mt19937_64 rng(3);
  run_case(rng, 1, 1, 16, 64, 256, 1, {0});
  run_case(rng, 3, 4, 2, 7, 33, 1, {0, 32, 17});
  run_case(rng, 3, 3, 4, 64, 40, 5, {0, 35, 12});  // a prefill of 5 positions, up to the end
  run_case(rng, 2, 2, 1, 1, 3, 3, {0, 0});
}

TEST(kv_append_skips_rows_that_do_not_fit) {
  std::mt19937_64 rng(5);
  run_case(rng, 4, 4, 2, 8, 10, 2, {0, 9, -1, 8});  // rows 1 and 2 would leave the cache
}

TEST(kv_append_checks_arguments) {
  vqrt::cuda::KvAppendParams p;
  p.batch = 1;
  p.n_new = 1;
  p.heads = 2;
  p.head_dim = 8;
  p.max_len = 4;
  p.src_row_stride = 15;
  CHECK_THROWS(vqrt::cuda::kv_append_launch(p, nullptr), vqrt::Error, "src_row_stride");
  p.src_row_stride = 48;
  CHECK_THROWS(vqrt::cuda::kv_append_launch(p, nullptr), vqrt::Error, "null device pointer");
  p.n_new = 5;
  CHECK_THROWS(vqrt::cuda::kv_append_launch(p, nullptr), vqrt::Error, "exceeds max_len");
}

int main() { return cuda_test::run_or_skip(); }
