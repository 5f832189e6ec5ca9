// The GPU sampler: one block of 1024 threads per row, following csrc/sampling.h rule by rule.
//
// Why it picks the CPU's token. The token is decided by comparisons on values that are computed
// here with the same IEEE operations, on the same operands, in the same order as the CPU:
//  - s = x / t: __fdiv_rn (a true division, never x * (1/t) and never a fast-math divide).
//  - the threshold: the k-th largest s counting repeats, found by the same MSB-first radix
//    selection over the same order keys (-0 merged with +0); it is a value, so any correct
//    selection gives the CPU's bits.
//  - survivors: s >= max(threshold, -FLT_MAX), the CPU's float comparison.
//  - walk order: survivors sorted by the 64-bit item (~order_key(s) << 32 | token), which is
//    unique per token, so any correct sort yields the CPU's order (s descending, ties by index).
//  - weights: exp(double(s_j) - double(s_max)) in double (CUDA's exp against libm's; see below).
//  - every running sum the CPU makes (total, the top-p "before" sum, the re-summed total, the
//    draw's cumulative sum) is a sequential left-to-right double sum in walk order. Floating
//    addition is not associative, so no parallel scan can reproduce it: one warp computes the
//    chain serially (__dadd_rn, no FMA contraction), every lane adding the same values in the
//    same order, and stores each prefix P_j. The CPU's total is P_{m-1}, its re-summed total over
//    the kept prefix is P_{kept-1} (same additions from the same 0.0), and its draw's cumulative
//    sum takes the values P_j, so the draw "first j with cum > u * total" is the first j with
//    P_j > target, found in parallel (a minimum over j, no monotonicity assumed).
//  - top-p: before += weight[j] / total (__ddiv_rn then __dadd_rn), cut at the first j with
//    before > double(top_p), checked before the add as the CPU does.
//  - u: philox_uniform() from csrc/philox.h, the same header code on both sides.
// Residual risk: exp. libm's exp and CUDA's exp are both within 1 ulp but not always the same
// ulp; a weight that differs in its last bit moves P_j by ~1e-16 relative, which changes the token
// only if u * total lands within that distance of a boundary P_j (or a top-p "before" sum lands
// that close to top_p): about 1e-16 per draw for random logits.
//
// Cost: 5 passes over the row (max and flags, three 11/11/10-bit histogram passes, compaction),
// a bitonic sort of the survivors (in registers and shared memory up to 1024 of them; beyond,
// 1024-item sorted runs merged pairwise by merge path in the workspace), exp per survivor, and
// the serial chain: one double add per survivor (two chains with top-p).
#include "cuda/sampling.cuh"

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cuda/block_ops.cuh"
#include "cuda/cuda_common.cuh"
#include "errors.h"
#include "philox.h"

namespace vqrt::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kThreads;           // survivors sorted in one bitonic network
constexpr uint64_t kPad = ~uint64_t(0);    // sorts after every real item (a real high half is
                                           // never 0xffffffff: that would be a NaN's key)

// The kernel's arguments, by value.
struct Args {
  const float* logits;
  const uint64_t* seeds;
  int64_t* tokens;
  int32_t* status;
  int32_t* kept;
  unsigned char* workspace;  // [batch][3][vocab] 8-byte slots, or null when vocab <= kChunk
  int vocab;
  int top_k;
  float top_p;
  float temperature;
  bool greedy;
  uint64_t step;
};

struct Shared {
  uint64_t items[kChunk];     // survivors, then walk order (m <= kChunk)
  uint64_t exchange[kChunk];  // the bitonic network's cross-warp exchange
  double weight[kChunk];      // weights in walk order (m <= kChunk)
  double prefix[kChunk];      // P_j, the sequential sums of the weights (m <= kChunk)
  int hist[2048];             // radix-selection histogram
  float red_f[kWarps];
  int red_i[kWarps];
  int scan[kWarps];
  int digit, krem, count_eq, counter, pick, fallback, kept;
  double total, total_kept;
};

// uint32 keys that sort like the floats (no NaN); -0 maps to +0's key (sampling.cpp's order_key).
__device__ __forceinline__ uint32_t order_key(float f) {
  uint32_t b = __float_as_uint(f);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float from_order_key(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  return __uint_as_float(b);
}

// s = x / t as the CPU computes it: an IEEE division, skipped when t == 1.
__device__ __forceinline__ float scaled_logit(const float* x, int i, float t, bool divide) {
  const float v = __ldg(x + i);
  return divide ? __fdiv_rn(v, t) : v;
}

// The s of a walk-order item (exact: the order key is a bijection up to -0 -> +0, and -0 vs +0
// cannot change double(s_j) - double(s_max)'s exp).
__device__ __forceinline__ float item_value(uint64_t item) {
  return from_order_key(~static_cast<uint32_t>(item >> 32));
}

__device__ __forceinline__ uint64_t umin64(uint64_t a, uint64_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint64_t umax64(uint64_t a, uint64_t b) { return a < b ? b : a; }

// Bitonic sort of one item per thread over threads [0, n), n a power of two in [32, kThreads],
// ascending; returns this thread's item of the sorted sequence. Called by every thread of the
// block (it synchronises when n > 32). Strides below 32 stay in registers (shuffles).
__device__ uint64_t block_bitonic_sort(uint64_t v, int n, uint64_t* exchange) {
  const int tid = threadIdx.x;
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      uint64_t other;
      if (j >= 32) {
        exchange[tid] = v;
        __syncthreads();
        other = exchange[tid ^ j];
        __syncthreads();
      } else {
        other = __shfl_xor_sync(kFullMask, v, j);
      }
      const bool ascending = (tid & k) == 0;
      const bool lower = (tid & j) == 0;
      v = (lower == ascending) ? umin64(v, other) : umax64(v, other);
    }
  }
  return v;
}

// How many of the first `diag` items of merge(a, b) come from a (items unique).
__device__ int merge_path(const uint64_t* a, int a_len, const uint64_t* b, int b_len, int diag) {
  int lo = max(0, diag - b_len), hi = min(diag, a_len);
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < b[diag - 1 - mid]) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// src [m] holds sorted runs of `run` items; merges each pair of runs into dst [m]. Each thread
// writes one contiguous slice of dst, starting from its merge-path split.
__device__ void block_merge_runs(const uint64_t* src, uint64_t* dst, int m, int run) {
  const int per = (m + kThreads - 1) / kThreads;
  int pos = min(static_cast<int>(threadIdx.x) * per, m);
  const int end = min(pos + per, m);
  while (pos < end) {
    const int a0 = pos / (2 * run) * (2 * run);
    const int a_len = min(run, m - a0);
    const int b0 = a0 + a_len;
    const int b_len = min(run, m - b0);
    const int stop = min(end, b0 + b_len);
    const int diag = pos - a0;
    int i = merge_path(src + a0, a_len, src + b0, b_len, diag);
    int j = diag - i;
    for (; pos < stop; ++pos) {
      const bool take_a = j >= b_len || (i < a_len && src[a0 + i] < src[b0 + j]);
      dst[pos] = take_a ? src[a0 + i++] : src[b0 + j++];
    }
  }
}

__device__ void finish_row(const Args& a, int64_t row, int32_t status, int64_t token, int kept) {
  if (threadIdx.x != 0) return;
  a.tokens[row] = token;
  a.status[row] = status;
  if (a.kept != nullptr) a.kept[row] = kept;
}

__global__ void __launch_bounds__(kThreads) sampling_kernel(const Args a) {
  __shared__ Shared sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t row = blockIdx.x;
  const int V = a.vocab;
  const float* x = a.logits + row * V;
  const float t = a.temperature;
  const bool divide = !a.greedy && t != 1.0f;
  constexpr float kInf = INFINITY;

  // --- 1. Checks and greedy: NaN, the maximum with its lowest index, how many s are -inf. ------
  bool nan = false;
  float best = -kInf;
  int best_i = INT_MAX;
  int neg_inf = 0;
  for (int i = tid; i < V; i += kThreads) {
    const float v = __ldg(x + i);
    nan |= isnan(v);
    if (v > best) {  // strict: the earliest of equal values (-0 == +0) wins, like std::find
      best = v;
      best_i = i;
    }
    neg_inf += (divide ? __fdiv_rn(v, t) : v) == -kInf;
  }
  nan = __syncthreads_or(nan);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ob = __shfl_xor_sync(kFullMask, best, offset);
    const int oi = __shfl_xor_sync(kFullMask, best_i, offset);
    if (ob > best || (ob == best && oi < best_i)) {
      best = ob;
      best_i = oi;
    }
  }
  if (lane == 0) {
    sh.red_f[warp] = best;
    sh.red_i[warp] = best_i;
  }
  __syncthreads();
  best = sh.red_f[0];
  best_i = sh.red_i[0];
  for (int w = 1; w < kWarps; ++w) {
    if (sh.red_f[w] > best || (sh.red_f[w] == best && sh.red_i[w] < best_i)) {
      best = sh.red_f[w];
      best_i = sh.red_i[w];
    }
  }
  neg_inf = block_all_reduce(neg_inf, SumOp(), sh.scan);

  // The CPU's order of checks (sampling.h rule 0, then rule 2's overflow check).
  int32_t status = kSampleOk;
  if (nan) {
    status = kSampleNaN;
  } else if (best == kInf) {
    status = kSamplePosInf;
  } else if (best == -kInf) {
    status = kSampleAllNegInf;
  } else if (divide && !isfinite(__fdiv_rn(best, t))) {
    status = kSampleTemperatureOverflow;
  }
  if (status != kSampleOk) return finish_row(a, row, status, -1, 0);
  if (a.greedy) return finish_row(a, row, kSampleOk, best_i, 1);

  // --- 2. The threshold: the k-th largest s (rule 3), and m, the number of survivors. ----------
  float threshold = -FLT_MAX;
  int m = V - neg_inf;  // survivors when the threshold is -FLT_MAX: every s > -inf
  if (a.top_k < V) {
    uint32_t prefix = 0, prefix_mask = 0;
    int krem = a.top_k, count_eq = 0;
    for (int pass = 0; pass < 3; ++pass) {
      const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
      const int bins = pass == 2 ? 1024 : 2048;
      for (int b = tid; b < bins; b += kThreads) sh.hist[b] = 0;
      __syncthreads();
      for (int base = 0; base < V; base += kThreads) {  // uniform trip count: warps converge
        const int i = base + tid;
        bool valid = false;
        uint32_t bin = 0;
        if (i < V) {
          const uint32_t key = order_key(scaled_logit(x, i, t, divide));
          valid = (key & prefix_mask) == prefix;
          bin = (key >> shift) & static_cast<uint32_t>(bins - 1);
        }
        // One atomic per distinct bin per warp: logits crowd into few top-digit bins.
        const unsigned peers = __match_any_sync(kFullMask, valid ? bin : 0xffffffffu);
        if (valid && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[bin], __popc(peers));
      }
      __syncthreads();
      // The CPU walks the bins from the top, skipping each whole bin while it holds fewer than
      // krem keys. With `above` = keys in higher bins, the chosen bin d is the unique one with
      // above(d) < krem <= above(d) + hist[d]. Thread t holds bins (bins-1-2t) and (bins-2-2t).
      const int r = 2 * tid;
      const int h0 = r < bins ? sh.hist[bins - 1 - r] : 0;
      const int h1 = r + 1 < bins ? sh.hist[bins - 2 - r] : 0;
      int total;
      const int above = block_exclusive_scan(h0 + h1, sh.scan, &total);
      if (above < krem && krem <= above + h0) {
        sh.digit = bins - 1 - r;
        sh.krem = krem - above;
        sh.count_eq = h0;
      } else if (above + h0 < krem && krem <= above + h0 + h1) {
        sh.digit = bins - 2 - r;
        sh.krem = krem - above - h0;
        sh.count_eq = h1;
      }
      __syncthreads();
      prefix |= static_cast<uint32_t>(sh.digit) << shift;
      prefix_mask |= static_cast<uint32_t>(bins - 1) << shift;
      krem = sh.krem;
      count_eq = sh.count_eq;
    }
    // prefix is the k-th largest key. The keys above it were skipped: top_k - krem of them; the
    // last bin holds the count_eq keys equal to it.
    const float kth = from_order_key(prefix);
    if (kth != -kInf) {  // else the threshold stays -FLT_MAX, as std::max(kth, -FLT_MAX) gives
      threshold = kth;
      m = a.top_k - krem + count_eq;
    }
  }

  // --- 3. Survivors (s >= threshold), as sort items, into shared memory or the workspace. -------
  uint64_t* ws_items0 = nullptr;
  uint64_t* ws_items1 = nullptr;
  double* ws_prefix = nullptr;
  if (a.workspace != nullptr) {
    uint64_t* base = reinterpret_cast<uint64_t*>(a.workspace) + row * 3 * static_cast<int64_t>(V);
    ws_items0 = base;
    ws_items1 = base + V;
    ws_prefix = reinterpret_cast<double*>(base + 2 * static_cast<int64_t>(V));
  }
  const bool small = m <= kChunk;  // block-uniform
  uint64_t* items = small ? sh.items : ws_items0;
  if (tid == 0) sh.counter = 0;
  __syncthreads();
  for (int base = 0; base < V; base += kThreads) {
    const int i = base + tid;
    float s = 0.0f;
    bool keep = false;
    if (i < V) {
      s = scaled_logit(x, i, t, divide);
      keep = s >= threshold;
    }
    const unsigned ballot = __ballot_sync(kFullMask, keep);
    int first = 0;
    if (lane == 0 && ballot != 0) first = atomicAdd(&sh.counter, __popc(ballot));
    first = __shfl_sync(kFullMask, first, 0);
    if (keep) {
      const int pos = first + __popc(ballot & ((1u << lane) - 1u));
      if (pos < m) items[pos] = (static_cast<uint64_t>(~order_key(s)) << 32) | static_cast<uint32_t>(i);
    }
  }
  __syncthreads();
  if (sh.counter != m) return finish_row(a, row, kSampleInternal, -1, 0);

  // --- 4. Walk order (rule 4): sort the unique items ascending. ---------------------------------
  const uint64_t* sorted;
  double* weight;
  double* prefix_sum;
  if (small) {
    int n = 32;
    while (n < m) n <<= 1;
    uint64_t v = tid < m ? sh.items[tid] : kPad;
    v = block_bitonic_sort(v, n, sh.exchange);
    if (tid < m) sh.items[tid] = v;  // each thread rewrites only the slot it read
    sorted = sh.items;
    weight = sh.weight;
    prefix_sum = sh.prefix;
  } else {
    for (int c0 = 0; c0 < m; c0 += kChunk) {  // sorted runs of kChunk items, in place
      const int i = c0 + tid;
      uint64_t v = i < m ? ws_items0[i] : kPad;
      v = block_bitonic_sort(v, kChunk, sh.exchange);
      if (i < m) ws_items0[i] = v;
    }
    __syncthreads();
    uint64_t* src = ws_items0;
    uint64_t* dst = ws_items1;
    for (int run = kChunk; run < m; run *= 2) {
      block_merge_runs(src, dst, m, run);
      __syncthreads();
      uint64_t* tmp = src;
      src = dst;
      dst = tmp;
    }
    sorted = src;
    weight = reinterpret_cast<double*>(dst);  // the other buffer is free now
    prefix_sum = ws_prefix;
  }
  __syncthreads();

  // --- 5. Weights: exp(double(s_j) - double(s_max)), in parallel (independent values). ---------
  const double s_max = static_cast<double>(item_value(sorted[0]));
  for (int j = tid; j < m; j += kThreads) {
    weight[j] = exp(__dsub_rn(static_cast<double>(item_value(sorted[j])), s_max));
  }
  __syncthreads();

  // --- 6. The CPU's sequential sum, P_j = (...((0 + w_0) + w_1) ...) + w_j, by warp 0. ----------
  // Every lane adds the same 32 values in the same order (shuffled from the lane that loaded
  // them); lane l keeps the sum after the l-th. Padding adds +0.0, which changes nothing.
  if (warp == 0) {
    double cum = 0.0;
    double w_next = lane < m ? weight[lane] : 0.0;
    for (int base = 0; base < m; base += 32) {
      const double w = w_next;
      const int j_next = base + 32 + lane;
      w_next = j_next < m ? weight[j_next] : 0.0;  // the next load overlaps this chain
      double mine = 0.0;
#pragma unroll
      for (int l = 0; l < 32; ++l) {
        cum = __dadd_rn(cum, __shfl_sync(kFullMask, w, l));
        if (lane == l) mine = cum;
      }
      if (base + lane < m) prefix_sum[base + lane] = mine;
    }
    if (lane == 0) sh.total = cum;
  }
  __syncthreads();

  // --- 7. top-p (rule 5): cut at the first j whose "before" sum exceeds top_p. -----------------
  int kept = m;
  double total_kept = sh.total;
  if (a.top_p < 1.0f) {
    if (warp == 0) {
      const double top_p = static_cast<double>(a.top_p);
      const double total = sh.total;
      double before = 0.0;
      int cut = m;
      for (int base = 0; base < m && cut == m; base += 32) {  // cut is warp-uniform
        const int j = base + lane;
        const double q = j < m ? __ddiv_rn(weight[j], total) : 0.0;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
          const double ql = __shfl_sync(kFullMask, q, l);
          if (cut == m && base + l < m) {
            if (before > top_p) {
              cut = base + l;
            } else {
              before = __dadd_rn(before, ql);
            }
          }
        }
      }
      if (lane == 0) {
        sh.kept = cut;
        // The CPU re-sums the kept prefix from 0.0 in walk order: exactly P_{cut-1}.
        sh.total_kept = cut == m ? total : prefix_sum[cut - 1];
      }
    }
    __syncthreads();
    kept = sh.kept;
    total_kept = sh.total_kept;
  }

  // --- 8. The draw (rule 6): the first j < kept with P_j > u * total. ---------------------------
  if (tid == 0) {
    sh.pick = INT_MAX;
    sh.fallback = -1;
  }
  __syncthreads();
  const double target = __dmul_rn(philox_uniform(a.seeds[row], a.step, 0), total_kept);
  for (int j = tid; j < kept; j += kThreads) {
    if (prefix_sum[j] > target) {  // this thread's j ascend: its first hit is its smallest
      atomicMin(&sh.pick, j);
      break;
    }
  }
  __syncthreads();
  int chosen = sh.pick;
  if (chosen == INT_MAX) {  // rounding left no pick: the last kept token with a nonzero weight
    int last = -1;
    for (int j = tid; j < kept; j += kThreads) {
      if (weight[j] != 0.0) last = j;
    }
    if (last >= 0) atomicMax(&sh.fallback, last);
    __syncthreads();
    chosen = sh.fallback;  // >= 0: weight[0] == exp(0) == 1
  }
  finish_row(a, row, kSampleOk, static_cast<uint32_t>(sorted[chosen]), kept);
}

void check_sampling_arguments(int64_t batch, int64_t vocab, const SamplingParams& p) {
  VQRT_CHECK(batch >= 1 && batch <= INT32_MAX, "batch must be in [1, " << INT32_MAX << "], got "
                                                                        << batch);
  VQRT_CHECK(vocab >= 1 && vocab <= kSamplingMaxVocab,
             "vocab must be in [1, " << kSamplingMaxVocab << "] on the GPU, got " << vocab);
  VQRT_CHECK(p.top_k >= 1 && p.top_k <= vocab,
             "top_k must be in [1, V=" << vocab << "], got " << p.top_k);
  VQRT_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, "top_p must be in (0, 1], got " << p.top_p);
  VQRT_CHECK(p.greedy || (std::isfinite(p.temperature) && p.temperature > 0.0f),
             "temperature must be finite and > 0 (use greedy for argmax), got " << p.temperature);
}

}  // namespace

size_t sampling_workspace_bytes(int64_t batch, int64_t vocab) {
  if (vocab <= kChunk) return 0;
  VQRT_CHECK(batch >= 1 && vocab <= kSamplingMaxVocab &&
                 static_cast<uint64_t>(batch) <=
                     SIZE_MAX / (3 * sizeof(uint64_t)) / static_cast<uint64_t>(vocab),
             "sampling: the workspace of batch " << batch << " x vocab " << vocab
                                                 << " overflows size_t");
  return static_cast<size_t>(batch) * static_cast<size_t>(vocab) * 3 * sizeof(uint64_t);
}

void SamplingKernelParams::check() const {
  check_sampling_arguments(batch, vocab, params);
  VQRT_CHECK(logits != nullptr && seeds != nullptr && tokens != nullptr && status != nullptr,
             "sampling: null device pointer (logits, seeds, tokens and status are required)");
  const size_t need = sampling_workspace_bytes(batch, vocab);
  VQRT_CHECK(need == 0 || reinterpret_cast<uintptr_t>(workspace) % alignof(uint64_t) == 0,
             "sampling: the workspace must be 8-byte aligned");
  VQRT_CHECK(need == 0 || (workspace != nullptr && workspace_bytes >= need),
             "sampling: the workspace needs " << need << " bytes for batch " << batch
                                              << " x vocab " << vocab << ", got "
                                              << (workspace == nullptr ? 0 : workspace_bytes));
}

void sampling_launch(const SamplingKernelParams& p, cudaStream_t stream) {
  p.check();
  const Args a{p.logits,
               p.seeds,
               p.tokens,
               p.status,
               p.kept,
               sampling_workspace_bytes(p.batch, p.vocab) > 0
                   ? static_cast<unsigned char*>(p.workspace)
                   : nullptr,
               static_cast<int>(p.vocab),
               static_cast<int>(p.params.top_k),
               p.params.top_p,
               p.params.temperature,
               p.params.greedy,
               p.step};
  sampling_kernel<<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(a);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

void check_sampling_status(const int32_t* status, int64_t batch, const SamplingParams& params,
                           const float* host_logits, int64_t vocab) {
  for (int64_t row = 0; row < batch; ++row) {  // the lowest bad row, in the CPU's words
    switch (status[row]) {
      case kSampleOk:
        continue;
      case kSampleNaN:
        VQRT_CHECK(false, "logits row " << row << " contains NaN");
        break;
      case kSamplePosInf:
        VQRT_CHECK(false, "logits row " << row
                                        << " contains +inf (mask a token with -inf; +inf is rejected)");
        break;
      case kSampleAllNegInf:
        VQRT_CHECK(false, "logits row " << row << " is all -inf: no token can be sampled");
        break;
      case kSampleTemperatureOverflow: {
        if (host_logits == nullptr) {
          VQRT_CHECK(false, "logits row " << row << ": max logit / temperature "
                                          << params.temperature << " overflows float32");
        }
        const float* x = host_logits + row * vocab;
        float x_max = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < vocab; ++i) x_max = x[i] > x_max ? x[i] : x_max;
        VQRT_CHECK(false, "logits row " << row << ": max logit " << x_max << " / temperature "
                                        << params.temperature << " overflows float32");
        break;
      }
      default:
        VQRT_CHECK(false, "sampling kernel: internal error (status " << status[row] << ") in row "
                                                                     << row);
    }
  }
}

void sample_logits_cuda(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                        uint64_t step, const SamplingParams& params, int64_t* out,
                        int32_t* kept) {
  check_sampling_arguments(batch, vocab, params);
  VQRT_CHECK(logits != nullptr, "logits is null");
  VQRT_CHECK(seeds != nullptr, "seeds is null");
  VQRT_CHECK(out != nullptr, "out is null");
  const size_t n = static_cast<size_t>(batch);
  DeviceBuffer d_logits(n * static_cast<size_t>(vocab) * sizeof(float));
  DeviceBuffer d_seeds(n * sizeof(uint64_t));
  DeviceBuffer d_tokens(n * sizeof(int64_t));
  DeviceBuffer d_status(n * sizeof(int32_t));
  DeviceBuffer d_kept(n * sizeof(int32_t));
  DeviceBuffer d_workspace(sampling_workspace_bytes(batch, vocab));
  d_logits.upload(logits, d_logits.bytes());
  d_seeds.upload(seeds, d_seeds.bytes());

  SamplingKernelParams p;
  p.logits = d_logits.as<float>();
  p.seeds = d_seeds.as<uint64_t>();
  p.tokens = d_tokens.as<int64_t>();
  p.status = d_status.as<int32_t>();
  p.kept = d_kept.as<int32_t>();
  p.workspace = d_workspace.as<void>();
  p.workspace_bytes = d_workspace.bytes();
  p.batch = batch;
  p.vocab = vocab;
  p.step = step;
  p.params = params;
  sampling_launch(p, nullptr);

  std::vector<int64_t> tokens(n);
  std::vector<int32_t> status(n), kept_rows(n);
  d_tokens.download(tokens.data(), d_tokens.bytes());  // synchronises with the kernel
  d_status.download(status.data(), d_status.bytes());
  d_kept.download(kept_rows.data(), d_kept.bytes());

  check_sampling_status(status.data(), batch, params, logits, vocab);
  std::memcpy(out, tokens.data(), n * sizeof(int64_t));
  if (kept != nullptr) std::memcpy(kept, kept_rows.data(), n * sizeof(int32_t));
}

}  // namespace vqrt::cuda
