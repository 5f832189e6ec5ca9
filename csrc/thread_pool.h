// A fixed team of threads kept alive between calls, for work split into one share per thread.
//
// run(fn) calls fn(t) on threads t = 0..size()-1 (the caller is thread 0) and returns when every
// call has returned; inside fn, barrier() waits until all threads reach it. Waiting threads spin
// (a decode step's barriers are microseconds apart) and fall back to yielding, then, between
// calls, to sleeping, so an idle pool costs nothing. fn must not throw: callers check their
// arguments before run().
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
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
  void run(const std::function<void(int)>& fn);
  void barrier();

 private:
  void worker(int index);

  int size_ = 1;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // bumped once per run(); workers wait for a change
  std::atomic<int> finished_{0};         // workers done with the current run
  std::atomic<int> arrived_{0};          // threads at the current barrier
  std::atomic<uint32_t> barrier_phase_{0};
  std::atomic<bool> stop_{false};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
};

}  // namespace vqrt
