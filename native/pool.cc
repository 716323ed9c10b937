#include "pool.h"

Pool::~Pool() { stop(); }

void Pool::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
  quit_ = false;
}

void Pool::setThreads(int n) {
  stop();
  for (int i = 1; i < n; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

void Pool::claim(const std::function<void(int, int)>& job, int items, int thread) {
  for (int item = next_.fetch_add(1); item < items; item = next_.fetch_add(1)) {
    job(item, thread);
    finished_.fetch_add(1, std::memory_order_release);
  }
}

void Pool::workerLoop(int index) {
  unsigned long seen = 0;
  for (;;) {
    const std::function<void(int, int)>* job;
    int items;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      // Read under the lock with busy++: run() does not start another call while a worker is busy.
      busyWorkers_++;
      job = job_;
      items = items_;
    }
    if (job) claim(*job, items, index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busyWorkers_--;
    }
    idle_.notify_all();
  }
}

void Pool::run(int items, const std::function<void(int, int)>& fn) {
  if (items <= 0) return;
  if (workers_.empty() || items == 1) {
    for (int i = 0; i < items; i++) fn(i, 0);
    return;
  }
  {
    std::unique_lock<std::mutex> lock(mutex_);
    // A worker that woke late for the previous call may still be leaving claim().
    idle_.wait(lock, [&] { return busyWorkers_ == 0; });
    job_ = &fn;
    items_ = items;
    next_.store(0);
    finished_.store(0);
    generation_++;
  }
  wake_.notify_all();
  claim(fn, items, 0);
  std::unique_lock<std::mutex> lock(mutex_);
  // Every item is done and no worker is inside claim() for this call (it may still wake later and
  // find the counter exhausted: job_ is cleared so it does nothing).
  idle_.wait(lock, [&] { return finished_.load(std::memory_order_acquire) == items && busyWorkers_ == 0; });
  job_ = nullptr;
}
