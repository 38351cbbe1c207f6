// The whole CUDA backward pass (kernels/cuda/flash_bwd_*: the preprocess, the dK / dV kernel with
// its dQ atomics or the deterministic dQ kernel, the postprocess) compiled by the host compiler
// and run on the CPU by the warp emulator (emulation/warp_emulator.h), every block of every grid
// in the order DispatchFlashBwd launches them, against float64 gradients computed here from the
// backward's definition (kernels/cpu/attention_backward_cpu.h) on top of the float64 forward
// (tests/reference/). Runs anywhere (label cpu): CI, which has no GPU, executes the kernels'
// fragment layouts (ldmatrix with and without .trans, m16n8k16), the swapped tile ranges, every
// score option, GQA sums, packed batches, the workspace addressing and the barrier order.
//
// The element-wise kernels of flash_bwd_prepost.cu are device code in a .cu file whose launchers
// the host compiler cannot parse: CMake copies the file's device part (its anonymous namespace)
// into flash_bwd_prepost_device.inc in the build tree, so the test runs the real code.
//
// Every output and the workspace are poisoned with NaN, and each output has a poisoned tail that
// must stay untouched. Gradients the definition makes exactly 0 (query rows without an allowed
// key, keys no query row sees) must be exactly 0.
#include "warp_emulator.h"  // before the kernels: it provides what nvcc would

// clang-format off
#include "kernels/cuda/flash_bwd_kernel.cuh"
#include "flash_bwd_prepost_device.inc"
// clang-format on

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "kernels/dtype.h"
#include "tests/reference/reference_attention.h"

// The kernels' `extern __shared__` array.
namespace attention::cuda::bwd {
alignas(1024) unsigned char smem[emu::kSmemBytes];
}  // namespace attention::cuda::bwd

namespace attention::cuda {
namespace {

using testing::LoadElement;
using testing::ReferenceAttention;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr int kGuard = 64;  // poisoned elements after each output

// max |error| <= tolerance x max |reference| per tensor, as the CPU backward's test states them.
double Tolerance(DType dtype) { return dtype == DType::kFloat16 ? 2e-3 : 1.5e-2; }

// Runs `kernel` as every block of `grid` with `smem_bytes` of dynamic shared memory (an access past
// it fails), shared memory poisoned with NaN before each block. With
// `reverse`, the blocks run from the last to the first, each with its warps one at a time from
// the last (emu::Schedule::kSerialReversed).
template <typename Kernel>
void RunGrid(dim3 grid, int threads, int smem_bytes, bool reverse, Kernel&& kernel) {
  emu::BlockSchedule() = reverse ? emu::Schedule::kSerialReversed : emu::Schedule::kLockstep;
  const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
  for (int64_t n = 0; n < blocks; ++n) {
    const int64_t idx = reverse ? blocks - 1 - n : n;
    const dim3 block(static_cast<unsigned>(idx % grid.x),
                     static_cast<unsigned>(idx / grid.x % grid.y),
                     static_cast<unsigned>(idx / (int64_t{grid.x} * grid.y)));
    std::memset(bwd::smem, 0xff, sizeof(bwd::smem));
    emu::RunBlock(grid, block, threads, bwd::smem, kernel, smem_bytes);
  }
}

// One problem: shapes and options; packed when lens_q is set.
struct Case {
  explicit Case(std::string case_name) : name(std::move(case_name)) {}
  Case& Seq(int q, int k) { return seqlen_q = q, seqlen_k = k, *this; }
  Case& Batch(int b) { return batch = b, *this; }
  Case& Heads(int q, int kv) { return q_heads = q, kv_heads = kv, *this; }
  Case& Dim(int d) { return head_dim = d, *this; }
  Case& Packed(std::vector<int> q, std::vector<int> k) {
    return lens_q = std::move(q), lens_k = std::move(k), *this;
  }
  Case& Causal() { return causal = true, *this; }
  Case& Window(int left, int right) { return window_left = left, window_right = right, *this; }
  Case& Softcap(float cap) { return softcap = cap, *this; }
  Case& Scale(float s) { return scale = s, *this; }
  Case& Alibi(bool per_batch) { return alibi = true, alibi_per_batch = per_batch, *this; }
  Case& Mask(MaskKind kind) { return mask = kind, *this; }
  Case& MaskedRow() { return masked_row = true, *this; }
  Case& KeyPadding() { return mask = MaskKind::kBool, key_padding = true, *this; }
  Case& Sinks() { return sinks = true, *this; }
  Case& General() { return force_general = true, *this; }
  Case& Strided() { return strided = true, *this; }

  std::string name;
  int batch = 1, seqlen_q = 16, seqlen_k = 16, q_heads = 2, kv_heads = 2, head_dim = 64;
  std::vector<int> lens_q, lens_k;
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  bool alibi = false, alibi_per_batch = false;
  MaskKind mask = MaskKind::kNone;
  bool masked_row = false;   // bool mask: query row 1 of every (sequence, head) sees no key
  bool key_padding = false;  // bool mask [batch, seqlen_k]
  bool sinks = false;
  bool force_general = false;  // the kGeneral kernels even without an option that needs them
  // q / dq and v / dv head-major ([.., heads, rows, head_dim]), o / do and k / dk rows padded:
  // every tensor its own strides, with elements between the rows that nothing may write.
  bool strided = false;
};

// A gradient as the test expects it, over its whole buffer (padding included).
struct Expected {
  std::vector<double> value;
  std::vector<bool> described;  // inside the described rows and heads: written, else untouched
  // Exactly 0: dq of rows without an allowed key, dk and dv of keys no row sees. (Not every exact
  // 0 of the reference: a row with one key has dS = 0 exactly, but D from the rounded o leaves a
  // rounding error.)
  std::vector<bool> zero;
  void Resize(size_t n, bool zero_default) {
    value.assign(n, 0.0);
    described.assign(n, false);
    zero.assign(n, zero_default);
  }
};

// Host buffers of one problem and the params that point into them.
struct Problem {
  BwdParams p;
  std::vector<uint16_t> q, k, v, o, dout;
  std::vector<float> lse, slopes, sink_logits, additive;
  std::vector<uint8_t> bool_mask;
  std::vector<int32_t> cu_q, cu_k;
  int64_t rows_q = 0, rows_k = 0;
  // The float64 forward and gradients.
  std::vector<double> ref_o, ref_lse;
  std::vector<double> ref_dsum;  // D, [q_heads, rows_q] as the workspace's dsum
  Expected dq, dk, dv;
};

uint16_t Encode(DType dtype, double x) {
  const float f = static_cast<float>(x);
  return dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBFloat16(f);
}

// dq, dk, dv of `pr` in float64 from the backward's definition, with P from the float64
// forward's lse; checks on the way that each row's P (and its sink) sums to 1, so that the
// logits here are the forward's.
void ReferenceGradients(Problem& pr) {
  const BwdParams& p = pr.p;
  const DType dt = p.dtype;
  pr.dq.Resize(pr.q.size(), false);
  pr.dk.Resize(pr.k.size(), true);
  pr.dv.Resize(pr.v.size(), true);
  pr.ref_dsum.assign(pr.rows_q * p.q_heads, 0.0);
  const int group = p.q_heads / p.kv_heads;
  std::vector<double> logit, prob, dprob, dcap;
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q_off = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t k_off = p.is_varlen() ? p.cu_seqlens_k[b] : 0;
    const int64_t len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - q_off : p.seqlen_q;
    const int64_t len_k = p.is_varlen() ? p.cu_seqlens_k[b + 1] - k_off : p.seqlen_k;
    logit.assign(len_k, 0.0);
    prob.assign(len_k, 0.0);
    dprob.assign(len_k, 0.0);
    dcap.assign(len_k, 1.0);
    for (int h = 0; h < p.q_heads; ++h) {
      const int kv_h = h / group;
      const double slope = p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.0;
      const double sink = p.sinks ? p.sink_logits[b * p.sink_batch_stride + h] : kNegInf;
      // Every key of the sequence, also with no query row (len_q = 0).
      for (int64_t j = 0; j < len_k; ++j) {
        for (int d = 0; d < p.head_dim; ++d) {
          pr.dk.described[b * p.k_batch_stride + (k_off + j) * p.k_row_stride +
                          kv_h * p.k_head_stride + d] = true;
          pr.dv.described[b * p.v_batch_stride + (k_off + j) * p.v_row_stride +
                          kv_h * p.v_head_stride + d] = true;
        }
      }
      for (int64_t i = 0; i < len_q; ++i) {
        const int64_t pos = i + len_k - len_q;
        const int64_t q_row =
            b * p.q_batch_stride + (q_off + i) * p.q_row_stride + h * p.q_head_stride;
        const int64_t o_row =
            b * p.o_batch_stride + (q_off + i) * p.o_row_stride + h * p.o_head_stride;
        const double lse = pr.ref_lse[b * p.lse_batch_stride + h * p.lse_head_stride + q_off + i];
        const auto k_row = [&](int64_t j) {
          return b * p.k_batch_stride + (k_off + j) * p.k_row_stride + kv_h * p.k_head_stride;
        };
        const auto v_row = [&](int64_t j) {
          return b * p.v_batch_stride + (k_off + j) * p.v_row_stride + kv_h * p.v_head_stride;
        };
        for (int d = 0; d < p.head_dim; ++d) pr.dq.described[q_row + d] = true;
        double total = lse == kNegInf || sink == kNegInf ? 0.0 : std::exp(sink - lse);
        double d_row = 0.0;  // D = sum_j P dP = rowsum(dO * O) of the exact O
        for (int64_t j = 0; j < len_k; ++j) {
          prob[j] = 0.0;
          dprob[j] = 0.0;
          const int64_t right = p.causal ? 0 : p.window_right;
          if (p.window_left >= 0 && j < pos - p.window_left) continue;
          if (right >= 0 && j > pos + right) continue;
          const int64_t mask_index = b * p.mask_batch_stride + h * p.mask_head_stride +
                                     i * p.mask_row_stride + j * p.mask_col_stride;
          if (p.mask_kind == MaskKind::kBool &&
              static_cast<const uint8_t*>(p.mask)[mask_index] == 0) {
            continue;
          }
          double dot = 0.0, dp = 0.0;
          for (int d = 0; d < p.head_dim; ++d) {
            dot += LoadElement(dt, p.q, q_row + d) * LoadElement(dt, p.k, k_row(j) + d);
            dp += LoadElement(dt, p.do_, o_row + d) * LoadElement(dt, p.v, v_row(j) + d);
          }
          double s = p.softmax_scale * dot;
          dcap[j] = 1.0;
          if (p.softcap > 0.f) {
            const double th = std::tanh(s / p.softcap);
            s = p.softcap * th;
            dcap[j] = 1.0 - th * th;
          }
          if (p.alibi_slopes) s -= slope * static_cast<double>(std::llabs(pos - j));
          if (p.mask_kind == MaskKind::kAdditive)
            s += static_cast<const float*>(p.mask)[mask_index];
          logit[j] = s;
          prob[j] = lse == kNegInf ? 0.0 : std::exp(s - lse);
          dprob[j] = dp;
          total += prob[j];
          d_row += prob[j] * dp;
        }
        if (lse == kNegInf) {
          for (int d = 0; d < p.head_dim; ++d) pr.dq.zero[q_row + d] = true;
        }
        pr.ref_dsum[h * pr.rows_q + (p.is_varlen() ? q_off : b * p.seqlen_q) + i] = d_row;
        if (lse != kNegInf) {
          EXPECT_NEAR(total, 1.0, 1e-9) << "reference softmax of row " << i << " head " << h;
        }
        for (int64_t j = 0; j < len_k; ++j) {
          if (prob[j] == 0.0) continue;
          const double ds = prob[j] * (dprob[j] - d_row) * dcap[j];
          for (int d = 0; d < p.head_dim; ++d) {
            pr.dk.zero[k_row(j) + d] = false;
            pr.dv.zero[v_row(j) + d] = false;
            pr.dq.value[q_row + d] += p.softmax_scale * ds * LoadElement(dt, p.k, k_row(j) + d);
            pr.dk.value[k_row(j) + d] += p.softmax_scale * ds * LoadElement(dt, p.q, q_row + d);
            pr.dv.value[v_row(j) + d] += prob[j] * LoadElement(dt, p.do_, o_row + d);
          }
        }
      }
    }
  }
}

Problem MakeProblem(const Case& c, DType dtype) {
  Problem pr;
  BwdParams& p = pr.p;
  std::mt19937_64 rng(std::hash<std::string>()(c.name));
  std::normal_distribution<double> normal(0.0, 1.0);
  const bool packed = !c.lens_q.empty();
  p.kind = WorkKind::kBackward;
  p.dtype = dtype;
  p.head_dim = c.head_dim;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.softmax_scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.softcap = c.softcap;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  if (packed) {
    pr.cu_q = {0};
    pr.cu_k = {0};
    for (size_t b = 0; b < c.lens_q.size(); ++b) {
      pr.cu_q.push_back(pr.cu_q.back() + c.lens_q[b]);
      pr.cu_k.push_back(pr.cu_k.back() + c.lens_k[b]);
    }
    p.batch = static_cast<int>(c.lens_q.size());
    p.seqlen_q = *std::max_element(c.lens_q.begin(), c.lens_q.end());
    p.seqlen_k = *std::max_element(c.lens_k.begin(), c.lens_k.end());
    p.total_q = pr.cu_q.back();
    p.total_k = pr.cu_k.back();
    p.cu_seqlens_q = pr.cu_q.data();
    p.cu_seqlens_k = pr.cu_k.data();
  } else {
    p.batch = c.batch;
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = c.seqlen_k;
  }
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  SetContiguousStrides(p);
  pr.rows_q = packed ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  pr.rows_k = packed ? p.total_k : int64_t{p.batch} * p.seqlen_k;
  const auto random = [&](int64_t n, double sigma) {
    std::vector<uint16_t> x(n);
    for (uint16_t& e : x) e = Encode(dtype, sigma * normal(rng));
    return x;
  };
  if (c.strided) {
    const int64_t d = p.head_dim;
    const int64_t len_q = packed ? p.total_q : p.seqlen_q, len_k = packed ? p.total_k : p.seqlen_k;
    p.q_row_stride = d + 8;
    p.q_head_stride = len_q * p.q_row_stride + 16;
    p.q_batch_stride = packed ? 0 : p.q_heads * p.q_head_stride + 8;
    p.o_row_stride = p.q_heads * d + 24;
    p.o_batch_stride = packed ? 0 : len_q * p.o_row_stride;
    p.k_row_stride = p.kv_heads * d + 16;
    p.k_batch_stride = packed ? 0 : len_k * p.k_row_stride + 8;
    p.v_row_stride = d;
    p.v_head_stride = len_k * d + 8;
    p.v_batch_stride = packed ? 0 : p.kv_heads * p.v_head_stride;
  }
  // Elements spanned by a tensor of `heads` heads (the last element of the last row, plus one).
  const auto span = [&](int64_t batch_stride, int64_t row_stride, int64_t head_stride, int heads,
                        int64_t rows) {
    return (packed ? 0 : (p.batch - 1) * batch_stride) + (rows - 1) * row_stride +
           (heads - 1) * head_stride + p.head_dim;
  };
  const int64_t seq_q = packed ? p.total_q : p.seqlen_q, seq_k = packed ? p.total_k : p.seqlen_k;
  pr.q = random(span(p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.q_heads, seq_q), 1.0);
  pr.k = random(span(p.k_batch_stride, p.k_row_stride, p.k_head_stride, p.kv_heads, seq_k), 1.0);
  pr.v = random(span(p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.kv_heads, seq_k), 1.0);
  pr.dout = random(span(p.o_batch_stride, p.o_row_stride, p.o_head_stride, p.q_heads, seq_q), 1.0);
  p.q = pr.q.data();
  p.k = pr.k.data();
  p.v = pr.v.data();
  p.do_ = pr.dout.data();
  if (c.alibi) {
    p.alibi = true;
    p.alibi_batch_stride = c.alibi_per_batch ? p.q_heads : 0;
    pr.slopes.resize((c.alibi_per_batch ? p.batch : 1) * p.q_heads);
    for (size_t e = 0; e < pr.slopes.size(); ++e) pr.slopes[e] = 0.05f * (1 + e % 5);
    p.alibi_slopes = pr.slopes.data();
  }
  if (c.sinks) {
    p.sinks = true;
    pr.sink_logits.resize(p.q_heads);
    for (float& s : pr.sink_logits) s = static_cast<float>(normal(rng));
    p.sink_logits = pr.sink_logits.data();
  }
  p.mask_kind = c.masked_row && c.mask == MaskKind::kNone ? MaskKind::kBool : c.mask;
  if (p.mask_kind != MaskKind::kNone) {
    // Indexed by local (i, j). Bool: [batch, q_heads, seqlen_q, seqlen_k], or [batch, seqlen_k]
    // broadcast over heads and rows (a key-padding mask: head and row strides 0). Additive:
    // [batch, seqlen_k, seqlen_q] (transposed: column stride seqlen_q) broadcast over heads.
    const int64_t sq = p.seqlen_q, sk = p.seqlen_k;
    int64_t n = 0;
    if (p.mask_kind == MaskKind::kAdditive) {
      p.mask_col_stride = sq;
      p.mask_row_stride = 1;
      p.mask_head_stride = 0;
      p.mask_batch_stride = sq * sk;
      n = p.batch * sq * sk;
    } else if (c.key_padding) {
      p.mask_col_stride = 1;
      p.mask_batch_stride = sk;
      n = p.batch * sk;
    } else {
      p.mask_col_stride = 1;
      p.mask_row_stride = sk;
      p.mask_head_stride = sq * sk;
      p.mask_batch_stride = p.q_heads * sq * sk;
      n = p.batch * p.q_heads * sq * sk;
    }
    if (p.mask_kind == MaskKind::kBool) {
      std::bernoulli_distribution keep(0.7);
      pr.bool_mask.resize(n);
      for (int64_t e = 0; e < n; ++e) {
        pr.bool_mask[e] = keep(rng) && !(c.masked_row && !c.key_padding && e / sk % sq == 1);
      }
      p.mask = pr.bool_mask.data();
    } else {
      std::uniform_real_distribution<float> bias(-2.f, 1.f);
      std::bernoulli_distribution drop(0.1);
      pr.additive.resize(n);
      for (float& e : pr.additive) e = drop(rng) ? -INFINITY : bias(rng);
      p.mask = pr.additive.data();
    }
  }
  // The forward in float64; o and lse as the kernels receive them (o in the element type).
  pr.ref_o.assign(pr.dout.size(), 0.0);
  pr.ref_lse.assign(pr.rows_q * p.q_heads, kNegInf);
  ReferenceAttention(p, pr.ref_o.data(), pr.ref_lse.data());
  pr.o.resize(pr.ref_o.size());
  for (size_t e = 0; e < pr.o.size(); ++e) pr.o[e] = Encode(dtype, pr.ref_o[e]);
  pr.lse.assign(pr.ref_lse.begin(), pr.ref_lse.end());
  p.o = pr.o.data();
  p.lse = pr.lse.data();
  ReferenceGradients(pr);
  return pr;
}

// The outputs of one emulated backward pass (each with kGuard poisoned elements at its end) and
// its workspace.
struct Outputs {
  std::vector<uint16_t> dq, dk, dv;
  std::vector<float> dq_accum, dsum, lse_log2;
};

// SelectBackwardVariant's rule (flash_bwd_dispatch.cc).
bool NeedsGeneral(const BwdParams& p) {
  return p.alibi || p.alibi_slopes != nullptr || p.softcap > 0.f ||
         p.mask_kind != MaskKind::kNone || !(p.softmax_scale > 0.f);
}

// DispatchFlashBwd's launch sequence on the emulator: preprocess, the dK / dV kernel with the
// tiles of `Traits` (a BwdKernelTraits), then the dQ kernel (deterministic) or the postprocess.
template <typename Element, int kHeadDim, bool kGeneral, typename Traits>
Outputs RunBackward(const Problem& pr, bool deterministic, bool reverse_grids) {
  BwdParams p = pr.p;
  p.deterministic = deterministic;
  Outputs out;
  constexpr uint16_t kPoison = 0xffff;  // NaN in float16 and bfloat16
  out.dq.assign(pr.q.size() + kGuard, kPoison);
  out.dk.assign(pr.k.size() + kGuard, kPoison);
  out.dv.assign(pr.v.size() + kGuard, kPoison);
  p.dq = out.dq.data();
  p.dk = out.dk.data();
  p.dv = out.dv.data();
  p.q_rows = pr.rows_q;
  out.dsum.assign(p.q_rows * p.q_heads, NAN);
  out.lse_log2.assign(p.q_rows * p.q_heads, NAN);
  p.dsum = out.dsum.data();
  p.lse_log2 = out.lse_log2.data();
  if (!deterministic) {
    out.dq_accum.assign(p.q_rows * p.q_heads * p.head_dim, NAN);
    p.dq_accum = out.dq_accum.data();
  }
  constexpr int kRows = 4;  // flash_bwd_prepost.cu's kRowsPerBlock
  const dim3 rows_grid((p.seqlen_q + kRows - 1) / kRows, p.q_heads, p.batch);
  RunGrid(rows_grid, 32 * kRows, 0, reverse_grids, [&p] { BwdPreprocessKernel<Element>(p); });

  static_assert(Traits::kHeadDim == kHeadDim);
  RunGrid(dim3((p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, p.kv_heads, p.batch),
          Traits::kNThreads, Traits::kSmemBytes, reverse_grids,
          [&p] { bwd::FlashBwdKernel<Traits, Element, kGeneral>(p); });
  if (deterministic) {
    using DqTraits = typename DefaultBwdDqKernelTraits<kHeadDim>::type;
    RunGrid(dim3((p.seqlen_q + DqTraits::kBlockM - 1) / DqTraits::kBlockM, p.q_heads, p.batch),
            DqTraits::kNThreads, DqTraits::kSmemBytes, reverse_grids,
            [&p] { bwd::FlashBwdDqKernel<DqTraits, Element, kGeneral>(p); });
  } else {
    RunGrid(rows_grid, 32 * kRows, 0, reverse_grids, [&p] { BwdPostprocessKernel<Element>(p); });
  }
  return out;
}

// got (with its guard) against want: within tolerance, exactly 0 where want.zero, elements
// outside the described ones (padding, guard) untouched. Returns max |error| / max |ref|.
double ExpectClose(const std::string& what, DType dtype, const std::vector<uint16_t>& got,
                   const Expected& want) {
  const std::vector<double>& ref = want.value;
  double max_ref = 0.0, max_err = 0.0;
  int64_t worst = -1, non_finite = 0, nonzero = 0, first_bad = -1, untouched = 0;
  for (size_t e = 0; e < got.size(); ++e) {
    if (e >= ref.size() || !want.described[e]) {
      untouched += got[e] != 0xffff;
      continue;
    }
    const double g = dtype == DType::kFloat16 ? HalfToFloat(got[e]) : BFloat16ToFloat(got[e]);
    if (!std::isfinite(g)) {
      if (first_bad < 0) first_bad = static_cast<int64_t>(e);
      ++non_finite;
      continue;
    }
    if (want.zero[e] && g != 0.0) ++nonzero;
    max_ref = std::max(max_ref, std::abs(ref[e]));
    if (std::abs(g - ref[e]) > max_err) {
      max_err = std::abs(g - ref[e]);
      worst = static_cast<int64_t>(e);
    }
  }
  EXPECT_EQ(non_finite, 0) << what << ": elements not finite (unwritten?), first at " << first_bad;
  EXPECT_EQ(nonzero, 0) << what << ": elements nonzero where the gradient is exactly 0";
  EXPECT_LE(max_err, Tolerance(dtype) * max_ref)
      << what << ": max error " << max_err << " at element " << worst << ", max |ref| " << max_ref;
  EXPECT_EQ(untouched, 0) << what << ": elements written outside the described rows and heads";
  return max_ref > 0 ? max_err / max_ref : max_err;
}

// "64x128 8w 4/4/2": block_m x block_n, warps, and the warps along the keys of S^T / dP^T, along
// the keys of dK / dV and along the queries of dQ (BwdTileConfig).
template <typename Traits>
std::string TilesLabel() {
  char label[64];
  std::snprintf(label, sizeof(label), "%dx%d %dw %d/%d/%d%s", Traits::kBlockM, Traits::kBlockN,
                Traits::kNWarps, Traits::kSdpWarpsN, Traits::kDkvWarpsN, Traits::kDqWarpsM,
                Traits::kQStages == 2 ? " 2q" : "");
  return label;
}

// One case through both dQ modes and both schedules, the dK / dV kernel with the tiles of
// `Traits` (by default the bucket's, DefaultBwdTileConfig).
template <typename Element, int kHeadDim,
          typename Traits = typename DefaultBwdKernelTraits<kHeadDim>::type>
void RunCase(const Case& c) {
  SCOPED_TRACE(c.name + ", tiles " + TilesLabel<Traits>());
  const auto start = std::chrono::steady_clock::now();
  const DType dtype = std::is_same_v<Element, __nv_bfloat16> ? DType::kBFloat16 : DType::kFloat16;
  const Problem pr = MakeProblem(c, dtype);
  const bool general = c.force_general || NeedsGeneral(pr.p);
  const auto run = [&](bool deterministic, bool reverse) {
    return general ? RunBackward<Element, kHeadDim, true, Traits>(pr, deterministic, reverse)
                   : RunBackward<Element, kHeadDim, false, Traits>(pr, deterministic, reverse);
  };
  Outputs atomic, atomic_again, det, det_again;
  try {
    atomic = run(false, false);
    atomic_again = run(false, true);
    det = run(true, false);
    det_again = run(true, true);
  } catch (const std::exception& e) {
    FAIL() << "emulation failed: " << e.what();
  }
  // The preprocess's workspace: D against the exact one (o rounded to the element type aside),
  // lse_log2 = lse * log2(e).
  double max_d = 0.0, max_d_err = 0.0, max_lse_err = 0.0;
  for (size_t e = 0; e < pr.ref_dsum.size(); ++e) {
    max_d = std::max(max_d, std::abs(pr.ref_dsum[e]));
    max_d_err = std::max(max_d_err, std::abs(atomic.dsum[e] - pr.ref_dsum[e]));
  }
  for (int b = 0; b < pr.p.batch; ++b) {
    const int64_t q_off = pr.p.is_varlen() ? pr.cu_q[b] : 0;
    const int64_t len_q = pr.p.is_varlen() ? pr.cu_q[b + 1] - q_off : pr.p.seqlen_q;
    for (int h = 0; h < pr.p.q_heads; ++h) {
      for (int64_t i = 0; i < len_q; ++i) {
        const double lse =
            pr.ref_lse[b * pr.p.lse_batch_stride + h * pr.p.lse_head_stride + q_off + i];
        const double got =
            atomic.lse_log2[h * pr.rows_q + (pr.p.is_varlen() ? q_off : b * pr.p.seqlen_q) + i];
        const double want = lse == kNegInf ? INFINITY : lse * 1.4426950408889634;
        max_lse_err = std::max(max_lse_err, want == got ? 0.0 : std::abs(got - want));
      }
    }
  }
  EXPECT_LE(max_d_err, 2 * Tolerance(dtype) * std::max(max_d, 1.0)) << "preprocess: D";
  EXPECT_LE(max_lse_err, 1e-4) << "preprocess: lse_log2";
  const double e_dq = ExpectClose("dq", dtype, atomic.dq, pr.dq);
  const double e_dk = ExpectClose("dk", dtype, atomic.dk, pr.dk);
  const double e_dv = ExpectClose("dv", dtype, atomic.dv, pr.dv);
  const double e_dq_det = ExpectClose("deterministic dq", dtype, det.dq, pr.dq);
  // The other schedule: blocks and warps in reverse order, one warp at a time.
  ExpectClose("dq, reversed", dtype, atomic_again.dq, pr.dq);
  ExpectClose("dk, reversed", dtype, atomic_again.dk, pr.dk);
  ExpectClose("dv, reversed", dtype, atomic_again.dv, pr.dv);
  ExpectClose("deterministic dq, reversed", dtype, det_again.dq, pr.dq);
  // The dK / dV kernel computes dk and dv the same way in both modes; no result depends on the
  // order of blocks or of threads.
  EXPECT_TRUE(atomic.dk == det.dk) << "dk differs between atomic and deterministic mode";
  EXPECT_TRUE(atomic.dv == det.dv) << "dv differs between atomic and deterministic mode";
  EXPECT_TRUE(det.dq == det_again.dq) << "deterministic dq differs with the block and thread order";
  EXPECT_TRUE(det.dk == det_again.dk && det.dv == det_again.dv)
      << "dk / dv differ with the block and thread order";
  // dq of the two modes: each within tolerance of the reference, so within twice of each other.
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t e = 0; e < pr.dq.value.size(); ++e) {
    const auto decode = [&](uint16_t x) {
      return dtype == DType::kFloat16 ? HalfToFloat(x) : BFloat16ToFloat(x);
    };
    if (!pr.dq.described[e]) continue;
    max_ref = std::max(max_ref, std::abs(pr.dq.value[e]));
    const double diff = std::abs(decode(atomic.dq[e]) - decode(det.dq[e]));
    if (!(diff <= max_diff)) max_diff = diff;
  }
  EXPECT_LE(max_diff, 2 * Tolerance(dtype) * max_ref) << "dq: atomic vs deterministic";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("  %-28s %s d=%3d/%3d %-16s %s: err/max dq %.1e (det %.1e) dk %.1e dv %.1e  %.1f s\n",
              c.name.c_str(), dtype == DType::kFloat16 ? "fp16" : "bf16", c.head_dim, kHeadDim,
              TilesLabel<Traits>().c_str(), general ? "general" : "dense  ", e_dq, e_dq_det, e_dk,
              e_dv, seconds);
}

// Bucket 64 (bfloat16): ragged tails over both tile sizes, Sq != Sk, GQA.
TEST(BackwardKernelEmulationTest, Bf16D64Plain) {
  RunCase<__nv_bfloat16, 64>(Case("plain").Seq(70, 100).Heads(4, 2));
}

// Causal with seqlen_q > seqlen_k: the first 30 rows see no key (lse = -inf, zero gradients),
// and keys before the diagonal of later tiles.
TEST(BackwardKernelEmulationTest, Bf16D64CausalSqGtSk) {
  RunCase<__nv_bfloat16, 64>(Case("causal_sq_gt_sk").Seq(130, 100).Heads(2, 1).Causal());
}

TEST(BackwardKernelEmulationTest, Bf16D64CausalSqLtSk) {
  RunCase<__nv_bfloat16, 64>(Case("causal_sq_lt_sk").Seq(50, 140).Causal());
}

// A sliding window of both sides: key tiles no query tile of a block sees at either end.
TEST(BackwardKernelEmulationTest, Bf16D64Window) {
  RunCase<__nv_bfloat16, 64>(Case("window").Seq(150, 120).Window(24, 7).Heads(2, 1));
}

// The general variant forced onto a plain problem: its element-wise rule equals the dense one.
TEST(BackwardKernelEmulationTest, Bf16D64ForcedGeneral) {
  RunCase<__nv_bfloat16, 64>(Case("forced_general").Seq(70, 66).Causal().General());
}

TEST(BackwardKernelEmulationTest, Bf16D64Softcap) {
  RunCase<__nv_bfloat16, 64>(Case("softcap").Seq(66, 80).Softcap(4.f).Scale(0.5f));
}

TEST(BackwardKernelEmulationTest, Bf16D64AlibiPerBatch) {
  RunCase<__nv_bfloat16, 64>(Case("alibi").Batch(2).Seq(40, 72).Heads(4, 2).Alibi(true));
}

TEST(BackwardKernelEmulationTest, Bf16D64BoolMaskWithMaskedRow) {
  RunCase<__nv_bfloat16, 64>(
      Case("bool_mask").Seq(70, 70).Mask(MaskKind::kBool).MaskedRow().Heads(2, 1));
}

TEST(BackwardKernelEmulationTest, Bf16D64AdditiveMaskCausal) {
  RunCase<__nv_bfloat16, 64>(Case("additive_mask").Seq(65, 90).Mask(MaskKind::kAdditive).Causal());
}

// A key-padding mask on a dense batch of two, GQA.
TEST(BackwardKernelEmulationTest, Fp16D64KeyPaddingBatch) {
  RunCase<__half, 64>(Case("key_padding").Batch(2).Seq(50, 100).Heads(4, 2).KeyPadding());
}

// Sinks change lse only (the kernels never read them); with causal Sq > Sk the rows without a key
// have lse = sink and zero gradients.
TEST(BackwardKernelEmulationTest, Bf16D64SinksCausal) {
  RunCase<__nv_bfloat16, 64>(Case("sinks").Seq(90, 70).Sinks().Causal().Heads(4, 2));
}

// A packed batch with an empty sequence and one of keys only, window and GQA, dense variant.
TEST(BackwardKernelEmulationTest, Bf16D64PackedWindow) {
  RunCase<__nv_bfloat16, 64>(
      Case("packed").Packed({33, 0, 70, 5}, {50, 20, 65, 1}).Heads(4, 2).Window(30, 0));
}

// Head dim 40 in bucket 64: padded head-dim chunks, general variant with everything.
TEST(BackwardKernelEmulationTest, Fp16D40PackedGeneral) {
  RunCase<__half, 64>(Case("packed_general")
                          .Packed({33, 70}, {50, 65})
                          .Dim(40)
                          .Heads(4, 2)
                          .Softcap(5.f)
                          .Alibi(false)
                          .Mask(MaskKind::kBool)
                          .MaskedRow()
                          .Sinks());
}

TEST(BackwardKernelEmulationTest, Fp16D96CausalGqa) {
  RunCase<__half, 96>(Case("d96").Seq(70, 75).Dim(96).Heads(4, 2).Causal());
}

TEST(BackwardKernelEmulationTest, Bf16D128Plain) {
  RunCase<__nv_bfloat16, 128>(Case("d128").Seq(80, 70).Dim(128).Heads(2, 1));
}

TEST(BackwardKernelEmulationTest, Fp16D128WindowAdditive) {
  RunCase<__half, 128>(
      Case("d128_general").Seq(70, 100).Dim(128).Window(40, 10).Mask(MaskKind::kAdditive));
}

// Two sequences of several tiles each way: tiles inside the causal triangle run without the
// element-wise mask.
TEST(BackwardKernelEmulationTest, Bf16D64CausalBatchOfTwo) {
  RunCase<__nv_bfloat16, 64>(Case("causal_batch").Batch(2).Seq(200, 230).Causal());
}

// A left window with seqlen_k >> seqlen_q: whole key tiles no query row sees (dk = dv = 0 written
// by blocks with no query tile), and a group of three query heads per KV head.
TEST(BackwardKernelEmulationTest, Fp16D64UnseenKeyTiles) {
  RunCase<__half, 64>(Case("unseen_keys").Seq(40, 230).Window(10, -1).Heads(3, 1));
}

// A right window only with seqlen_q > seqlen_k, and a negative scale (general variant).
TEST(BackwardKernelEmulationTest, Bf16D64RightWindowNegativeScale) {
  RunCase<__nv_bfloat16, 64>(Case("right_window").Seq(140, 60).Window(-1, 5).Scale(-0.2f));
}

// Softcap, ALiBi and an additive mask together, with GQA.
TEST(BackwardKernelEmulationTest, Fp16D128AllScoreOptions) {
  RunCase<__half, 128>(Case("all_options")
                           .Seq(90, 77)
                           .Dim(128)
                           .Heads(4, 2)
                           .Softcap(3.f)
                           .Alibi(false)
                           .Mask(MaskKind::kAdditive)
                           .Causal());
}

TEST(BackwardKernelEmulationTest, Bf16D32Packed) {
  RunCase<__nv_bfloat16, 32>(
      Case("d32_packed").Packed({17, 64, 100}, {80, 64, 3}).Dim(32).Heads(2, 1).Causal());
}

// The largest bucket.
TEST(BackwardKernelEmulationTest, Bf16D256) {
  RunCase<__nv_bfloat16, 256>(Case("d256").Seq(70, 90).Dim(256).Heads(2, 1).Causal());
}

TEST(BackwardKernelEmulationTest, Fp16D256General) {
  RunCase<__half, 256>(Case("d256_general").Seq(40, 70).Dim(224).Softcap(6.f).Sinks());
}

// The remaining head-dim buckets of head_dim_buckets.txt (above 128 the deterministic dQ kernel
// takes 32-key tiles): 160, 192, and 224 with a padded head dim.
TEST(BackwardKernelEmulationTest, Fp16D160PackedWindowGeneral) {
  RunCase<__half, 160>(
      Case("d160").Packed({45, 70}, {70, 30}).Dim(160).Heads(2, 1).Window(20, 3).Softcap(8.f));
}

TEST(BackwardKernelEmulationTest, Bf16D192CausalGqa) {
  RunCase<__nv_bfloat16, 192>(Case("d192").Seq(66, 80).Dim(192).Heads(4, 2).Causal());
}

TEST(BackwardKernelEmulationTest, Bf16D224Padded) {
  RunCase<__nv_bfloat16, 224>(Case("d224").Seq(50, 65).Dim(200).Heads(2, 2).Sinks());
}

// Every tensor with its own strides (q / dq and v / dv head-major, o / do and k / dk padded rows):
// the kernels must address each through its own, and write nothing between the rows.
TEST(BackwardKernelEmulationTest, Bf16D64StridedBatch) {
  RunCase<__nv_bfloat16, 64>(
      Case("strided").Batch(2).Seq(70, 90).Heads(4, 2).Causal().Alibi(true).Strided());
}

TEST(BackwardKernelEmulationTest, Fp16D128StridedPacked) {
  RunCase<__half, 128>(
      Case("strided_packed").Packed({20, 75}, {66, 40}).Dim(120).Heads(2, 1).Strided());
}

// One query row and one key; the sink makes P < 1, so the gradients are not 0.
TEST(BackwardKernelEmulationTest, Bf16D64SingleRowAndKey) {
  RunCase<__nv_bfloat16, 64>(Case("one_by_one").Seq(1, 1).Heads(2, 1).Sinks());
}

// The dK / dV kernel's other tile configurations (backward_bench --sweep's candidates,
// bench/cuda/backward_tile_sweep.cu), each on ragged tails of its tiles with causal, window or
// GQA options, in both dQ modes. Template arguments: BwdTileConfig's fields.
template <int kHeadDim, int kBlockM, int kBlockN, int kWarps, int kSdpWarpsN, int kDkvWarpsN,
          int kDqWarpsM, int kQStages = 1>
using Tiles = BwdKernelTraits<kHeadDim, kBlockM, kBlockN, kWarps, kSdpWarpsN, kDkvWarpsN, kDqWarpsM,
                              kQStages>;

TEST(BackwardKernelEmulationTest, TilesD64Square64Causal) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 64, 64, 8, 4, 4, 4>>(
      Case("t64_64x64_causal").Seq(150, 140).Heads(4, 2).Causal());
}

TEST(BackwardKernelEmulationTest, TilesD64DqTwoByFourWindow) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 64, 128, 8, 4, 4, 2>>(
      Case("t64_dq2x4_window").Seq(170, 200).Heads(2, 1).Window(50, 20));
}

// FlashAttention-2's 128 x 128 tiles: S^T over 2 x 4 warps of 64 keys (four m16 tiles each).
TEST(BackwardKernelEmulationTest, TilesD64Square128CausalGqa) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 128, 128, 8, 2, 4, 4>>(
      Case("t64_128x128_causal").Seq(200, 260).Heads(4, 2).Causal());
}

TEST(BackwardKernelEmulationTest, TilesD64Square128PackedGeneral) {
  RunCase<__half, 64, Tiles<64, 128, 128, 8, 2, 4, 4>>(Case("t64_128x128_general")
                                                           .Packed({140, 0, 30}, {150, 20, 200})
                                                           .Dim(56)
                                                           .Heads(4, 2)
                                                           .Softcap(5.f)
                                                           .Alibi(false)
                                                           .Mask(MaskKind::kBool)
                                                           .MaskedRow());
}

// Every warp on 16 keys of S^T and of dK / dV (8 x 1 grids).
TEST(BackwardKernelEmulationTest, TilesD64KeyRowsSqGtSk) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 64, 128, 8, 8, 8, 4>>(
      Case("t64_8x1_causal_sq_gt_sk").Seq(190, 150).Causal().Sinks());
}

TEST(BackwardKernelEmulationTest, TilesD128Square64Window) {
  RunCase<__nv_bfloat16, 128, Tiles<128, 64, 64, 8, 4, 4, 4>>(
      Case("t128_64x64_window").Seq(140, 150).Dim(128).Window(40, 0));
}

TEST(BackwardKernelEmulationTest, TilesD128DqFourByTwoCausal) {
  RunCase<__nv_bfloat16, 128, Tiles<128, 64, 128, 8, 4, 4, 4>>(
      Case("t128_dq4x2_causal").Seq(150, 170).Dim(128).Heads(2, 1).Causal());
}

TEST(BackwardKernelEmulationTest, TilesD128KeyRowsPacked) {
  RunCase<__half, 128, Tiles<128, 64, 128, 8, 8, 4, 2>>(
      Case("t128_8x1_packed").Packed({70, 150}, {130, 140}).Dim(120).Heads(2, 1).Causal());
}

// 128 query rows per tile: two m16 tiles of dQ rows per warp over 4 x 2 warps.
TEST(BackwardKernelEmulationTest, TilesD128Rows128Causal) {
  RunCase<__nv_bfloat16, 128, Tiles<128, 128, 64, 8, 4, 4, 4>>(
      Case("t128_128x64_causal").Seq(150, 140).Dim(128).Heads(2, 1).Causal().Strided());
}

// Two query-tile stages: the next tile's copies land in the other buffer while this one's run.
// GQA and several query tiles per key tile, so that both stages are used many times.
TEST(BackwardKernelEmulationTest, TilesD64TwoStagesCausalGqa) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 64, 128, 8, 4, 4, 4, 2>>(
      Case("t64_2q_causal_gqa").Seq(230, 200).Heads(4, 1).Causal());
}

TEST(BackwardKernelEmulationTest, TilesD128TwoStagesPackedWindowGeneral) {
  RunCase<__half, 128, Tiles<128, 64, 128, 8, 4, 4, 2, 2>>(Case("t128_2q_packed_window")
                                                               .Packed({150, 3, 90}, {140, 40, 190})
                                                               .Dim(128)
                                                               .Heads(3, 1)
                                                               .Window(60, 10)
                                                               .Mask(MaskKind::kAdditive));
}

// The defaults of buckets 64 and 128 with one query-tile stage (the next tile's copies fly during
// dQ only).
TEST(BackwardKernelEmulationTest, TilesD64OneStageGqa) {
  RunCase<__nv_bfloat16, 64, Tiles<64, 64, 128, 8, 4, 4, 4, 1>>(
      Case("t64_1q_gqa").Seq(150, 260).Heads(4, 2));
}

TEST(BackwardKernelEmulationTest, TilesD128OneStageCausalSqGtSk) {
  RunCase<__nv_bfloat16, 128, Tiles<128, 64, 128, 8, 4, 4, 2, 1>>(
      Case("t128_1q_causal_sq_gt_sk").Seq(200, 140).Dim(128).Heads(2, 1).Causal());
}

}  // namespace
}  // namespace attention::cuda
