// The answer budget (--max_pending_answer_bytes): bytes of answers accepted for computing and not
// yet handed to the transport, across every call of both services. A request whose answer would
// pass the bound is refused with RESOURCE_EXHAUSTED, and a stream that hit it stops reading until
// one of its answers is written, so that clients who do not read their answers hold a bounded
// amount of the server's memory.
#ifndef ATTENTION_SERVER_ANSWER_BUDGET_H_
#define ATTENTION_SERVER_ANSWER_BUDGET_H_

#include <atomic>
#include <cstdint>

namespace attention::server {

class AnswerBudget {
 public:
  explicit AnswerBudget(int64_t limit) : limit_(limit) {}
  AnswerBudget(const AnswerBudget&) = delete;
  AnswerBudget& operator=(const AnswerBudget&) = delete;

  // Reserves `bytes` and returns true when they fit under the limit, else false and nothing is
  // reserved. Thread-safe.
  bool Reserve(int64_t bytes) {
    int64_t held = pending_.load(std::memory_order_relaxed);
    do {
      if (bytes > limit_ - held) return false;
    } while (!pending_.compare_exchange_weak(held, held + bytes, std::memory_order_relaxed));
    return true;
  }
  // Gives back what a reservation took.
  void Release(int64_t bytes) {
    if (bytes != 0) pending_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  int64_t pending() const { return pending_.load(std::memory_order_relaxed); }
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  std::atomic<int64_t> pending_{0};
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_ANSWER_BUDGET_H_
