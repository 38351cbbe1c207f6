// The CPU tile kernel, written once with GCC/Clang vector extensions and compiled once per
// instruction set: tile_kernel_<isa>.cc defines ATTN_CPU_KERNEL_NS (the namespace),
// ATTN_CPU_VECTOR_BYTES (16, 32 or 64) and ATTN_CPU_KERNEL_ROWS (register-block height) and
// includes this file. Nothing here may call an inline function or template shared with other
// translation units (std:: algorithms, kernels/*.h helpers, AttentionParams' member functions):
// the linker could keep this file's copy, compiled for a wider instruction set, for every caller.
// Hence the own helpers and the __builtin_* math. (The generic variant, compiled with the
// baseline flags, may and does use kernels/dtype.h.)
//
// Layout (per work item of up to Br = block_q query rows, per key tile of up to Bc = block_k
// keys, head_dim d):
//   q_t [d][Br]   Q rows times softmax_scale * log2(e), transposed: query rows run along lanes
//   s_t [Bc][Br]  S^T = K_tile Q_t (scores in base-2 units), then P^T = 2^(S^T - m) in place
//   o_t [d][Br]   O^T = O^T * alpha + V_tile^T P^T
// With query rows along the lanes, the row max, the row sum and the rescale are element-wise
// vector operations (no horizontal reductions), and both products are outer-product
// micro-kernels that broadcast one K (or V) element against two vectors of query columns.
// Scores are kept in base 2 (log2(e) folded into the Q scale) so the softmax needs 2^x, not e^x;
// the options, defined on natural-unit scores, convert (ApplyScoreOptions).
#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cpu/tile_kernel.h"

#if defined(ATTN_CPU_USE_F16C)
#include <immintrin.h>
#else
#include "kernels/dtype.h"
#endif

namespace attention::cpu::ATTN_CPU_KERNEL_NS {
namespace {

constexpr int kLanes = ATTN_CPU_VECTOR_BYTES / 4;
constexpr int kColumnVectors = 2;  // query-column vectors per micro-kernel block
constexpr int kColumns = kColumnVectors * kLanes;
constexpr int kRows = ATTN_CPU_KERNEL_ROWS;
static_assert(kTileColumnAlign % kColumns == 0, "block_q alignment must cover the column block");

typedef float VecF __attribute__((vector_size(ATTN_CPU_VECTOR_BYTES)));
typedef int32_t VecI __attribute__((vector_size(ATTN_CPU_VECTOR_BYTES)));
typedef uint16_t VecH __attribute__((vector_size(ATTN_CPU_VECTOR_BYTES / 2)));

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// Register blocks must be fully unrolled for their accumulators to live in registers; -O2 does
// not unroll loops by itself.
#define ATTN_UNROLL _Pragma("GCC unroll 16")

inline VecF Load(const float* p) {
  VecF v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, VecF v) { __builtin_memcpy(p, &v, sizeof(v)); }
// x - 0 is x for every x (also -0), so this folds to a plain broadcast; VecF{} + x would not.
inline VecF Splat(float x) { return x - VecF{}; }
inline VecF Max(VecF a, VecF b) { return a > b ? a : b; }
inline int64_t MaxI64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

// 2^x for x <= 0 (-inf included), relative error < 2e-7. x = n + f with n = round(x) and
// |f| <= 1/2; 2^f = 1 + f P(f), P of degree 4 fitted for relative error on [-1/2, 1/2]
// (9.2e-8), with the constant term exactly 1 so that 2^0 = 1 exactly: a running sum rescaled by
// alpha = 2^0 on every key tile must not drift. Adding 1.5 * 2^23 leaves n in the low mantissa
// bits, so n << 23 is that sum's bits shifted; x is clamped at -127, where n = -127 makes the
// exponent field 0 and the result exactly 0: masked scores (-inf) and anything below the normal
// range drop out without a compare.
inline VecF Exp2(VecF x) {
  const VecF lo = Splat(-127.0f);
  x = x < lo ? lo : x;
  const VecF shifted = x + 12582912.0f;
  const VecF f = x - (shifted - 12582912.0f);
  VecF poly = Splat(1.326472658e-3f);
  poly = poly * f + 9.671512727e-3f;
  poly = poly * f + 5.550733745e-2f;
  poly = poly * f + 2.402224208e-1f;
  poly = poly * f + 6.931469776e-1f;
  poly = poly * f + 1.0f;
  VecI bits;
  __builtin_memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits << 23) + (127 << 23);
  VecF two_n;
  __builtin_memcpy(&two_n, &bits, sizeof(two_n));
  return poly * two_n;
}

// tanh(y) = sign(y) (1 - e^{-2|y|}) / (1 + e^{-2|y|}); absolute error ~1e-7.
inline VecF Tanh(VecF y) {
  const VecF a = y < 0.f ? -y : y;
  const VecF t = Exp2(a * (-2.0f * kLog2e));
  const VecF r = (1.0f - t) / (1.0f + t);
  return y < 0.f ? -r : r;
}

// The float value of each OCP E4M3FN encoding (kernels/kernel_config.h): sign, 4 exponent bits
// (bias 7, 0 = subnormal: mantissa x 2^-9), 3 mantissa bits, 0x7f / 0xff NaN. Built at compile
// time: this file may not call kernels/dtype.h's E4M3ToFloat (see the top of the file).
struct E4M3Table {
  float value[256];
};
constexpr E4M3Table MakeE4M3Table() {
  E4M3Table t{};
  for (int b = 0; b < 256; ++b) {
    const int exponent = (b >> 3) & 0xf, mantissa = b & 0x7;
    float magnitude = 0.f;
    if (exponent == 0xf && mantissa == 0x7) {
      magnitude = __builtin_nanf("");
    } else {
      // (exponent ? 8 + mantissa : mantissa) x 2^(max(exponent, 1) - 10), exact in a float.
      magnitude = static_cast<float>(exponent != 0 ? 8 + mantissa : mantissa);
      for (int e = exponent > 0 ? exponent : 1; e < 10; ++e) magnitude *= 0.5f;
      for (int e = 10; e < exponent; ++e) magnitude *= 2.0f;
    }
    t.value[b] = (b & 0x80) ? -magnitude : magnitude;
  }
  return t;
}
constexpr E4M3Table kE4M3Table = MakeE4M3Table();

// Element i of a 16-bit row that may not be 2-byte aligned (read in place from a message).
inline uint16_t Load16(const uint16_t* s, int i) {
  uint16_t h;
  __builtin_memcpy(&h, s + i, sizeof(h));
  return h;
}

// Converts `n` elements of a q/k/v row to float32, times `scale`. The row may sit at any byte
// offset: every read is a byte copy.
inline void LoadRow(DType dtype, const void* src, int n, float scale, float* dst) {
  const VecF vscale = Splat(scale);
  int i = 0;
  switch (dtype) {
    case DType::kFloat32: {
      // Byte copies: a row read in place from a received message may not be 4-byte aligned.
      const char* s = static_cast<const char*>(src);
      for (; i + kLanes <= n; i += kLanes) {
        VecF f;
        __builtin_memcpy(&f, s + i * sizeof(float), sizeof(f));
        Store(dst + i, f * vscale);
      }
      for (; i < n; ++i) {
        float f;
        __builtin_memcpy(&f, s + i * sizeof(float), sizeof(f));
        dst[i] = f * scale;
      }
      return;
    }
    case DType::kBFloat16: {
      // bfloat16 is the upper half of a float32.
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; i + kLanes <= n; i += kLanes) {
        VecH h;
        __builtin_memcpy(&h, s + i, sizeof(h));
        const VecI bits = __builtin_convertvector(h, VecI) << 16;
        VecF f;
        __builtin_memcpy(&f, &bits, sizeof(f));
        Store(dst + i, f * vscale);
      }
      for (; i < n; ++i) {
        const uint32_t bits = uint32_t{Load16(s, i)} << 16;
        float f;
        __builtin_memcpy(&f, &bits, sizeof(f));
        dst[i] = f * scale;
      }
      return;
    }
    case DType::kFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
#if defined(ATTN_CPU_USE_F16C)
      const __m256 scale8 = _mm256_set1_ps(scale);
      for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(h), scale8));
      }
      for (; i < n; ++i) dst[i] = _cvtsh_ss(Load16(s, i)) * scale;
#else
      for (; i < n; ++i) dst[i] = HalfToFloat(Load16(s, i)) * scale;
#endif
      return;
    }
    case DType::kFloat8E4M3: {
      // Every E4M3 value (NaN included) is exact in a float: a table of the 256 encodings.
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (; i < n; ++i) dst[i] = kE4M3Table.value[s[i]] * scale;
      return;
    }
  }
}

// Register block of the score product: S^T[j][c] for R keys and kColumns query columns,
//   acc[r][c] = sum_e K[r][e] * Q_t[e][c]
// k: R rows of K with row stride ks; q_t: the column block, row stride ldq; s_t: row stride lds.
// With `col_max`, also folds the block's column maxima into col_max[0 .. kColumns).
template <int R>
inline void ScoreBlock(const float* k, int64_t ks, const float* q_t, int ldq, int d, float* s_t,
                       int lds, float* col_max) {
  VecF acc[R][kColumnVectors];
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) acc[r][c] = VecF{};
  }
  for (int e = 0; e < d; ++e) {
    VecF b[kColumnVectors];
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) b[c] = Load(q_t + e * ldq + c * kLanes);
    ATTN_UNROLL for (int r = 0; r < R; ++r) {
      const VecF a = Splat(k[r * ks + e]);
      ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) acc[r][c] += a * b[c];
    }
  }
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) {
      Store(s_t + r * lds + c * kLanes, acc[r][c]);
    }
  }
  if (col_max != nullptr) {
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) {
      VecF m = Load(col_max + c * kLanes);
      ATTN_UNROLL for (int r = 0; r < R; ++r) m = Max(m, acc[r][c]);
      Store(col_max + c * kLanes, m);
    }
  }
}

template <int R>
inline void ScoreTail(int rows, const float* k, int64_t ks, const float* q_t, int ldq, int d,
                      float* s_t, int lds, float* col_max) {
  if (rows == R) {
    ScoreBlock<R>(k, ks, q_t, ldq, d, s_t, lds, col_max);
  } else if constexpr (R > 1) {
    ScoreTail<R - 1>(rows, k, ks, q_t, ldq, d, s_t, lds, col_max);
  }
}

// Register block of the output product: O^T[e][c] for R head-dim rows and kColumns query columns,
//   acc[r][c] = O_t[r][c] * alpha[c] + sum_j V[j][r] * P_t[j][c]
// v: V at column e0, row stride vs; p_t: the column block of P^T, row stride ldp.
template <int R>
inline void OutputBlock(const float* v, int64_t vs, int nk, const float* p_t, int ldp,
                        const VecF* alpha, float* o_t, int ldo) {
  VecF acc[R][kColumnVectors];
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) {
      acc[r][c] = Load(o_t + r * ldo + c * kLanes) * alpha[c];
    }
  }
  for (int j = 0; j < nk; ++j) {
    VecF b[kColumnVectors];
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) b[c] = Load(p_t + j * ldp + c * kLanes);
    ATTN_UNROLL for (int r = 0; r < R; ++r) {
      const VecF a = Splat(v[j * vs + r]);
      ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) acc[r][c] += a * b[c];
    }
  }
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int c = 0; c < kColumnVectors; ++c) {
      Store(o_t + r * ldo + c * kLanes, acc[r][c]);
    }
  }
}

template <int R>
inline void OutputTail(int rows, const float* v, int64_t vs, int nk, const float* p_t, int ldp,
                       const VecF* alpha, float* o_t, int ldo) {
  if (rows == R) {
    OutputBlock<R>(v, vs, nk, p_t, ldp, alpha, o_t, ldo);
  } else if constexpr (R > 1) {
    OutputTail<R - 1>(rows, v, vs, nk, p_t, ldp, alpha, o_t, ldo);
  }
}

// The keys of the current key tile that one column block (kColumns query rows) may see:
// rows [lo, hi) of the tile; `partial` when the window drops some of them for some rows.
struct KeyRange {
  int lo, hi;
  bool partial;
};

// S^T[lo..hi)[block] = K[lo..hi) Q_t[block] for every column block. With `col_max` ([ncols],
// preset to the running max), also leaves there the max of the running max and the new scores
// of every column.
void ScoreTile(const float* k, int64_t ks, const KeyRange* ranges, const float* q_t, int br, int d,
               int ncols, float* s_t, float* col_max) {
  for (int c0 = 0; c0 < ncols; c0 += kColumns) {
    const KeyRange& r = ranges[c0 / kColumns];
    float* m = col_max != nullptr ? col_max + c0 : nullptr;
    int j = r.lo;
    for (; j + kRows <= r.hi; j += kRows) {
      ScoreBlock<kRows>(k + j * ks, ks, q_t + c0, br, d, s_t + j * br + c0, br, m);
    }
    if (j < r.hi) {
      ScoreTail<kRows - 1>(r.hi - j, k + j * ks, ks, q_t + c0, br, d, s_t + j * br + c0, br, m);
    }
  }
}

// O_t[0..d)[block] = O_t[block] * alpha + V[lo..hi)^T P_t[lo..hi)[block] for every column block.
void OutputTile(const float* v, int64_t vs, const KeyRange* ranges, const float* p_t, int br, int d,
                int ncols, const float* alpha, float* o_t) {
  for (int c0 = 0; c0 < ncols; c0 += kColumns) {
    const KeyRange& r = ranges[c0 / kColumns];
    const int nk = r.hi - r.lo;
    const float* vr = v + r.lo * vs;
    const float* pr = p_t + r.lo * br + c0;
    VecF a[kColumnVectors];
    for (int c = 0; c < kColumnVectors; ++c) a[c] = Load(alpha + c0 + c * kLanes);
    int e = 0;
    for (; e + kRows <= d; e += kRows) {
      OutputBlock<kRows>(vr + e, vs, nk, pr, br, a, o_t + e * br + c0, br);
    }
    if (e < d) OutputTail<kRows - 1>(d - e, vr + e, vs, nk, pr, br, a, o_t + e * br + c0, br);
  }
}

// The score options, in the contract's order: softcap, ALiBi, additive mask; then the bool mask
// and the window drop keys (score = -inf). Scores here are base-2 (natural * log2(e)), so each
// natural-unit term is scaled by log2(e). Only columns [0, nq) are real query rows; rows of a
// column block outside its KeyRange are left alone (later passes do not read them).
void ApplyScoreOptions(const AttentionParams& p, const QueryTile& t, int64_t j0,
                       const KeyRange* ranges, int nq, int ncols, float* s_t, int br) {
  const int64_t delta = int64_t{t.len_k} - t.len_q;  // p(i) = i + delta
  const int64_t i0 = t.row_begin;
  const float slope = p.alibi_slopes != nullptr
                          ? p.alibi_slopes[t.batch * p.alibi_batch_stride + t.head] * kLog2e
                          : 0.f;
  const int64_t mask_base = t.batch * p.mask_batch_stride + t.head * p.mask_head_stride +
                            i0 * p.mask_row_stride + j0 * p.mask_col_stride;
  // Window: key j is allowed for row i iff -right <= i + delta - j <= left.
  const int64_t win_lo = p.window_right >= 0 ? -int64_t{p.window_right} : -(int64_t{1} << 40);
  const int64_t win_hi = p.window_left >= 0 ? int64_t{p.window_left} : int64_t{1} << 40;
  VecI lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  const VecF neg_inf = Splat(kNegInf);

  for (int c0 = 0; c0 < ncols; c0 += kColumns) {
    const KeyRange& r = ranges[c0 / kColumns];
    const int c_end = c0 + kColumns;
    const int i_end = c_end < nq ? c_end : nq;  // real rows of this block
    for (int j = r.lo; j < r.hi; ++j) {
      float* s = s_t + j * br;
      if (p.softcap > 0.f) {
        // natural: s' = c tanh(s / c); base 2: s2' = c log2(e) tanh(s2 / (c log2(e))).
        const VecF cap = Splat(p.softcap * kLog2e);
        const VecF inv_cap = Splat(1.0f / (p.softcap * kLog2e));
        for (int c = c0; c < c_end; c += kLanes) Store(s + c, cap * Tanh(Load(s + c) * inv_cap));
      }
      if (p.alibi_slopes != nullptr) {
        for (int i = c0; i < i_end; ++i) {
          const int64_t dist = i0 + i + delta - (j0 + j);
          s[i] -= slope * static_cast<float>(dist < 0 ? -dist : dist);
        }
      }
      if (p.mask_kind == MaskKind::kAdditive) {
        const float* m = static_cast<const float*>(p.mask) + mask_base + j * p.mask_col_stride;
        for (int i = c0; i < i_end; ++i) s[i] += m[i * p.mask_row_stride] * kLog2e;
      } else if (p.mask_kind == MaskKind::kBool) {
        const uint8_t* m = static_cast<const uint8_t*>(p.mask) + mask_base + j * p.mask_col_stride;
        for (int i = c0; i < i_end; ++i) {
          if (m[i * p.mask_row_stride] == 0) s[i] = kNegInf;
        }
      }
      if (r.partial) {
        // Allowed lanes: win_lo - base <= i <= win_hi - base, base = i0 + delta - (j0 + j);
        // clamped to [-1, ncols + 1], which keeps them exact for i in [0, ncols).
        const int64_t base = i0 + delta - (j0 + j);
        const int32_t lo = static_cast<int32_t>(MinI64(MaxI64(win_lo - base, -1), ncols + 1));
        const int32_t hi = static_cast<int32_t>(MinI64(MaxI64(win_hi - base, -1), ncols + 1));
        for (int c = c0; c < c_end; c += kLanes) {
          const VecI i = lane + c;
          const VecI dropped = (i < lo) | (i > hi);
          Store(s + c, dropped ? neg_inf : Load(s + c));
        }
      }
    }
  }
}

// Column maxima of S^T over each block's KeyRange, folded into tile_max (preset to the running
// max).
void ColumnMax(const float* s_t, const KeyRange* ranges, int br, int ncols, float* tile_max) {
  for (int c = 0; c < ncols; c += kLanes) {
    const KeyRange& r = ranges[c / kColumns];
    VecF m0 = Load(tile_max + c), m1 = Splat(kNegInf);
    int j = r.lo;
    for (; j + 2 <= r.hi; j += 2) {
      m0 = Max(m0, Load(s_t + j * br + c));
      m1 = Max(m1, Load(s_t + (j + 1) * br + c));
    }
    if (j < r.hi) m0 = Max(m0, Load(s_t + j * br + c));
    Store(tile_max + c, Max(m0, m1));
  }
}

// Online softmax over one key tile, given m_new = max(m_old, the tile's scores) per column:
// turns S^T (each block's KeyRange) into P^T = 2^(S^T - m_new), updates the running sum l and
// max m, and leaves alpha = 2^(m_old - m_new) for the output rescale. A column whose max is
// still -inf uses 0 in its place, so that 2^(-inf - 0) = 0 (no NaN).
void SoftmaxTile(float* s_t, const KeyRange* ranges, int br, int ncols, const float* m_new_in,
                 float* row_max, float* row_sum, float* alpha) {
  const VecF neg_inf = Splat(kNegInf);
  for (int c = 0; c < ncols; c += kLanes) {
    const KeyRange& r = ranges[c / kColumns];
    const VecF m_old = Load(row_max + c);
    const VecF m_new = Load(m_new_in + c);
    const VecF m_use = m_new == neg_inf ? VecF{} : m_new;
    const VecF a = Exp2(m_old - m_use);
    VecF sum0 = {}, sum1 = {};
    int j = r.lo;
    for (; j + 2 <= r.hi; j += 2) {
      float* s0 = s_t + j * br + c;
      float* s1 = s0 + br;
      const VecF p0 = Exp2(Load(s0) - m_use);
      const VecF p1 = Exp2(Load(s1) - m_use);
      Store(s0, p0);
      Store(s1, p1);
      sum0 += p0;
      sum1 += p1;
    }
    if (j < r.hi) {
      float* s0 = s_t + j * br + c;
      const VecF p0 = Exp2(Load(s0) - m_use);
      Store(s0, p0);
      sum0 += p0;
    }
    Store(row_sum + c, Load(row_sum + c) * a + (sum0 + sum1));
    Store(row_max + c, m_new);
    Store(alpha + c, a);
  }
}

// Bytes of one q/k/v element (kernel_config.h's DTypeSize, which this file may not call).
inline int64_t ElementBytes(DType dtype) {
  return dtype == DType::kFloat32 ? 4 : dtype == DType::kFloat8E4M3 ? 1 : 2;
}

// Pointer to element (row, head) of a q/k/v-shaped tensor of sequence `batch`.
inline const char* RowPointer(const void* base, DType dtype, int64_t batch_stride,
                              int64_t row_stride, int64_t head_stride, int batch, int64_t row,
                              int head) {
  const int64_t elem = batch * batch_stride + row * row_stride + head * head_stride;
  return static_cast<const char*>(base) + elem * ElementBytes(dtype);
}

// Key row j (local to the tile's sequence) of K or V at the tile's KV head: through the page
// table for a paged context, else at row k_row0 + j of the sequence.
inline const char* KeyRowPointer(const AttentionParams& p, const void* base, int64_t batch_stride,
                                 int64_t row_stride, int64_t head_stride, const QueryTile& t,
                                 int64_t j) {
  if (p.page_table != nullptr) {
    const int32_t page = p.page_table[t.batch * p.page_table_stride + j / p.page_size];
    return RowPointer(base, p.dtype, batch_stride, row_stride, head_stride, page, j % p.page_size,
                      t.kv_head);
  }
  return RowPointer(base, p.dtype, batch_stride, row_stride, head_stride, t.batch, t.k_row0 + j,
                    t.kv_head);
}

// Backward (attention_backward_cpu.cc): register block of a general tile product,
//   acc[r][c] = sum_e A[r][e] * B[e][c],  A[r][e] = a[r * a_rs + e * a_cs]
// for R rows of A and kColumns columns of B; each term one fused multiply-add, e ascending.
// The forward's ScoreBlock is the case a_cs = 1; this one also reads A transposed (a_rs = 1).
template <int R>
inline void MatMulBlock(int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                        int64_t ldb, float* c, int64_t ldc) {
  VecF acc[R][kColumnVectors];
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int v = 0; v < kColumnVectors; ++v) acc[r][v] = VecF{};
  }
  for (int e = 0; e < k; ++e) {
    VecF bv[kColumnVectors];
    ATTN_UNROLL for (int v = 0; v < kColumnVectors; ++v) bv[v] = Load(b + e * ldb + v * kLanes);
    const float* ae = a + e * a_cs;
    ATTN_UNROLL for (int r = 0; r < R; ++r) {
      const VecF x = Splat(ae[r * a_rs]);
      ATTN_UNROLL for (int v = 0; v < kColumnVectors; ++v) acc[r][v] += x * bv[v];
    }
  }
  ATTN_UNROLL for (int r = 0; r < R; ++r) {
    ATTN_UNROLL for (int v = 0; v < kColumnVectors; ++v) Store(c + r * ldc + v * kLanes, acc[r][v]);
  }
}

template <int R>
inline void MatMulTail(int rows, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                       int64_t ldb, float* c, int64_t ldc) {
  if (rows == R) {
    MatMulBlock<R>(k, a, a_rs, a_cs, b, ldb, c, ldc);
  } else if constexpr (R > 1) {
    MatMulTail<R - 1>(rows, k, a, a_rs, a_cs, b, ldb, c, ldc);
  }
}

}  // namespace

void ProcessQueryTile(const AttentionParams& p, const QueryTile& t, const TileConfig& config,
                      const TileScratch& s) {
  const int d = p.head_dim;
  const int br = config.block_q;
  const int nq = t.rows;
  const int ncols = (nq + kColumns - 1) / kColumns * kColumns;
  const int nblocks = ncols / kColumns;
  const int64_t esize = ElementBytes(p.dtype);
  // FP8 dequantization (1 without): the rows are loaded as e4m3 x descale, so the rest of the
  // tile runs on the dequantized values as for any dtype. Q's factor is applied before the
  // softmax scale, not folded into it: a huge factor on small codes keeps finite values finite
  // (the product of the two factors could overflow float32 where the values do not).
  const float q_descale =
      p.q_descale != nullptr
          ? p.q_descale[t.batch * p.q_descale_batch_stride + t.head * p.q_descale_head_stride]
          : 1.0f;
  const float k_descale =
      p.k_descale != nullptr
          ? p.k_descale[t.batch * p.k_descale_batch_stride + t.kv_head * p.k_descale_head_stride]
          : 1.0f;
  const float v_descale =
      p.v_descale != nullptr
          ? p.v_descale[t.batch * p.v_descale_batch_stride + t.kv_head * p.v_descale_head_stride]
          : 1.0f;

  // Q_t = scale * log2(e) * Q^T; padding columns [nq, ncols) are zero.
  const float q_scale = p.softmax_scale * kLog2e;
  for (int i = 0; i < nq; ++i) {
    const char* q = RowPointer(p.q, p.dtype, p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                               t.batch, t.q_row0 + t.row_begin + i, t.head);
    if (p.q_descale == nullptr) {
      LoadRow(p.dtype, q, d, q_scale, s.out);
    } else {
      LoadRow(p.dtype, q, d, q_descale, s.out);
      for (int e = 0; e < d; ++e) s.out[e] *= q_scale;
    }
    for (int e = 0; e < d; ++e) s.q_t[e * br + i] = s.out[e];
  }
  for (int e = 0; e < d; ++e) {
    for (int i = nq; i < ncols; ++i) s.q_t[e * br + i] = 0.f;
    for (int i = 0; i < ncols; ++i) s.o_t[e * br + i] = 0.f;
  }
  for (int i = 0; i < ncols; ++i) {
    s.row_max[i] = kNegInf;
    s.row_sum[i] = 0.f;
  }

  // Keys the rows of a block [first, last] may see: [pos(first) - left, pos(last) + right].
  // A key range (paged contexts) cuts every row alike: [key_lo, key_hi).
  const int64_t delta = int64_t{t.len_k} - t.len_q;
  int64_t key_lo = 0, key_hi = t.len_k;
  if (p.key_range != nullptr) {
    key_lo = MaxI64(key_lo, p.key_range[2 * t.batch]);
    key_hi = MinI64(key_hi, p.key_range[2 * t.batch + 1]);
  }
  auto first_key = [&](int first_row) {
    return p.window_left >= 0 ? MaxI64(key_lo, t.row_begin + first_row + delta - p.window_left)
                              : key_lo;
  };
  auto end_key = [&](int last_row) {
    return p.window_right >= 0 ? MinI64(key_hi, t.row_begin + last_row + delta + p.window_right + 1)
                               : key_hi;
  };
  const int64_t j_begin = first_key(0);
  const int64_t j_end = end_key(nq - 1);
  const bool has_options =
      p.softcap > 0.f || p.alibi_slopes != nullptr || p.mask_kind != MaskKind::kNone;
  // Paged rows of one tile may lie in several pages: they are always copied. So are float32 rows
  // that are not 4-byte aligned (a request's bytes read in place from a received message may sit
  // at any offset): the in-place path reads them as floats.
  const auto aligned = [](const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % alignof(float) == 0;
  };
  const bool copy_kv = p.dtype != DType::kFloat32 || config.copy_float32_kv ||
                       p.page_table != nullptr || !aligned(p.k) || !aligned(p.v);
  KeyRange ranges[kTileMaxBlockQ / kColumns];

  for (int64_t j0 = j_begin; j0 < j_end; j0 += config.block_k) {
    const int nk = static_cast<int>(MinI64(config.block_k, j_end - j0));
    // Per column block: the part of this key tile its rows may see, and whether the window cuts
    // into it. Blocks that see none of it get an empty range: their rows keep m and l, alpha = 1.
    bool any_partial = false;
    int lo_min = nk, hi_max = 0;
    for (int b = 0; b < nblocks; ++b) {
      const int first = b * kColumns;
      const int last = (first + kColumns < nq ? first + kColumns : nq) - 1;
      const int64_t lo = MaxI64(first_key(first) - j0, 0);
      const int64_t hi = MinI64(end_key(last) - j0, nk);
      KeyRange& r = ranges[b];
      r.lo = static_cast<int>(MinI64(lo, nk));
      r.hi = static_cast<int>(MaxI64(hi, r.lo));
      // Every key of [lo, hi) is allowed for every row iff it is for the block's corner rows.
      r.partial = r.lo < r.hi && (first_key(last) - j0 > r.lo || end_key(first) - j0 < r.hi);
      any_partial = any_partial || r.partial;
      if (r.lo < r.hi) {
        lo_min = r.lo < lo_min ? r.lo : lo_min;
        hi_max = r.hi > hi_max ? r.hi : hi_max;
      }
    }

    const char* k = KeyRowPointer(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, t, j0);
    const float* kf = reinterpret_cast<const float*>(k);
    int64_t ks = p.k_row_stride;
    if (copy_kv) {
      for (int j = lo_min; j < hi_max; ++j) {
        const char* row = p.page_table != nullptr
                              ? KeyRowPointer(p, p.k, p.k_batch_stride, p.k_row_stride,
                                              p.k_head_stride, t, j0 + j)
                              : k + j * p.k_row_stride * esize;
        LoadRow(p.dtype, row, d, k_descale, s.k_tile + j * d);
      }
      kf = s.k_tile;
      ks = d;
    }
    for (int i = 0; i < ncols; ++i) s.tile_max[i] = s.row_max[i];
    if (has_options || any_partial) {
      ScoreTile(kf, ks, ranges, s.q_t, br, d, ncols, s.s_t, nullptr);
      ApplyScoreOptions(p, t, j0, ranges, nq, ncols, s.s_t, br);
      ColumnMax(s.s_t, ranges, br, ncols, s.tile_max);
    } else {
      ScoreTile(kf, ks, ranges, s.q_t, br, d, ncols, s.s_t, s.tile_max);
    }
    SoftmaxTile(s.s_t, ranges, br, ncols, s.tile_max, s.row_max, s.row_sum, s.alpha);

    const char* v = KeyRowPointer(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, t, j0);
    const float* vf = reinterpret_cast<const float*>(v);
    int64_t vs = p.v_row_stride;
    if (copy_kv) {
      for (int j = lo_min; j < hi_max; ++j) {
        const char* row = p.page_table != nullptr
                              ? KeyRowPointer(p, p.v, p.v_batch_stride, p.v_row_stride,
                                              p.v_head_stride, t, j0 + j)
                              : v + j * p.v_row_stride * esize;
        LoadRow(p.dtype, row, d, v_descale, s.v_tile + j * d);
      }
      vf = s.v_tile;
      vs = d;
    }
    OutputTile(vf, vs, ranges, s.s_t, br, d, ncols, s.alpha, s.o_t);
  }

  // out = O / l; lse = ln(2) * m + ln(l). A row that saw no allowed key has l = 0: o = 0,
  // lse = -inf.
  if (p.sink_logits == nullptr) {
    for (int i = 0; i < nq; ++i) {
      const float l = s.row_sum[i];
      const float inv = l > 0.f ? 1.0f / l : 0.f;
      float* out = s.out + i * d;
      for (int e = 0; e < d; ++e) out[e] = s.o_t[e * br + i] * inv;
      s.lse[i] = l > 0.f ? s.row_max[i] * kLn2 + __builtin_logf(l) : kNegInf;
    }
    return;
  }
  // With a sink logit c (natural units): l' = l 2^(m - M) + 2^(c log2(e) - M), M = max of both,
  // out = O 2^(m - M) / l', lse = M ln(2) + ln(l'); a row with no allowed key gives o = 0 and
  // lse = c. In double, so that any finite sink stays finite (c log2(e) may overflow a float).
  const double sink = p.sink_logits[t.batch * p.sink_batch_stride + t.head];
  const double sink2 = sink * 1.4426950408889634;
  for (int i = 0; i < nq; ++i) {
    const double l = s.row_sum[i];
    float* out = s.out + i * d;
    if (!(l > 0.0)) {
      for (int e = 0; e < d; ++e) out[e] = 0.f;
      s.lse[i] = static_cast<float>(sink);
      continue;
    }
    const double m = s.row_max[i];
    const double top = m > sink2 ? m : sink2;
    const double keys = __builtin_exp2(m - top);
    const double total = l * keys + __builtin_exp2(sink2 - top);
    const float scale = static_cast<float>(keys / total);
    for (int e = 0; e < d; ++e) out[e] = s.o_t[e * br + i] * scale;
    s.lse[i] = static_cast<float>(top * 0.6931471805599453 + __builtin_log(total));
  }
}

void TileProducts(const float* k, int64_t ks, const float* v, int64_t vs, int nk, int d,
                  const float* q_t, int br, const float* alpha, float* s_t, float* o_t) {
  KeyRange ranges[kTileMaxBlockQ / kColumns];
  for (KeyRange& r : ranges) r = {0, nk, false};
  ScoreTile(k, ks, ranges, q_t, br, d, br, s_t, nullptr);
  OutputTile(v, vs, ranges, s_t, br, d, br, alpha, o_t);
}

void TileMatMul(int m, int ncols, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                int64_t ldb, float* c, int64_t ldc) {
  for (int c0 = 0; c0 < ncols; c0 += kColumns) {
    int i = 0;
    if (a_cs == 1) {
      // Row-major A (S = Q K^T, dP = dO V^T, dQ = dS K): the forward's score micro-kernel.
      for (; i + kRows <= m; i += kRows) {
        ScoreBlock<kRows>(a + i * a_rs, a_rs, b + c0, static_cast<int>(ldb), k, c + i * ldc + c0,
                          static_cast<int>(ldc), nullptr);
      }
      if (i < m) {
        ScoreTail<kRows - 1>(m - i, a + i * a_rs, a_rs, b + c0, static_cast<int>(ldb), k,
                             c + i * ldc + c0, static_cast<int>(ldc), nullptr);
      }
      continue;
    }
    for (; i + kRows <= m; i += kRows) {
      MatMulBlock<kRows>(k, a + i * a_rs, a_rs, a_cs, b + c0, ldb, c + i * ldc + c0, ldc);
    }
    if (i < m) {
      MatMulTail<kRows - 1>(m - i, k, a + i * a_rs, a_rs, a_cs, b + c0, ldb, c + i * ldc + c0, ldc);
    }
  }
}

void TileAccumulate(int rows, int n, const float* part, int64_t ldp, double* sum, int64_t lds) {
  typedef float VecHalfF __attribute__((vector_size(ATTN_CPU_VECTOR_BYTES / 2)));
  typedef double VecD __attribute__((vector_size(ATTN_CPU_VECTOR_BYTES)));
  constexpr int kDoubles = kLanes / 2;
  for (int r = 0; r < rows; ++r) {
    const float* src = part + r * ldp;
    double* dst = sum + r * lds;
    int e = 0;
    for (; e + kDoubles <= n; e += kDoubles) {
      VecHalfF f;
      __builtin_memcpy(&f, src + e, sizeof(f));
      VecD acc;
      __builtin_memcpy(&acc, dst + e, sizeof(acc));
      acc += __builtin_convertvector(f, VecD);
      __builtin_memcpy(dst + e, &acc, sizeof(acc));
    }
    for (; e < n; ++e) dst[e] += src[e];
  }
}

void TileSoftmaxGrad(int nq, int ncols, float scale, float softcap, float slope, int64_t pos0,
                     const float* lse, const float* delta, const int32_t* lo, const int32_t* hi,
                     float* s, float* dp, int64_t ld) {
  VecI lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  const VecF zero = VecF{};
  const bool plain = !(softcap > 0.f) && slope == 0.f;
  const VecF scale_v = Splat(scale);
  const VecF scale2 = Splat(scale * kLog2e);
  const VecF cap = Splat(softcap);
  const VecF inv_cap = Splat(softcap > 0.f ? 1.0f / softcap : 0.f);
  const VecF slope_v = Splat(slope);
  for (int i = 0; i < nq; ++i) {
    float* srow = s + i * ld;
    float* dprow = dp + i * ld;
    const bool empty = lse[i] == kNegInf || lo[i] >= hi[i];
    const VecF lse_v = Splat(empty ? 0.f : lse[i]);
    const VecF shift = Splat(empty ? 0.f : lse[i] * kLog2e);
    const VecF d = Splat(delta[i]);
    const int32_t l0 = lo[i], h0 = hi[i];
    // ALiBi distance |pos(i) - key| = |pos0 + i - j| for column j.
    const VecI row_pos = (lane * 0) + static_cast<int32_t>(pos0 + i);
    for (int c = 0; c < ncols; c += kLanes) {
      if (empty) {
        Store(srow + c, zero);
        Store(dprow + c, zero);
        continue;
      }
      const VecI j = lane + c;
      const VecI dropped = (j < l0) | (j >= h0);
      VecF x, dcap = Splat(1.0f);
      if (plain) {
        // exp(scale s - lse) = 2^(scale log2(e) s - lse log2(e)).
        x = Load(srow + c) * scale2 - shift;
      } else {
        // As the forward's contract: softcap, then ALiBi, on natural-unit scores.
        VecF score = Load(srow + c) * scale_v;
        if (softcap > 0.f) {
          const VecF th = Tanh(score * inv_cap);
          score = cap * th;
          dcap = 1.0f - th * th;
        }
        if (slope != 0.f) {
          VecI dist = row_pos - j;
          dist = dist < 0 ? -dist : dist;
          score -= slope_v * __builtin_convertvector(dist, VecF);
        }
        x = (score - lse_v) * kLog2e;
      }
      // Dropped keys give exactly 0. The exponent is <= 0 for the forward's own lse; an lse below
      // the scores (a caller's mistake) saturates at 2^128 = inf instead of wrapping Exp2's
      // exponent bits.
      x = x > 128.f ? Splat(128.f) : x;
      const VecF pm = dropped ? zero : Exp2(x);
      Store(srow + c, pm);
      Store(dprow + c, pm * (Load(dprow + c) - d) * dcap);
    }
  }
}

}  // namespace attention::cpu::ATTN_CPU_KERNEL_NS
