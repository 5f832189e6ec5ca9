// A fixed team of threads kept alive between calls, for work cut into independent chunks.
//
// run(chunks, fn) calls fn(thread, chunk) once for every chunk in [0, chunks) and returns when
// every call has returned. Threads claim chunks one at a time from a shared counter, the caller
// (thread 0) included, so a worker that the OS has descheduled (another process wants the core)
// delays a call by at most the one chunk it holds: the other threads take the rest. A single
// chunk runs on the calling thread with no hand-off at all.
//
// Waiting threads (workers for the next call, the caller for chunks still running elsewhere)
// spin for a few microseconds with a pause instruction, which catches the next matrix product
// of a decode step without a system call, then sleep on a condition variable, so a waiting
// thread never burns the time slice of a peer that is not running, and an idle pool costs
// nothing. fn must not throw: callers check their arguments before run().
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace vqrt {

class ThreadPool {
 public:
  // threads >= 1, the caller included; fewer start if the system refuses more.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Calls fn(int thread, int64_t chunk) for chunk = 0..chunks-1, chunks <= kMaxChunks; `thread`
  // in [0, size()) indexes per-thread scratch. One run() at a time (the pool has one owner).
  template <typename Fn>
  void run(int64_t chunks, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run_erased(chunks, [](void* f, int thread, int64_t chunk) {
      (*static_cast<F*>(f))(thread, chunk);
    }, const_cast<void*>(static_cast<const void*>(&fn)));
  }

  static constexpr int64_t kMaxChunks = (int64_t{1} << 20) - 1;

 private:
  using ChunkFn = void (*)(void* context, int thread, int64_t chunk);

  // Threads sleeping on one condition variable, counted so that a waker skips the system call
  // when nobody sleeps.
  struct Sleepers {
    std::mutex mutex;
    std::condition_variable wake;
    std::atomic<int> count{0};
  };

  void run_erased(int64_t chunks, ChunkFn fn, void* context);
  // Claims and runs chunks of the current call until none is left; returns that call's tag.
  uint64_t work(int thread);
  void worker(int thread);
  template <typename Ready>
  static void wait(Sleepers& sleepers, Ready ready);
  static void wake(Sleepers& sleepers);

  int size_ = 1;
  std::vector<std::thread> workers_;
  // The current call: `claim_` packs its tag (a counter bumped per call; 24 bits), its chunk
  // count and the next unclaimed chunk (20 bits each), so one compare-exchange both claims a
  // chunk and proves the call is still the one fn_ / context_ were read for.
  std::atomic<uint64_t> claim_{0};
  std::atomic<ChunkFn> fn_{nullptr};
  std::atomic<void*> context_{nullptr};
  std::atomic<int64_t> finished_{0};  // chunks of the current call that have returned
  std::atomic<bool> stop_{false};
  Sleepers idle_workers_;  // workers waiting for a call
  Sleepers caller_;        // the caller waiting for the last chunks
};

}  // namespace vqrt
