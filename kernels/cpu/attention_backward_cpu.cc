#include "kernels/cpu/attention_backward_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/tile_kernel.h"
#include "kernels/dtype.h"

namespace attention::cpu {
namespace {

// 64 x 64 tiles: the five tile products of a pair then touch 2 x 16 KiB of P and dS plus
// 4 x 64 x head_dim floats of Q, dO, K and V, which stays in L2 for head_dim <= 256.
constexpr int kDefaultBlock = 64;
constexpr int kMaxBlock = 1024;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }
// Column counts of the tile products' right-hand sides: a multiple of every variant's column
// block.
int RoundUpColumns(int n) {
  return (n + kTileColumnAlign - 1) / kTileColumnAlign * kTileColumnAlign;
}

// One thread's scratch, grown on demand and kept for the thread's lifetime (as the forward's).
class BackwardScratch {
 public:
  ~BackwardScratch() { std::free(data_); }
  char* Reserve(int64_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      data_ = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
      capacity_ = data_ != nullptr ? bytes : 0;
    }
    return data_;
  }

 private:
  char* data_ = nullptr;
  int64_t capacity_ = 0;
};
thread_local BackwardScratch tls_scratch;

// The tile buffers of one task, carved from the thread's scratch. dp = head_dim and bkp =
// block_k rounded up to kTileColumnAlign; the columns past head_dim of q, dout and k are zero.
struct Tiles {
  float* q;      // [bq][dp]  Q rows (unscaled)
  float* dout;   // [bq][dp]  dO rows
  float* k;      // [bk][dp]  K rows
  float* k_t;    // [d][bkp]  K transposed (columns past the tile's keys zero)
  float* v_t;    // [d][bkp]  V transposed (likewise)
  float* p;      // [bq][bkp] S = Q K^T, then P
  float* ds;     // [bq][bkp] dP = dO V^T, then dS (without the scale)
  float* lse;    // [bq]
  float* delta;  // [bq]      D = rowsum(dO * O)
  int32_t* lo;   // [bq]      allowed keys of a row within the key tile: [lo, hi)
  int32_t* hi;   // [bq]
  float* row;    // [dp]      one row being converted
  float* part;   // [max(bq, bk)][dp] float32 products of one tile pair
  float* part2;  // [bk][dp]
  double* sum;   // [max(bq, bk)][d] float64 sums across tile pairs
  double* sum2;  // [bk][d]
};

// Sizes in elements; each buffer a multiple of 16 elements, so every one stays 64-byte aligned.
struct TileLayout {
  int64_t qd, kd, kt, qk, q, d, md, mdd, kdd;
  int64_t bytes() const {
    return 4 * (2 * qd + kd + 2 * kt + 2 * qk + 4 * q + d + md + kd) + 8 * (mdd + kdd);
  }
};

TileLayout LayoutFor(int bq, int bk, int d) {
  const int dp = RoundUpColumns(d), bkp = RoundUpColumns(bk);
  TileLayout l;
  l.qd = RoundUp16(int64_t{bq} * dp);
  l.kd = RoundUp16(int64_t{bk} * dp);
  l.kt = RoundUp16(int64_t{d} * bkp);
  l.qk = RoundUp16(int64_t{bq} * bkp);
  l.q = RoundUp16(bq);
  l.d = RoundUp16(dp);
  l.md = RoundUp16(int64_t{std::max(bq, bk)} * dp);
  l.mdd = RoundUp16(int64_t{std::max(bq, bk)} * d);
  l.kdd = RoundUp16(int64_t{bk} * d);
  return l;
}

Tiles CarveTiles(char* base, const TileLayout& l) {
  Tiles t;
  float* f = reinterpret_cast<float*>(base);
  t.q = f;
  t.dout = t.q + l.qd;
  t.k = t.dout + l.qd;
  t.k_t = t.k + l.kd;
  t.v_t = t.k_t + l.kt;
  t.p = t.v_t + l.kt;
  t.ds = t.p + l.qk;
  t.lse = t.ds + l.qk;
  t.delta = t.lse + l.q;
  t.lo = reinterpret_cast<int32_t*>(t.delta + l.q);
  t.hi = t.lo + l.q;
  t.row = reinterpret_cast<float*>(t.hi + l.q);
  t.part = t.row + l.d;
  t.part2 = t.part + l.md;
  t.sum = reinterpret_cast<double*>(t.part2 + l.kd);
  t.sum2 = t.sum + l.mdd;
  return t;
}

// The instruction set's tile kernels (tile_kernel.h).
struct BackwardIsaKernels {
  TileMatMulFn matmul;
  TileSoftmaxGradFn softmax_grad;
  TileAccumulateFn accumulate;
};

BackwardIsaKernels KernelsFor(CpuIsa isa) {
  switch (isa) {
#if defined(ATTN_CPU_X86_VARIANTS)
    case CpuIsa::kAvx512:
      return {&avx512::TileMatMul, &avx512::TileSoftmaxGrad, &avx512::TileAccumulate};
    case CpuIsa::kAvx2:
      return {&avx2::TileMatMul, &avx2::TileSoftmaxGrad, &avx2::TileAccumulate};
#endif
    default:
      return {&generic::TileMatMul, &generic::TileSoftmaxGrad, &generic::TileAccumulate};
  }
}

// One sequence of the batch and its first task of each pass.
struct Sequence {
  int64_t q_row0, k_row0;
  int len_q, len_k;
  int q_tiles, k_tiles;
  int64_t first_dkv, first_dq;
};

int64_t Offset(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int b, int64_t row,
               int h) {
  return b * batch_stride + row * row_stride + h * head_stride;
}

// Converts `n` elements at element offset `elem` of `base` to float32. Byte copies: a tensor
// read in place from a received message may sit at any byte offset.
void LoadRow(DType dtype, const void* base, int64_t elem, int n, float* dst) {
  const char* bytes = static_cast<const char*>(base);
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, bytes + elem * 4, static_cast<size_t>(n) * 4);
      return;
    case DType::kFloat16:
    case DType::kBFloat16: {
      const char* s = bytes + elem * 2;
      for (int e = 0; e < n; ++e) {
        uint16_t h;
        std::memcpy(&h, s + 2 * e, sizeof(h));
        dst[e] = dtype == DType::kFloat16 ? HalfToFloat(h) : BFloat16ToFloat(h);
      }
      return;
    }
    case DType::kFloat8E4M3: {
      const uint8_t* s = reinterpret_cast<const uint8_t*>(bytes + elem);
      for (int e = 0; e < n; ++e) dst[e] = E4M3ToFloat(s[e]);
      return;
    }
  }
}

// Writes scale * src[0 .. n) at element offset `elem` of `base`, rounded to `dtype`.
void StoreRow(DType dtype, const double* src, double scale, int n, void* base, int64_t elem) {
  switch (dtype) {
    case DType::kFloat32: {
      float* dst = static_cast<float*>(base) + elem;
      for (int e = 0; e < n; ++e) dst[e] = static_cast<float>(src[e] * scale);
      return;
    }
    case DType::kFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + elem;
      for (int e = 0; e < n; ++e) dst[e] = FloatToHalf(static_cast<float>(src[e] * scale));
      return;
    }
    case DType::kBFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + elem;
      for (int e = 0; e < n; ++e) dst[e] = FloatToBFloat16(static_cast<float>(src[e] * scale));
      return;
    }
    case DType::kFloat8E4M3:
      // Not reached: FP8 is forward only, CheckBackwardParams refuses it.
      return;
  }
}

class BackwardKernel {
 public:
  // `delta` holds D of every (sequence, query head, row) at DeltaIndex (written by DeltaTask).
  BackwardKernel(const AttentionBackwardParams& p, int bq, int bk, BackwardIsaKernels isa,
                 float* delta)
      : p_(p),
        delta_(delta),
        delta_rows_(p.is_varlen() ? p.total_q : p.seqlen_q),
        d_(p.head_dim),
        dp_(RoundUpColumns(p.head_dim)),
        bq_(bq),
        bk_(bk),
        bkp_(RoundUpColumns(bk)),
        isa_(isa),
        has_mask_(p.mask_kind != MaskKind::kNone) {}

  // Index of D for row `row` (q_row0-based, as in q) of sequence b, query head h.
  int64_t DeltaIndex(int b, int h, int64_t row) const {
    return (int64_t{p_.is_varlen() ? 0 : b} * p_.q_heads + h) * delta_rows_ + row;
  }

  // Pass 0: D = rowsum(dO * O) of rows [i0, i0 + nq) of (sequence b, query head h), summed in
  // float64, once per row (the other passes read it per tile pair).
  void DeltaTask(const Sequence& s, int b, int h, int qt, Tiles& t) const {
    const int i0 = qt * bq_;
    const int nq = std::min(bq_, s.len_q - i0);
    const DType dt = p_.dtype;
    for (int i = 0; i < nq; ++i) {
      const int64_t row = s.q_row0 + i0 + i;
      const int64_t elem = Offset(p_.o_batch_stride, p_.o_row_stride, p_.o_head_stride, b, row, h);
      LoadRow(dt, p_.do_, elem, d_, t.dout);
      LoadRow(dt, p_.o, elem, d_, t.row);
      double delta = 0.0;
      for (int e = 0; e < d_; ++e) delta += double{t.dout[e]} * t.row[e];
      delta_[DeltaIndex(b, h, row)] = static_cast<float>(delta);
    }
  }

  // Rows [i0, i0 + nq) of (sequence b, query head h): Q, dO, lse and D into the tiles.
  void LoadQueryTile(const Sequence& s, int b, int h, int i0, int nq, Tiles& t) const {
    const DType dt = p_.dtype;
    for (int i = 0; i < nq; ++i) {
      const int64_t row = s.q_row0 + i0 + i;
      float* q = t.q + int64_t{i} * dp_;
      LoadRow(dt, p_.q, Offset(p_.q_batch_stride, p_.q_row_stride, p_.q_head_stride, b, row, h), d_,
              q);
      std::fill(q + d_, q + dp_, 0.f);
      float* dout = t.dout + int64_t{i} * dp_;
      LoadRow(dt, p_.do_, Offset(p_.o_batch_stride, p_.o_row_stride, p_.o_head_stride, b, row, h),
              d_, dout);
      std::fill(dout + d_, dout + dp_, 0.f);
      t.delta[i] = delta_[DeltaIndex(b, h, row)];
      t.lse[i] = p_.lse[b * p_.lse_batch_stride + h * p_.lse_head_stride + row];
    }
  }

  // Keys [j0, j0 + nk) of (sequence b, KV head g): K rows and K, V transposed into the tiles.
  void LoadKeyTile(const Sequence& s, int b, int g, int j0, int nk, Tiles& t) const {
    const DType dt = p_.dtype;
    const int ncols = RoundUpColumns(nk);
    for (int j = 0; j < nk; ++j) {
      const int64_t row = s.k_row0 + j0 + j;
      float* k = t.k + int64_t{j} * dp_;
      LoadRow(dt, p_.k, Offset(p_.k_batch_stride, p_.k_row_stride, p_.k_head_stride, b, row, g), d_,
              k);
      std::fill(k + d_, k + dp_, 0.f);
      for (int e = 0; e < d_; ++e) t.k_t[int64_t{e} * bkp_ + j] = k[e];
      LoadRow(dt, p_.v, Offset(p_.v_batch_stride, p_.v_row_stride, p_.v_head_stride, b, row, g), d_,
              t.row);
      for (int e = 0; e < d_; ++e) t.v_t[int64_t{e} * bkp_ + j] = t.row[e];
    }
    if (nk < ncols) {
      for (int e = 0; e < d_; ++e) {
        std::fill(t.k_t + int64_t{e} * bkp_ + nk, t.k_t + int64_t{e} * bkp_ + ncols, 0.f);
        std::fill(t.v_t + int64_t{e} * bkp_ + nk, t.v_t + int64_t{e} * bkp_ + ncols, 0.f);
      }
    }
  }

  // P and dS (without softmax_scale) of the loaded query tile (rows i0.., head h) against the
  // loaded key tile (keys j0..), in t.p and t.ds [nq][bkp]: S = Q K^T and dP = dO V^T by the
  // tile products, then the scores follow the forward's contract: s = scale q.k, then softcap,
  // ALiBi, the additive mask; a false bool entry or the window drops the key (P = 0);
  // P = exp(s - lse), and 0 for a row with lse = -inf. Columns [nk, bkp) are left unspecified.
  void ScoreGrads(const Sequence& s, int b, int h, int i0, int nq, int j0, int nk, Tiles& t) const {
    const int ncols = RoundUpColumns(nk);
    isa_.matmul(nq, ncols, d_, t.q, dp_, 1, t.k_t, bkp_, t.p, bkp_);
    isa_.matmul(nq, ncols, d_, t.dout, dp_, 1, t.v_t, bkp_, t.ds, bkp_);
    const int64_t delta_pos = int64_t{s.len_k} - s.len_q;
    if (!has_mask_) {
      // Row i may see keys pos(i) - left <= j0 + j <= pos(i) + right, j < nk.
      for (int i = 0; i < nq; ++i) {
        const int64_t pos = i0 + i + delta_pos;
        const int64_t lo = p_.window_left >= 0 ? pos - p_.window_left - j0 : 0;
        const int64_t hi = p_.window_right >= 0 ? pos + p_.window_right + 1 - j0 : nk;
        t.lo[i] = static_cast<int32_t>(std::clamp<int64_t>(lo, 0, nk));
        t.hi[i] = static_cast<int32_t>(std::clamp<int64_t>(hi, 0, nk));
      }
      const float slope =
          p_.alibi_slopes != nullptr ? p_.alibi_slopes[b * p_.alibi_batch_stride + h] : 0.f;
      isa_.softmax_grad(nq, ncols, p_.softmax_scale, p_.softcap, slope, i0 + delta_pos - j0, t.lse,
                        t.delta, t.lo, t.hi, t.p, t.ds, bkp_);
      return;
    }
    const float scale = p_.softmax_scale;
    const float cap = p_.softcap;
    const float slope =
        p_.alibi_slopes != nullptr ? p_.alibi_slopes[b * p_.alibi_batch_stride + h] : 0.f;
    const int64_t mask_base = b * p_.mask_batch_stride + h * p_.mask_head_stride;
    for (int i = 0; i < nq; ++i) {
      float* prow = t.p + int64_t{i} * bkp_;
      float* dsrow = t.ds + int64_t{i} * bkp_;
      const float lse = t.lse[i];
      if (lse == kNegInf) {  // no allowed key (and no sink): contributes nothing
        std::fill(prow, prow + nk, 0.f);
        std::fill(dsrow, dsrow + nk, 0.f);
        continue;
      }
      const int64_t pos = i0 + i + delta_pos;
      const float delta = t.delta[i];
      for (int j = 0; j < nk; ++j) {
        const int64_t key = j0 + j;
        bool allowed = (p_.window_left < 0 || key >= pos - p_.window_left) &&
                       (p_.window_right < 0 || key <= pos + p_.window_right);
        float score = scale * prow[j];
        float dcap = 1.f;
        if (cap > 0.f) {
          const float th = std::tanh(score / cap);
          score = cap * th;
          dcap = 1.f - th * th;
        }
        if (p_.alibi_slopes != nullptr) {
          score -= slope * static_cast<float>(std::llabs(pos - key));
        }
        const int64_t m = mask_base + (i0 + i) * p_.mask_row_stride + key * p_.mask_col_stride;
        if (p_.mask_kind == MaskKind::kAdditive) {
          score += static_cast<const float*>(p_.mask)[m];
        } else if (p_.mask_kind == MaskKind::kBool) {
          allowed = allowed && static_cast<const uint8_t*>(p_.mask)[m] != 0;
        }
        const float prob = allowed ? std::exp(score - lse) : 0.f;
        prow[j] = prob;
        dsrow[j] = prob == 0.f ? 0.f : prob * (dsrow[j] - delta) * dcap;
      }
    }
  }

  // Pass 1: dK and dV of keys [j0, j0 + nk) of (sequence b, KV head g), over every query head of
  // the group and every query row that may see them.
  void KeyTileTask(const Sequence& s, int b, int g, int kt, Tiles& t) const {
    const int j0 = kt * bk_;
    const int nk = std::min(bk_, s.len_k - j0);
    const int64_t kd = int64_t{nk} * d_;
    std::fill(t.sum, t.sum + kd, 0.0);
    std::fill(t.sum2, t.sum2 + kd, 0.0);
    LoadKeyTile(s, b, g, j0, nk, t);
    // Query rows whose window reaches a key of the tile: pos(i) - left <= j0 + nk - 1 and
    // pos(i) + right >= j0, pos(i) = i + len_k - len_q.
    const int64_t delta_pos = int64_t{s.len_k} - s.len_q;
    const int64_t i_lo =
        p_.window_right >= 0 ? std::max<int64_t>(0, j0 - p_.window_right - delta_pos) : 0;
    const int64_t i_hi =
        p_.window_left >= 0
            ? std::min<int64_t>(s.len_q, int64_t{j0} + nk + p_.window_left - delta_pos)
            : s.len_q;
    const int group = p_.q_heads / p_.kv_heads;
    for (int h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t i0 = i_lo; i0 < i_hi; i0 += bq_) {
        const int nq = static_cast<int>(std::min<int64_t>(bq_, i_hi - i0));
        LoadQueryTile(s, b, h, static_cast<int>(i0), nq, t);
        ScoreGrads(s, b, h, static_cast<int>(i0), nq, j0, nk, t);
        // dV = P^T dO and dK = dS^T Q (P and dS read transposed), [nk][dp] each.
        isa_.matmul(nk, dp_, nq, t.p, 1, bkp_, t.dout, dp_, t.part2, dp_);
        isa_.matmul(nk, dp_, nq, t.ds, 1, bkp_, t.q, dp_, t.part, dp_);
        isa_.accumulate(nk, d_, t.part, dp_, t.sum, d_);
        isa_.accumulate(nk, d_, t.part2, dp_, t.sum2, d_);
      }
    }
    for (int j = 0; j < nk; ++j) {
      const int64_t row = s.k_row0 + j0 + j;
      StoreRow(p_.dtype, t.sum + int64_t{j} * d_, p_.softmax_scale, d_, p_.dk,
               Offset(p_.k_batch_stride, p_.k_row_stride, p_.k_head_stride, b, row, g));
      StoreRow(p_.dtype, t.sum2 + int64_t{j} * d_, 1.0, d_, p_.dv,
               Offset(p_.v_batch_stride, p_.v_row_stride, p_.v_head_stride, b, row, g));
    }
  }

  // Pass 2: dQ of rows [i0, i0 + nq) of (sequence b, query head h), over every key they may see.
  void QueryTileTask(const Sequence& s, int b, int h, int qt, Tiles& t) const {
    const int i0 = qt * bq_;
    const int nq = std::min(bq_, s.len_q - i0);
    const int64_t qd = int64_t{nq} * d_;
    std::fill(t.sum, t.sum + qd, 0.0);
    LoadQueryTile(s, b, h, i0, nq, t);
    const int64_t delta_pos = int64_t{s.len_k} - s.len_q;
    const int64_t j_lo =
        p_.window_left >= 0 ? std::max<int64_t>(0, i0 + delta_pos - p_.window_left) : 0;
    const int64_t j_hi =
        p_.window_right >= 0
            ? std::min<int64_t>(s.len_k, int64_t{i0} + nq + delta_pos + p_.window_right)
            : s.len_k;
    const int g = h / (p_.q_heads / p_.kv_heads);
    for (int64_t j0 = j_lo; j0 < j_hi; j0 += bk_) {
      const int nk = static_cast<int>(std::min<int64_t>(bk_, j_hi - j0));
      LoadKeyTile(s, b, g, static_cast<int>(j0), nk, t);
      ScoreGrads(s, b, h, i0, nq, static_cast<int>(j0), nk, t);
      // dQ = dS K, [nq][dp].
      isa_.matmul(nq, dp_, nk, t.ds, bkp_, 1, t.k, dp_, t.part, dp_);
      isa_.accumulate(nq, d_, t.part, dp_, t.sum, d_);
    }
    for (int i = 0; i < nq; ++i) {
      const int64_t row = s.q_row0 + i0 + i;
      StoreRow(p_.dtype, t.sum + int64_t{i} * d_, p_.softmax_scale, d_, p_.dq,
               Offset(p_.q_batch_stride, p_.q_row_stride, p_.q_head_stride, b, row, h));
    }
  }

 private:
  const AttentionBackwardParams& p_;
  float* const delta_;
  const int64_t delta_rows_;
  const int d_, dp_, bq_, bk_, bkp_;
  const BackwardIsaKernels isa_;
  const bool has_mask_;
};

absl::Status CheckCuSeqlens(const int32_t* cu, const char* name, int batch, int64_t total,
                            int max_len) {
  if (cu[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionBackwardParams.", name, "[0] must be 0, got ", cu[0]));
  }
  for (int b = 0; b < batch; ++b) {
    const int64_t len = int64_t{cu[b + 1]} - cu[b];
    if (len < 0 || len > max_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionBackwardParams.", name,
                       " must be non-decreasing with steps <= the longest sequence (", max_len,
                       "), got step ", len, " at index ", b));
    }
  }
  if (cu[batch] != total) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionBackwardParams.", name,
                                                   "[batch] must be ", total, ", got ", cu[batch]));
  }
  return absl::OkStatus();
}

// Runs fn(i) for i in [0, n) on the pool, or in order on this thread without one, until fn
// returns false (then no further index starts). Returns whether every index ran.
template <typename Fn>
bool ForEachUntil(ThreadPool* pool, int64_t n, Fn&& fn) {
  if (pool != nullptr) return pool->ParallelForUntil(n, fn);
  for (int64_t i = 0; i < n; ++i) {
    if (!fn(i)) return false;
  }
  return true;
}

}  // namespace

absl::Status AttentionBackward(const AttentionBackwardParams& params, ThreadPool* pool,
                               const CpuBackwardOptions& options) {
  return AttentionBackward(
      params, pool, [] { return false; }, options);
}

absl::Status AttentionBackward(const AttentionBackwardParams& params, ThreadPool* pool,
                               absl::FunctionRef<bool()> should_stop,
                               const CpuBackwardOptions& options) {
  if (absl::Status s = CheckBackwardParams(params); !s.ok()) return s;
  AttentionBackwardParams p = params;
  Normalize(p);
  if (p.is_varlen()) {
    for (absl::Status s :
         {CheckCuSeqlens(p.cu_seqlens_q, "cu_seqlens_q", p.batch, p.total_q, p.seqlen_q),
          CheckCuSeqlens(p.cu_seqlens_k, "cu_seqlens_k", p.batch, p.total_k, p.seqlen_k)}) {
      if (!s.ok()) return s;
    }
  }
  const int bq = std::clamp(options.block_q > 0 ? options.block_q : kDefaultBlock, 1, kMaxBlock);
  const int bk = std::clamp(options.block_k > 0 ? options.block_k : kDefaultBlock, 1, kMaxBlock);

  std::vector<Sequence> seqs(p.batch);
  int64_t dkv_items = 0, dq_items = 0;
  for (int b = 0; b < p.batch; ++b) {
    Sequence& s = seqs[b];
    s.q_row0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    s.k_row0 = p.is_varlen() ? p.cu_seqlens_k[b] : 0;
    s.len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.seqlen_q;
    s.len_k = p.is_varlen() ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.seqlen_k;
    s.q_tiles = (s.len_q + bq - 1) / bq;
    s.k_tiles = (s.len_k + bk - 1) / bk;
    s.first_dkv = dkv_items;
    s.first_dq = dq_items;
    dkv_items += int64_t{p.kv_heads} * s.k_tiles;
    dq_items += int64_t{p.q_heads} * s.q_tiles;
  }

  const TileLayout layout = LayoutFor(bq, bk, p.head_dim);
  const CpuIsa isa = std::min(BestCpuIsa(), options.max_isa.value_or(CpuIsa::kAvx512));
  // D of every (sequence, query head, row): 4 bytes per row of o.
  std::vector<float> delta(
      static_cast<size_t>(p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q) * p.q_heads);
  const BackwardKernel kernel(p, bq, bk, KernelsFor(isa), delta.data());
  std::atomic<bool> out_of_memory{false};
  // Item -> (sequence, head, tile): the sequence is the last one whose first item is <= item.
  // should_stop is asked before each task, so a stop frees every thread within one task.
  enum class Pass { kDelta, kKeyTiles, kQueryTiles };
  auto run_pass = [&](int64_t items, int64_t Sequence::*first, int heads, Pass pass) {
    return ForEachUntil(pool, items, [&](int64_t item) {
      if (should_stop()) return false;
      const auto it =
          std::upper_bound(seqs.begin(), seqs.end(), item,
                           [first](int64_t value, const Sequence& s) { return value < s.*first; });
      const Sequence& seq = *(it - 1);
      const int b = static_cast<int>(it - 1 - seqs.begin());
      const int64_t local = item - seq.*first;
      const int head = static_cast<int>(local % heads);
      const int tile = static_cast<int>(local / heads);
      char* base = tls_scratch.Reserve(layout.bytes());
      if (base == nullptr) {
        out_of_memory.store(true, std::memory_order_relaxed);
        return true;
      }
      Tiles t = CarveTiles(base, layout);
      switch (pass) {
        case Pass::kDelta:
          kernel.DeltaTask(seq, b, head, tile, t);
          break;
        case Pass::kKeyTiles:
          kernel.KeyTileTask(seq, b, head, tile, t);
          break;
        case Pass::kQueryTiles:
          kernel.QueryTileTask(seq, b, head, tile, t);
          break;
      }
      return true;
    });
  };
  const bool finished = run_pass(dq_items, &Sequence::first_dq, p.q_heads, Pass::kDelta) &&
                        run_pass(dkv_items, &Sequence::first_dkv, p.kv_heads, Pass::kKeyTiles) &&
                        run_pass(dq_items, &Sequence::first_dq, p.q_heads, Pass::kQueryTiles);
  if (!finished) {
    return absl::CancelledError(
        "CPU backend: backward stopped between tiles at the caller's request; dq, dk and dv are "
        "incomplete");
  }
  if (out_of_memory.load()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CPU backward: no memory for a tile scratch of ", layout.bytes(), " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace attention::cpu
