#include "kernels/cuda/flash_decode.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/decode_heuristics.h"
#include "kernels/cuda/flash_decode_launch.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/kernel_config.h"

// The build defines ATTN_KERNEL_HEAD_DIMS (the compiled buckets: compiled_head_dims.h) and one
// ATTN_KERNEL_DTYPE_<type> macro per compiled 16-bit element type (kernels/cuda/CMakeLists.txt),
// as for the forward dispatch.

namespace attention::cuda {
namespace {

constexpr int64_t kWorkspaceAlignment = 256;

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("AttentionParams.", what));
}

absl::Status Unsupported(const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("CUDA decode kernel: ", what));
}

absl::Status LaunchStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA decode ", what, " launch failed: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

int64_t AlignUp(int64_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What the split heuristic needs of the current device, read once per device (attribute queries
// are driver calls; decode launches come many times per second).
struct DeviceInfo {
  int sms = 0;
  int smem_per_sm = 0;
  int reserved_smem_per_block = 0;
  int major = 0;
  double peak_hbm_tbps = 0.0;  // 2 x memory clock x bus width; 0 when the driver does not say
};

DeviceInfo CurrentDevice() {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> known[kMaxDevices];
  static DeviceInfo info[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    return DeviceInfo{};
  }
  if (!known[device].load(std::memory_order_acquire)) {
    DeviceInfo d;
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    cudaDeviceGetAttribute(&d.reserved_smem_per_block, cudaDevAttrReservedSharedMemoryPerBlock,
                           device);
    cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device);
    int memory_khz = 0, bus_bits = 0;
    cudaDeviceGetAttribute(&memory_khz, cudaDevAttrMemoryClockRate, device);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
    d.peak_hbm_tbps = 2.0 * memory_khz * 1e3 * (bus_bits / 8.0) / 1e12;
    // Two threads may both fill the slot; they write the same values.
    info[device] = d;
    known[device].store(true, std::memory_order_release);
  }
  return info[device];
}

// The launch plan of a normalized, checked `p`: block layout, splits, workspace.
struct Plan {
  DecodeLaunch launch;
  int kv_tiles = 0;  // KV tiles of the longest context
  int64_t partial_o_bytes = 0;
  int64_t partial_lse_bytes = 0;
  int64_t num_counters = 0;  // fused_combine variants' ticket counters (split launches)
  int64_t workspace_bytes = 0;
};

Plan MakePlan(const AttentionParams& p, const DecodeOptions& opt) {
  Plan plan;
  DecodeLaunch& l = plan.launch;
  const bool fp32 = p.dtype == DType::kFloat32;
  const int block_n = fp32 ? kDecodeBlockN32 : kDecodeBlockN16;
  l.group = p.q_heads / p.kv_heads;
  l.rows_pad = p.seqlen_q * l.group;
  l.rows = l.rows_pad <= 16 ? DecodeRows::kRows16 : DecodeRows::kRows64;
  // A variant the launch does not fit is refused (CheckVariant) after planning.
  const DecodeVariant& variant =
      kDecodeVariants[opt.variant > 0 && opt.variant < kDecodeNumVariants ? opt.variant : 0];
  const int heads =
      !fp32 && l.rows == DecodeRows::kRows16 && p.kv_heads % variant.heads == 0 ? variant.heads : 1;
  l.heads_per_block = heads;
  const int block_m = fp32 ? kDecodeFp32BlockM : DecodeBlockM(l.rows);
  l.query_tiles = static_cast<int>(CeilDiv(l.rows_pad, block_m));
  plan.kv_tiles = static_cast<int>(CeilDiv(p.seqlen_k, block_n));

  // Keys a block visits: a left window bounds them by left + the block's query rows + right.
  int64_t span = p.seqlen_k;
  if (p.window_left >= 0) {
    const int64_t right = p.window_right >= 0 ? p.window_right : p.seqlen_k;
    span = std::min<int64_t>(span, int64_t{p.window_left} + p.seqlen_q + right);
  }
  // +1: a span that does not start on a tile boundary touches one more tile.
  const int span_tiles =
      static_cast<int>(std::min<int64_t>(plan.kv_tiles, CeilDiv(span, block_n) + 1));

  int splits = 1;
  if (opt.deterministic) {
    l.split_tiles = static_cast<int>(std::max<int64_t>(1, CeilDiv(opt.split_tokens, block_n)));
    splits = static_cast<int>(std::max<int64_t>(1, CeilDiv(plan.kv_tiles, l.split_tiles)));
  } else if (opt.num_splits > 0) {
    splits = std::max(1, std::min(opt.num_splits, std::max(span_tiles, 1)));
  } else {
    const DeviceInfo device = CurrentDevice();
    const DecodeSmem smem =
        fp32 ? DecodeSmem32(CompiledHeadDimBucket(p.head_dim))
             : DecodeSmem16(
                   CompiledHeadDimBucket(p.head_dim), l.rows, variant.stages, heads,
                   DecodePageCacheEntries(variant, CompiledHeadDimBucket(p.head_dim), l.rows));
    DecodeWorkload w;
    w.batch = p.batch;
    w.kv_heads = std::max(1, p.kv_heads / heads);
    w.query_tiles = l.query_tiles;
    w.kv_tiles = span_tiles;
    w.num_sms = device.sms;
    // Resident blocks per SM: shared memory bounds them (launch bounds keep registers for 2).
    const int per_block = smem.total + device.reserved_smem_per_block;
    const int resident =
        per_block > 0 ? std::max(1, std::min(2, device.smem_per_sm / per_block)) : 1;
    // Dense K/V: on an H100 (3.35 TB/s peak) one block per SM already streams at full bandwidth
    // (its stages are enough bytes in flight), and a second one only adds partials and combine
    // work (H100, 2026-12-06, bench/results/gpu_2026-12-06b.md: 1 x 8k 26.2 us at 16 splits
    // against 28.0 at 32; 2 x 128k 2.91 TB/s at 8 against 2.86 at 16). A faster memory needs more
    // bytes in flight than one block keeps: on an H200 (4.8 TB/s) dense at one block per SM
    // reached 0.63-0.75x cuDNN on the rows it splits (8 x 32k to 1 x 128k), pages at two 0.92-1.0x
    // (gpu_2026-12-06g.md, call 2a), so above 4 TB/s dense counts every resident block too.
    // Pages: every tile's page lookup adds latency that a second block per SM hides (1 x 32k,
    // pages of 64: 1.98 TB/s at 32 splits, 1.57 at 16).
    constexpr double kOneSlotMaxTbps = 4.0;
    const bool all_slots =
        p.is_paged() ? !variant.paged_one_slot : device.peak_hbm_tbps > kOneSlotMaxTbps;
    w.blocks_per_sm = all_slots ? resident : 1;
    splits = DecodeSplitHeuristic(w);
  }
  l.num_splits = splits;
  if (splits > 1) {
    l.partial_rows = int64_t{p.batch} * p.kv_heads * l.rows_pad;
    plan.partial_o_bytes = AlignUp(int64_t{splits} * l.partial_rows * p.head_dim * 4);
    plan.partial_lse_bytes = AlignUp(int64_t{splits} * l.partial_rows * 4);
    // The 16-bit kernel merges its own splits when fused (the float32 kernel never does).
    if (variant.fused_combine && !fp32) {
      plan.num_counters = int64_t{p.batch} * p.kv_heads * l.query_tiles;
    }
    plan.workspace_bytes =
        plan.partial_o_bytes + plan.partial_lse_bytes + AlignUp(plan.num_counters * 4);
  }
  return plan;
}

// `p` normalized (causal folded into the window) with window sides past every key unbounded.
AttentionParams Normalized(const AttentionParams& p) {
  AttentionParams n = p;
  Normalize(n);
  ClampWindow(n.seqlen_q, n.seqlen_k, n.window_left, n.window_right);
  return n;
}

// 16-byte rows for cp.async and vector stores: base pointers 16-byte aligned, strides in whole
// 16-byte chunks.
absl::Status CheckVectorLayout(const char* name, const void* ptr, int64_t elems_per_chunk,
                               int64_t batch_stride, int64_t row_stride, int64_t head_stride) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    return Unsupported(absl::StrCat(name, " must be 16-byte aligned"));
  }
  const int64_t strides[] = {batch_stride, row_stride, head_stride};
  const char* names[] = {"_batch_stride", "_row_stride", "_head_stride"};
  for (int i = 0; i < 3; ++i) {
    if (strides[i] % elems_per_chunk != 0) {
      return Unsupported(absl::StrCat(name, names[i], " ", strides[i], " must be a multiple of ",
                                      elems_per_chunk, " elements (16-byte rows)"));
    }
  }
  return absl::OkStatus();
}

// Whether kernel variant `variant` (DecodeOptions::variant > 0) takes `p` with plan `l`: OK or
// UNIMPLEMENTED naming what is missing.
// The variants exist for bf16 in head-dim bucket 128 (generate_decode_instantiations.py), which
// CheckDecodeParams found compiled.
absl::Status CheckVariant(const AttentionParams& p, const DecodeLaunch& l, int variant) {
  if (!DecodeVariantsCompiled()) {
    return Unsupported(absl::StrCat("DecodeOptions.variant ", variant, " (",
                                    kDecodeVariants[variant].name,
                                    "): the candidate kernels are compiled only with "
                                    "ATTN_BENCH_DECODE_VARIANTS=ON"));
  }
  if (p.dtype != DType::kBFloat16 || CompiledHeadDimBucket(p.head_dim) != 128 ||
      l.rows != DecodeRows::kRows16) {
    return Unsupported(absl::StrCat("DecodeOptions.variant ", variant, " (",
                                    kDecodeVariants[variant].name,
                                    ") runs bf16, head-dim bucket 128 and at most 16 packed rows "
                                    "per KV head only"));
  }
  if (p.kv_heads % kDecodeVariants[variant].heads != 0) {
    return Unsupported(absl::StrCat("DecodeOptions.variant ", variant, " (",
                                    kDecodeVariants[variant].name, ") needs kv_heads ", p.kv_heads,
                                    " to be a multiple of ", kDecodeVariants[variant].heads));
  }
  if ((kDecodeVariants[variant].pages_ahead || kDecodeVariants[variant].pages_early) &&
      p.is_paged()) {
    // A row's offset inside its page (row x row stride + head x head stride + column) is
    // computed in 32 bits.
    const int64_t in_page = int64_t{p.page_size} * std::max(p.k_row_stride, p.v_row_stride) +
                            int64_t{p.kv_heads} * std::max(p.k_head_stride, p.v_head_stride) +
                            p.head_dim;
    if (std::min({p.k_row_stride, p.v_row_stride, p.k_head_stride, p.v_head_stride}) < 0 ||
        in_page > INT_MAX) {
      return Unsupported(absl::StrCat("DecodeOptions.variant ", variant,
                                      ": a page's elements must fit a 32-bit offset"));
    }
  }
  return absl::OkStatus();
}

template <DType kDType>
absl::Status DispatchHeadDim(const AttentionParams& p, const DecodeLaunch& l,
                             [[maybe_unused]] int variant, cudaStream_t stream) {
  const int bucket = CompiledHeadDimBucket(p.head_dim);
  if (bucket == 0) {
    return Unsupported(absl::StrCat("head_dim ", p.head_dim, " has no kernel in this build ",
                                    "(head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")"));
  }
  const cudaError_t err = VisitCompiledHeadDim(
      bucket,
      [&](auto head_dim) {
        constexpr int kHeadDim = decltype(head_dim)::value;
#ifdef ATTN_DECODE_VARIANTS
        // Only flash_decode_variants_bf16_hdim128.cu instantiates the variants (CheckVariant sent
        // them here).
        if constexpr (kDType == DType::kBFloat16 && kHeadDim == 128) {
          if (variant > 0) return RunDecodeVariant<kDType, kHeadDim>(p, l, variant, stream);
        }
#endif
        return RunDecodeKernel<kDType, kHeadDim>(p, l, stream);
      },
      cudaErrorInvalidValue);
  if (absl::Status s = LaunchStatus(err, "kernel"); !s.ok()) return s;
  // The fused variants merge the splits inside the decode kernel.
  if (l.num_splits > 1 && l.counters == nullptr) {
    return LaunchStatus(RunDecodeCombine<kDType>(p, l, stream), "combine");
  }
  return absl::OkStatus();
}

absl::Status Dispatch(const AttentionParams& p, const DecodeLaunch& l, int variant,
                      cudaStream_t stream) {
  switch (p.dtype) {
#ifdef ATTN_KERNEL_DTYPE_BF16
    case DType::kBFloat16:
      return DispatchHeadDim<DType::kBFloat16>(p, l, variant, stream);
#endif
#ifdef ATTN_KERNEL_DTYPE_FP16
    case DType::kFloat16:
      return DispatchHeadDim<DType::kFloat16>(p, l, variant, stream);
#endif
    case DType::kFloat32:
      return DispatchHeadDim<DType::kFloat32>(p, l, variant, stream);
    default:
      return Unsupported("this dtype has no kernel in this build");
  }
}

}  // namespace

bool DecodeVariantsCompiled() {
#ifdef ATTN_DECODE_VARIANTS
  return true;
#else
  return false;
#endif
}

absl::Status CheckDecodeSupported(const KernelConfig& c) {
  if (c.kind != WorkKind::kForward && c.kind != WorkKind::kPagedDecode) {
    return Unsupported(
        absl::StrCat("kind ", static_cast<int>(c.kind), " is not forward or paged-decode work"));
  }
  if (c.dtype != DType::kFloat32 && c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16) {
    return Invalid(absl::StrCat("dtype ", static_cast<int>(c.dtype), " is not a known DType"));
  }
  if (c.q_heads <= 0) return Invalid(absl::StrCat("q_heads ", c.q_heads, " must be positive"));
  if (c.kv_heads <= 0) return Invalid(absl::StrCat("kv_heads ", c.kv_heads, " must be positive"));
  if (c.q_heads % c.kv_heads != 0) {
    return Invalid(
        absl::StrCat("q_heads ", c.q_heads, " must be a multiple of kv_heads ", c.kv_heads));
  }
  if (c.head_dim <= 0) return Invalid(absl::StrCat("head_dim ", c.head_dim, " must be positive"));
  if (c.window_left < -1 || c.window_right < -1) {
    return Invalid(
        absl::StrCat("window (", c.window_left, ", ", c.window_right, ") sides must be >= -1"));
  }
  if (!std::isfinite(c.softmax_scale)) return Invalid("softmax_scale must be finite");
  if (!std::isfinite(c.softcap) || c.softcap < 0.f) {
    return Invalid(absl::StrCat("softcap ", c.softcap, " must be finite and >= 0"));
  }
  if (c.mask_kind != MaskKind::kNone) return Unsupported("masks are not supported");
  if (c.head_dim % 8 != 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " must be a multiple of 8"));
  }
  if (c.head_dim > kMaxHeadDim) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " exceeds ", kMaxHeadDim));
  }
  if (CompiledHeadDimBucket(c.head_dim) == 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " has no kernel in this build (",
                                    "head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")"));
  }
  if (c.dtype != DType::kFloat32 && !DTypeCompiled(c.dtype)) {
    return Unsupported(absl::StrCat(c.dtype == DType::kFloat16 ? "float16" : "bfloat16",
                                    " has no kernel in this build"));
  }
  return absl::OkStatus();
}

absl::Status CheckDecodeParams(const AttentionParams& p) {
  if (absl::Status s = CheckDecodeSupported(p); !s.ok()) return s;
  if (p.batch < 0) return Invalid(absl::StrCat("batch ", p.batch, " must be >= 0"));
  // More rows run correctly (query tiles), but the forward kernels are faster there; float32
  // pages have no other kernel.
  if (p.seqlen_q < 0 || (p.seqlen_q > kDecodeMaxQueryRows &&
                         !(p.is_paged() && DecodeTakesPagedRows(p.dtype, p.seqlen_q)))) {
    return Unsupported(absl::StrCat("seqlen_q ", p.seqlen_q, " must be in [0, ",
                                    kDecodeMaxQueryRows, "] (any for float32 pages)"));
  }
  if (p.seqlen_k < 0) return Invalid(absl::StrCat("seqlen_k ", p.seqlen_k, " must be >= 0"));
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.o == nullptr) {
    return Invalid("q, k, v and o must not be null");
  }
  if (p.is_varlen() && p.total_q < 0) return Invalid("total_q must be >= 0 for a packed batch");
  if (p.is_paged()) {
    if (p.page_size <= 0) return Invalid(absl::StrCat("page_size ", p.page_size, " must be > 0"));
    if (p.cu_seqlens_k != nullptr) return Invalid("cu_seqlens_k must be null with a page_table");
    const int64_t pages = CeilDiv(p.seqlen_k, p.page_size);
    if (p.batch > 1 && p.page_table_stride < pages) {
      return Invalid(absl::StrCat("page_table_stride ", p.page_table_stride, " must be >= ", pages,
                                  " (pages of the longest context, seqlen_k ", p.seqlen_k, ")"));
    }
  } else if (p.cu_seqlens_k != nullptr && p.seqlens_k != nullptr) {
    return Invalid("seqlens_k and cu_seqlens_k must not both be set");
  }
  const int64_t chunk = 16 / DTypeSize(p.dtype);
  for (absl::Status s :
       {CheckVectorLayout("q", p.q, chunk, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckVectorLayout("k", p.k, chunk, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckVectorLayout("v", p.v, chunk, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
        CheckVectorLayout("o", p.o, chunk, p.o_batch_stride, p.o_row_stride, p.o_head_stride)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

bool DecodeExpectedToWin(const AttentionParams& p) {
  return p.seqlen_q >= 1 && p.seqlen_q <= kDecodeMaxQueryRows && p.mask == nullptr &&
         CheckDecodeParams(p).ok();
}

int DecodeNumSplits(const AttentionParams& p, const DecodeOptions& opt) {
  if (p.batch <= 0 || p.q_heads <= 0 || p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0 ||
      CompiledHeadDimBucket(p.head_dim) == 0) {
    return 1;
  }
  return MakePlan(Normalized(p), opt).launch.num_splits;
}

size_t DecodeWorkspaceBytes(const AttentionParams& p, const DecodeOptions& opt) {
  if (p.batch <= 0 || p.q_heads <= 0 || p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0 ||
      CompiledHeadDimBucket(p.head_dim) == 0) {
    return 0;
  }
  return static_cast<size_t>(MakePlan(Normalized(p), opt).workspace_bytes);
}

absl::Status RunFlashDecode(const AttentionParams& params, const DecodeOptions& opt,
                            void* workspace, cudaStream_t stream) {
  if (absl::Status s = CheckDecodeParams(params); !s.ok()) return s;
  if (opt.num_splits < 0 || opt.num_splits > kDecodeMaxSplitsHard) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeOptions.num_splits ", opt.num_splits,
                                                   " must be in [0, ", kDecodeMaxSplitsHard, "]"));
  }
  if (opt.variant < 0 || opt.variant >= kDecodeNumVariants) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeOptions.variant ", opt.variant,
                                                   " must be in [0, ", kDecodeNumVariants, ")"));
  }
  if (opt.deterministic && opt.split_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeOptions.split_tokens ", opt.split_tokens, " must be positive"));
  }
  const AttentionParams p = Normalized(params);
  if (p.batch == 0 || p.seqlen_q == 0 || (p.is_varlen() && p.total_q == 0)) {
    return absl::OkStatus();
  }
  Plan plan = MakePlan(p, opt);
  DecodeLaunch& l = plan.launch;
  if (l.num_splits > kDecodeMaxSplitsHard) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeOptions.split_tokens ", opt.split_tokens, " cuts seqlen_k ", p.seqlen_k,
                     " into ", l.num_splits, " splits, more than ", kDecodeMaxSplitsHard));
  }
  if (opt.variant > 0) {
    if (absl::Status s = CheckVariant(p, l, opt.variant); !s.ok()) return s;
  }
  const int64_t blocks = int64_t{p.batch} * l.num_splits * l.query_tiles * p.kv_heads;
  if (blocks > INT_MAX) {
    return Unsupported(absl::StrCat("batch ", p.batch, " x splits ", l.num_splits,
                                    " x query tiles ", l.query_tiles, " x kv_heads ", p.kv_heads,
                                    " blocks exceed the grid limit ", INT_MAX));
  }
  if (l.num_splits > 1) {
    if (workspace == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RunFlashDecode: ", l.num_splits,
          " splits need a workspace of DecodeWorkspaceBytes = ", plan.workspace_bytes, " bytes"));
    }
    char* ws = static_cast<char*>(workspace);
    l.partial_o = reinterpret_cast<float*>(ws);
    l.partial_lse = reinterpret_cast<float*>(ws + plan.partial_o_bytes);
    l.dependent_launch = CurrentDevice().major >= 9;
    if (plan.num_counters > 0) {
      l.counters_self_reset =
          opt.zeroed_counters != nullptr && opt.zeroed_counter_count >= plan.num_counters;
      l.counters =
          l.counters_self_reset
              ? opt.zeroed_counters
              : reinterpret_cast<unsigned int*>(ws + plan.partial_o_bytes + plan.partial_lse_bytes);
      l.num_counters = plan.num_counters;
    }
  }
  // page_cache variants read a split's page entries before they know its sequence's length:
  // only where every table row holds the pages of seqlen_k (CheckDecodeParams asks that of
  // batches above 1).
  l.compact_combine = kDecodeVariants[opt.variant].copy_unroll > 0;
  l.speculate_pages =
      p.is_paged() && p.page_size > 0 && p.page_table_stride >= CeilDiv(p.seqlen_k, p.page_size);
  return Dispatch(p, l, opt.variant, stream);
}

}  // namespace attention::cuda
