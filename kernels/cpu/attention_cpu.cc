#include "kernels/cpu/attention_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#if defined(ATTN_CPU_X86_VARIANTS)
#include <cpuid.h>
#endif
#include <sched.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/tile_kernel.h"
#include "kernels/dtype.h"

namespace attention::cpu {
namespace {

// Default tile: Br = 128 query rows (64 for requests with few work items), Bc = 64 key rows,
// float32 K/V copied into contiguous tiles. Measured with bench/cpu/attention_cpu_bench on the
// grid of bench/results/cpu_2026-11-22.md (batch 1, 16 heads, seqlen 1k/4k, head_dim 64/128,
// causal on/off, fp32), 16 threads of a Sapphire Rapids Xeon (AVX-512), median GFLOP/s per
// cell. That machine's run-to-run noise reaches 22% per cell, so a choice counts as measured
// only where both runs agree:
//   Br = 128 vs 64: first run (before the per-column-block key ranges) +10..20% non-causal 4k,
//     -20% causal 1k; second run (with them) better in 7 of 8 cells against one Br = 64 sample
//     and 6 of 8 against another (+11..32% at 4k; worse only for d=128 non-causal 1k, 1126
//     against 1212 / 1247, and mixed for d=64 causal 1k). Each key tile is loaded once per Br
//     query rows, so Br = 128 halves the K/V traffic, which is what bounds 16 threads there.
//     Requests with fewer than kMinItemsPerThread work items per thread at Br = 128 use 64, to
//     keep every thread busy.
//   Bc = 64 vs 128 and copying float32 K/V vs reading it in place: the two runs disagree
//     (Bc = 64 won 6 of 8 cells in the first run and lost 6 of 8 in the second; the copy won 7
//     of 8, then lost 6 of 8), so both are within this machine's noise. Kept: Bc = 64 (less
//     diagonal work under causal masking, S tile 32 KiB) and the copy (rows of a [seqlen,
//     16 heads, d] tensor lie a multiple of 4 KiB apart and share L1 sets when read in place;
//     16-bit inputs go through the same path).
// On the 2-core AMD EPYC (Zen 3, AVX2) these choices are within the noise of each other.
constexpr int kLargeBlockQ = 128;
constexpr int kSmallBlockQ = 64;
constexpr int kMinItemsPerThread = 4;
constexpr int kDefaultBlockK = 64;

int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }

#if defined(ATTN_CPU_X86_VARIANTS)
// XCR0: which register states the OS saves (bit 1 SSE, 2 AVX, 5-7 AVX-512).
uint64_t ReadXcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}
#endif

CpuIsa DetectIsa() {
#if defined(ATTN_CPU_X86_VARIANTS)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return CpuIsa::kGeneric;
  const bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28),
             f16c = ecx & (1u << 29);
  if (!(fma && osxsave && avx && f16c)) return CpuIsa::kGeneric;
  const uint64_t xcr0 = ReadXcr0();
  if ((xcr0 & 0x6) != 0x6) return CpuIsa::kGeneric;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return CpuIsa::kGeneric;
  if (!(ebx & (1u << 5))) return CpuIsa::kGeneric;                            // AVX2
  const uint32_t avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F DQ BW VL
  if ((ebx & avx512) == avx512 && (xcr0 & 0xe6) == 0xe6) return CpuIsa::kAvx512;
  return CpuIsa::kAvx2;
#else
  return CpuIsa::kGeneric;
#endif
}

TileKernelFn KernelFor(CpuIsa isa) {
  switch (isa) {
#if defined(ATTN_CPU_X86_VARIANTS)
    case CpuIsa::kAvx512:
      return &avx512::ProcessQueryTile;
    case CpuIsa::kAvx2:
      return &avx2::ProcessQueryTile;
#endif
    default:
      return &generic::ProcessQueryTile;
  }
}

int DefaultThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// One thread's scratch, grown on demand and kept for the thread's lifetime (the pool's workers
// and the server's executor threads are long-lived), so Run() allocates nothing per tile.
class ThreadScratch {
 public:
  ~ThreadScratch() { std::free(data_); }
  float* Reserve(int64_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = static_cast<size_t>(RoundUp16(floats)) * sizeof(float);
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      capacity_ = data_ != nullptr ? floats : 0;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  int64_t capacity_ = 0;
};
thread_local ThreadScratch tls_scratch;

// One sequence of the batch and the first work item of it.
struct Sequence {
  int64_t q_row0, k_row0;
  int len_q, len_k;
  int tiles;           // query tiles per head
  int64_t first_item;  // items of this sequence: [first_item, first_item + q_heads * tiles)
};

absl::Status CheckCuSeqlens(const int32_t* cu, const char* name, int batch, int64_t total,
                            int max_len) {
  if (cu[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.", name, "[0] must be 0, got ", cu[0]));
  }
  for (int b = 0; b < batch; ++b) {
    const int64_t len = int64_t{cu[b + 1]} - cu[b];
    if (len < 0 || len > max_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionParams.", name, " must be non-decreasing with steps <= the longest sequence (",
          max_len, "), got step ", len, " at index ", b));
    }
  }
  if (cu[batch] != total) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.", name, "[batch] must be ", total, ", got ", cu[batch]));
  }
  return absl::OkStatus();
}

void StoreOutput(const AttentionParams& p, const QueryTile& t, const float* out, const float* lse) {
  const int d = p.head_dim;
  for (int i = 0; i < t.rows; ++i) {
    const int64_t row = t.q_row0 + t.row_begin + i;
    const int64_t elem =
        t.batch * p.o_batch_stride + row * p.o_row_stride + t.head * p.o_head_stride;
    const float* src = out + int64_t{i} * d;
    switch (p.dtype) {
      case DType::kFloat32:
        std::memcpy(static_cast<float*>(p.o) + elem, src, d * sizeof(float));
        break;
      case DType::kFloat16: {
        uint16_t* dst = static_cast<uint16_t*>(p.o) + elem;
        for (int e = 0; e < d; ++e) dst[e] = FloatToHalf(src[e]);
        break;
      }
      case DType::kBFloat16:
      case DType::kFloat8E4M3: {  // o is OutputDType(kFloat8E4M3) = bfloat16
        uint16_t* dst = static_cast<uint16_t*>(p.o) + elem;
        for (int e = 0; e < d; ++e) dst[e] = FloatToBFloat16(src[e]);
        break;
      }
    }
    if (p.lse != nullptr) {
      p.lse[t.batch * p.lse_batch_stride + t.head * p.lse_head_stride + row] = lse[i];
    }
  }
}

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric:
      return "generic";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

absl::Status CheckSupported(const KernelConfig& config) { return CheckConfig(config); }

CpuIsa BestCpuIsa() {
  static const CpuIsa isa = DetectIsa();
  return isa;
}

TileScratchLayout TileScratchFloats(const TileConfig& config, int head_dim) {
  TileScratchLayout l;
  l.q_t = l.o_t = RoundUp16(int64_t{head_dim} * config.block_q);
  l.s_t = RoundUp16(int64_t{config.block_k} * config.block_q);
  l.k_tile = l.v_tile = RoundUp16(int64_t{config.block_k} * head_dim);
  l.vec = RoundUp16(config.block_q);
  l.out = RoundUp16(int64_t{config.block_q} * head_dim);
  return l;
}

struct CpuBackend::Impl {
  explicit Impl(const CpuBackendOptions& options)
      : pool(options.num_threads > 0 ? options.num_threads : DefaultThreads()),
        isa(std::min(BestCpuIsa(), options.max_isa)),
        kernel(KernelFor(isa)) {
    if (options.block_q > 0) {
      config.block_q = std::min(kTileMaxBlockQ, (options.block_q + kTileColumnAlign - 1) /
                                                    kTileColumnAlign * kTileColumnAlign);
    } else {
      config.block_q = 0;  // per request
    }
    config.block_k = options.block_k > 0 ? options.block_k : kDefaultBlockK;
    config.copy_float32_kv = options.copy_float32_kv;
  }

  ThreadPool pool;
  const CpuIsa isa;
  const TileKernelFn kernel;
  TileConfig config;
};

CpuBackend::CpuBackend(int num_threads) : CpuBackend(CpuBackendOptions{num_threads}) {}

CpuBackend::CpuBackend(const CpuBackendOptions& options) : impl_(std::make_unique<Impl>(options)) {}

CpuBackend::~CpuBackend() = default;

int CpuBackend::num_threads() const { return impl_->pool.num_threads(); }
CpuIsa CpuBackend::isa() const { return impl_->isa; }
int CpuBackend::block_q() const { return impl_->config.block_q; }
int CpuBackend::block_k() const { return impl_->config.block_k; }

absl::Status CpuBackend::RunBackward(const AttentionBackwardParams& p,
                                     absl::FunctionRef<bool()> should_stop) {
  CpuBackwardOptions options;
  options.max_isa = impl_->isa;
  return AttentionBackward(p, &impl_->pool, should_stop, options);
}

absl::Status CpuBackend::Run(const AttentionParams& params) {
  return Run(params, [] { return false; });
}

absl::Status CpuBackend::Run(const AttentionParams& params, absl::FunctionRef<bool()> should_stop) {
  if (params.kind == WorkKind::kBackward) {
    return absl::InvalidArgumentError(
        "AttentionParams.kind: kBackward launches run with CpuBackend::RunBackward, not Run");
  }
  if (absl::Status s = CheckSupported(params); !s.ok()) return s;
  if (absl::Status s = CheckParams(params); !s.ok()) return s;
  AttentionParams p = params;
  Normalize(p);
  if (p.is_varlen()) {
    if (absl::Status s =
            CheckCuSeqlens(p.cu_seqlens_q, "cu_seqlens_q", p.batch, p.total_q, p.seqlen_q);
        !s.ok()) {
      return s;
    }
    if (!p.is_paged()) {
      if (absl::Status s =
              CheckCuSeqlens(p.cu_seqlens_k, "cu_seqlens_k", p.batch, p.total_k, p.seqlen_k);
          !s.ok()) {
        return s;
      }
    }
  }
  if (p.is_paged()) {
    for (int b = 0; b < p.batch; ++b) {
      if (p.seqlens_k[b] < 0 || p.seqlens_k[b] > p.seqlen_k) {
        return absl::InvalidArgumentError(absl::StrCat("AttentionParams.seqlens_k[", b,
                                                       "] must be in [0, seqlen_k = ", p.seqlen_k,
                                                       "], got ", p.seqlens_k[b]));
      }
    }
  }

  TileConfig config = impl_->config;
  std::vector<Sequence> seqs(p.batch);
  for (int b = 0; b < p.batch; ++b) {
    Sequence& s = seqs[b];
    s.q_row0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    s.len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.seqlen_q;
    if (p.is_paged()) {
      s.k_row0 = 0;  // rows are found through the page table
      s.len_k = p.seqlens_k[b];
    } else if (p.is_varlen()) {
      s.k_row0 = p.cu_seqlens_k[b];
      s.len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    } else {
      s.k_row0 = 0;
      s.len_k = p.seqlen_k;
    }
  }
  if (config.block_q == 0) {
    int64_t large_items = 0;
    for (const Sequence& s : seqs) {
      large_items += int64_t{p.q_heads} * ((s.len_q + kLargeBlockQ - 1) / kLargeBlockQ);
    }
    config.block_q = large_items >= int64_t{kMinItemsPerThread} * impl_->pool.num_threads()
                         ? kLargeBlockQ
                         : kSmallBlockQ;
  }
  int64_t items = 0;
  for (Sequence& s : seqs) {
    s.tiles = (s.len_q + config.block_q - 1) / config.block_q;
    s.first_item = items;
    items += int64_t{p.q_heads} * s.tiles;
  }

  const int group = p.q_heads / p.kv_heads;
  const TileKernelFn kernel = impl_->kernel;
  const TileScratchLayout layout = TileScratchFloats(config, p.head_dim);
  // Work item order: sequence, then query tiles from the last to the first, then head, so that
  // under causal masking (where later tiles see more keys) the expensive items are claimed first
  // and the cheap ones fill the gaps at the end; heads sharing a KV head are adjacent.
  std::atomic<bool> out_of_memory{false};
  const bool finished = impl_->pool.ParallelForUntil(items, [&](int64_t item) {
    if (should_stop()) return false;
    const auto it =
        std::upper_bound(seqs.begin(), seqs.end(), item,
                         [](int64_t value, const Sequence& s) { return value < s.first_item; });
    const Sequence& seq = *(it - 1);
    const int b = static_cast<int>(it - 1 - seqs.begin());
    const int64_t local = item - seq.first_item;
    const int head = static_cast<int>(local % p.q_heads);
    const int tile = seq.tiles - 1 - static_cast<int>(local / p.q_heads);

    QueryTile t;
    t.batch = b;
    t.head = head;
    t.kv_head = head / group;
    t.q_row0 = seq.q_row0;
    t.k_row0 = seq.k_row0;
    t.len_q = seq.len_q;
    t.len_k = seq.len_k;
    t.row_begin = tile * config.block_q;
    t.rows = std::min(config.block_q, seq.len_q - t.row_begin);

    float* base = tls_scratch.Reserve(layout.total());
    if (base == nullptr) {
      out_of_memory.store(true, std::memory_order_relaxed);
      return true;
    }
    TileScratch s;
    s.q_t = base;
    s.o_t = s.q_t + layout.q_t;
    s.s_t = s.o_t + layout.o_t;
    s.k_tile = s.s_t + layout.s_t;
    s.v_tile = s.k_tile + layout.k_tile;
    s.row_max = s.v_tile + layout.v_tile;
    s.row_sum = s.row_max + layout.vec;
    s.alpha = s.row_sum + layout.vec;
    s.tile_max = s.alpha + layout.vec;
    s.lse = s.tile_max + layout.vec;
    s.out = s.lse + layout.vec;
    kernel(p, t, config, s);
    StoreOutput(p, t, s.out, s.lse);
    return true;
  });
  if (!finished) {
    return absl::CancelledError(
        "CPU backend: stopped between work items at the caller's request; o and lse are "
        "incomplete");
  }
  if (out_of_memory.load()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "CPU backend: no memory for a tile scratch of ", layout.total() * sizeof(float), " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace attention::cpu
