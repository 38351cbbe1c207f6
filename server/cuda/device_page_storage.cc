#include "server/cuda/device_page_storage.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/paged_append.h"

namespace attention::server {
namespace {

constexpr int64_t kAlignment = 256;

int64_t AlignUp(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

absl::Status CudaError(cudaError_t error, const char* what, int device) {
  return absl::InternalError(
      absl::StrCat("K/V page pool on cuda:", device, ": ", what, ": ", cudaGetErrorString(error)));
}

}  // namespace

class DevicePageStorage::LaneHold {
 public:
  explicit LaneHold(DevicePageStorage* storage) : storage_(storage), lane_(storage->Acquire()) {}
  ~LaneHold() { storage_->Release(lane_); }
  LaneHold(const LaneHold&) = delete;
  LaneHold& operator=(const LaneHold&) = delete;
  Lane* operator->() const { return lane_; }

 private:
  DevicePageStorage* const storage_;
  Lane* const lane_;
};

absl::StatusOr<std::unique_ptr<DevicePageStorage>> DevicePageStorage::Create(
    int device, const session::PoolOptions& options, const DeviceStagingOptions& staging) {
  if (absl::Status valid = session::ValidatePoolOptions(options); !valid.ok()) return valid;
  if (staging.lanes < 1 || staging.lane_bytes < 4 * kAlignment) {
    return absl::InvalidArgumentError(absl::StrCat("staging: lanes (", staging.lanes,
                                                   ") must be >= 1 and lane_bytes (",
                                                   staging.lane_bytes, ") >= ", 4 * kAlignment));
  }
  std::unique_ptr<DevicePageStorage> storage(
      new DevicePageStorage(device, options.page_bytes, static_cast<int32_t>(options.num_pages)));
  if (absl::Status s = storage->Init(staging); !s.ok()) return s;
  return storage;
}

absl::Status DevicePageStorage::Init(const DeviceStagingOptions& staging) {
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError(e, "cudaSetDevice", device_);
  }
  const int64_t pool_bytes = int64_t{num_pages_} * page_bytes_;
  void* base = nullptr;
  if (cudaError_t e = cudaMalloc(&base, static_cast<size_t>(pool_bytes)); e != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return absl::ResourceExhaustedError(absl::StrCat(
        "--session_pages x --session_page_bytes: cannot allocate ", pool_bytes,
        " bytes of device memory on cuda:", device_, " (", cudaGetErrorString(e), ")"));
  }
  base_ = static_cast<char*>(base);
  lane_bytes_ = staging.lane_bytes;
  lanes_.resize(static_cast<size_t>(staging.lanes));
  for (Lane& lane : lanes_) {
    void* pinned = nullptr;
    void* device = nullptr;
    if (cudaError_t e = cudaMallocHost(&pinned, static_cast<size_t>(lane_bytes_));
        e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("K/V page pool staging: cannot allocate ",
                                                       lane_bytes_, " bytes of pinned memory"));
    }
    lane.pinned = static_cast<char*>(pinned);
    if (cudaError_t e = cudaMalloc(&device, static_cast<size_t>(lane_bytes_)); e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("K/V page pool staging: cannot allocate ",
                                                       lane_bytes_, " bytes on cuda:", device_));
    }
    lane.device = static_cast<char*>(device);
    if (cudaError_t e = cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking);
        e != cudaSuccess) {
      return CudaError(e, "cudaStreamCreate", device_);
    }
    if (cudaError_t e = cudaEventCreateWithFlags(&lane.written, cudaEventDisableTiming);
        e != cudaSuccess) {
      return CudaError(e, "cudaEventCreate", device_);
    }
    free_lanes_.push_back(&lane);
  }
  return absl::OkStatus();
}

DevicePageStorage::~DevicePageStorage() {
  cudaSetDevice(device_);
  for (Lane& lane : lanes_) {
    if (lane.written != nullptr) cudaEventDestroy(lane.written);
    if (lane.stream != nullptr) cudaStreamDestroy(lane.stream);
    if (lane.device != nullptr) cudaFree(lane.device);
    if (lane.pinned != nullptr) cudaFreeHost(lane.pinned);
  }
  if (base_ != nullptr) cudaFree(base_);
}

DevicePageStorage::Lane* DevicePageStorage::Acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  lane_free_.wait(lock, [this] { return !free_lanes_.empty(); });
  Lane* lane = free_lanes_.back();
  free_lanes_.pop_back();
  return lane;
}

void DevicePageStorage::Release(Lane* lane) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_lanes_.push_back(lane);
  }
  lane_free_.notify_one();
}

absl::Status DevicePageStorage::CopyPage(int32_t src, int32_t dst, int64_t half_bytes) {
  if (absl::Status s = session::CheckCopyPage(*this, src, dst, half_bytes); !s.ok()) return s;
  if (src == dst || half_bytes == 0) return absl::OkStatus();
  LaneHold lane(this);
  cudaSetDevice(device_);
  // The source page's rows may still be in flight on another lane.
  if (absl::Status s = OrderReads(lane->stream); !s.ok()) return s;
  const char* from = base_ + int64_t{src} * page_bytes_;
  char* to = base_ + int64_t{dst} * page_bytes_;
  const size_t half = static_cast<size_t>(page_bytes_ / 2);
  for (size_t offset : {size_t{0}, half}) {
    if (cudaError_t e = cudaMemcpyAsync(to + offset, from + offset, static_cast<size_t>(half_bytes),
                                        cudaMemcpyDeviceToDevice, lane->stream);
        e != cudaSuccess) {
      return CudaError(e, "page copy", device_);
    }
  }
  if (cudaError_t e = cudaStreamSynchronize(lane->stream); e != cudaSuccess) {
    return CudaError(e, "page copy", device_);
  }
  return absl::OkStatus();
}

absl::Status DevicePageStorage::WriteRows(const session::PageLayout& layout,
                                          absl::Span<const int32_t> slots, const void* k,
                                          const void* v) {
  if (absl::Status s = session::CheckWriteRows(*this, layout, slots); !s.ok()) return s;
  if (slots.empty()) return absl::OkStatus();
  row_writes_.fetch_add(1, std::memory_order_relaxed);
  const int64_t row_bytes = layout.row_bytes;
  // One round: k rows | v rows | slots, each 256-byte aligned, within a lane.
  const int64_t per_row = 2 * row_bytes + static_cast<int64_t>(sizeof(int32_t));
  const int64_t rows_per_round = std::max<int64_t>(1, (lane_bytes_ - 3 * kAlignment) / per_row);
  if (AlignUp(row_bytes) * 2 + AlignUp(sizeof(int32_t)) > lane_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("WriteRows: one row of ", row_bytes,
                                                   " bytes does not fit a staging lane of ",
                                                   lane_bytes_, " bytes"));
  }
  const int elem = DTypeSize(layout.dtype);
  const auto* k_rows = static_cast<const char*>(k);
  const auto* v_rows = static_cast<const char*>(v);
  LaneHold lane(this);
  cudaSetDevice(device_);
  // The lane's pinned block may still be read by its previous write's upload.
  if (cudaError_t e = cudaEventSynchronize(lane->written); e != cudaSuccess) {
    return CudaError(e, "row append", device_);
  }
  for (int64_t first = 0; first < static_cast<int64_t>(slots.size()); first += rows_per_round) {
    const int64_t n = std::min<int64_t>(rows_per_round, static_cast<int64_t>(slots.size()) - first);
    const int64_t k_off = 0;
    const int64_t v_off = AlignUp(n * row_bytes);
    const int64_t s_off = v_off + AlignUp(n * row_bytes);
    const int64_t bytes = s_off + n * static_cast<int64_t>(sizeof(int32_t));
    std::memcpy(lane->pinned + k_off, k_rows + first * row_bytes,
                static_cast<size_t>(n * row_bytes));
    std::memcpy(lane->pinned + v_off, v_rows + first * row_bytes,
                static_cast<size_t>(n * row_bytes));
    std::memcpy(lane->pinned + s_off, slots.data() + first,
                static_cast<size_t>(n) * sizeof(int32_t));
    if (cudaError_t e = cudaMemcpyAsync(lane->device, lane->pinned, static_cast<size_t>(bytes),
                                        cudaMemcpyHostToDevice, lane->stream);
        e != cudaSuccess) {
      return CudaError(e, "row upload", device_);
    }
    cuda::PagedAppendParams p;
    p.dtype = layout.dtype;
    p.num_tokens = static_cast<int>(n);
    p.kv_heads = layout.kv_heads;
    p.head_dim = layout.head_dim;
    p.k_new = lane->device + k_off;
    p.v_new = lane->device + v_off;
    p.new_row_stride = int64_t{layout.kv_heads} * layout.head_dim;
    p.new_head_stride = layout.head_dim;
    p.k_pool = base_;
    p.v_pool = base_ + layout.v_offset();
    p.pool_page_stride = page_bytes_ / elem;
    p.pool_row_stride = p.new_row_stride;
    p.pool_head_stride = layout.head_dim;
    p.page_size = layout.page_size;
    p.slots = reinterpret_cast<const int32_t*>(lane->device + s_off);
    if (absl::Status s = cuda::RunPagedAppend(p, lane->stream); !s.ok()) return s;
    if (first + n < static_cast<int64_t>(slots.size())) {
      // The lane's pinned block is reused by the next round: wait for this one.
      if (cudaError_t e = cudaStreamSynchronize(lane->stream); e != cudaSuccess) {
        return CudaError(e, "row append", device_);
      }
    }
  }
  // The last round is left running: readers order after it (OrderReads).
  std::lock_guard<std::mutex> lock(mu_);
  if (cudaError_t e = cudaEventRecord(lane->written, lane->stream); e != cudaSuccess) {
    cudaStreamSynchronize(lane->stream);
    return CudaError(e, "row append", device_);
  }
  lane->pending = true;
  return absl::OkStatus();
}

absl::Status DevicePageStorage::OrderReads(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Lane& lane : lanes_) {
    if (!lane.pending) continue;
    const cudaError_t done = cudaEventQuery(lane.written);
    if (done == cudaSuccess) {
      lane.pending = false;
      continue;
    }
    if (done != cudaErrorNotReady) return CudaError(done, "row append", device_);
    if (cudaError_t e = cudaStreamWaitEvent(stream, lane.written, 0); e != cudaSuccess) {
      return CudaError(e, "ordering reads after row appends", device_);
    }
  }
  return absl::OkStatus();
}

}  // namespace attention::server
