// KernelConfig: what makes two pieces of attention work able to run in one launch. It is the one
// description of a kernel configuration in the tree: the server's RequestSpec and the kernels'
// AttentionParams carry it, the batcher buckets by it (its Tie() gives == and the hash), and each
// backend's CheckSupported(KernelConfig) says whether it has a kernel for it. Also the constants
// every layer shares (element types, their sizes, the largest head_dim).
//
// Plain data only (no gRPC, no absl), so CUDA translation units can include it.
#ifndef ATTENTION_KERNELS_KERNEL_CONFIG_H_
#define ATTENTION_KERNELS_KERNEL_CONFIG_H_

#include <cstdint>
#include <tuple>
#include <utility>

namespace attention {

// Element type of q, k and v (and of o, dq, dk, dv: see OutputDType).
//   kFloat8E4M3: OCP E4M3FN (1 sign, 4 exponent, 3 mantissa bits, bias 7, no infinities, 0x7f /
//   0xff NaN, largest finite 448), forward only. The real value of a stored element is
//   e4m3 x descale, the descales being per launch data (AttentionParams::q_descale...).
enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16, kFloat8E4M3 };

// Size in bytes of one element of `dtype`.
constexpr int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat8E4M3:
      return 1;
  }
  return 0;
}

// Element type of o for inputs of `dtype`: FP8 inputs give a bfloat16 o (o is the result the
// caller keeps; rounding it to 3 mantissa bits would throw away most of the float32
// accumulation's accuracy), every other dtype gives o in its own type.
constexpr DType OutputDType(DType dtype) {
  return dtype == DType::kFloat8E4M3 ? DType::kBFloat16 : dtype;
}

// Largest head_dim any backend computes (the CUDA kernels' largest head-dim bucket).
inline constexpr int kMaxHeadDim = 256;

// What a mask holds.
enum class MaskKind : uint8_t {
  kNone,
  // uint8 per element, 0 drops the key.
  kBool,
  // float32 per element, added to the score.
  kAdditive,
};

// The kind of work a launch does.
enum class WorkKind : uint8_t {
  // o (and lse) from q, k, v: the Attention RPC.
  kForward,
  // o (and lse) for a few query rows per sequence against K/V read through page tables: a
  // session's Attend (kernels/paged_kv.h).
  kPagedDecode,
  // dq, dk, dv from q, k, v, o, lse, do: the AttentionBackward RPC.
  kBackward,
};

// How float32 inputs are computed (16-bit and FP8 inputs are always computed from their exact
// values with float32 accumulation, and carry kFull; the CUDA FP8 kernel rounds the softmax
// probabilities P to e4m3 for the P.V product, see docs/kernel.md).
enum class Precision : uint8_t {
  // float32 accuracy: max abs error against float64 within about 1e-5 x max|o|.
  kFull,
  // Products of TensorFloat-32 values (10-bit mantissa), float32 accumulation.
  kTF32,
  // Products of bfloat16 values (8-bit mantissa), float32 accumulation.
  kBF16,
};

// One kernel configuration. Two requests with equal configurations can share one packed
// launch whatever their sequence lengths; everything that differs between them (lengths,
// pointers, per-sequence ALiBi slopes and sinks) lives in AttentionParams.
struct KernelConfig {
  WorkKind kind = WorkKind::kForward;
  DType dtype = DType::kBFloat16;
  Precision precision = Precision::kFull;
  int head_dim = 0;
  int q_heads = 0, kv_heads = 0;  // q_heads % kv_heads == 0

  // multiplies q.k; part of the configuration because one launch has one scale.
  float softmax_scale = 0.f;
  // 0 = off, else score = softcap * tanh(score / softcap).
  float softcap = 0.f;

  // Key j is allowed for query row i iff p(i) - window_left <= j <= p(i) + window_right, where
  // p(i) = i + seqlen_k(b) - seqlen_q(b); -1 = unbounded. `causal` means window_right == 0 and
  // is kept as a flag so that kernels can pick their causal variant; Normalize() enforces it.
  bool causal = false;
  int window_left = -1, window_right = -1;

  // Whether ALiBi slopes are applied (the slopes themselves are per launch data).
  bool alibi = false;
  // Whether learnable attention sinks join each row's softmax denominator (values per launch).
  bool sinks = false;
  MaskKind mask_kind = MaskKind::kNone;
  // kBackward only (false for other kinds): dq without atomics, bit-identical run to run
  // (AttentionRequest.deterministic). The CPU backward is deterministic either way.
  bool deterministic = false;

  // Serving, not a kernel option (kernels ignore it): the executor whose device holds the work's
  // K/V (a session's page pool, one per device), or -1 when any executor may run it. One launch
  // reads one pool, so it splits buckets like an option does.
  int device = -1;

  bool has_window() const { return window_left >= 0 || window_right >= 0; }

  // Every field, in one place: equality, the hash and the batcher's bucket key read this.
  auto Tie() const {
    return std::tie(kind, dtype, precision, head_dim, q_heads, kv_heads, softmax_scale, softcap,
                    causal, window_left, window_right, alibi, sinks, mask_kind, deterministic,
                    device);
  }
  friend bool operator==(const KernelConfig& a, const KernelConfig& b) {
    return a.Tie() == b.Tie();
  }
  friend bool operator!=(const KernelConfig& a, const KernelConfig& b) { return !(a == b); }
  // absl::Hash support (the batcher's bucket map); H is absl's hash state.
  template <typename H>
  friend H AbslHashValue(H h, const KernelConfig& c) {
    return std::apply([&h](const auto&... field) { return H::combine(std::move(h), field...); },
                      c.Tie());
  }
};

// Folds `causal` into the window (right = 0, clamping a wider right side) and sets `causal` when
// the window already says right == 0 with an unbounded left side, so kernels see one canonical
// form.
inline void Normalize(KernelConfig& c) {
  if (c.causal) {
    c.window_right = 0;
  } else if (c.window_right == 0 && c.window_left < 0) {
    c.causal = true;
  }
}

}  // namespace attention

#endif  // ATTENTION_KERNELS_KERNEL_CONFIG_H_
