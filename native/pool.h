// A tiny fork-join pool: run(items, fn) calls fn(item, thread) for item in [0, items) on the calling
// thread and the workers, items claimed one at a time from an atomic counter (no static split: a
// worker the OS deschedules delays the call by at most the item it holds, the caller takes the rest).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

class Pool {
 public:
  ~Pool();
  // Total threads including the caller (>= 1). Stops and restarts the workers.
  void setThreads(int n);
  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  void run(int items, const std::function<void(int item, int thread)>& fn);

 private:
  void stop();
  void workerLoop(int index);
  void claim(const std::function<void(int, int)>& job, int items, int thread);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  const std::function<void(int, int)>* job_ = nullptr;
  unsigned long generation_ = 0;
  bool quit_ = false;
  int items_ = 0;
  std::atomic<int> next_{0};
  std::atomic<int> finished_{0};
  int busyWorkers_ = 0;
};
