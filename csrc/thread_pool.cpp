#include "thread_pool.h"

#include <chrono>

#include "errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace vqrt {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How long a waiting thread spins before it sleeps. Longer than the gap between two products of
// a decode step on a free core (the caller's LayerNorm: a microsecond or two), far shorter than
// a scheduler time slice (milliseconds), which is what a thread waiting for a descheduled peer
// would otherwise burn. Measured: BENCHMARKS.md, "Native decoder threads".
constexpr std::chrono::microseconds kSpin{20};

// claim_ = tag << 40 | chunks << 20 | next.
constexpr int kChunkBits = 20;
constexpr uint64_t kChunkMask = (uint64_t{1} << kChunkBits) - 1;
inline uint64_t tag_of(uint64_t claim) { return claim >> (2 * kChunkBits); }
inline int64_t chunks_of(uint64_t claim) {
  return static_cast<int64_t>((claim >> kChunkBits) & kChunkMask);
}
inline int64_t next_of(uint64_t claim) { return static_cast<int64_t>(claim & kChunkMask); }

}  // namespace

// The sleep / wake handshake is the store-buffer pattern on sequentially consistent atomics:
// a waiter increments `count` and then reads the state in ready(); a waker changes the state and
// then reads `count`. One of the two sees the other's write, so a waiter never sleeps through
// the change that makes it ready (and the mutex orders the final check against notify_all).
template <typename Ready>
void ThreadPool::wait(Sleepers& sleepers, Ready ready) {
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 1; !ready(); ++i) {
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
      std::unique_lock<std::mutex> lock(sleepers.mutex);
      sleepers.count.fetch_add(1);
      sleepers.wake.wait(lock, ready);
      sleepers.count.fetch_sub(1);
      return;
    }
  }
}

void ThreadPool::wake(Sleepers& sleepers) {
  if (sleepers.count.load() == 0) return;
  std::lock_guard<std::mutex> lock(sleepers.mutex);
  sleepers.wake.notify_all();
}

ThreadPool::ThreadPool(int threads) {
  for (int t = 1; t < threads; ++t) {
    try {
      workers_.emplace_back(&ThreadPool::worker, this, t);
    } catch (const std::exception&) {  // fewer workers: more chunks each, same results
      break;
    }
  }
  size_ = static_cast<int>(workers_.size()) + 1;
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  wake(idle_workers_);
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::run_erased(int64_t chunks, ChunkFn fn, void* context) {
  VQRT_CHECK(chunks >= 0 && chunks <= kMaxChunks,
             "chunks must be in [0, " << kMaxChunks << "], got " << chunks);
  if (chunks <= 1 || size_ == 1) {
    for (int64_t c = 0; c < chunks; ++c) fn(context, 0, c);
    return;
  }
  // Every chunk of the previous call has returned, so no worker reads these until the new
  // claim_ (stored after them) tells it about this call.
  fn_.store(fn, std::memory_order_relaxed);
  context_.store(context, std::memory_order_relaxed);
  finished_.store(0);
  const uint64_t tag = (tag_of(claim_.load()) + 1) & ((uint64_t{1} << 24) - 1);
  claim_.store(tag << (2 * kChunkBits) | static_cast<uint64_t>(chunks) << kChunkBits);
  wake(idle_workers_);
  work(0);
  wait(caller_, [&] { return finished_.load() == chunks; });
}

uint64_t ThreadPool::work(int thread) {
  uint64_t claim = claim_.load();
  for (;;) {
    const int64_t chunks = chunks_of(claim), next = next_of(claim);
    if (next >= chunks) return tag_of(claim);
    const ChunkFn fn = fn_.load(std::memory_order_relaxed);
    void* context = context_.load(std::memory_order_relaxed);
    // Succeeds only if claim_ is unchanged: this call still has chunk `next` unclaimed, so it
    // has not finished and fn / context (read above, after claim) are its own.
    if (!claim_.compare_exchange_weak(claim, claim + 1)) continue;
    fn(context, thread, next);
    if (finished_.fetch_add(1) + 1 == chunks) wake(caller_);
    claim = claim_.load();
  }
}

void ThreadPool::worker(int thread) {
  uint64_t done_tag = tag_of(claim_.load());  // the call whose chunks are all claimed
  for (;;) {
    wait(idle_workers_, [&] { return stop_.load() || tag_of(claim_.load()) != done_tag; });
    if (stop_.load()) return;
    done_tag = work(thread);
  }
}

}  // namespace vqrt
