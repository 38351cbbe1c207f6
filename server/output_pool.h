// Answers' output buffers, kept for the next answers instead of being freed.
//
// An answer's o is a few hundred KiB to tens of MiB. Allocated fresh for every answer, its pages
// are faulted in and zeroed by std::string::resize before the executor writes the result over
// them: on the H200 host this was most of the executor's host work for small requests. The pool
// keeps the buffers that gRPC has finished sending (SerializeResponseWithoutCopy hands them back)
// and gives them to later answers of the same or a smaller size, already resident; resizing one
// to the size it already has writes nothing.
#ifndef ATTENTION_SERVER_OUTPUT_POOL_H_
#define ATTENTION_SERVER_OUTPUT_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace attention::server {

class OutputPool {
 public:
  // The one pool of the process (answers are released on gRPC's threads, after the executor
  // that sized them may be gone). Keeps nothing until SetCapacity.
  static OutputPool& Process();

  explicit OutputPool(int64_t capacity_bytes = 0) : capacity_bytes_(capacity_bytes) {}
  OutputPool(const OutputPool&) = delete;
  OutputPool& operator=(const OutputPool&) = delete;

  // Most bytes of buffers kept at once (by capacity); 0 keeps none. Buffers above the new bound
  // are freed.
  void SetCapacity(int64_t bytes);

  // A string of `bytes` bytes with unspecified contents, for the caller to overwrite: a kept
  // buffer whose capacity is at least `bytes` and at most twice it (the smallest such), or a new
  // one.
  std::string Take(size_t bytes);

  // Keeps `buffer` for a later Take if it is at least kMinKeptBytes and fits under the capacity;
  // frees it otherwise.
  void Give(std::string buffer);

  int64_t kept_bytes() const;
  int64_t reused() const;  // Takes answered from kept buffers, since start

  // Smaller buffers cost little to allocate; the pool keeps only larger ones.
  static constexpr size_t kMinKeptBytes = 64 * 1024;

 private:
  void TrimLocked();

  mutable std::mutex mu_;
  int64_t capacity_bytes_;
  int64_t kept_bytes_ = 0;
  int64_t reused_ = 0;
  std::multimap<size_t, std::string> kept_;  // by capacity
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_OUTPUT_POOL_H_
