// The thread pool (csrc/thread_pool.h): every chunk runs exactly once per call, on a valid
// thread index, for any chunk and thread count, over many back-to-back calls (the decode step's
// pattern) and after the workers have gone to sleep.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "check.h"
#include "errors.h"
#include "thread_pool.h"

using vqrt::ThreadPool;

namespace {

// Runs `calls` calls of `chunks` chunks; checks each chunk ran once and threads were in range.
void check_calls(ThreadPool& pool, int64_t chunks, int calls) {
  std::vector<std::atomic<int>> runs(chunks);
  std::atomic<int> bad_thread{0};
  for (int call = 0; call < calls; ++call) {
    for (auto& r : runs) r.store(0);
    pool.run(chunks, [&](int thread, int64_t chunk) {
      if (thread < 0 || thread >= pool.size()) bad_thread.fetch_add(1);
      runs[chunk].fetch_add(1);
    });
    for (int64_t c = 0; c < chunks; ++c) CHECK_EQ(runs[c].load(), 1);
  }
  CHECK_EQ(bad_thread.load(), 0);
}

}  // namespace

TEST(every_chunk_runs_once) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK_EQ(pool.size(), threads);
    for (int64_t chunks : {0, 1, 2, 3, 7, 64}) check_calls(pool, chunks, 200);
  }
}

TEST(calls_after_the_workers_sleep) {
  ThreadPool pool(3);
  for (int i = 0; i < 3; ++i) {
    check_calls(pool, 9, 5);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // far past the spin
  }
}

TEST(chunks_hold_per_thread_scratch) {
  // Two chunks never run on one thread index at once: per-thread scratch needs no lock.
  ThreadPool pool(4);
  std::vector<std::atomic<int>> busy(pool.size());
  std::atomic<int> overlaps{0};
  for (int call = 0; call < 100; ++call) {
    pool.run(32, [&](int thread, int64_t) {
      if (busy[thread].fetch_add(1) != 0) overlaps.fetch_add(1);
      std::this_thread::yield();
      busy[thread].fetch_sub(1);
    });
  }
  CHECK_EQ(overlaps.load(), 0);
}

TEST(chunk_count_is_checked) {
  ThreadPool pool(2);
  CHECK_THROWS(pool.run(-1, [](int, int64_t) {}), vqrt::Error, "chunks must be in [0, ");
  CHECK_THROWS(pool.run(ThreadPool::kMaxChunks + 1, [](int, int64_t) {}), vqrt::Error,
               "got 1048576");
}

int main() { return check::run_tests(); }
