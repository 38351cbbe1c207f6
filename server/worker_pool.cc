#include "server/worker_pool.h"

#include <algorithm>
#include <cstring>

namespace attention::server {

void WorkerPool::Copy(const std::vector<HostCopy>& copies, int64_t piece_bytes) {
  std::vector<HostCopy> pieces;
  for (const HostCopy& c : copies) {
    for (int64_t done = 0; done < c.bytes; done += piece_bytes) {
      pieces.push_back({c.dst + done, c.src + done, std::min(piece_bytes, c.bytes - done)});
    }
  }
  Run(pieces.size(), [&pieces](size_t i) {
    std::memcpy(pieces[i].dst, pieces[i].src, static_cast<size_t>(pieces[i].bytes));
  });
}

}  // namespace attention::server
