// The CPU backend against the float64 reference (tests/reference), for every instruction-set
// variant this machine runs, on random inputs with ragged sizes, every option alone and combined,
// GQA/MQA, packed varlen batches, strided layouts and odd tile shapes. Outputs are poisoned
// (NaN) before each run, so an unwritten element fails.
//
// Tolerances, per element, |got - ref| <= atol + rtol * |ref| (o) and atol_lse + 1e-5 |ref| (lse):
//   float32:  atol 2e-5, rtol 2e-5  (float32 accumulation; exp to 2 ulp)
//   float16:  atol 1e-3, rtol 2e-3  (the output's rounding to binary16 is 2.4e-4 relative)
//   bfloat16: atol 8e-3, rtol 8e-3  (the output's rounding to bfloat16 is 2e-3 relative)
//   float8_e4m3 (o is bfloat16): as bfloat16, and more: every o element must be the bfloat16
//             rounding of the float64 reference on the dequantized inputs (e4m3 x descale),
//             except where the reference lies within kFp8TieMargin of a rounding midpoint. The
//             CPU backend computes FP8 at float32 accuracy; only o's final rounding differs.
//   lse (float32 for every dtype): atol 1e-4
// The inputs are rounded to the dtype before both the backend and the reference read them, so
// these bound the backend's arithmetic and output rounding only.
#include "kernels/cpu/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/attention_params.h"
#include "kernels/dtype.h"
#include "tests/reference/reference_attention.h"

namespace attention::cpu {
namespace {

using ::attention::testing::LoadElement;
using ::attention::testing::ReferenceAttention;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Tolerance {
  double atol, rtol;
};

Tolerance ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return {2e-5, 2e-5};
    case DType::kFloat16:
      return {1e-3, 2e-3};
    case DType::kBFloat16:
    case DType::kFloat8E4M3:  // o is bfloat16
      return {8e-3, 8e-3};
  }
  return {0, 0};
}
constexpr double kLseAtol = 1e-4;

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "fp32";
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
    case DType::kFloat8E4M3:
      return "fp8";
  }
  return "?";
}

enum class Alibi { kNone, kPerHead, kPerBatchHead };

// FP8 descale factors: none (1.0), one per tensor ([1], head stride 0), one per head ([heads]),
// or one per (sequence, head) (batch stride = heads: what the server's packed launches use).
enum class Descale { kNone, kPerTensor, kPerHead, kPerSequenceHead };

// Mask shape: which of (batch, head, row, col) are broadcast (stride 0).
struct MaskShape {
  bool batch = true, head = true, row = false, col = false;
};

// One problem. For a packed batch, lens_q / lens_k give the sequence lengths (seqlen_q /
// seqlen_k are then derived as the longest).
struct Case {
  DType dtype = DType::kFloat32;
  int batch = 1, seqlen_q = 17, seqlen_k = 17, q_heads = 2, kv_heads = 2, head_dim = 64;
  std::vector<int> lens_q, lens_k;  // non-empty: packed varlen batch
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softmax_scale = 0.f;  // 0: 1 / sqrt(head_dim)
  float softcap = 0.f;
  Alibi alibi = Alibi::kNone;
  MaskKind mask_kind = MaskKind::kNone;
  MaskShape mask_shape;
  bool lse = true;
  // Extra elements between rows (non-contiguous layouts); `heads_major` lays q/k/v/o out as
  // [batch, heads, seqlen, head_dim] through the strides.
  int row_pad = 0;
  bool heads_major = false;
  // Attention sinks: one logit per (sequence, head) in the softmax denominator.
  bool sinks = false;
  // Paged K/V (> 0): k and v move into page pools of this many rows, in a random page order, with
  // NaN in every row no sequence owns (a read of one poisons the output). Contiguous layouts only.
  int page_size = 0;
  // With pages: each sequence's keys cut to a random range [begin, end) (key_range).
  bool key_range = false;
  // FP8 (dtype kFloat8E4M3): how q, k and v are dequantized (with factors, the codes are spread
  // over e4m3's exponent range and the factors random in [2^-6, 2^-4]).
  Descale descale = Descale::kNone;
  uint32_t seed = 1;

  std::string Name() const {
    std::string s = std::string(DTypeName(dtype)) + " b" + std::to_string(batch) + " sq" +
                    std::to_string(seqlen_q) + " sk" + std::to_string(seqlen_k) + " h" +
                    std::to_string(q_heads) + "/" + std::to_string(kv_heads) + " d" +
                    std::to_string(head_dim);
    if (!lens_q.empty()) s += " varlen";
    if (causal) s += " causal";
    if (window_left >= 0 || window_right >= 0) {
      s += " window(" + std::to_string(window_left) + "," + std::to_string(window_right) + ")";
    }
    if (softcap > 0.f) s += " softcap";
    if (alibi != Alibi::kNone) s += " alibi";
    if (mask_kind == MaskKind::kBool) s += " bool-mask";
    if (mask_kind == MaskKind::kAdditive) s += " additive-mask";
    if (row_pad > 0 || heads_major) s += " strided";
    if (sinks) s += " sinks";
    if (page_size > 0) s += " pages" + std::to_string(page_size);
    if (key_range) s += " key-range";
    if (descale == Descale::kPerTensor) s += " descale/tensor";
    if (descale == Descale::kPerHead) s += " descale/head";
    if (descale == Descale::kPerSequenceHead) s += " descale/sequence-head";
    return s;
  }
};

// Owns the buffers of one problem and the params pointing at them.
struct Problem {
  AttentionParams p;
  std::vector<uint8_t> q, k, v, o;
  std::vector<float> lse, alibi, additive_mask;
  std::vector<uint8_t> bool_mask;
  std::vector<int32_t> cu_q, cu_k;
  std::vector<float> sinks;
  std::vector<uint8_t> k_pages, v_pages;
  std::vector<int32_t> page_table, seqlens_k, key_range;
  std::vector<float> q_descale, k_descale, v_descale;
  int64_t o_elems = 0;
};

// Moves `pr`'s contiguous k and v into page pools of `page_size` rows in a random page order
// (two spare pages, and the tail of each partial last page, hold NaN), and points the params at
// them: page_table, seqlens_k, and (with `key_range`) a random key range per sequence.
void Paginate(const Case& c, Problem* pr, std::mt19937& rng) {
  AttentionParams& p = pr->p;
  const int64_t row_elems = int64_t{p.kv_heads} * p.head_dim;
  const int64_t es = DTypeSize(p.dtype);
  int max_pages = 1;
  std::vector<int> lens(p.batch), k_row0(p.batch);
  for (int b = 0; b < p.batch; ++b) {
    lens[b] = p.is_varlen() ? pr->cu_k[b + 1] - pr->cu_k[b] : p.seqlen_k;
    k_row0[b] = p.is_varlen() ? pr->cu_k[b] : b * p.seqlen_k;
    max_pages = std::max(max_pages, (lens[b] + c.page_size - 1) / c.page_size);
  }
  const int pages = p.batch * max_pages + 2;
  std::vector<int32_t> order(pages);
  for (int i = 0; i < pages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t page_bytes = int64_t{c.page_size} * row_elems * es;
  std::vector<uint8_t> nan_row(static_cast<size_t>(row_elems * es), 0xff);
  for (auto* pool : {&pr->k_pages, &pr->v_pages}) {
    pool->resize(static_cast<size_t>(pages * page_bytes));
    for (int64_t r = 0; r < int64_t{pages} * c.page_size; ++r) {
      std::memcpy(pool->data() + r * row_elems * es, nan_row.data(), nan_row.size());
    }
  }
  pr->page_table.assign(static_cast<size_t>(p.batch) * max_pages, -1);
  pr->seqlens_k.assign(lens.begin(), lens.end());
  int next = 0;
  for (int b = 0; b < p.batch; ++b) {
    for (int j = 0; j < lens[b]; ++j) {
      if (j % c.page_size == 0) pr->page_table[b * max_pages + j / c.page_size] = order[next++];
      const int64_t page = pr->page_table[b * max_pages + j / c.page_size];
      const int64_t dst = (page * c.page_size + j % c.page_size) * row_elems * es;
      const int64_t src = (k_row0[b] + int64_t{j}) * row_elems * es;
      std::memcpy(pr->k_pages.data() + dst, pr->k.data() + src, nan_row.size());
      std::memcpy(pr->v_pages.data() + dst, pr->v.data() + src, nan_row.size());
    }
    if (c.key_range) {
      std::uniform_int_distribution<int> at(0, std::max(lens[b], 1));
      int lo = at(rng), hi = at(rng);
      if (lo > hi) std::swap(lo, hi);
      pr->key_range.push_back(lo);
      pr->key_range.push_back(hi);
    }
  }
  p.k = pr->k_pages.data();
  p.v = pr->v_pages.data();
  p.k_batch_stride = p.v_batch_stride = int64_t{c.page_size} * row_elems;
  p.k_row_stride = p.v_row_stride = row_elems;
  p.k_head_stride = p.v_head_stride = p.head_dim;
  p.page_table = pr->page_table.data();
  p.page_table_stride = max_pages;
  p.page_size = c.page_size;
  p.seqlens_k = pr->seqlens_k.data();
  p.cu_seqlens_k = nullptr;
  p.total_k = 0;
  if (c.key_range) p.key_range = pr->key_range.data();
}

// Standard normal values in `dtype`; FP8 codes hold them times `fp8_amplitude` (the test's
// descales take it back out, so the real values stay standard normal either way: larger real
// values make any float32 computation's scores, and so its relative error, larger).
void FillRandom(DType dtype, int64_t n, std::mt19937& rng, std::vector<uint8_t>& out,
                float fp8_amplitude = 1.f) {
  std::normal_distribution<float> dist(0.f, 1.f);
  out.resize(n * DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const float x = dist(rng);
    switch (dtype) {
      case DType::kFloat32:
        std::memcpy(out.data() + 4 * i, &x, 4);
        break;
      case DType::kFloat16: {
        const uint16_t h = FloatToHalf(x);
        std::memcpy(out.data() + 2 * i, &h, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = FloatToBFloat16(x);
        std::memcpy(out.data() + 2 * i, &h, 2);
        break;
      }
      case DType::kFloat8E4M3:
        out[i] = FloatToE4M3(fp8_amplitude * x);
        break;
    }
  }
}

std::unique_ptr<Problem> MakeProblem(const Case& c) {
  auto pr = std::make_unique<Problem>();
  AttentionParams& p = pr->p;
  std::mt19937 rng(c.seed);
  p.dtype = c.dtype;
  p.batch = c.batch;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  const bool varlen = !c.lens_q.empty();
  int64_t rows_q, rows_k;  // rows of one tensor "sequence" dimension, all sequences
  if (varlen) {
    pr->cu_q.push_back(0);
    pr->cu_k.push_back(0);
    p.seqlen_q = p.seqlen_k = 1;
    for (int b = 0; b < c.batch; ++b) {
      pr->cu_q.push_back(pr->cu_q.back() + c.lens_q[b]);
      pr->cu_k.push_back(pr->cu_k.back() + c.lens_k[b]);
      p.seqlen_q = std::max(p.seqlen_q, c.lens_q[b]);
      p.seqlen_k = std::max(p.seqlen_k, c.lens_k[b]);
    }
    p.total_q = pr->cu_q.back();
    p.total_k = pr->cu_k.back();
    p.cu_seqlens_q = pr->cu_q.data();
    p.cu_seqlens_k = pr->cu_k.data();
    rows_q = p.total_q;
    rows_k = p.total_k;
  } else {
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = c.seqlen_k;
    rows_q = int64_t{c.batch} * c.seqlen_q;
    rows_k = int64_t{c.batch} * c.seqlen_k;
  }
  SetContiguousStrides(p);
  const int64_t d = c.head_dim;
  if (c.row_pad > 0 || c.heads_major) {
    // Dense only: [batch, heads, seqlen, d + pad] for heads_major, else [batch, seqlen, heads,
    // d] with row_pad extra elements per row.
    const int64_t dp = d + (c.heads_major ? c.row_pad : 0);
    if (c.heads_major) {
      p.q_row_stride = p.o_row_stride = dp;
      p.q_head_stride = p.o_head_stride = dp * p.seqlen_q;
      p.q_batch_stride = p.o_batch_stride = dp * p.seqlen_q * c.q_heads;
      p.k_row_stride = p.v_row_stride = dp;
      p.k_head_stride = p.v_head_stride = dp * p.seqlen_k;
      p.k_batch_stride = p.v_batch_stride = dp * p.seqlen_k * c.kv_heads;
    } else {
      p.q_row_stride = p.o_row_stride = d * c.q_heads + c.row_pad;
      p.k_row_stride = p.v_row_stride = d * c.kv_heads + c.row_pad;
      p.q_batch_stride = p.o_batch_stride = varlen ? 0 : p.q_row_stride * p.seqlen_q;
      p.k_batch_stride = p.v_batch_stride = varlen ? 0 : p.k_row_stride * p.seqlen_k;
    }
  }
  // Elements spanned by each tensor (padding included).
  const int64_t q_elems = varlen ? rows_q * p.q_row_stride : c.batch * p.q_batch_stride;
  const int64_t k_elems = varlen ? rows_k * p.k_row_stride : c.batch * p.k_batch_stride;
  pr->o_elems = q_elems;
  // With descales: codes x 32 spread over most of e4m3's exponents (subnormals below 2^-6
  // included, the largest near 448), and factors around 1 / 32.
  const float fp8_amplitude = c.descale == Descale::kNone ? 1.f : 32.f;
  FillRandom(c.dtype, q_elems, rng, pr->q, fp8_amplitude);
  FillRandom(c.dtype, k_elems, rng, pr->k, fp8_amplitude);
  FillRandom(c.dtype, k_elems, rng, pr->v, fp8_amplitude);
  pr->o.assign(q_elems * DTypeSize(OutputDType(c.dtype)), 0xff);  // NaN in every dtype
  p.q = pr->q.data();
  p.k = pr->k.data();
  p.v = pr->v.data();
  p.o = pr->o.data();
  if (c.lse) {
    pr->lse.assign(int64_t{c.q_heads} * rows_q, std::numeric_limits<float>::quiet_NaN());
    p.lse = pr->lse.data();
  }
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.softmax_scale = c.softmax_scale != 0.f ? c.softmax_scale : 1.0f / std::sqrt(float(d));
  p.softcap = c.softcap;
  std::uniform_real_distribution<float> slope_dist(0.f, 0.5f);
  if (c.alibi != Alibi::kNone) {
    const int n = c.alibi == Alibi::kPerHead ? c.q_heads : c.batch * c.q_heads;
    for (int i = 0; i < n; ++i) pr->alibi.push_back(slope_dist(rng));
    p.alibi = true;
    p.alibi_slopes = pr->alibi.data();
    p.alibi_batch_stride = c.alibi == Alibi::kPerHead ? 0 : c.q_heads;
  }
  if (c.sinks) {
    std::uniform_real_distribution<float> sink_dist(-2.f, 3.f);
    for (int i = 0; i < c.batch * c.q_heads; ++i) pr->sinks.push_back(sink_dist(rng));
    p.sinks = true;
    p.sink_logits = pr->sinks.data();
    p.sink_batch_stride = c.q_heads;
  }
  if (c.descale != Descale::kNone) {
    // Factors in [2^-6, 2^-4], around 1 / 32 (FillRandom's amplitude).
    std::uniform_real_distribution<float> factor(1.f / 64, 1.f / 16);
    const int sets = c.descale == Descale::kPerSequenceHead ? c.batch : 1;
    const auto make = [&](int heads, std::vector<float>* out, const float** ptr,
                          int64_t* batch_stride, int64_t* head_stride) {
      const int per_set = c.descale == Descale::kPerTensor ? 1 : heads;
      for (int i = 0; i < sets * per_set; ++i) out->push_back(factor(rng));
      *ptr = out->data();
      *head_stride = c.descale == Descale::kPerTensor ? 0 : 1;
      *batch_stride = c.descale == Descale::kPerSequenceHead ? heads : 0;
    };
    make(c.q_heads, &pr->q_descale, &p.q_descale, &p.q_descale_batch_stride,
         &p.q_descale_head_stride);
    make(c.kv_heads, &pr->k_descale, &p.k_descale, &p.k_descale_batch_stride,
         &p.k_descale_head_stride);
    make(c.kv_heads, &pr->v_descale, &p.v_descale, &p.v_descale_batch_stride,
         &p.v_descale_head_stride);
  }
  if (c.page_size > 0) Paginate(c, pr.get(), rng);
  if (c.mask_kind != MaskKind::kNone) {
    // Full shape [batch, q_heads, seqlen_q, seqlen_k] with broadcast dimensions of size 1.
    const int64_t nb = c.mask_shape.batch ? 1 : c.batch;
    const int64_t nh = c.mask_shape.head ? 1 : c.q_heads;
    const int64_t nr = c.mask_shape.row ? 1 : p.seqlen_q;
    const int64_t nc = c.mask_shape.col ? 1 : p.seqlen_k;
    p.mask_col_stride = c.mask_shape.col ? 0 : 1;
    p.mask_row_stride = c.mask_shape.row ? 0 : nc;
    p.mask_head_stride = c.mask_shape.head ? 0 : nr * nc;
    p.mask_batch_stride = c.mask_shape.batch ? 0 : nh * nr * nc;
    const int64_t n = nb * nh * nr * nc;
    p.mask_kind = c.mask_kind;
    std::uniform_real_distribution<float> u(0.f, 1.f);
    if (c.mask_kind == MaskKind::kBool) {
      for (int64_t i = 0; i < n; ++i) pr->bool_mask.push_back(u(rng) < 0.7f ? 1 : 0);
      p.mask = pr->bool_mask.data();
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const float r = u(rng);
        pr->additive_mask.push_back(r < 0.1f ? -std::numeric_limits<float>::infinity()
                                             : 4.f * (u(rng) - 0.5f));
      }
      p.mask = pr->additive_mask.data();
    }
  }
  return pr;
}

// Every variant this build and CPU can run, each with 3 threads (more than CI's 2 cores, so
// workers interleave).
std::vector<CpuIsa> Variants() {
  std::vector<CpuIsa> v = {CpuIsa::kGeneric};
  if (BestCpuIsa() >= CpuIsa::kAvx2) v.push_back(CpuIsa::kAvx2);
  if (BestCpuIsa() >= CpuIsa::kAvx512) v.push_back(CpuIsa::kAvx512);
  return v;
}

CpuBackend& Backend(CpuIsa isa) {
  static auto* backends = [] {
    auto* b = new std::vector<std::unique_ptr<CpuBackend>>();
    for (CpuIsa i : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      CpuBackendOptions options;
      options.num_threads = 3;
      options.max_isa = i;
      b->push_back(std::make_unique<CpuBackend>(options));
    }
    return b;
  }();
  return *(*backends)[static_cast<int>(isa)];
}

struct Reference {
  std::vector<double> o, lse;
};

Reference ComputeReference(const Problem& pr) {
  Reference ref;
  ref.o.assign(pr.o_elems, 0.0);
  if (pr.p.lse != nullptr) ref.lse.assign(pr.lse.size(), 0.0);
  ReferenceAttention(pr.p, ref.o.data(), pr.p.lse != nullptr ? ref.lse.data() : nullptr);
  return ref;
}

// FP8: how close to a bfloat16 rounding midpoint a reference value may lie before the check
// that o is its exact rounding skips it, relative to the row's largest |o|. The backend's float32
// arithmetic (products, exp2 to 2e-7, sums over up to 1000 keys) stays well within it; a larger
// error (a descale applied twice, a code decoded wrongly) moves many values across midpoints.
constexpr double kFp8TieMargin = 2e-5;

// The midpoint between the two bfloat16 values around `x` (finite): the bfloat16 value below
// |x| with the first dropped bit set, exact in a float.
double Bf16Midpoint(double x) {
  return BitsFloat((FloatBits(static_cast<float>(x)) & 0xffff0000u) | 0x8000u);
}

// Compares every output element the problem defines (padding excluded) and every lse entry.
void ExpectMatches(const Problem& pr, const Reference& ref, const std::string& what) {
  const AttentionParams& p = pr.p;
  const Tolerance tol = ToleranceFor(p.dtype);
  const DType o_dtype = OutputDType(p.dtype);
  const bool fp8 = p.dtype == DType::kFloat8E4M3;
  int failures = 0;
  double worst = 0.0;
  for (int b = 0; b < p.batch; ++b) {
    const int64_t row0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t len = p.is_varlen() ? p.cu_seqlens_q[b + 1] - row0 : p.seqlen_q;
    for (int h = 0; h < p.q_heads; ++h) {
      for (int64_t i = 0; i < len; ++i) {
        const int64_t base =
            b * p.o_batch_stride + (row0 + i) * p.o_row_stride + h * p.o_head_stride;
        double row_max = 0.0;
        for (int e = 0; e < p.head_dim; ++e) row_max = std::max(row_max, std::abs(ref.o[base + e]));
        for (int e = 0; e < p.head_dim; ++e) {
          const double got = LoadElement(o_dtype, p.o, base + e);
          const double want = ref.o[base + e];
          const double err = std::abs(got - want);
          worst = std::max(worst, err);
          if (!(err <= tol.atol + tol.rtol * std::abs(want)) && ++failures <= 5) {
            ADD_FAILURE() << what << ": o[b=" << b << ", i=" << i << ", h=" << h << ", e=" << e
                          << "] = " << got << ", reference " << want;
          }
          if (fp8) {
            const double rounded = BFloat16ToFloat(FloatToBFloat16(static_cast<float>(want)));
            const bool near_tie = std::abs(want - Bf16Midpoint(want)) <= kFp8TieMargin * row_max;
            if (got != rounded && !near_tie && ++failures <= 5) {
              ADD_FAILURE() << what << ": o[b=" << b << ", i=" << i << ", h=" << h << ", e=" << e
                            << "] = " << got << ", not the bfloat16 rounding " << rounded
                            << " of the reference " << want;
            }
          }
        }
        if (p.lse != nullptr) {
          const int64_t li = b * p.lse_batch_stride + h * p.lse_head_stride + row0 + i;
          const double got = pr.lse[li];
          const double want = ref.lse[li];
          const bool ok = want == kNegInf
                              ? got == kNegInf
                              : std::abs(got - want) <= kLseAtol + 1e-5 * std::abs(want);
          if (!ok && ++failures <= 5) {
            ADD_FAILURE() << what << ": lse[b=" << b << ", h=" << h << ", i=" << i << "] = " << got
                          << ", reference " << want;
          }
        }
      }
    }
  }
  EXPECT_EQ(failures, 0) << what << " (largest |o - ref| " << worst << ")";
}

void Poison(Problem& pr) {
  std::memset(pr.o.data(), 0xff, pr.o.size());
  std::fill(pr.lse.begin(), pr.lse.end(), std::numeric_limits<float>::quiet_NaN());
}

// Runs `c` on every variant and compares each with one reference computation.
void Check(const Case& c) {
  SCOPED_TRACE(c.Name());
  std::unique_ptr<Problem> pr = MakeProblem(c);
  const Reference ref = ComputeReference(*pr);
  for (CpuIsa isa : Variants()) {
    Poison(*pr);
    const absl::Status s = Backend(isa).Run(pr->p);
    ASSERT_TRUE(s.ok()) << s;
    ExpectMatches(*pr, ref, std::string(CpuIsaName(isa)) + " " + c.Name());
  }
}

const DType kDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

TEST(CpuAttention, RaggedSizesEveryDType) {
  for (DType dtype : kDTypes) {
    for (int d : {40, 72, 96, 256}) {
      for (auto [sq, sk] : {std::pair{1, 1}, {17, 17}, {1, 1000}, {17, 300}, {300, 17}}) {
        Case c;
        c.dtype = dtype;
        c.head_dim = d;
        c.seqlen_q = sq;
        c.seqlen_k = sk;
        c.q_heads = c.kv_heads = 1;
        c.seed = d * 1000 + sq + sk;
        Check(c);
      }
    }
  }
}

TEST(CpuAttention, Seqlen1000) {
  for (bool causal : {false, true}) {
    Case c;
    c.seqlen_q = c.seqlen_k = 1000;
    c.head_dim = 64;
    c.causal = causal;
    c.q_heads = c.kv_heads = 1;
    Check(c);
  }
  Case c;
  c.dtype = DType::kBFloat16;
  c.seqlen_q = 1000;
  c.seqlen_k = 777;
  c.head_dim = 128;
  c.causal = true;
  c.q_heads = 2;
  c.kv_heads = 1;
  Check(c);
}

TEST(CpuAttention, GroupedAndMultiQuery) {
  for (auto [qh, kvh] : {std::pair{8, 1}, {16, 2}, {4, 1}, {3, 3}}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16}) {
      Case c;
      c.dtype = dtype;
      c.batch = 2;
      c.q_heads = qh;
      c.kv_heads = kvh;
      c.seqlen_q = 33;
      c.seqlen_k = 70;
      c.head_dim = 72;
      c.causal = true;
      Check(c);
    }
  }
}

TEST(CpuAttention, CausalBottomRightAligned) {
  // seqlen_q < seqlen_k: every row sees a prefix; seqlen_q > seqlen_k: the first rows see no key
  // at all (o = 0, lse = -inf).
  for (auto [sq, sk] : {std::pair{17, 100}, {100, 17}, {65, 64}, {1, 129}, {129, 1}}) {
    Case c;
    c.seqlen_q = sq;
    c.seqlen_k = sk;
    c.causal = true;
    Check(c);
  }
}

TEST(CpuAttention, EachOptionAlone) {
  for (DType dtype : kDTypes) {
    Case base;
    base.dtype = dtype;
    base.batch = 2;
    base.seqlen_q = 70;
    base.seqlen_k = 150;
    base.head_dim = 40;
    {
      Case c = base;
      c.softmax_scale = 0.37f;
      Check(c);
    }
    for (auto [l, r] : {std::pair{16, 16}, {0, 0}, {-1, 5}, {33, -1}, {100, 0}, {0, 40}}) {
      Case c = base;
      c.window_left = l;
      c.window_right = r;
      Check(c);
    }
    {
      Case c = base;
      c.softcap = 5.f;
      c.softmax_scale = 1.f;  // raw scores of size ~sqrt(d) so that the cap bites
      Check(c);
    }
    for (Alibi a : {Alibi::kPerHead, Alibi::kPerBatchHead}) {
      Case c = base;
      c.alibi = a;
      Check(c);
    }
    for (MaskKind kind : {MaskKind::kBool, MaskKind::kAdditive}) {
      Case c = base;
      c.mask_kind = kind;
      Check(c);
    }
    {
      Case c = base;
      c.lse = false;
      Check(c);
    }
  }
}

TEST(CpuAttention, MaskBroadcastShapes) {
  const MaskShape shapes[] = {
      {true, true, false, false},    // [seqlen_q, seqlen_k]
      {false, true, false, false},   // [batch, 1, seqlen_q, seqlen_k]
      {false, false, false, false},  // [batch, q_heads, seqlen_q, seqlen_k]
      {true, false, true, false},    // [q_heads, 1, seqlen_k]
      {false, true, false, true},    // [batch, 1, seqlen_q, 1]
  };
  for (MaskKind kind : {MaskKind::kBool, MaskKind::kAdditive}) {
    for (const MaskShape& shape : shapes) {
      Case c;
      c.batch = 2;
      c.q_heads = 4;
      c.kv_heads = 2;
      c.seqlen_q = 45;
      c.seqlen_k = 90;
      c.head_dim = 64;
      c.mask_kind = kind;
      c.mask_shape = shape;
      Check(c);
    }
  }
}

TEST(CpuAttention, OptionsCombined) {
  for (DType dtype : kDTypes) {
    Case c;
    c.dtype = dtype;
    c.batch = 2;
    c.q_heads = 8;
    c.kv_heads = 1;
    c.seqlen_q = 77;
    c.seqlen_k = 200;
    c.head_dim = 96;
    c.causal = true;
    c.window_left = 50;
    c.softcap = 8.f;
    c.softmax_scale = 0.5f;
    c.alibi = Alibi::kPerBatchHead;
    c.mask_kind = MaskKind::kAdditive;
    c.mask_shape = {false, false, false, false};
    Check(c);
    c.mask_kind = MaskKind::kBool;
    c.mask_shape = {true, false, false, false};
    c.alibi = Alibi::kPerHead;
    c.window_left = 7;
    c.causal = false;
    c.window_right = 3;
    Check(c);
  }
}

TEST(CpuAttention, PackedVarlen) {
  for (DType dtype : kDTypes) {
    Case c;
    c.dtype = dtype;
    c.batch = 5;
    c.lens_q = {1, 17, 0, 130, 64};
    c.lens_k = {1, 40, 9, 130, 3};
    c.q_heads = 4;
    c.kv_heads = 2;
    c.head_dim = 72;
    Check(c);
    c.causal = true;
    Check(c);
    c.causal = false;
    c.window_left = 5;
    c.window_right = 2;
    c.alibi = Alibi::kPerBatchHead;
    c.mask_kind = MaskKind::kBool;
    c.mask_shape = {false, true, false, false};
    c.softcap = 3.f;
    Check(c);
  }
  Case c;  // a long sequence beside short ones
  c.batch = 3;
  c.lens_q = {1000, 5, 64};
  c.lens_k = {1000, 1, 200};
  c.head_dim = 64;
  c.causal = true;
  c.mask_kind = MaskKind::kAdditive;
  Check(c);
}

TEST(CpuAttention, StridedLayouts) {
  for (DType dtype : kDTypes) {
    Case c;
    c.dtype = dtype;
    c.batch = 2;
    c.q_heads = 4;
    c.kv_heads = 2;
    c.seqlen_q = 50;
    c.seqlen_k = 61;
    c.head_dim = 40;
    c.row_pad = 3;
    Check(c);
    c.heads_major = true;
    c.causal = true;
    Check(c);
  }
}

TEST(CpuAttention, RowsWithNoAllowedKey) {
  // Window (0, 0) with seqlen_q > seqlen_k: rows 0..(sq - sk - 1) see nothing; a bool mask that
  // drops every key of some rows; an additive mask of -inf.
  Case c;
  c.seqlen_q = 40;
  c.seqlen_k = 10;
  c.window_left = 0;
  c.window_right = 0;
  std::unique_ptr<Problem> pr = MakeProblem(c);
  for (CpuIsa isa : Variants()) {
    Poison(*pr);
    ASSERT_TRUE(Backend(isa).Run(pr->p).ok());
    const float* o = reinterpret_cast<const float*>(pr->o.data());
    for (int h = 0; h < c.q_heads; ++h) {
      for (int i = 0; i < 30; ++i) {
        EXPECT_EQ(pr->lse[h * c.seqlen_q + i], -std::numeric_limits<float>::infinity());
        for (int e = 0; e < c.head_dim; ++e) {
          ASSERT_EQ(o[(i * c.q_heads + h) * c.head_dim + e], 0.f) << CpuIsaName(isa);
        }
      }
    }
    ExpectMatches(*pr, ComputeReference(*pr), CpuIsaName(isa));
  }
  Case m;
  m.seqlen_q = 20;
  m.seqlen_k = 300;
  m.mask_kind = MaskKind::kBool;
  m.mask_shape = {true, true, false, true};  // [seqlen_q, 1]: whole rows on or off
  Check(m);
  m.mask_kind = MaskKind::kAdditive;
  Check(m);
}

TEST(CpuAttention, OddTileShapes) {
  for (auto [bq, bk] : {std::pair{32, 7}, {96, 1}, {64, 300}, {32, 64}, {128, 64}, {512, 33}}) {
    for (CpuIsa isa : Variants()) {
      CpuBackendOptions options;
      options.num_threads = 2;
      options.max_isa = isa;
      options.block_q = bq;
      options.block_k = bk;
      CpuBackend backend(options);
      Case c;
      c.seqlen_q = 100;
      c.seqlen_k = 129;
      c.head_dim = 40;
      c.causal = true;
      c.window_left = 20;
      c.softcap = 4.f;
      c.seed = bq + bk;
      std::unique_ptr<Problem> pr = MakeProblem(c);
      ASSERT_TRUE(backend.Run(pr->p).ok());
      ExpectMatches(
          *pr, ComputeReference(*pr),
          std::string(CpuIsaName(isa)) + " block " + std::to_string(bq) + "x" + std::to_string(bk));
    }
  }
}

TEST(CpuAttention, ConcurrentRunsShareOneBackend) {
  CpuBackend backend(2);
  std::vector<std::unique_ptr<Problem>> problems;
  std::vector<Reference> refs;
  for (int t = 0; t < 4; ++t) {
    Case c;
    c.seqlen_q = 100 + 13 * t;
    c.seqlen_k = 90 + 7 * t;
    c.causal = t % 2 == 0;
    c.seed = 100 + t;
    problems.push_back(MakeProblem(c));
    refs.push_back(ComputeReference(*problems.back()));
  }
  std::vector<std::thread> threads;
  std::vector<absl::Status> status(problems.size());
  for (size_t t = 0; t < problems.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5 && status[t].ok(); ++rep) status[t] = backend.Run(problems[t]->p);
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t t = 0; t < problems.size(); ++t) {
    ASSERT_TRUE(status[t].ok()) << status[t];
    ExpectMatches(*problems[t], refs[t], "thread " + std::to_string(t));
  }
}

TEST(CpuAttention, SinksWithEveryOption) {
  for (DType dtype : kDTypes) {
    Case c;
    c.dtype = dtype;
    c.sinks = true;
    c.batch = 2;
    c.seqlen_q = 19;
    c.seqlen_k = 11;  // causal: the first rows see no key (o = 0, lse = the sink)
    c.q_heads = 6;
    c.kv_heads = 2;
    c.head_dim = 40;
    c.causal = true;
    Check(c);
    c.causal = false;
    c.window_left = 3;
    c.window_right = 2;
    c.softcap = 4.f;
    c.alibi = Alibi::kPerBatchHead;
    c.mask_kind = MaskKind::kAdditive;
    Check(c);
    Case v = c;
    v.batch = 3;
    v.lens_q = {5, 0, 9};
    v.lens_k = {7, 3, 1};
    v.mask_kind = MaskKind::kNone;
    Check(v);
  }
}

TEST(CpuAttention, PagedContexts) {
  for (DType dtype : kDTypes) {
    for (int page_size : {1, 3, 16, 64}) {
      Case c;
      c.dtype = dtype;
      c.page_size = page_size;
      c.batch = 3;
      c.lens_q = {1, 4, 16};   // decode, speculative verify, a chunk
      c.lens_k = {70, 0, 33};  // partial last pages, and an empty context
      c.q_heads = 8;
      c.kv_heads = 2;
      c.head_dim = 32;
      c.causal = true;
      c.seed = static_cast<uint32_t>(page_size);
      Check(c);
      c.causal = false;
      c.window_left = 9;
      c.alibi = Alibi::kPerHead;
      c.sinks = true;
      c.softcap = 3.f;
      Check(c);
      c.key_range = true;
      Check(c);
    }
  }
}

// FP8 (E4M3) inputs: head dims 8 to 256 with ragged lengths, each kind of descale.
TEST(CpuAttention, Fp8HeadDimsAndDescales) {
  const Descale kinds[] = {Descale::kNone, Descale::kPerTensor, Descale::kPerHead,
                           Descale::kPerSequenceHead};
  int n = 0;
  for (int d : {8, 16, 40, 64, 72, 96, 128, 136, 200, 256}) {
    for (auto [sq, sk] : {std::pair{1, 1}, {17, 300}, {130, 67}}) {
      Case c;
      c.dtype = DType::kFloat8E4M3;
      c.head_dim = d;
      c.seqlen_q = sq;
      c.seqlen_k = sk;
      c.batch = 2;
      c.q_heads = 2;
      c.kv_heads = 1;
      c.descale = kinds[n++ % 4];
      c.seed = d * 1000 + sq + sk;
      Check(c);
    }
  }
}

// FP8 with every option, alone and together, GQA / MQA, packed ragged batches whose sequences
// have their own descales (as the server packs requests), strided layouts and paged K/V.
TEST(CpuAttention, Fp8EveryOption) {
  Case base;
  base.dtype = DType::kFloat8E4M3;
  base.batch = 3;
  base.lens_q = {1, 70, 33};
  base.lens_k = {90, 70, 150};
  base.q_heads = 4;
  base.kv_heads = 2;
  base.head_dim = 64;
  base.descale = Descale::kPerSequenceHead;
  std::vector<Case> cases = {base};
  // `base` changed by `edit`.
  const auto with = [&](const std::function<void(Case&)>& edit) {
    Case c = base;
    edit(c);
    cases.push_back(c);
  };
  for (Descale kind : {Descale::kNone, Descale::kPerTensor, Descale::kPerHead}) {
    with([kind](Case& c) { c.descale = kind; });
  }
  with([](Case& c) { c.causal = true; });
  with([](Case& c) {
    c.causal = true;
    c.q_heads = 8;
    c.kv_heads = 1;  // MQA
  });
  with([](Case& c) {
    c.window_left = 16;
    c.window_right = 4;
  });
  with([](Case& c) { c.softcap = 5.f; });
  for (Alibi alibi : {Alibi::kPerHead, Alibi::kPerBatchHead}) {
    with([alibi](Case& c) { c.alibi = alibi; });
  }
  with([](Case& c) { c.sinks = true; });
  for (MaskKind kind : {MaskKind::kBool, MaskKind::kAdditive}) {
    with([kind](Case& c) {
      c.lens_q.clear();
      c.lens_k.clear();
      c.seqlen_q = 40;
      c.seqlen_k = 90;
      c.mask_kind = kind;
      c.mask_shape = {false, false, false, false};
    });
  }
  with([](Case& c) {
    c.causal = true;
    c.softcap = 8.f;
    c.alibi = Alibi::kPerBatchHead;
    c.sinks = true;
    c.window_left = 40;
  });
  with([](Case& c) {
    c.lens_q.clear();
    c.lens_k.clear();
    c.seqlen_q = 33;
    c.seqlen_k = 77;
    c.heads_major = true;
    c.row_pad = 8;
  });
  with([](Case& c) {
    c.page_size = 16;
    c.key_range = true;
  });
  for (const Case& c : cases) Check(c);
}

// FP8 is the float32 algorithm on the dequantized values: with power-of-two descales the values
// e4m3 x descale are exact in float32, so a float32 launch on them must give, rounded to
// bfloat16, exactly the FP8 launch's o (and the same lse), on every variant. The float32 launch's
// own error against float64 (o in float32, before any rounding) is FP8's error before o's
// rounding: measured 3e-7 to 1.3e-6 x max|o| on these cases (2026-12-06, generic, AVX2 and
// AVX-512 alike), held to 5e-6.
TEST(CpuAttention, Fp8EqualsFloat32OnTheDequantizedValues) {
  Case base;
  base.dtype = DType::kFloat8E4M3;
  base.batch = 2;
  base.lens_q = {70, 33};
  base.lens_k = {150, 33};
  base.q_heads = 4;
  base.kv_heads = 2;
  base.head_dim = 96;
  base.descale = Descale::kPerSequenceHead;
  std::vector<Case> cases = {base};
  cases.push_back(base);
  cases.back().causal = true;
  cases.back().softcap = 10.f;
  cases.back().sinks = true;
  cases.push_back(base);
  cases.back().alibi = Alibi::kPerBatchHead;
  cases.back().window_left = 20;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.Name());
    std::unique_ptr<Problem> pr = MakeProblem(c);
    // Power-of-two factors, so that code x factor is exact in float32.
    for (auto* factors : {&pr->q_descale, &pr->k_descale, &pr->v_descale}) {
      for (float& f : *factors) f = std::exp2(std::round(std::log2(f)));
    }
    AttentionParams& p = pr->p;
    // The float32 problem: the same layout (contiguous), each element its dequantized value.
    std::vector<float> q32(pr->q.size()), k32(pr->k.size()), v32(pr->v.size());
    const int64_t d = p.head_dim;
    for (auto [codes, out, factors, stride, heads] :
         {std::tuple{&pr->q, &q32, &pr->q_descale, p.q_descale_batch_stride, p.q_heads},
          {&pr->k, &k32, &pr->k_descale, p.k_descale_batch_stride, p.kv_heads},
          {&pr->v, &v32, &pr->v_descale, p.v_descale_batch_stride, p.kv_heads}}) {
      const std::vector<int32_t>& cu = codes == &pr->q ? pr->cu_q : pr->cu_k;
      for (int b = 0; b < p.batch; ++b) {
        for (int64_t row = cu[b]; row < cu[b + 1]; ++row) {
          for (int h = 0; h < heads; ++h) {
            const float factor = (*factors)[b * stride + h];
            for (int64_t e = 0; e < d; ++e) {
              const int64_t i = (row * heads + h) * d + e;
              (*out)[i] = E4M3ToFloat((*codes)[i]) * factor;
            }
          }
        }
      }
    }
    AttentionParams f32 = p;
    f32.dtype = DType::kFloat32;
    f32.q = q32.data();
    f32.k = k32.data();
    f32.v = v32.data();
    f32.q_descale = f32.k_descale = f32.v_descale = nullptr;
    std::vector<float> o32(static_cast<size_t>(pr->o_elems)), lse32(pr->lse.size());
    f32.o = o32.data();
    f32.lse = lse32.data();
    // The float32 launch against float64: FP8's error before o's rounding.
    std::vector<double> ref_o(static_cast<size_t>(pr->o_elems)), ref_lse(pr->lse.size());
    ReferenceAttention(f32, ref_o.data(), ref_lse.data());
    for (CpuIsa isa : Variants()) {
      Poison(*pr);
      ASSERT_TRUE(Backend(isa).Run(p).ok());
      ASSERT_TRUE(Backend(isa).Run(f32).ok());
      double largest = 0, worst = 0;
      for (size_t i = 0; i < o32.size(); ++i) {
        largest = std::max(largest, std::abs(ref_o[i]));
        worst = std::max(worst, std::abs(o32[i] - ref_o[i]));
      }
      EXPECT_LE(worst, 5e-6 * largest) << CpuIsaName(isa);
      int mismatches = 0;
      for (size_t i = 0; i < o32.size(); ++i) {
        const uint16_t want = FloatToBFloat16(o32[i]);
        uint16_t got;
        std::memcpy(&got, pr->o.data() + 2 * i, 2);
        if (got != want && ++mismatches <= 3) {
          ADD_FAILURE() << CpuIsaName(isa) << ": o[" << i << "] bits " << got
                        << ", the float32 launch's rounding " << want;
        }
      }
      EXPECT_EQ(std::memcmp(pr->lse.data(), lse32.data(), lse32.size() * sizeof(float)), 0)
          << CpuIsaName(isa);
      std::printf("%s %s: float32 error before rounding %.3g x max|o|\n", CpuIsaName(isa),
                  c.Name().c_str(), worst / largest);
    }
  }
}

// An e4m3 NaN code (0x7f) in one key row propagates: the rows that see that key get NaN in o
// (attention.proto: the server answers such a request INVALID_ARGUMENT as for float inputs);
// rows that do not see it are unaffected.
TEST(CpuAttention, Fp8NanCodePropagates) {
  Case c;
  c.dtype = DType::kFloat8E4M3;
  c.seqlen_q = c.seqlen_k = 40;
  c.q_heads = c.kv_heads = 1;
  c.head_dim = 32;
  c.causal = true;
  c.descale = Descale::kPerTensor;
  std::unique_ptr<Problem> pr = MakeProblem(c);
  const int nan_key = 20;
  pr->k[static_cast<size_t>(nan_key * c.head_dim + 3)] = 0x7f;
  for (CpuIsa isa : Variants()) {
    Poison(*pr);
    ASSERT_TRUE(Backend(isa).Run(pr->p).ok());
    for (int i = 0; i < c.seqlen_q; ++i) {
      const double o = LoadElement(DType::kBFloat16, pr->p.o, int64_t{i} * c.head_dim);
      EXPECT_EQ(std::isnan(o), i >= nan_key) << CpuIsaName(isa) << " row " << i << ": " << o;
    }
  }
}

// `p` is refused with INVALID_ARGUMENT naming `field`.
void ExpectInvalidNaming(CpuBackend& backend, const AttentionParams& p, const char* field) {
  const absl::Status s = backend.Run(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(field), std::string::npos) << s;
}

TEST(CpuAttention, Fp8RejectsBadParams) {
  CpuBackend backend(1);
  Case c;
  c.dtype = DType::kFloat8E4M3;
  c.descale = Descale::kPerHead;
  std::unique_ptr<Problem> pr = MakeProblem(c);
  ASSERT_TRUE(backend.Run(pr->p).ok());

  AttentionParams paged = pr->p;
  paged.kind = WorkKind::kPagedDecode;  // FP8 is forward only
  ExpectInvalidNaming(backend, paged, "kFloat8E4M3");
  AttentionParams negative = pr->p;
  negative.k_descale_head_stride = -1;
  ExpectInvalidNaming(backend, negative, "k_descale_head_stride");
  Case b;
  b.dtype = DType::kBFloat16;
  std::unique_ptr<Problem> bf16 = MakeProblem(b);
  bf16->p.v_descale = pr->p.v_descale;  // descales are for FP8 only
  ExpectInvalidNaming(backend, bf16->p, "v_descale");
}

TEST(CpuAttention, RejectsBadParams) {
  CpuBackend backend(1);
  Case c;
  c.batch = 2;
  c.lens_q = {3, 4};
  c.lens_k = {5, 6};
  std::unique_ptr<Problem> pr = MakeProblem(c);
  ASSERT_TRUE(backend.Run(pr->p).ok());

  pr->cu_k[1] = 12;  // decreasing: 0, 12, 11
  absl::Status s = backend.Run(pr->p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cu_seqlens_k"), std::string::npos) << s;
  pr->cu_k[1] = 5;
  pr->cu_q[2] = 8;  // does not end at total_q
  s = backend.Run(pr->p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cu_seqlens_q"), std::string::npos) << s;
  pr->cu_q[2] = 7;
  pr->cu_q[0] = 1;  // does not start at 0
  EXPECT_EQ(backend.Run(pr->p).code(), absl::StatusCode::kInvalidArgument);
  pr->cu_q[0] = 0;

  AttentionParams bad = pr->p;
  bad.head_dim = 0;  // CheckParams
  EXPECT_EQ(backend.Run(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuAttention, BackendProperties) {
  CpuBackend backend(3);
  EXPECT_EQ(backend.num_threads(), 3);
  EXPECT_EQ(backend.isa(), BestCpuIsa());
  EXPECT_EQ(backend.block_q(), 0);  // chosen per request
  EXPECT_GT(backend.block_k(), 0);
  CpuBackendOptions options;
  options.max_isa = CpuIsa::kGeneric;
  options.block_q = 40;
  CpuBackend generic(options);
  EXPECT_EQ(generic.isa(), CpuIsa::kGeneric);
  EXPECT_EQ(generic.block_q(), 64);
  EXPECT_GE(generic.num_threads(), 1);
}

}  // namespace
}  // namespace attention::cpu
