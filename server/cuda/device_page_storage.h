// A session K/V page pool in one GPU's memory (session::PageStorage, server/session/
// page_storage.h): what the CUDA backend's SessionStore holds, one per device, and what its
// Attend launches read in place through page tables.
//
// Memory is allocated once, at start-up: the pool (num_pages x page_bytes of device memory) and a
// few staging lanes (pinned host + device memory and a stream each). WriteRows copies a call's
// rows into a lane's pinned block, uploads them with their slots in one copy and scatters them
// into their pages with the append kernel (kernels/cuda/paged_append.h); CopyPage copies on the
// device. WriteRows returns once its work is enqueued, without waiting for it: every reader of the
// pool on another stream first calls OrderReads(stream), which makes that stream wait for the
// writes issued before (the CUDA executor does for each paged batch, CopyPage for its copy). A
// decode step's append thus runs on the device while its Attend is staged, instead of costing a
// synchronization. CopyPage waits for its copy before returning. K/V bytes never come back to the
// host.
#ifndef ATTENTION_SERVER_CUDA_DEVICE_PAGE_STORAGE_H_
#define ATTENTION_SERVER_CUDA_DEVICE_PAGE_STORAGE_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/session/page_storage.h"

namespace attention::server {

struct DeviceStagingOptions {
  // Concurrent WriteRows / CopyPage calls; more wait for a free lane.
  int lanes = 4;
  // Pinned and device bytes per lane. A write of more rows than fit runs in several rounds.
  int64_t lane_bytes = 4 << 20;
};

class DevicePageStorage final : public session::PageStorage {
 public:
  // Allocates the pool and the lanes on `device`. RESOURCE_EXHAUSTED naming the flags when the
  // device or pinned memory is short; INVALID_ARGUMENT for options ValidatePoolOptions rejects.
  static absl::StatusOr<std::unique_ptr<DevicePageStorage>> Create(
      int device, const session::PoolOptions& options, const DeviceStagingOptions& staging = {});
  ~DevicePageStorage() override;

  DevicePageStorage(const DevicePageStorage&) = delete;
  DevicePageStorage& operator=(const DevicePageStorage&) = delete;

  int64_t page_bytes() const override { return page_bytes_; }
  int32_t num_pages() const override { return num_pages_; }
  void* base() const override { return base_; }
  bool host_resident() const override { return false; }
  absl::Status CopyPage(int32_t src, int32_t dst, int64_t half_bytes) override;
  absl::Status WriteRows(const session::PageLayout& layout, absl::Span<const int32_t> slots,
                         const void* k, const void* v) override;

  // Makes `stream` (on this storage's device) wait for every WriteRows issued before this call.
  absl::Status OrderReads(cudaStream_t stream);

  // WriteRows calls that wrote rows, since start (rows written in a batch's own stream by the CUDA
  // executor do not come here): for tests that check which way rows went.
  int64_t row_writes() const { return row_writes_.load(std::memory_order_relaxed); }

  int device() const { return device_; }

 private:
  struct Lane {
    cudaStream_t stream = nullptr;
    char* pinned = nullptr;
    char* device = nullptr;
    // Recorded after the lane's last write; `pending` (under mu_) while it may not have run yet.
    cudaEvent_t written = nullptr;
    bool pending = false;
  };
  // Holds a lane for one call and gives it back.
  class LaneHold;

  DevicePageStorage(int device, int64_t page_bytes, int32_t num_pages)
      : device_(device), page_bytes_(page_bytes), num_pages_(num_pages) {}
  absl::Status Init(const DeviceStagingOptions& staging);
  Lane* Acquire();
  void Release(Lane* lane);

  const int device_;
  const int64_t page_bytes_;
  const int32_t num_pages_;
  char* base_ = nullptr;
  int64_t lane_bytes_ = 0;
  std::vector<Lane> lanes_;

  std::atomic<int64_t> row_writes_{0};
  std::mutex mu_;
  std::condition_variable lane_free_;
  std::vector<Lane*> free_lanes_;
};

}  // namespace attention::server

#endif  // ATTENTION_SERVER_CUDA_DEVICE_PAGE_STORAGE_H_
