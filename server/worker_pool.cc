#include "server/worker_pool.h"

#include <algorithm>
#include <cstring>

#include "server/thread_name.h"

namespace attention::server {

WorkerPool::WorkerPool(int threads, const char* name) {
  for (int i = 0; i < threads; ++i) {
    workers_.emplace_back([this, name] {
      NameThisThread(name);
      Work();
    });
  }
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void WorkerPool::ParallelFor(size_t n, const std::function<void(size_t)>& task) {
  if (n == 0) return;
  if (n == 1 || workers_.empty()) {
    for (size_t i = 0; i < n; ++i) task(i);
    return;
  }
  Call call{&task, n, 0, n};
  {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back(&call);
  }
  cv_.notify_all();
  // The caller takes only its own call's tasks: it returns as soon as they are done.
  std::unique_lock<std::mutex> lock(mu_);
  while (call.next < call.count) {
    const size_t index = TakeTask(&call);
    lock.unlock();
    task(index);
    lock.lock();
    --call.remaining;
  }
  done_cv_.wait(lock, [&call] { return call.remaining == 0; });
}

size_t WorkerPool::TakeTask(Call* call) {
  const size_t index = call->next++;
  if (call->next == call->count) calls_.erase(std::find(calls_.begin(), calls_.end(), call));
  return index;
}

void WorkerPool::Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes) {
  // Copies above piece_bytes are split; consecutive smaller ones are grouped into tasks of up to
  // piece_bytes, so that a list of many small spans (a request's tensors in the 16 KiB pieces gRPC
  // received them in) costs a few tasks, not one task and one lock round per span.
  std::vector<HostCopy> pieces;
  std::vector<size_t> task_begin;
  int64_t task_bytes = piece_bytes;
  for (const HostCopy& c : copies) {
    for (int64_t done = 0; done < c.bytes; done += piece_bytes) {
      const HostCopy piece{c.dst + done, c.src + done, std::min(piece_bytes, c.bytes - done)};
      if (task_bytes + piece.bytes > piece_bytes) {
        task_begin.push_back(pieces.size());
        task_bytes = 0;
      }
      pieces.push_back(piece);
      task_bytes += piece.bytes;
    }
  }
  task_begin.push_back(pieces.size());
  ParallelFor(task_begin.size() - 1, [&pieces, &task_begin](size_t task) {
    for (size_t i = task_begin[task]; i < task_begin[task + 1]; ++i) {
      std::memcpy(pieces[i].dst, pieces[i].src, static_cast<size_t>(pieces[i].bytes));
    }
  });
}

void WorkerPool::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !calls_.empty(); });
    if (stopping_) return;
    Call* call = calls_.front();
    const size_t index = TakeTask(call);
    lock.unlock();
    (*call->task)(index);
    lock.lock();
    // The caller waits for this under mu_: `call` is alive until the count reaches 0.
    if (--call->remaining == 0) done_cv_.notify_all();
  }
}

}  // namespace attention::server
