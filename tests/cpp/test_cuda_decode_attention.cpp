// GPU twin check of decode attention over the fp16 cache (csrc/cuda/decode_attention.cu)
// against the CPU's generic attention kernel (csrc/attention.h, the oracle) on the same fp16
// values, within fp16 rounding of the output: one block per (row, head) and split along the
// sequence (explicit split counts, empty slices included, and the automatic count), odd head
// sizes and lengths, and a decode step (append, then attend) against the CPU.
// Exits 77 (ctest: skipped) where no CUDA device is usable.
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "attention.h"
#include "check.h"
#include "cpu_features.h"
#include "cuda/decode_attention.cuh"
#include "cuda/kv_append.cuh"
#include "cuda_test_util.h"
#include "errors.h"

namespace {

constexpr double kAtol = 1e-3, kRtol = 2e-3;  // two fp16 ulps of the output, and a floor

int sm_count() {
  int device = 0, count = 0;
  VQRT_CUDA_CHECK(cudaGetDevice(&device));
  VQRT_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

struct Shape {
  int64_t batch, heads, D, max_len;
};

// q: [batch, 3C] (the qkv rows; q at column 0), caches [batch, heads, max_len, D] as floats
// holding fp16 values. Returns the CPU oracle's output [batch, C].
std::vector<float> cpu_attention(const Shape& s, const std::vector<float>& qkv,
                                 const std::vector<float>& k, const std::vector<float>& v,
                                 const std::vector<int64_t>& positions, float scale) {
  const int64_t C = s.heads * s.D;
  std::vector<float> out(s.batch * C), scores(s.max_len);
  const vqrt::AttentionKernel kernel = vqrt::attention_kernel(vqrt::CpuIsa::generic);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t head = (b * s.heads + h) * s.max_len * s.D;
      vqrt::AttentionArgs a;
      a.q = qkv.data() + b * 3 * C + h * s.D;
      a.k = k.data() + head;
      a.v = v.data() + head;
      a.n_keys = positions[b] + 1;
      a.d = s.D;
      a.scale = scale;
      a.scores = scores.data();
      a.out = out.data() + b * C + h * s.D;
      kernel(a);
    }
  }
  return out;
}

// The kernel's arguments over device buffers: rows of q, k, v (3 C wide, q first) in `qkv`, the
// fp16 caches [B, heads, max_len, D], output rows of `out_stride`; error flag and scale as given.
vqrt::cuda::DecodeAttentionParams attention_params(
    const Shape& s, int64_t heads, const vqrt::cuda::DeviceBuffer& qkv,
    const vqrt::cuda::DeviceBuffer& k, const vqrt::cuda::DeviceBuffer& v,
    const vqrt::cuda::DeviceBuffer& positions, const vqrt::cuda::DeviceBuffer& out,
    int64_t out_stride, const vqrt::cuda::DeviceBuffer& workspace, int splits) {
  vqrt::cuda::DecodeAttentionParams p;
  p.q = qkv.as<__half>();
  p.q_row_stride = 3 * heads * s.D;
  p.k_cache = k.as<__half>();
  p.v_cache = v.as<__half>();
  p.positions = positions.as<int64_t>();
  p.out = out.as<__half>();
  p.out_row_stride = out_stride;
  p.batch = s.batch;
  p.heads = heads;
  p.head_dim = s.D;
  p.max_len = s.max_len;
  p.splits = splits;
  p.workspace = workspace.as<float>();
  p.workspace_bytes = workspace.bytes();
  return p;
}

// Runs the GPU kernel with `splits` (0: decode_attention_splits' choice) and compares.
void run_case(std::mt19937_64& rng, const Shape& s, int splits) {
  const int64_t C = s.heads * s.D;
  const size_t cache_n = static_cast<size_t>(s.batch * s.heads * s.max_len * s.D);
  const std::vector<float> qkv = cuda_test::random_half_values(rng, s.batch * 3 * C, 0.0f, 1.0f);
  const std::vector<float> k = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  const std::vector<float> v = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  std::vector<int64_t> positions(s.batch);
  for (int64_t b = 0; b < s.batch; ++b) positions[b] = static_cast<int64_t>(rng() % s.max_len);
  positions[0] = s.max_len - 1;  // a full cache
  if (s.batch > 1) positions[s.batch - 1] = 0;  // a single key
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.D));
  const std::vector<float> ref = cpu_attention(s, qkv, k, v, positions, scale);

  if (splits == 0) splits = vqrt::cuda::decode_attention_splits(s.batch, s.heads, s.max_len, sm_count());
  const int64_t out_stride = C + 3;  // a strided output, as inside a wider buffer
  auto d_qkv = cuda_test::upload(cuda_test::to_half(qkv));
  auto d_k = cuda_test::upload(cuda_test::to_half(k));
  auto d_v = cuda_test::upload(cuda_test::to_half(v));
  auto d_pos = cuda_test::upload(positions);
  auto d_error = cuda_test::upload(std::vector<int32_t>{0});
  vqrt::cuda::DeviceBuffer d_out(s.batch * out_stride * sizeof(__half));
  VQRT_CUDA_CHECK(cudaMemset(d_out.as<void>(), 0xff, d_out.bytes()));  // NaN: must stay in the pad
  vqrt::cuda::DeviceBuffer d_ws(
      vqrt::cuda::decode_attention_workspace_bytes(s.batch, s.heads, s.D, splits));
  vqrt::cuda::DecodeAttentionParams p =
      attention_params(s, s.heads, d_qkv, d_k, d_v, d_pos, d_out, out_stride, d_ws, splits);
  p.error = d_error.as<int32_t>();
  p.scale = scale;
  vqrt::cuda::decode_attention_launch(p, nullptr);
  const auto out = cuda_test::to_float(
      cuda_test::download<__half>(d_out, static_cast<size_t>(s.batch * out_stride)));
  std::vector<float> got(s.batch * C);
  int64_t pad_written = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t i = 0; i < C; ++i) got[b * C + i] = out[b * out_stride + i];
    for (int64_t i = C; i < out_stride; ++i) pad_written += !std::isnan(out[b * out_stride + i]);
  }
  CHECK_EQ(pad_written, int64_t(0));
  cuda_test::expect_near(got, ref, kAtol, kRtol,
                         "decode_attention B " + std::to_string(s.batch) + " H " +
                             std::to_string(s.heads) + " D " + std::to_string(s.D) + " T_max " +
                             std::to_string(s.max_len) + " splits " + std::to_string(splits));
  CHECK_EQ(cuda_test::download<int32_t>(d_error, 1)[0], 0);
}

}  // namespace

TEST(decode_attention_matches_cpu) {
  std::mt19937_64 rng(3);
  const Shape shapes[] = {
      {1, 16, 64, 256},  // the M model at batch 1
      {3, 2, 7, 33},     {2, 3, 128, 300}, {1, 1, 256, 1000}, {5, 1, 1, 5},
      {2, 4, 200, 129},  // two output dimensions per thread
      {1, 1, 32, 2049},  // many tiles
      {64, 16, 64, 64},  // batch x heads above any SM count
      {2, 4, 12, 65},    // the golden model's head size (48 / 4) and block size
      {3, 4, 48, 65},    // the demo models' head size (192 / 4)
  };
  for (const Shape& s : shapes) {
    for (int splits : {1, 3, 0}) run_case(rng, s, splits);
  }
  run_case(rng, {2, 2, 16, 10}, 10);  // slices of one position, most of them empty
  run_case(rng, {1, 2, 64, 100}, 256);
}

// One decode step the GPU way (append the new key and value, then attend) against the CPU.
TEST(append_then_attend_matches_cpu) {
  std::mt19937_64 rng(5);
  const Shape s{3, 4, 64, 50};
  const int64_t C = s.heads * s.D;
  const size_t cache_n = static_cast<size_t>(s.batch * s.heads * s.max_len * s.D);
  const std::vector<float> qkv = cuda_test::random_half_values(rng, s.batch * 3 * C, 0.0f, 1.0f);
  std::vector<float> k = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  std::vector<float> v = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  const std::vector<int64_t> positions = {7, 0, 49};
  auto d_qkv = cuda_test::upload(cuda_test::to_half(qkv));
  auto d_k = cuda_test::upload(cuda_test::to_half(k));
  auto d_v = cuda_test::upload(cuda_test::to_half(v));
  auto d_pos = cuda_test::upload(positions);
  for (int64_t b = 0; b < s.batch; ++b) {  // the CPU's cache write
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t dst = ((b * s.heads + h) * s.max_len + positions[b]) * s.D;
      for (int64_t d = 0; d < s.D; ++d) {
        k[dst + d] = qkv[b * 3 * C + C + h * s.D + d];
        v[dst + d] = qkv[b * 3 * C + 2 * C + h * s.D + d];
      }
    }
  }
  const float scale = 0.125f;
  const std::vector<float> ref = cpu_attention(s, qkv, k, v, positions, scale);

  vqrt::cuda::KvAppendParams ap;
  ap.k_new = d_qkv.as<__half>() + C;
  ap.v_new = d_qkv.as<__half>() + 2 * C;
  ap.src_row_stride = 3 * C;
  ap.k_cache = d_k.as<__half>();
  ap.v_cache = d_v.as<__half>();
  ap.positions = d_pos.as<int64_t>();
  ap.batch = s.batch;
  ap.n_new = 1;
  ap.heads = s.heads;
  ap.head_dim = s.D;
  ap.max_len = s.max_len;
  vqrt::cuda::kv_append_launch(ap, nullptr);
  vqrt::cuda::DeviceBuffer d_out(s.batch * C * sizeof(__half));
  const int splits = 2;
  vqrt::cuda::DeviceBuffer d_ws(vqrt::cuda::decode_attention_workspace_bytes(s.batch, s.heads, s.D, splits));
  vqrt::cuda::DecodeAttentionParams p =
      attention_params(s, s.heads, d_qkv, d_k, d_v, d_pos, d_out, C, d_ws, splits);
  p.scale = scale;
  vqrt::cuda::decode_attention_launch(p, nullptr);
  const auto got = cuda_test::to_float(cuda_test::download<__half>(d_out, s.batch * C));
  cuda_test::expect_near(got, ref, kAtol, kRtol, "append then attend");
}

// A prefill's attention (queries_per_row = L): query i = row * L + t at position t reads cache
// row i / L, keys 0..t, against the CPU oracle on the same rows.
TEST(prefill_queries_attend_causally_to_their_row) {
  std::mt19937_64 rng(9);
  const int64_t rows = 3, L = 5, heads = 2, D = 48, max_len = 9, queries = rows * L;
  const int64_t C = heads * D;
  const size_t cache_n = static_cast<size_t>(rows * heads * max_len * D);
  const std::vector<float> qkv = cuda_test::random_half_values(rng, queries * 3 * C, 0.0f, 1.0f);
  const std::vector<float> k = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  const std::vector<float> v = cuda_test::random_half_values(rng, cache_n, 0.0f, 1.0f);
  std::vector<int64_t> positions(queries);
  for (int64_t i = 0; i < queries; ++i) positions[i] = i % L;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> ref(queries * C), scores(max_len);
  const vqrt::AttentionKernel kernel = vqrt::attention_kernel(vqrt::CpuIsa::generic);
  for (int64_t i = 0; i < queries; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t head = ((i / L) * heads + h) * max_len * D;
      vqrt::AttentionArgs a;
      a.q = qkv.data() + i * 3 * C + h * D;
      a.k = k.data() + head;
      a.v = v.data() + head;
      a.n_keys = positions[i] + 1;
      a.d = D;
      a.scale = scale;
      a.scores = scores.data();
      a.out = ref.data() + i * C + h * D;
      kernel(a);
    }
  }
  auto d_qkv = cuda_test::upload(cuda_test::to_half(qkv));
  auto d_k = cuda_test::upload(cuda_test::to_half(k));
  auto d_v = cuda_test::upload(cuda_test::to_half(v));
  auto d_pos = cuda_test::upload(positions);
  const Shape s{queries, heads, D, max_len};  // batch = the queries
  for (int splits : {1, 3}) {
    auto d_error = cuda_test::upload(std::vector<int32_t>{0});
    vqrt::cuda::DeviceBuffer d_out(queries * C * sizeof(__half));
    vqrt::cuda::DeviceBuffer d_ws(
        vqrt::cuda::decode_attention_workspace_bytes(queries, heads, D, splits));
    vqrt::cuda::DecodeAttentionParams p =
        attention_params(s, heads, d_qkv, d_k, d_v, d_pos, d_out, C, d_ws, splits);
    p.queries_per_row = L;
    p.scale = scale;
    p.error = d_error.as<int32_t>();
    vqrt::cuda::decode_attention_launch(p, nullptr);
    const auto got = cuda_test::to_float(cuda_test::download<__half>(d_out, queries * C));
    cuda_test::expect_near(got, ref, kAtol, kRtol, "prefill splits " + std::to_string(splits));
    CHECK_EQ(cuda_test::download<int32_t>(d_error, 1)[0], 0);
  }
}

TEST(decode_attention_flags_bad_positions) {
  std::mt19937_64 rng(7);
  const Shape s{2, 1, 8, 4};
  const int64_t C = s.D;
  const std::vector<float> qkv = cuda_test::random_half_values(rng, s.batch * 3 * C, 0.0f, 1.0f);
  const size_t cache_n = static_cast<size_t>(s.batch * s.max_len * s.D);
  auto d_qkv = cuda_test::upload(cuda_test::to_half(qkv));
  auto d_k = cuda_test::upload(cuda_test::to_half(cuda_test::random_half_values(rng, cache_n, 0, 1)));
  auto d_v = cuda_test::upload(cuda_test::to_half(cuda_test::random_half_values(rng, cache_n, 0, 1)));
  auto d_pos = cuda_test::upload(std::vector<int64_t>{1, 4});  // row 1 is past the cache
  for (int splits : {1, 2}) {
    auto d_error = cuda_test::upload(std::vector<int32_t>{0});
    vqrt::cuda::DeviceBuffer d_out(s.batch * C * sizeof(__half));
    vqrt::cuda::DeviceBuffer d_ws(vqrt::cuda::decode_attention_workspace_bytes(s.batch, 1, s.D, splits));
    vqrt::cuda::DecodeAttentionParams p =
        attention_params(s, 1, d_qkv, d_k, d_v, d_pos, d_out, C, d_ws, splits);
    p.error = d_error.as<int32_t>();
    vqrt::cuda::decode_attention_launch(p, nullptr);
    CHECK_EQ(cuda_test::download<int32_t>(d_error, 1)[0], 1);
    const auto out = cuda_test::to_float(cuda_test::download<__half>(d_out, s.batch * C));
    for (int64_t d = 0; d < C; ++d) CHECK_EQ(out[C + d], 0.0f);
  }
}

TEST(decode_attention_checks_arguments) {
  CHECK_EQ(vqrt::cuda::decode_attention_splits(64, 16, 1024, 132), 1);
  CHECK_EQ(vqrt::cuda::decode_attention_splits(1, 16, 1024, 132), 17);
  CHECK_EQ(vqrt::cuda::decode_attention_splits(1, 16, 100, 132), 4);
  vqrt::cuda::DecodeAttentionParams p;
  p.batch = 1;
  p.heads = 2;
  p.head_dim = 300;
  p.max_len = 8;
  p.q_row_stride = p.out_row_stride = 600;
  CHECK_THROWS(vqrt::cuda::decode_attention_launch(p, nullptr), vqrt::Error, "head_dim must be in");
  p.head_dim = 64;
  p.splits = 4;
  CHECK_THROWS(vqrt::cuda::decode_attention_launch(p, nullptr), vqrt::Error, "null device pointer");
}

int main() { return cuda_test::run_or_skip(); }
