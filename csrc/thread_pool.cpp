#include "thread_pool.h"

#include <chrono>

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

// Spins until done() for about `spin_for`, then yields the core between checks; returns false if
// it gave up after `give_up_after` (callers then sleep), true once done().
template <typename Done>
bool wait_until(Done done, std::chrono::microseconds spin_for,
                std::chrono::microseconds give_up_after) {
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 1;; ++i) {
    if (done()) return true;
    if (i % 64 != 0) {
      cpu_relax();
      continue;
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > give_up_after) return false;
    if (waited > spin_for) std::this_thread::yield();
  }
}

constexpr std::chrono::microseconds kSpin{200};
constexpr std::chrono::microseconds kForever = std::chrono::hours(24 * 365);
constexpr std::chrono::microseconds kIdleBeforeSleep{2000};  // workers between runs

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int t = 1; t < threads; ++t) {
    try {
      workers_.emplace_back(&ThreadPool::worker, this, t);
    } catch (const std::exception&) {  // fewer workers: each thread's share grows, same results
      break;
    }
  }
  size_ = static_cast<int>(workers_.size()) + 1;
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::run(const std::function<void(int)>& fn) {
  if (size_ == 1) {
    fn(0);
    return;
  }
  task_ = &fn;
  finished_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);  // a worker about to sleep sees the bump
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  fn(0);
  const int others = size_ - 1;
  wait_until([&] { return finished_.load(std::memory_order_acquire) == others; }, kSpin, kForever);
}

void ThreadPool::barrier() {
  const uint32_t phase = barrier_phase_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
    arrived_.store(0, std::memory_order_relaxed);
    barrier_phase_.store(phase + 1, std::memory_order_release);
    return;
  }
  wait_until([&] { return barrier_phase_.load(std::memory_order_acquire) != phase; }, kSpin,
             kForever);
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto fresh = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    if (!wait_until(fresh, kSpin, kIdleBeforeSleep)) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      wake_.wait(lock, fresh);
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    (*task_)(index);
    finished_.fetch_add(1, std::memory_order_acq_rel);
  }
}

}  // namespace vqrt
