// The CPU sampler; the rules are in sampling.h.
#include "sampling.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "errors.h"
#include "philox.h"

namespace vqrt {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Generic row kernels: the reference for the SIMD variants in sampling_simd.cpp.

float max_generic(const float* x, int64_t n) {
  float m = -kInf;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    nan |= std::isnan(v);
    m = v > m ? v : m;
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

void divide_generic(const float* x, int64_t n, float t, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / t;
}

int64_t filter_ge_generic(const float* x, int64_t n, float t, int32_t* idx) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] >= t) idx[count++] = static_cast<int32_t>(i);
  }
  return count;
}

const RowKernels kGeneric = {CpuIsa::generic, max_generic, divide_generic, filter_ge_generic};

// ---------------------------------------------------------------------------------------------
// Order keys: uint32 values that sort like the floats they come from (no NaN). -0 is mapped to +0
// first, so equal floats always have equal keys.

inline uint32_t order_key(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

inline float from_order_key(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// Sorts items [n] (order key in the high half, token id in the low half) ascending; tmp [n] is
// scratch. Returns the buffer that holds the result (items or tmp).
//
// Survivors arrive in ascending token order, so a stable sort on the high half alone is the full
// sort: an LSD radix sort in three passes (11, 11, 10 bits), each skipped when every item has
// the same digit. Short lists use std::sort, which gives the same order (the items are distinct).
uint64_t* sort_walk_order(uint64_t* items, uint64_t* tmp, int64_t n) {
  if (n < 256) {
    std::sort(items, items + n);
    return items;
  }
  constexpr int kShift[3] = {32, 43, 54};
  constexpr uint32_t kMask[3] = {(1u << 11) - 1, (1u << 11) - 1, (1u << 10) - 1};
  uint32_t count[3][1 << 11] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < 3; ++d) ++count[d][(items[i] >> kShift[d]) & kMask[d]];
  }
  for (int d = 0; d < 3; ++d) {
    uint32_t* c = count[d];
    if (c[(items[0] >> kShift[d]) & kMask[d]] == static_cast<uint32_t>(n)) continue;
    uint32_t offset = 0;  // counts become each digit's first output slot
    for (uint32_t b = 0; b <= kMask[d]; ++b) {
      const uint32_t here = c[b];
      c[b] = offset;
      offset += here;
    }
    for (int64_t i = 0; i < n; ++i) tmp[c[(items[i] >> kShift[d]) & kMask[d]]++] = items[i];
    std::swap(items, tmp);
  }
  return items;
}

// ---------------------------------------------------------------------------------------------
// One row, from logits to the kept tokens in walk order with their weights.

// Scratch for one worker, for rows of up to V tokens (36 bytes per token).
struct Workspace {
  void reserve(int64_t vocab) {
    if (static_cast<int64_t>(scaled.size()) >= vocab) return;
    scaled.resize(vocab);
    keys.resize(vocab);
    index.resize(vocab);
    order.resize(vocab);
    order_tmp.resize(vocab);
    weight.resize(vocab);
  }
  std::vector<float> scaled;       // [V] logits / temperature
  std::vector<uint32_t> keys;      // [V] radix-selection candidates
  std::vector<int32_t> index;      // [V] survivors' token ids, then the kept tokens in walk order
  std::vector<uint64_t> order;     // [V] survivors' sort items
  std::vector<uint64_t> order_tmp; // [V] the radix sort's second buffer
  std::vector<double> weight;      // [V] kept tokens' weights, walk order
};

// The kept tokens of a row (pointing into a Workspace).
struct RowDistribution {
  const int32_t* token;  // [count] walk order
  const double* weight;  // [count] exp(s - s_max), non-increasing
  int64_t count;
  double total;          // sum of weight in walk order
};

RowDistribution row_distribution(const float* x, int64_t vocab, int64_t row,
                                 const SamplingParams& p, const RowKernels& kernels,
                                 Workspace& ws) {
  const float x_max = kernels.max(x, vocab);
  VQRT_CHECK(!std::isnan(x_max), "logits row " << row << " contains NaN");
  VQRT_CHECK(x_max != kInf, "logits row " << row
                                << " contains +inf (mask a token with -inf; +inf is rejected)");
  VQRT_CHECK(x_max != -kInf, "logits row " << row << " is all -inf: no token can be sampled");

  int32_t* token = ws.index.data();
  double* weight = ws.weight.data();
  if (p.greedy) {
    token[0] = static_cast<int32_t>(std::find(x, x + vocab, x_max) - x);
    weight[0] = 1.0;
    return {token, weight, 1, 1.0};
  }

  const float* s = x;
  if (p.temperature != 1.0f) {
    VQRT_CHECK(std::isfinite(x_max / p.temperature),
               "logits row " << row << ": max logit " << x_max << " / temperature "
                             << p.temperature << " overflows float32");
    kernels.divide(x, vocab, p.temperature, ws.scaled.data());
    s = ws.scaled.data();
  }

  // Survivors: s >= the k-th largest and s > -inf (-FLT_MAX is the smallest finite float).
  float threshold = -FLT_MAX;
  if (p.top_k < vocab) {
    threshold = std::max(kth_largest(s, vocab, p.top_k, ws.keys.data()), -FLT_MAX);
  }
  const int64_t survivors = kernels.filter_ge(s, vocab, threshold, token);

  // Walk order: one uint64 per survivor, high half = inverted order key (descending s), low
  // half = token id (ascending on ties), sorted ascending.
  uint64_t* order = ws.order.data();
  for (int64_t j = 0; j < survivors; ++j) {
    const uint64_t key = ~order_key(s[token[j]]);
    order[j] = (key << 32) | static_cast<uint32_t>(token[j]);
  }
  order = sort_walk_order(order, ws.order_tmp.data(), survivors);

  const double s_max = s[static_cast<uint32_t>(order[0])];
  double total = 0.0;
  for (int64_t j = 0; j < survivors; ++j) {
    token[j] = static_cast<int32_t>(static_cast<uint32_t>(order[j]));
    weight[j] = std::exp(static_cast<double>(s[token[j]]) - s_max);
    total += weight[j];
  }

  int64_t kept = survivors;
  if (p.top_p < 1.0f) {
    const double top_p = p.top_p;
    double before = 0.0;
    for (int64_t j = 0; j < survivors; ++j) {
      if (before > top_p) {
        kept = j;
        break;
      }
      before += weight[j] / total;
    }
    total = 0.0;
    for (int64_t j = 0; j < kept; ++j) total += weight[j];
  }
  return {token, weight, kept, total};
}

// Inverse-CDF draw over the kept tokens in walk order (rule 6 in sampling.h).
int32_t draw(const RowDistribution& d, double u) {
  const double target = u * d.total;
  double cum = 0.0;
  for (int64_t j = 0; j < d.count; ++j) {
    cum += d.weight[j];
    if (cum > target) return d.token[j];
  }
  int64_t last = d.count - 1;
  while (last > 0 && d.weight[last] == 0.0) --last;  // weight[0] == 1, so this stops
  return d.token[last];
}

// ---------------------------------------------------------------------------------------------

void check_arguments(const float* logits, int64_t batch, int64_t vocab, const SamplingParams& p) {
  VQRT_CHECK(batch >= 1, "batch must be >= 1, got " << batch);
  VQRT_CHECK(vocab >= 1 && vocab <= std::numeric_limits<int32_t>::max(),
             "vocab must be in [1, " << std::numeric_limits<int32_t>::max() << "], got " << vocab);
  VQRT_CHECK(logits != nullptr, "logits is null");
  VQRT_CHECK(p.top_k >= 1 && p.top_k <= vocab,
             "top_k must be in [1, V=" << vocab << "], got " << p.top_k);
  VQRT_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, "top_p must be in (0, 1], got " << p.top_p);
  VQRT_CHECK(p.greedy || (std::isfinite(p.temperature) && p.temperature > 0.0f),
             "temperature must be finite and > 0 (use greedy for argmax), got " << p.temperature);
  VQRT_CHECK(p.num_threads >= 0, "num_threads must be >= 0 (0 = automatic), got " << p.num_threads);
}

// Below this many logits per thread, starting a thread costs about as much as the work it takes.
constexpr int64_t kLogitsPerThread = int64_t(1) << 16;

int thread_count(int64_t batch, int64_t vocab, int requested) {
  int64_t n = requested;
  if (n == 0) {
    static const int64_t cores = std::max(1u, std::thread::hardware_concurrency());  // reads /sys
    n = std::min<int64_t>(cores, std::max<int64_t>(1, batch * vocab / kLogitsPerThread));
  }
  return static_cast<int>(std::min<int64_t>(n, batch));
}

// Workspaces outlive calls: freshly allocated scratch costs more in page faults than sampling a
// row of 16k logits. The pool grows to the most workers ever active at once and keeps them.
class WorkspacePool {
 public:
  static WorkspacePool& instance() {
    static WorkspacePool pool;
    return pool;
  }
  std::unique_ptr<Workspace> acquire(int64_t vocab) {
    std::unique_ptr<Workspace> ws;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        ws = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!ws) ws = std::make_unique<Workspace>();
    ws->reserve(vocab);
    return ws;
  }
  void release(std::vector<std::unique_ptr<Workspace>>& workspaces) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& ws : workspaces) free_.push_back(std::move(ws));
    workspaces.clear();
  }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

// Runs row_fn(row, workspace) for every row on `threads` workers pulling rows from a shared
// counter. Errors are collected and the one from the lowest failing row is rethrown after every
// worker has stopped, so which error is reported does not depend on the scheduling.
template <typename RowFn>
void for_each_row(int64_t batch, int64_t vocab, int threads, RowFn row_fn) {
  WorkspacePool& pool = WorkspacePool::instance();
  std::vector<std::unique_ptr<Workspace>> workspaces;
  struct Release {  // hands the workspaces back however this function exits
    WorkspacePool& pool;
    std::vector<std::unique_ptr<Workspace>>& workspaces;
    ~Release() { pool.release(workspaces); }
  } release{pool, workspaces};
  for (int t = 0; t < threads; ++t) workspaces.push_back(pool.acquire(vocab));

  std::atomic<int64_t> next_row{0};
  std::atomic<int64_t> failed_row{std::numeric_limits<int64_t>::max()};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&](Workspace& ws) {
    for (int64_t row = next_row.fetch_add(1); row < batch; row = next_row.fetch_add(1)) {
      if (row > failed_row.load()) continue;  // cannot change which error is reported
      try {
        row_fn(row, ws);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (row < failed_row.load()) {
          failed_row.store(row);
          failure = std::current_exception();
        }
      }
    }
  };

  // The calling thread is worker 0. A thread that cannot be started only means fewer workers:
  // rows are pulled from the shared counter, so the results are the same.
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (int t = 1; t < threads; ++t) {
    try {
      workers.emplace_back(worker, std::ref(*workspaces[t]));
    } catch (const std::exception&) {  // std::system_error, or bad_alloc for the thread's state
      break;
    }
  }
  worker(*workspaces[0]);
  for (std::thread& th : workers) th.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const RowKernels& row_kernels_generic() { return kGeneric; }

const RowKernels& row_kernels(CpuIsa isa) {
  if (isa == CpuIsa::generic) return kGeneric;
  VQRT_CHECK(cpu_isa_runs(isa), "this CPU cannot run the " << cpu_isa_name(isa) << " kernels");
  const RowKernels* kernels = row_kernels_simd(isa);
  VQRT_CHECK(kernels != nullptr, "vqrt was built without " << cpu_isa_name(isa) << " kernels");
  return *kernels;
}

// MSB-first radix selection over order keys in three passes of 11, 11 and 10 bits. Each pass
// histograms the candidates (the keys sharing the digits chosen so far), finds the digit holding
// the k-th largest by walking the bins from the top, and keeps only the candidates with that
// digit. After the last pass every candidate has the same key: the answer. O(n), no sort.
float kth_largest(const float* s, int64_t n, int64_t k, uint32_t* cand) {
  VQRT_CHECK(k >= 1 && k <= n, "k must be in [1, n=" << n << "], got " << k);
  constexpr int kShift[3] = {21, 10, 0};
  constexpr int kBits[3] = {11, 11, 10};
  int64_t count[1 << 11];
  int64_t n_cand = n;
  for (int pass = 0; pass < 3 && (pass == 0 || n_cand > 1); ++pass) {
    const int shift = kShift[pass];
    const uint32_t mask = (1u << kBits[pass]) - 1;
    std::fill(count, count + (1 << kBits[pass]), 0);
    if (pass == 0) {  // the first pass also writes the keys
      for (int64_t i = 0; i < n; ++i) {
        cand[i] = order_key(s[i]);
        ++count[cand[i] >> shift];
      }
    } else {
      for (int64_t i = 0; i < n_cand; ++i) ++count[(cand[i] >> shift) & mask];
    }
    uint32_t digit = mask;
    while (count[digit] < k) {  // the k-th largest is not in this bin: skip it
      k -= count[digit];
      --digit;
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n_cand; ++i) {
      if (((cand[i] >> shift) & mask) == digit) cand[kept++] = cand[i];
    }
    n_cand = kept;
  }
  return from_order_key(cand[0]);
}

void sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                   uint64_t step, const SamplingParams& params, int64_t* out,
                   const RowKernels& kernels) {
  check_arguments(logits, batch, vocab, params);
  VQRT_CHECK(seeds != nullptr, "seeds is null");
  VQRT_CHECK(out != nullptr, "out is null");
  std::vector<int64_t> tokens(batch);  // out is written only once every row has succeeded
  for_each_row(batch, vocab, thread_count(batch, vocab, params.num_threads),
               [&](int64_t row, Workspace& ws) {
                 const RowDistribution d =
                     row_distribution(logits + row * vocab, vocab, row, params, kernels, ws);
                 tokens[row] = draw(d, philox_uniform(seeds[row], step, 0));
               });
  std::copy(tokens.begin(), tokens.end(), out);
}

void sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                   uint64_t step, const SamplingParams& params, int64_t* out) {
  sample_logits(logits, batch, vocab, seeds, step, params, out, row_kernels(cpu_isa_active()));
}

void sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                    const SamplingParams& params, double* probs, const RowKernels& kernels) {
  check_arguments(logits, batch, vocab, params);
  VQRT_CHECK(probs != nullptr, "probs is null");
  std::vector<double> result(batch * vocab, 0.0);  // probs is written only on success
  for_each_row(batch, vocab, thread_count(batch, vocab, params.num_threads),
               [&](int64_t row, Workspace& ws) {
                 const RowDistribution d =
                     row_distribution(logits + row * vocab, vocab, row, params, kernels, ws);
                 double* p = result.data() + row * vocab;
                 for (int64_t j = 0; j < d.count; ++j) p[d.token[j]] = d.weight[j] / d.total;
               });
  std::copy(result.begin(), result.end(), probs);
}

void sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                    const SamplingParams& params, double* probs) {
  sampling_probs(logits, batch, vocab, params, probs, row_kernels(cpu_isa_active()));
}

}  // namespace vqrt
