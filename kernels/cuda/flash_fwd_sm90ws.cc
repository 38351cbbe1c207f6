#include "kernels/cuda/flash_fwd_sm90ws.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"
#include "kernels/cuda/paged_layout_check.h"
#include "kernels/cuda/tensor_map_encode.h"

// The build defines ATTN_KERNEL_HEAD_DIMS (compiled_head_dims.h), ATTN_KERNEL_DTYPE_<type> per
// compiled element type and ATTN_KERNEL_SM90 when the instantiations under
// instantiations/flash_fwd_sm90ws_*.cu are compiled (kernels/cuda/CMakeLists.txt).

namespace attention::cuda {
namespace {

// The kernel's head-dim bucket for `head_dim`: 64, 128 or 256 (HasSm90WsKernel), 0 above.
constexpr int WsBucket(int head_dim) {
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : head_dim <= 256 ? 256 : 0;
}

constexpr bool BucketCompiled(int bucket) {
  for (int d : kCompiledHeadDims) {
    if (d == bucket) return true;
  }
  return false;
}

// What the host API needs of the current device, read once per device (driver queries; launches
// come many times per second).
struct DeviceInfo {
  bool sm90 = false;  // compute capability 9.0
  int sms = 0;
  int64_t l2_bytes = 0;
};

DeviceInfo CurrentDevice() {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static DeviceInfo info[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return {};
  std::call_once(once[device], [device] {
    int major = 0, minor = 0, sms = 0, l2 = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device) == cudaSuccess) {
      info[device] = {major == 9 && minor == 0, sms, l2};
    }
  });
  return info[device];
}

bool DTypeBuilt(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
#ifdef ATTN_KERNEL_DTYPE_BF16
      return true;
#else
      return false;
#endif
    case DType::kFloat16:
#ifdef ATTN_KERNEL_DTYPE_FP16
      return true;
#else
      return false;
#endif
    case DType::kFloat32:
    case DType::kFloat8E4M3:
      return false;
  }
  return false;
}

// The map of one of q, k, v: 4-D {head_dim, heads, rows, batch} with element strides head_stride,
// row_stride, batch_stride; boxes of {64, 1, box_rows, 1} in the 128-byte swizzle (one panel of a
// tile, FwdSm90WsArgs). A dimension of size 1 gets a legal stride in place of whatever the params
// hold there (the map never steps along it).
absl::Status EncodeMap(const char* name, DType dtype, const void* data, int head_dim, int heads,
                       int rows, int batch, int64_t head_stride, int64_t row_stride,
                       int64_t batch_stride, int box_rows, CUtensorMap& map) {
  const EncodeTiledFn encode = EncodeTiled();
  if (encode == nullptr) {
    return absl::UnimplementedError(
        "the CUDA driver does not provide cuTensorMapEncodeTiled (the warp-specialized Hopper "
        "kernel's bulk copies need a CUDA 12 driver)");
  }
  const int64_t elem = 2;
  if (heads == 1) head_stride = head_dim;
  if (batch == 1) batch_stride = row_stride * rows;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(head_stride * elem),
                                 static_cast<cuuint64_t>(row_stride * elem),
                                 static_cast<cuuint64_t>(batch_stride * elem)};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult res =
      encode(&map,
             dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             4, const_cast<void*>(data), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuTensorMapEncodeTiled refused the map of ", name,
                                            " (CUresult ", static_cast<int>(res), ")"));
  }
  return absl::OkStatus();
}

template <DType kDType, int kHeadDim>
cudaError_t LaunchBucket(const FwdSm90WsArgs& args, cudaStream_t stream) {
  if (args.p.is_paged()) {
#ifdef ATTN_KERNEL_PAGED
    return args.p.causal ? LaunchFlashFwdSm90WsDefault<kDType, kHeadDim, true, true>(args, stream)
                         : LaunchFlashFwdSm90WsDefault<kDType, kHeadDim, false, true>(args, stream);
#else
    return cudaErrorInvalidValue;  // CheckFlashFwdSm90Ws refuses paged launches first
#endif
  }
  return args.p.causal ? LaunchFlashFwdSm90WsDefault<kDType, kHeadDim, true>(args, stream)
                       : LaunchFlashFwdSm90WsDefault<kDType, kHeadDim, false>(args, stream);
}

template <DType kDType>
cudaError_t LaunchDType(const FwdSm90WsArgs& args, int bucket, cudaStream_t stream) {
  if constexpr (BucketCompiled(64)) {
    if (bucket == 64) return LaunchBucket<kDType, 64>(args, stream);
  }
  if constexpr (BucketCompiled(128)) {
    if (bucket == 128) return LaunchBucket<kDType, 128>(args, stream);
  }
  if constexpr (BucketCompiled(256)) {
    if (bucket == 256) return LaunchBucket<kDType, 256>(args, stream);
  }
  return cudaErrorInvalidValue;  // CheckFlashFwdSm90Ws refuses every other bucket first
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The page dimension of a paged map for pages `page_stride` elements apart (16-bit elements): as
// many pages as fit in 2^38 bytes, at most kSm90WsPagedMapPages.
int MapPages(int64_t page_stride) {
  const int64_t pages = (int64_t{1} << 38) / std::max<int64_t>(1, 2 * page_stride);
  return static_cast<int>(std::min(pages, kSm90WsPagedMapPages));
}

// The bulk copies' row coordinates are int32: a sequence's first row plus a tile's.
constexpr int64_t kMaxPackedRows = (int64_t{1} << 31) - 1 - 256;

// Whether the paged variant's instantiations are compiled (ATTN_KERNEL_PAGED).
#ifdef ATTN_KERNEL_PAGED
constexpr bool kPagedVariantBuilt = true;
#else
constexpr bool kPagedVariantBuilt = false;
#endif

}  // namespace

Sm90Device CurrentSm90Device() {
  const DeviceInfo d = CurrentDevice();
  return {d.sm90, d.sms, d.l2_bytes};
}

absl::Status CheckFlashFwdSm90Ws(const AttentionParams& p) {
#ifndef ATTN_KERNEL_SM90
  return absl::UnimplementedError(
      "the warp-specialized Hopper kernel is not in this build (configured without sm_90a, "
      "ATTN_KERNEL_SM90=OFF)");
#endif
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel takes float16 and bfloat16 inputs only");
  }
  if (!DTypeBuilt(p.dtype)) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel is not compiled for this dtype (ATTN_KERNEL_DTYPES)");
  }
  const int bucket = WsBucket(p.head_dim);
  if (p.head_dim <= 0 || p.head_dim % 8 != 0 || bucket == 0) {
    return absl::UnimplementedError(
        absl::StrCat("head_dim ", p.head_dim,
                     ": the warp-specialized Hopper kernel takes multiples of 8 up to 256"));
  }
  if (!BucketCompiled(bucket)) {
    return absl::UnimplementedError(absl::StrCat(
        "head_dim ", p.head_dim, ": bucket ", bucket,
        " is not compiled (ATTN_KERNEL_HEAD_DIMS), so neither is the warp-specialized kernel's"));
  }
  if (p.is_paged()) {
    // The paged layout's rules are the forward dispatch's (CheckPagedForward), checked here too
    // for callers of this host API.
    if (!kPagedVariantBuilt) {
      return absl::UnimplementedError(
          "paged K/V: the warp-specialized kernel's paged variant is not compiled (configured "
          "with ATTN_KERNEL_PAGED=OFF)");
    }
    if (absl::Status s = CheckPagedLayout(p); !s.ok()) return s;
  } else if (p.key_range != nullptr || p.seqlens_k != nullptr) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel reads seqlens_k and key_range only with a page_table "
        "(paged K/V)");
  } else if (p.is_varlen()) {
    if (p.cu_seqlens_k == nullptr) {
      return absl::InvalidArgumentError(
          "AttentionParams.cu_seqlens_k must be set with cu_seqlens_q (a packed batch packs q, k "
          "and v)");
    }
    if (p.total_q < 0 || p.total_q > kMaxPackedRows || p.total_k < 0 ||
        p.total_k > kMaxPackedRows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionParams.total_q ", p.total_q, " and total_k ", p.total_k,
          " must lie in [0, 2^31 - 257] (int32 row coordinates of the bulk tensor copies)"));
    }
  } else if (p.cu_seqlens_k != nullptr) {
    return absl::InvalidArgumentError(
        "AttentionParams.cu_seqlens_k must be null without cu_seqlens_q");
  }
  if (p.is_varlen() && (p.total_q < 0 || p.total_q > kMaxPackedRows)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionParams.total_q ", p.total_q,
        " must lie in [0, 2^31 - 257] (int32 row coordinates of the bulk tensor copies)"));
  }
  if (p.alibi_slopes != nullptr || p.mask_kind != MaskKind::kNone || !(p.softmax_scale > 0.f)) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel has no ALiBi or mask and needs softmax_scale > 0");
  }
  const bool causal_window = p.window_left < 0 && p.window_right == 0;
  if (p.has_window() && !causal_window) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel takes no window other than causal");
  }
  if (p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.q_heads ", p.q_heads,
                                                   " must be a multiple of kv_heads ", p.kv_heads));
  }
  if (p.q_heads > 65535 || p.batch > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.q_heads ", p.q_heads, " and batch ", p.batch,
                     " must each be at most 65535 (grid dimensions y and z)"));
  }
  for (const void* ptr : {p.q, p.k, p.v, static_cast<const void*>(p.o)}) {
    if (!Aligned16(ptr)) {
      return absl::InvalidArgumentError(
          "AttentionParams.q, k, v and o must be 16-byte aligned (bulk tensor copies, 16-byte "
          "stores)");
    }
  }
  for (const int64_t stride :
       {p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.k_batch_stride, p.k_row_stride,
        p.k_head_stride, p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.o_batch_stride,
        p.o_row_stride, p.o_head_stride}) {
    if (stride < 0 || stride % 8 != 0 || stride >= (int64_t{1} << 38)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionParams strides of q, k, v and o must be multiples of 8 elements below 2^38 "
          "(16-byte tensor-map strides and 16-byte stores); got ",
          stride));
    }
  }
  if (!CurrentDevice().sm90) {
    return absl::UnimplementedError(
        "the warp-specialized Hopper kernel runs on compute capability 9.0 devices only");
  }
  return absl::OkStatus();
}

bool Sm90WsFasterFor(const AttentionParams& p) {
  if (!p.causal) return true;
  const int bucket = p.head_dim <= 64 ? 64 : p.head_dim <= 128 ? 128 : 256;
  if (bucket == 64) return p.seqlen_k >= 2048;
  if (bucket == 256) return p.seqlen_k >= 1024;
  // Paged at bucket 128 (device call 2 of 2026-12-06, --paged 64): the wgmma kernel's paged
  // variant ran causal 512 / 1024 at 0.909 / 0.867x the dense kernel, this one at 0.843 / 0.853x.
  if (p.is_paged()) return p.seqlen_k >= 2048;
  return true;
}

bool RoutesToFlashFwdSm90Ws(const AttentionParams& p) {
  // ATTN_CUDA_KERNELS (flash_fwd_dispatch.h): sm90ws routes everything covered here (tests and
  // benchmarks); sm80 and sm90 name the other kernels, which tests and benchmarks compare.
  enum class Route { kOff, kMeasured, kAll };
  static const Route route = [] {
    const Route by_switch = kRouteSm90Ws ? Route::kMeasured : Route::kOff;
    const char* env = std::getenv("ATTN_CUDA_KERNELS");
    if (env == nullptr) return by_switch;
    const std::string_view value(env);
    if (value == "sm90ws") return Route::kAll;
    if (value == "sm80" || value == "sm90") return Route::kOff;
    return by_switch;
  }();
  if (route == Route::kOff) return false;
  if (route == Route::kMeasured && (!Sm90WsFasterFor(p) || (p.is_paged() && !kRouteSm90WsPaged))) {
    return false;
  }
  return CheckFlashFwdSm90Ws(p).ok();
}

FwdSm90WsSchedule MakeFwdSm90WsSchedule(int batch, int seqlen_q, int seqlen_k, int q_heads,
                                        int kv_heads, int head_dim, int block_m, int sms,
                                        int64_t l2_bytes, bool persistent, bool snake, bool fold,
                                        bool pair_major) {
  FwdSm90WsSchedule s;
  s.m_blocks = static_cast<int>((int64_t{seqlen_q} + block_m - 1) / block_m);
  s.pairs = q_heads * batch;
  s.num_tiles = s.m_blocks * s.pairs;
  // Heads per L2 group: their K and V (each K / V head shared by q_heads / kv_heads query heads)
  // within half of L2, so that the tiles running at once (one per SM) reuse them while the other
  // half holds what streams through.
  const int64_t kv_bytes_per_pair =
      std::max<int64_t>(1, 2 * int64_t{seqlen_k} * head_dim * 2 / (q_heads / kv_heads));
  s.heads_per_group = static_cast<int>(
      std::clamp<int64_t>(l2_bytes / 2 / kv_bytes_per_pair, 1, std::max(1, s.pairs)));
  s.grid = persistent && sms > 0 ? std::min(s.num_tiles, sms) : s.num_tiles;
  s.snake = snake && s.grid < s.num_tiles;
  if (fold && persistent && sms > 0) {
    // Slots of two tiles (FwdSm90WsSchedule::fold), whole rounds of them.
    const int64_t slots = int64_t{(s.m_blocks + 1) / 2} * s.pairs;
    const int64_t grid = std::min<int64_t>(slots, sms);
    const int64_t tiles = grid > 0 ? 2 * grid * ((slots + grid - 1) / grid) : 0;
    if (slots > 0 && tiles <= std::numeric_limits<int>::max()) {
      s.fold = true;
      s.snake = false;
      s.grid = static_cast<int>(grid);
      s.num_tiles = static_cast<int>(tiles);
    }
  }
  if (pair_major && persistent && !s.fold && s.grid < s.num_tiles) {
    s.pair_major = true;
    s.snake = false;
  }
  return s;
}

absl::Status MakeFwdSm90WsArgs(const AttentionParams& p, const Sm90WsTileConfig& config,
                               bool persistent, FwdSm90WsArgs& args) {
  args.p = p;
  const int block_m = 64 * config.consumers;
  const int64_t m_blocks = (int64_t{p.seqlen_q} + block_m - 1) / block_m;
  const int64_t pairs = int64_t{p.q_heads} * p.batch;
  if (m_blocks * pairs > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams: ", m_blocks * pairs,
                                                   " query tiles (ceil(seqlen_q / ", block_m,
                                                   ") x q_heads x batch) exceed 2^31 - 1"));
  }
  const DeviceInfo device = CurrentDevice();
  args.sched = MakeFwdSm90WsSchedule(p.batch, p.seqlen_q, p.seqlen_k, p.q_heads, p.kv_heads,
                                     p.head_dim, block_m, device.sms, device.l2_bytes, persistent,
                                     config.snake, config.fold, config.pair_major && !p.is_paged());
  const int block_n = config.block_n;
  // A packed batch maps its packed rows as one sequence (batch 1, FwdSm90WsArgs). Maps need
  // dimensions >= 1; an empty context (no key rows) is never copied from.
  const bool packed = p.is_varlen();
  const int map_batch = packed ? 1 : p.batch;
  const int rows_q = packed ? static_cast<int>(p.total_q) : p.seqlen_q;
  const int rows_k_all = packed ? static_cast<int>(p.total_k) : p.seqlen_k;
  const int rows_k = rows_k_all > 0 ? rows_k_all : 1;
  if (absl::Status s =
          EncodeMap("q", p.dtype, p.q, p.head_dim, p.q_heads, rows_q, map_batch, p.q_head_stride,
                    p.q_row_stride, p.q_batch_stride, block_m, args.q);
      !s.ok()) {
    return s;
  }
  if (p.is_paged()) {
    // The page pools (FwdSm90WsArgs): pages of page_size rows, one box per tile segment.
    const int box_rows = Sm90WsPagedBoxRows(block_n, p.page_size);
    const int k_pages = MapPages(p.k_batch_stride);
    const int v_pages = MapPages(p.v_batch_stride);
    if (absl::Status s =
            EncodeMap("k", p.dtype, p.k, p.head_dim, p.kv_heads, p.page_size, k_pages,
                      p.k_head_stride, p.k_row_stride, p.k_batch_stride, box_rows, args.k);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            EncodeMap("v", p.dtype, p.v, p.head_dim, p.kv_heads, p.page_size, v_pages,
                      p.v_head_stride, p.v_row_stride, p.v_batch_stride, box_rows, args.v);
        !s.ok()) {
      return s;
    }
  } else {
    if (absl::Status s =
            EncodeMap("k", p.dtype, p.k, p.head_dim, p.kv_heads, rows_k, map_batch, p.k_head_stride,
                      p.k_row_stride, p.k_batch_stride, block_n, args.k);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            EncodeMap("v", p.dtype, p.v, p.head_dim, p.kv_heads, rows_k, map_batch, p.v_head_stride,
                      p.v_row_stride, p.v_batch_stride, block_n, args.v);
        !s.ok()) {
      return s;
    }
  }
  if (!config.tma_store_o) return absl::OkStatus();
  return EncodeMap("o", p.dtype, p.o, p.head_dim, p.q_heads, rows_q, map_batch, p.o_head_stride,
                   p.o_row_stride, p.o_batch_stride, kSm90WsOStoreRows, args.o);
}

absl::Status RunFlashFwdSm90Ws(const AttentionParams& params, cudaStream_t stream) {
  AttentionParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (absl::Status s = CheckFlashFwdSm90Ws(p); !s.ok()) return s;
  if (p.batch == 0 || p.seqlen_q == 0 || (p.is_varlen() && p.total_q == 0)) {
    return absl::OkStatus();
  }
  const int bucket = WsBucket(p.head_dim);
  FwdSm90WsArgs args;
  // Paged launches keep their tiles and grid rule and the plain order (device call 2 of
  // 2026-12-06); dense and packed ones take DefaultSm90WsTileConfig, Sm90WsDensePersistentFor and
  // Sm90WsPairMajorFor (device call 2 of session 7).
  const bool paged = p.is_paged();
  Sm90WsTileConfig config =
      paged ? PagedSm90WsTileConfig(bucket, p.causal) : DefaultSm90WsTileConfig(bucket, p.causal);
  config.pair_major = !paged && Sm90WsPairMajorFor(p.seqlen_k, bucket);
  const bool persistent = paged ? Sm90WsPersistentFor(p.causal, p.seqlen_k, bucket)
                                : Sm90WsDensePersistentFor(p.causal, p.seqlen_k, bucket);
  if (absl::Status s = MakeFwdSm90WsArgs(p, config, persistent, args); !s.ok()) return s;
  cudaError_t err = cudaErrorInvalidValue;
#ifdef ATTN_KERNEL_SM90
  switch (p.dtype) {
#ifdef ATTN_KERNEL_DTYPE_BF16
    case DType::kBFloat16:
      err = LaunchDType<DType::kBFloat16>(args, bucket, stream);
      break;
#endif
#ifdef ATTN_KERNEL_DTYPE_FP16
    case DType::kFloat16:
      err = LaunchDType<DType::kFloat16>(args, bucket, stream);
      break;
#endif
    default:
      break;
  }
#endif
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat("warp-specialized Hopper kernel launch failed: ",
                                            cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

}  // namespace attention::cuda
