#include "kernels/cuda/flash_fwd_fp8.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_fwd_fp8_launch.h"
#include "kernels/cuda/flash_fwd_fp8_variants.h"
#include "kernels/cuda/flash_fwd_sm90ws.h"
#include "kernels/cuda/tensor_map_encode.h"

// ATTN_BENCH_FP8_VARIANTS: flash_fwd_fp8_variants.cu is compiled and defines Fp8Variants().
// The build defines ATTN_KERNEL_FP8_HEAD_DIMS, the buckets whose instantiations
// (instantiations/flash_fwd_fp8_hdim*.cu) it compiled, comma-separated and empty without fp8 in
// ATTN_KERNEL_DTYPES (kernels/cuda/CMakeLists.txt, which requires ATTN_KERNEL_SM90 for fp8).

namespace attention::cuda {
namespace {

#ifndef ATTN_KERNEL_FP8_HEAD_DIMS
#error "ATTN_KERNEL_FP8_HEAD_DIMS must list the compiled FP8 buckets (kernels/cuda/CMakeLists.txt)"
#endif
// The compiled buckets after a 0 that keeps the array non-empty.
constexpr int kFp8Buckets[] = {0, ATTN_KERNEL_FP8_HEAD_DIMS};
constexpr bool kCompiled = sizeof(kFp8Buckets) > sizeof(int);

// The kernel's head-dim bucket for `head_dim`: 64, 128 or 256, 0 above.
constexpr int Fp8Bucket(int head_dim) {
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : head_dim <= 256 ? 256 : 0;
}

constexpr bool BucketCompiled(int bucket) {
  for (int d : kFp8Buckets) {
    if (d != 0 && d == bucket) return true;
  }
  return false;
}

int64_t KeyRows(const AttentionParams& p) {
  return p.is_varlen() ? p.total_k : int64_t{p.batch} * p.seqlen_k;
}

// A 4-D byte map {dims[0..3]} with byte strides {strides[0..2]} of dims 1..3, boxes `box` in
// the swizzle of box[0] bytes (128 or 64).
absl::Status EncodeMap(const char* name, const void* data, const cuuint64_t (&dims)[4],
                       const cuuint64_t (&strides)[3], const cuuint32_t (&box)[4],
                       CUtensorMap& map) {
  const EncodeTiledFn encode = EncodeTiled();
  if (encode == nullptr) {
    return absl::UnimplementedError(
        "the CUDA driver does not provide cuTensorMapEncodeTiled (the FP8 kernel's bulk copies "
        "need a CUDA 12 driver)");
  }
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult res =
      encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, const_cast<void*>(data), dims, strides, box,
             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             box[0] == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuTensorMapEncodeTiled refused the map of ", name,
                                            " (CUresult ", static_cast<int>(res), ")"));
  }
  return absl::OkStatus();
}

// The map of q or k: {head_dim, heads, rows, batch}; a dimension of size 1 gets a legal stride
// in place of whatever the params hold there (the map never steps along it).
absl::Status EncodeRowsMap(const char* name, const void* data, int head_dim, int heads,
                           int64_t rows, int batch, int64_t head_stride, int64_t row_stride,
                           int64_t batch_stride, int box_cols, int box_rows, CUtensorMap& map) {
  if (heads == 1) head_stride = head_dim;
  if (batch == 1) batch_stride = row_stride * rows;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(head_stride),
                                 static_cast<cuuint64_t>(row_stride),
                                 static_cast<cuuint64_t>(batch_stride)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box_cols), 1,
                             static_cast<cuuint32_t>(box_rows), 1};
  return EncodeMap(name, data, dims, strides, box, map);
}

template <int kHeadDim>
cudaError_t LaunchBucket(const FwdFp8Args& args, cudaStream_t stream) {
  return args.p.causal ? LaunchFlashFwdFp8Default<kHeadDim, true>(args, stream)
                       : LaunchFlashFwdFp8Default<kHeadDim, false>(args, stream);
}

// Only compiled buckets are instantiated, so a pruned build references no kernel it lacks.
template <int kBucket>
cudaError_t LaunchIfCompiled(const FwdFp8Args& args, cudaStream_t stream) {
  if constexpr (kCompiled && BucketCompiled(kBucket)) {
    return LaunchBucket<kBucket>(args, stream);
  } else {
    (void)args;
    (void)stream;
    return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchFp8(const FwdFp8Args& args, int bucket, cudaStream_t stream) {
  switch (bucket) {
    case 64:
      return LaunchIfCompiled<64>(args, stream);
    case 128:
      return LaunchIfCompiled<128>(args, stream);
    case 256:
      return LaunchIfCompiled<256>(args, stream);
  }
  return cudaErrorInvalidValue;  // CheckFlashFwdFp8 refuses every other bucket first
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

absl::Status CudaError(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("the FP8 kernel's ", what, " failed: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

}  // namespace

bool Fp8KernelCompiled() { return kCompiled; }

bool Fp8KernelRouted() {
  // ATTN_CUDA_FP8=on (read once) routes FP8 launches with the switch off, for the GPU tests of
  // the serving path before the switch goes on.
  static const bool by_environment = [] {
    const char* env = std::getenv("ATTN_CUDA_FP8");
    return env != nullptr && std::string_view(env) == "on";
  }();
  return kRouteFp8Kernel || by_environment;
}

absl::Status CheckFp8Config(const KernelConfig& c) {
  if (!Fp8KernelRouted()) {
    return absl::UnimplementedError(
        "CUDA attention kernel: FLOAT8_E4M3 is not routed to its kernel in this build (the FP8 "
        "kernel awaits its first GPU check, kRouteFp8Kernel; ATTN_CUDA_FP8=on routes it); a CPU "
        "server answers it");
  }
  if (!kCompiled) {
    return absl::UnimplementedError(
        "CUDA attention kernel: FLOAT8_E4M3 has no kernel in this build (configure with fp8 in "
        "ATTN_KERNEL_DTYPES and sm_90a); a CPU server answers it");
  }
  if (c.kind != WorkKind::kForward) {
    return absl::UnimplementedError(
        "CUDA attention kernel: FLOAT8_E4M3 is forward only (no backward, sessions or paged K/V)");
  }
  const int bucket = Fp8Bucket(c.head_dim);
  if (c.head_dim <= 0 || c.head_dim % 16 != 0 || bucket == 0 || !BucketCompiled(bucket)) {
    return absl::UnimplementedError(
        absl::StrCat("CUDA attention kernel: FLOAT8_E4M3 takes head_dim a multiple of 16 up to 256 "
                     "in a compiled bucket (64, 128, 256); got ",
                     c.head_dim));
  }
  if (c.alibi || c.mask_kind != MaskKind::kNone) {
    return absl::UnimplementedError(
        "CUDA attention kernel: FLOAT8_E4M3 takes no ALiBi and no mask (a CPU server does)");
  }
  const bool causal_window = c.window_left < 0 && (c.causal || c.window_right == 0);
  if (c.has_window() && !causal_window) {
    return absl::UnimplementedError(
        "CUDA attention kernel: FLOAT8_E4M3 takes no sliding window other than causal (a CPU "
        "server does)");
  }
  if (!(c.softmax_scale > 0.f)) {
    return absl::UnimplementedError("CUDA attention kernel: FLOAT8_E4M3 needs softmax_scale > 0");
  }
  return absl::OkStatus();
}

absl::Status CheckFlashFwdFp8(const AttentionParams& p) {
  if (!kCompiled) {
    return absl::UnimplementedError(
        "the FP8 (E4M3) kernel is not in this build (it needs fp8 in ATTN_KERNEL_DTYPES and "
        "sm_90a, ATTN_KERNEL_SM90)");
  }
  if (p.dtype != DType::kFloat8E4M3) {
    return absl::InvalidArgumentError(
        "AttentionParams.dtype must be kFloat8E4M3 for the FP8 kernel");
  }
  const int bucket = Fp8Bucket(p.head_dim);
  if (p.head_dim <= 0 || p.head_dim % 16 != 0 || bucket == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.head_dim ", p.head_dim,
                     ": FP8 inputs take multiples of 16 up to 256 (16-byte rows of e4m3)"));
  }
  if (!BucketCompiled(bucket)) {
    return absl::UnimplementedError(absl::StrCat(
        "head_dim ", p.head_dim, ": bucket ", bucket,
        " of the FP8 kernel is not compiled (ATTN_KERNEL_FP8_HEAD_DIMS, ATTN_KERNEL_HEAD_DIMS)"));
  }
  if (p.is_paged() || p.key_range != nullptr || p.seqlens_k != nullptr) {
    return absl::UnimplementedError(
        "the FP8 kernel takes dense and packed batches only (no page_table, seqlens_k or "
        "key_range)");
  }
  if (p.is_varlen() != (p.cu_seqlens_k != nullptr)) {
    return absl::InvalidArgumentError(
        "AttentionParams.cu_seqlens_q and cu_seqlens_k must be both set or both null");
  }
  // The bulk copies' coordinates are int32: rows of q and k, columns of V^T.
  constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1 - 512;
  const int64_t q_rows = p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  const int64_t k_rows = KeyRows(p);
  if (q_rows < 0 || q_rows > kMaxRows || k_rows < 0 || Fp8VtColumns(k_rows, p.batch) > kMaxRows) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams: ", q_rows, " rows of q and ", k_rows,
                     " of k must each stay below 2^31 - 513 (with ", kFp8VtGap,
                     " columns per sequence for k: int32 coordinates of the bulk tensor copies)"));
  }
  if (p.alibi_slopes != nullptr || p.mask_kind != MaskKind::kNone) {
    return absl::UnimplementedError("the FP8 kernel has no ALiBi or mask");
  }
  if (!(p.softmax_scale > 0.f)) {
    return absl::UnimplementedError("the FP8 kernel needs softmax_scale > 0");
  }
  const bool causal_window = p.window_left < 0 && p.window_right == 0;
  if (p.has_window() && !causal_window) {
    return absl::UnimplementedError("the FP8 kernel takes no window other than causal");
  }
  if (p.kv_heads <= 0 || p.q_heads % p.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.q_heads ", p.q_heads,
                                                   " must be a multiple of kv_heads ", p.kv_heads));
  }
  if (int64_t{p.batch} * p.kv_heads > 65535 || p.q_heads > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.batch ", p.batch, " x kv_heads ", p.kv_heads,
                     " and q_heads must each be at most 65535 (the V^T pre-pass's grid)"));
  }
  for (const void* ptr : {p.q, p.k, p.v, static_cast<const void*>(p.o)}) {
    if (!Aligned16(ptr)) {
      return absl::InvalidArgumentError(
          "AttentionParams.q, k, v and o must be 16-byte aligned (bulk tensor copies, 16-byte "
          "loads and stores)");
    }
  }
  for (const int64_t stride :
       {p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.k_batch_stride, p.k_row_stride,
        p.k_head_stride, p.v_batch_stride, p.v_row_stride, p.v_head_stride}) {
    if (stride < 0 || stride % 16 != 0 || stride >= (int64_t{1} << 39)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionParams strides of q, k and v (e4m3) must be multiples of 16 elements below "
          "2^39 (16-byte tensor-map strides); got ",
          stride));
    }
  }
  for (const int64_t stride : {p.o_batch_stride, p.o_row_stride, p.o_head_stride}) {
    if (stride < 0 || stride % 8 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionParams strides of o (bfloat16) must be multiples of 8 elements (16-byte "
          "stores); got ",
          stride));
    }
  }
  if (!CurrentSm90Device().sm90) {
    return absl::UnimplementedError(
        "the FP8 kernel runs on compute capability 9.0 devices only (e4m3 wgmma)");
  }
  return absl::OkStatus();
}

size_t Fp8WorkspaceBytes(const AttentionParams& p) {
  if (p.batch <= 0 || p.head_dim <= 0 || p.kv_heads <= 0) return 0;
  const int64_t bytes =
      int64_t{p.kv_heads} * p.head_dim * Fp8VtColumns(KeyRows(p) > 0 ? KeyRows(p) : 0, p.batch);
  return static_cast<size_t>((bytes + 255) / 256 * 256);
}

absl::Status PrepareFlashFwdFp8(const AttentionParams& p, const Fp8TileConfig& config,
                                bool persistent, void* workspace, cudaStream_t stream,
                                FwdFp8Args& args) {
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RunFlashFwdFp8: needs a 256-byte aligned workspace of Fp8WorkspaceBytes(p) = ",
        Fp8WorkspaceBytes(p), " bytes"));
  }
  const int bucket = Fp8Bucket(p.head_dim);
  const int block_m = 64 * config.consumers;
  const int64_t m_blocks = (int64_t{p.seqlen_q} + block_m - 1) / block_m;
  if (m_blocks * p.q_heads * p.batch > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionParams: ", m_blocks * p.q_heads * p.batch, " query tiles (ceil(seqlen_q / ",
        block_m, ") x q_heads x batch) exceed 2^31 - 1"));
  }
  args.p = p;
  const Sm90Device device = CurrentSm90Device();
  // The schedule's L2 groups count 16-bit K / V: half the head dim is this kernel's bytes.
  args.sched =
      MakeFwdSm90WsSchedule(p.batch, p.seqlen_q, p.seqlen_k, p.q_heads, p.kv_heads,
                            (p.head_dim + 1) / 2, block_m, device.sms, device.l2_bytes, persistent);
  const bool packed = p.is_varlen();
  const int map_batch = packed ? 1 : p.batch;
  const int64_t rows_q = packed ? p.total_q : p.seqlen_q;
  const int64_t rows_k_all = packed ? p.total_k : p.seqlen_k;
  const int64_t rows_k = rows_k_all > 0 ? rows_k_all : 1;  // maps need dimensions >= 1
  const int d_box = bucket < 128 ? bucket : 128;
  if (absl::Status s =
          EncodeRowsMap("q", p.q, p.head_dim, p.q_heads, rows_q, map_batch, p.q_head_stride,
                        p.q_row_stride, p.q_batch_stride, d_box, block_m, args.q);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          EncodeRowsMap("k", p.k, p.head_dim, p.kv_heads, rows_k, map_batch, p.k_head_stride,
                        p.k_row_stride, p.k_batch_stride, d_box, config.block_n, args.k);
      !s.ok()) {
    return s;
  }
  const int64_t cols = Fp8VtColumns(KeyRows(p), p.batch);
  {
    const cuuint64_t dims[4] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(p.head_dim),
                                static_cast<cuuint64_t>(p.kv_heads), 1};
    const cuuint64_t strides[3] = {static_cast<cuuint64_t>(cols),
                                   static_cast<cuuint64_t>(cols * p.head_dim),
                                   static_cast<cuuint64_t>(cols * p.head_dim * p.kv_heads)};
    // V^T panels of 128 keys, or 64 when the KV tile is not a multiple of 128 (Fp8Traits).
    const cuuint32_t box[4] = {config.block_n % 128 == 0 ? 128u : 64u,
                               static_cast<cuuint32_t>(bucket), 1, 1};
    if (absl::Status s = EncodeMap("v (V^T workspace)", workspace, dims, strides, box, args.vt);
        !s.ok()) {
      return s;
    }
  }
  Fp8TransposeArgs t;
  t.v = static_cast<const uint8_t*>(p.v);
  t.v_batch_stride = p.v_batch_stride;
  t.v_row_stride = p.v_row_stride;
  t.v_head_stride = p.v_head_stride;
  t.vt = static_cast<uint8_t*>(workspace);
  t.cols = cols;
  t.head_dim = p.head_dim;
  t.kv_heads = p.kv_heads;
  t.batch = p.batch;
  t.seqlen_k = p.seqlen_k;
  t.cu_seqlens_k = p.cu_seqlens_k;
  return CudaError(LaunchTransposeVFp8(t, stream), "V^T pre-pass");
}

absl::Status RunFlashFwdFp8(const AttentionParams& params, void* workspace, cudaStream_t stream) {
  AttentionParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (absl::Status s = CheckFlashFwdFp8(p); !s.ok()) return s;
  if (p.batch == 0 || p.seqlen_q == 0 || (p.is_varlen() && p.total_q == 0)) {
    return absl::OkStatus();
  }
  const int bucket = Fp8Bucket(p.head_dim);
  FwdFp8Args args;
  if (absl::Status s = PrepareFlashFwdFp8(p, DefaultFp8TileConfig(bucket),
                                          Fp8PersistentFor(p.causal, p.seqlen_k, bucket), workspace,
                                          stream, args);
      !s.ok()) {
    return s;
  }
  return CudaError(LaunchFp8(args, bucket, stream), "launch");
}

std::string Fp8Variant::Label() const {
  return absl::StrCat(
      "d", head_dim, " ", 64 * config.consumers, "x", config.block_n, "/", config.consumers, "c/",
      config.stages, "s", config.fma_exp > 0 ? absl::StrCat("/e", config.fma_exp) : "",
      config.tree ? "/r" : "", config.sum_mma ? "/m" : "", config.lazy ? "/l" : "",
      config.spec == 1   ? "/s"
      : config.spec == 2 ? "/s2"
                         : "",
      config.no_turns ? "/f" : "", config.lse_f32 ? "/x" : "", prepass_only ? "/vt-only" : "",
      grid == Fp8Grid::kPersistent ? "+p"
      : grid == Fp8Grid::kPerTile  ? "+t"
                                   : "");
}

#ifndef ATTN_BENCH_FP8_VARIANTS
const std::vector<Fp8Variant>& Fp8Variants() {
  static const std::vector<Fp8Variant> none;
  return none;
}

std::string Fp8PipeProbe() { return "not in this build (ATTN_BENCH_FP8_VARIANTS)"; }
#endif

absl::Status RunFlashFwdFp8Variant(const AttentionParams& params, const Fp8Variant& variant,
                                   void* workspace, cudaStream_t stream) {
  AttentionParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (absl::Status s = CheckFlashFwdFp8(p); !s.ok()) return s;
  const int bucket = Fp8Bucket(p.head_dim);
  if (bucket != variant.head_dim) {
    return absl::UnimplementedError(
        absl::StrCat("head_dim ", p.head_dim, ": not the bucket of ", variant.Label()));
  }
  if (p.batch == 0 || p.seqlen_q == 0 || (p.is_varlen() && p.total_q == 0)) {
    return absl::OkStatus();
  }
  const bool persistent = variant.grid == Fp8Grid::kRule
                              ? Fp8PersistentFor(p.causal, p.seqlen_k, bucket)
                              : variant.grid == Fp8Grid::kPersistent;
  FwdFp8Args args;
  if (absl::Status s = PrepareFlashFwdFp8(p, variant.config, persistent, workspace, stream, args);
      !s.ok()) {
    return s;
  }
  return CudaError((p.causal ? variant.causal : variant.dense)(args, stream), "launch");
}

}  // namespace attention::cuda
