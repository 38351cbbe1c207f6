// The CPU backward kernel (kernels/cpu/attention_backward_cpu.h) against a float64 reference of
// the gradients written here from the definition, without tiling and without the D = rowsum(dO *
// O) shortcut: per query row it forms the softmax over the allowed keys (and the sink logit),
// builds the row's softmax Jacobian J = diag(p) - p p^T explicitly and pulls dP back through it,
// then through the softcap's tanh. The reference itself is checked against central finite
// differences of L = sum(dO * O) on tiny float64 problems (FiniteDifference*), and its forward
// (lse) against the CPU forward kernel on every case.
//
// The backward kernel reads o and lse as the CPU forward (CpuBackend) wrote them, as a training
// step would; q, k, v and dO are rounded to the dtype before both sides read them. dq, dk and dv
// are poisoned (all bits set: NaN in every dtype) before each run, so an unwritten element fails.
//
// Tolerances, per tensor: max |got - ref| <= tol x max |ref| (and every element finite); the
// largest ratio seen over all cases (2026-12-05, x86-64 AVX2) in parentheses:
//   float32  1e-5    (1.4e-6: float32 tile products, the forward's float32 lse)
//   float16  2e-3    (4.6e-4: o's rounding to binary16, read by D, and the outputs' rounding)
//   bfloat16 1.5e-2  (3.5e-3: the same roundings at bfloat16's 2^-9)
#include "kernels/cpu/attention_backward_cpu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"

namespace attention::cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 1e-5;
    case DType::kFloat16:
      return 2e-3;
    case DType::kBFloat16:
      return 1.5e-2;
    case DType::kFloat8E4M3:  // forward only: not run here
      break;
  }
  return 0;
}

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

// One problem. Packed when lens_q is non-empty (lens_k then has the same size); seqlen_q and
// seqlen_k are then derived as the longest.
struct Case {
  std::string name;
  DType dtype = DType::kFloat32;
  int batch = 1, seqlen_q = 37, seqlen_k = 37, q_heads = 2, kv_heads = 2, head_dim = 64;
  std::vector<int> lens_q, lens_k;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  int alibi = 0;  // 0 none, 1 [q_heads] slopes, 2 [batch, q_heads] slopes
  bool sinks = false;
  MaskKind mask = MaskKind::kNone;
  int block_q = 0, block_k = 0;
  std::optional<CpuIsa> max_isa;  // unset: the best the CPU has
};

// A tensor's bytes in the dtype and the same values in float64.
struct Tensor {
  std::vector<uint8_t> bytes;
  std::vector<double> values;
};

double RoundTo(DType dtype, double x) {
  const float f = static_cast<float>(x);
  switch (dtype) {
    case DType::kFloat32:
      return f;
    case DType::kFloat16:
      return HalfToFloat(FloatToHalf(f));
    case DType::kBFloat16:
      return BFloat16ToFloat(FloatToBFloat16(f));
    case DType::kFloat8E4M3:
      return E4M3ToFloat(FloatToE4M3(f));
  }
  return 0;
}

void StoreElement(DType dtype, Tensor& t, int64_t i, double x) {
  const float f = static_cast<float>(x);
  if (dtype == DType::kFloat32) {
    std::memcpy(t.bytes.data() + 4 * i, &f, 4);
  } else {
    const uint16_t h = dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBFloat16(f);
    std::memcpy(t.bytes.data() + 2 * i, &h, 2);
  }
}

double LoadElement(DType dtype, const Tensor& t, int64_t i) {
  if (dtype == DType::kFloat32) {
    float f;
    std::memcpy(&f, t.bytes.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, t.bytes.data() + 2 * i, 2);
  return dtype == DType::kFloat16 ? HalfToFloat(h) : BFloat16ToFloat(h);
}

Tensor Random(DType dtype, int64_t n, std::mt19937& rng, double amplitude) {
  std::uniform_real_distribution<double> dist(-amplitude, amplitude);
  Tensor t;
  t.bytes.assign(n * DTypeSize(dtype), 0);
  t.values.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    t.values[i] = RoundTo(dtype, dist(rng));
    StoreElement(dtype, t, i, t.values[i]);
  }
  return t;
}

// Output buffer with every bit set (NaN in float32, binary16 and bfloat16).
Tensor Poisoned(DType dtype, int64_t n) {
  Tensor t;
  t.bytes.assign(n * DTypeSize(dtype), 0xff);
  return t;
}

// Everything a case needs, with the addressing of contiguous (dense or packed) layouts.
struct Problem {
  Case c;
  bool packed = false;
  int64_t total_q = 0, total_k = 0;
  std::vector<int32_t> cu_q, cu_k;
  Tensor q, k, v, dout;
  std::vector<float> slopes, sinks, additive;
  std::vector<uint8_t> bool_mask;
  int64_t mask_batch_stride = 0, mask_head_stride = 0, mask_row_stride = 0;

  int len_q(int b) const { return packed ? cu_q[b + 1] - cu_q[b] : c.seqlen_q; }
  int len_k(int b) const { return packed ? cu_k[b + 1] - cu_k[b] : c.seqlen_k; }
  int64_t q_row(int b, int i) const { return packed ? cu_q[b] + i : int64_t{b} * c.seqlen_q + i; }
  int64_t k_row(int b, int j) const { return packed ? cu_k[b] + j : int64_t{b} * c.seqlen_k + j; }
  int64_t q_index(int b, int i, int h) const { return (q_row(b, i) * c.q_heads + h) * c.head_dim; }
  int64_t k_index(int b, int j, int g) const { return (k_row(b, j) * c.kv_heads + g) * c.head_dim; }
  int64_t lse_index(int b, int i, int h) const {
    return packed ? h * total_q + cu_q[b] + i : (int64_t{b} * c.q_heads + h) * c.seqlen_q + i;
  }
  int64_t mask_index(int b, int h, int i, int j) const {
    return b * mask_batch_stride + h * mask_head_stride + i * mask_row_stride + j;
  }
  float scale() const {
    return c.scale != 0.f ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  }
};

Problem MakeProblem(const Case& c_in, uint32_t seed) {
  Problem pr;
  pr.c = c_in;
  Case& c = pr.c;
  std::mt19937 rng(seed);
  pr.packed = !c.lens_q.empty();
  if (pr.packed) {
    c.batch = static_cast<int>(c.lens_q.size());
    pr.cu_q = {0};
    pr.cu_k = {0};
    c.seqlen_q = c.seqlen_k = 1;
    for (int b = 0; b < c.batch; ++b) {
      pr.cu_q.push_back(pr.cu_q.back() + c.lens_q[b]);
      pr.cu_k.push_back(pr.cu_k.back() + c.lens_k[b]);
      c.seqlen_q = std::max(c.seqlen_q, c.lens_q[b]);
      c.seqlen_k = std::max(c.seqlen_k, c.lens_k[b]);
    }
    pr.total_q = pr.cu_q.back();
    pr.total_k = pr.cu_k.back();
  } else {
    pr.total_q = int64_t{c.batch} * c.seqlen_q;
    pr.total_k = int64_t{c.batch} * c.seqlen_k;
  }
  const int64_t nq = pr.total_q * c.q_heads * c.head_dim;
  const int64_t nk = pr.total_k * c.kv_heads * c.head_dim;
  pr.q = Random(c.dtype, nq, rng, 1.0);
  pr.k = Random(c.dtype, nk, rng, 1.0);
  pr.v = Random(c.dtype, nk, rng, 1.0);
  pr.dout = Random(c.dtype, nq, rng, 1.0);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  if (c.alibi != 0) {
    pr.slopes.resize((c.alibi == 2 ? c.batch : 1) * c.q_heads);
    for (float& s : pr.slopes) s = 0.02f + 0.3f * unit(rng);
  }
  if (c.sinks) {
    pr.sinks.resize(c.q_heads);
    for (float& s : pr.sinks) s = -1.f + 3.f * unit(rng);
  }
  if (c.mask != MaskKind::kNone) {
    pr.mask_row_stride = c.seqlen_k;
    pr.mask_head_stride = int64_t{c.seqlen_q} * c.seqlen_k;
    pr.mask_batch_stride = pr.mask_head_stride * c.q_heads;
    const int64_t n = pr.mask_batch_stride * c.batch;
    if (c.mask == MaskKind::kBool) {
      pr.bool_mask.resize(n);
      for (uint8_t& m : pr.bool_mask) m = unit(rng) < 0.8f ? 1 : 0;
      // Row 1 of head 0 of every sequence drops every key: a fully masked row.
      for (int b = 0; b < c.batch; ++b) {
        for (int j = 0; j < c.seqlen_k; ++j) pr.bool_mask[pr.mask_index(b, 0, 1, j)] = 0;
      }
    } else {
      pr.additive.resize(n);
      for (float& m : pr.additive) {
        const float u = unit(rng);
        m = u < 0.05f ? -std::numeric_limits<float>::infinity() : -2.f + 2.5f * unit(rng);
      }
    }
  }
  return pr;
}

// The forward's parameters for the problem's buffers (o and lse left to the caller).
AttentionBackwardParams MakeParams(const Problem& pr) {
  const Case& c = pr.c;
  AttentionBackwardParams p;
  p.kind = WorkKind::kForward;
  p.dtype = c.dtype;
  p.head_dim = c.head_dim;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.softmax_scale = pr.scale();
  p.softcap = c.softcap;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = c.seqlen_k;
  if (pr.packed) {
    p.cu_seqlens_q = pr.cu_q.data();
    p.cu_seqlens_k = pr.cu_k.data();
    p.total_q = pr.total_q;
    p.total_k = pr.total_k;
  }
  p.q = pr.q.bytes.data();
  p.k = pr.k.bytes.data();
  p.v = pr.v.bytes.data();
  SetContiguousStrides(p);
  if (c.alibi != 0) {
    p.alibi = true;
    p.alibi_slopes = pr.slopes.data();
    p.alibi_batch_stride = c.alibi == 2 ? c.q_heads : 0;
  }
  if (c.sinks) {
    p.sinks = true;
    p.sink_logits = pr.sinks.data();
  }
  p.mask_kind = c.mask;
  if (c.mask != MaskKind::kNone) {
    p.mask = c.mask == MaskKind::kBool ? static_cast<const void*>(pr.bool_mask.data())
                                       : static_cast<const void*>(pr.additive.data());
    p.mask_batch_stride = pr.mask_batch_stride;
    p.mask_head_stride = pr.mask_head_stride;
    p.mask_row_stride = pr.mask_row_stride;
    p.mask_col_stride = 1;
  }
  return p;
}

// The float64 reference: o, lse and the gradients of L = sum(dO * O) with respect to q, k, v.
struct Reference {
  std::vector<double> o, lse, dq, dk, dv;
  // Per lse element: the row has no allowed key (lse = -inf, or lse = the sink logit).
  std::vector<bool> no_keys;
};

Reference ComputeReference(const Problem& pr, const std::vector<double>& q,
                           const std::vector<double>& k, const std::vector<double>& v,
                           const std::vector<double>& dout) {
  const Case& c = pr.c;
  const int d = c.head_dim;
  const double scale = pr.scale();
  Reference r;
  r.o.assign(q.size(), 0.0);
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(k.size(), 0.0);
  r.dv.assign(v.size(), 0.0);
  r.lse.assign(pr.total_q * c.q_heads, -kInf);
  r.no_keys.assign(r.lse.size(), false);
  int window_right = c.causal ? 0 : c.window_right;
  for (int b = 0; b < c.batch; ++b) {
    const int lq = pr.len_q(b), lk = pr.len_k(b);
    for (int h = 0; h < c.q_heads; ++h) {
      const int g = h / (c.q_heads / c.kv_heads);
      for (int i = 0; i < lq; ++i) {
        const int64_t pos = i + int64_t{lk} - lq;
        const double* qi = &q[pr.q_index(b, i, h)];
        const double* doi = &dout[pr.q_index(b, i, h)];
        // Logits of the allowed keys (and the sink, last, with no value vector).
        std::vector<int> keys;
        std::vector<double> z, dcap;
        for (int j = 0; j < lk; ++j) {
          if (c.window_left >= 0 && j < pos - c.window_left) continue;
          if (window_right >= 0 && j > pos + window_right) continue;
          if (c.mask == MaskKind::kBool && pr.bool_mask[pr.mask_index(b, h, i, j)] == 0) continue;
          const double* kj = &k[pr.k_index(b, j, g)];
          double s = 0;
          for (int e = 0; e < d; ++e) s += qi[e] * kj[e];
          s *= scale;
          double deriv = 1.0;
          if (c.softcap > 0.f) {
            const double th = std::tanh(s / c.softcap);
            s = c.softcap * th;
            deriv = 1.0 - th * th;
          }
          if (c.alibi != 0) {
            const double slope = pr.slopes[(c.alibi == 2 ? b * c.q_heads : 0) + h];
            s -= slope * static_cast<double>(std::llabs(pos - j));
          }
          if (c.mask == MaskKind::kAdditive) s += pr.additive[pr.mask_index(b, h, i, j)];
          if (s == -kInf) continue;
          keys.push_back(j);
          z.push_back(s);
          dcap.push_back(deriv);
        }
        const int n = static_cast<int>(keys.size());
        r.no_keys[pr.lse_index(b, i, h)] = n == 0;
        if (c.sinks) z.push_back(pr.sinks[h]);
        const int m = static_cast<int>(z.size());
        if (m == 0) continue;  // o = 0, lse = -inf, no gradient
        const double top = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double x : z) sum += std::exp(x - top);
        r.lse[pr.lse_index(b, i, h)] = top + std::log(sum);
        std::vector<double> prob(m), dp(m, 0.0);
        for (int a = 0; a < m; ++a) prob[a] = std::exp(z[a] - top) / sum;
        for (int a = 0; a < n; ++a) {
          const double* vj = &v[pr.k_index(b, keys[a], g)];
          double* oi = &r.o[pr.q_index(b, i, h)];
          for (int e = 0; e < d; ++e) {
            oi[e] += prob[a] * vj[e];
            dp[a] += doi[e] * vj[e];
          }
        }
        // dz_b = sum_a dp_a J_ab, J_ab = p_a (delta_ab - p_b); the sink's dp is 0.
        for (int bb = 0; bb < n; ++bb) {
          double dz = 0;
          for (int a = 0; a < m; ++a) {
            const double jac = prob[a] * ((a == bb ? 1.0 : 0.0) - prob[bb]);
            dz += dp[a] * jac;
          }
          const double ds = dz * dcap[bb] * scale;
          const int j = keys[bb];
          const double* kj = &k[pr.k_index(b, j, g)];
          double* dqi = &r.dq[pr.q_index(b, i, h)];
          double* dkj = &r.dk[pr.k_index(b, j, g)];
          double* dvj = &r.dv[pr.k_index(b, j, g)];
          for (int e = 0; e < d; ++e) {
            dqi[e] += ds * kj[e];
            dkj[e] += ds * qi[e];
            dvj[e] += prob[bb] * doi[e];
          }
        }
      }
    }
  }
  return r;
}

struct RunResult {
  Tensor o, dq, dk, dv;
  std::vector<float> lse;
};

// The CPU forward, then the backward kernel on `pool` (null: the calling thread).
RunResult RunKernels(const Problem& pr, ThreadPool* pool) {
  const Case& c = pr.c;
  RunResult res;
  AttentionBackwardParams p = MakeParams(pr);
  res.o = Poisoned(c.dtype, pr.q.values.size());
  res.lse.assign(pr.total_q * c.q_heads, std::nanf(""));
  p.o = res.o.bytes.data();
  p.lse = res.lse.data();
  CpuBackend forward(2);
  EXPECT_TRUE(forward.Run(p).ok());
  p.kind = WorkKind::kBackward;
  res.dq = Poisoned(c.dtype, pr.q.values.size());
  res.dk = Poisoned(c.dtype, pr.k.values.size());
  res.dv = Poisoned(c.dtype, pr.v.values.size());
  p.do_ = pr.dout.bytes.data();
  p.dq = res.dq.bytes.data();
  p.dk = res.dk.bytes.data();
  p.dv = res.dv.bytes.data();
  CpuBackwardOptions options;
  options.block_q = c.block_q;
  options.block_k = c.block_k;
  options.max_isa = c.max_isa;
  const absl::Status status = AttentionBackward(p, pool, options);
  EXPECT_TRUE(status.ok()) << status;
  return res;
}

// max |got - ref| <= tol * max |ref|, every element finite.
void ExpectClose(const char* what, DType dtype, const Tensor& got, const std::vector<double>& ref,
                 double tol) {
  double max_ref = 0, max_err = 0;
  int64_t worst = -1, non_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = LoadElement(dtype, got, static_cast<int64_t>(i));
    if (!std::isfinite(g)) {
      ++non_finite;
      continue;
    }
    max_ref = std::max(max_ref, std::abs(ref[i]));
    const double err = std::abs(g - ref[i]);
    if (err > max_err) {
      max_err = err;
      worst = static_cast<int64_t>(i);
    }
  }
  EXPECT_EQ(non_finite, 0) << what << ": elements not finite (unwritten?)";
  EXPECT_LE(max_err, tol * max_ref)
      << what << ": max error " << max_err << " at element " << worst << ", max |ref| " << max_ref
      << " (ratio " << max_err / max_ref << ", tolerance " << tol << ")";
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class BackwardCaseTest : public ::testing::TestWithParam<Case> {};

std::vector<Case> Cases();

// The kernel's gradients of case `c` against the reference, within the dtype's tolerance.
void CheckAgainstReference(const Case& case_in) {
  const Problem pr = MakeProblem(case_in, 1234);
  const Case& c = pr.c;
  const Reference ref = ComputeReference(pr, pr.q.values, pr.k.values, pr.v.values, pr.dout.values);
  ThreadPool pool(2);
  const RunResult got = RunKernels(pr, &pool);
  // The reference's forward is the repo's: its lse matches the CPU forward's.
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      ASSERT_EQ(got.lse[i], -std::numeric_limits<float>::infinity()) << "lse " << i;
    } else {
      ASSERT_NEAR(got.lse[i], ref.lse[i], 1e-4 * (1 + std::abs(ref.lse[i]))) << "lse " << i;
    }
  }
  const double tol = ToleranceFor(c.dtype);
  ExpectClose("dq", c.dtype, got.dq, ref.dq, tol);
  ExpectClose("dk", c.dtype, got.dk, ref.dk, tol);
  ExpectClose("dv", c.dtype, got.dv, ref.dv, tol);
  // Rows with no allowed key (lse = -inf, or no key besides the sink) get dq exactly 0.
  int rows_without_keys = 0;
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < c.q_heads; ++h) {
      for (int i = 0; i < pr.len_q(b); ++i) {
        if (!ref.no_keys[pr.lse_index(b, i, h)]) continue;
        ++rows_without_keys;
        const int64_t base = pr.q_index(b, i, h);
        for (int e = 0; e < c.head_dim; ++e) {
          ASSERT_EQ(LoadElement(c.dtype, got.dq, base + e), 0.0)
              << "dq of a row without keys, b " << b << " h " << h << " i " << i;
        }
      }
    }
  }
  ::testing::Test::RecordProperty("rows_without_keys", rows_without_keys);
}

TEST_P(BackwardCaseTest, MatchesFloat64Reference) { CheckAgainstReference(GetParam()); }

// The tile kernels of every instruction set this CPU has (the generic 128-bit one on any CPU),
// on every float32 case.
TEST(BackwardIsaTest, EveryInstructionSetMatchesTheReference) {
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (isa > BestCpuIsa()) continue;
    for (Case c : Cases()) {
      if (c.dtype != DType::kFloat32) continue;
      c.max_isa = isa;
      SCOPED_TRACE(std::string(CpuIsaName(isa)) + " " + c.name);
      CheckAgainstReference(c);
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) {
    for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      c.dtype = dt;
      Case named = c;
      named.name = c.name + "_" + DTypeName(dt);
      cases.push_back(named);
    }
  };
  Case c;
  c.name = "plain_ragged";
  c.seqlen_q = c.seqlen_k = 100;
  add(c);
  c.name = "long_causal";  // 6 key tiles per query tile: the float64 sums across tiles
  c.seqlen_q = c.seqlen_k = 333;
  c.causal = true;
  add(c);
  for (int d : {8, 40, 72, 128, 256}) {
    Case h;
    h.name = "head_dim" + std::to_string(d);
    h.head_dim = d;
    h.seqlen_q = 45;
    h.seqlen_k = 70;
    h.causal = d % 16 == 8;
    add(h);
  }
  {
    Case t;
    t.name = "causal_sq_lt_sk";
    t.seqlen_q = 50;
    t.seqlen_k = 130;
    t.causal = true;
    add(t);
    t.name = "causal_sq_gt_sk";  // the first 80 rows see no key
    t.seqlen_q = 130;
    t.seqlen_k = 50;
    add(t);
    t.name = "causal_sq_gt_sk_sinks";
    t.sinks = true;
    add(t);
  }
  {
    Case w;
    w.name = "window_17_5";
    w.seqlen_q = 90;
    w.seqlen_k = 120;
    w.window_left = 17;
    w.window_right = 5;
    add(w);
    w.name = "window_left_only";
    w.window_right = -1;
    w.window_left = 30;
    add(w);
    w.name = "window_right_only_sq_gt_sk";
    w.seqlen_q = 120;
    w.seqlen_k = 70;
    w.window_left = -1;
    w.window_right = 3;
    add(w);
  }
  {
    Case s;
    s.name = "softcap";
    s.scale = 0.5f;  // scores of several units, so that tanh bends
    s.softcap = 3.f;
    s.seqlen_q = 70;
    s.seqlen_k = 66;
    add(s);
    Case a = s;
    a.name = "alibi_per_head";
    a.softcap = 0.f;
    a.scale = 0.f;
    a.alibi = 1;
    add(a);
    a.name = "alibi_per_batch_head_causal";
    a.batch = 2;
    a.alibi = 2;
    a.causal = true;
    add(a);
    Case sa = s;  // the vector path's options together, without a mask
    sa.name = "softcap_alibi_window";
    sa.alibi = 2;
    sa.batch = 2;
    sa.window_left = 30;
    sa.window_right = 4;
    add(sa);
    Case k = s;
    k.name = "sinks";
    k.softcap = 0.f;
    k.sinks = true;
    add(k);
    Case m = s;
    m.name = "bool_mask_with_empty_row";
    m.softcap = 0.f;
    m.mask = MaskKind::kBool;
    m.batch = 2;
    add(m);
    m.name = "bool_mask_empty_row_sinks";
    m.sinks = true;
    add(m);
    m.name = "additive_mask";
    m.sinks = false;
    m.mask = MaskKind::kAdditive;
    add(m);
    m.name = "negative_scale";
    m.mask = MaskKind::kNone;
    m.scale = -0.3f;
    add(m);
  }
  {
    Case g;
    g.name = "gqa_4_2_causal";
    g.q_heads = 4;
    g.kv_heads = 2;
    g.seqlen_q = 77;
    g.seqlen_k = 77;
    g.causal = true;
    add(g);
    g.name = "mqa_8_1_window";
    g.q_heads = 8;
    g.kv_heads = 1;
    g.head_dim = 40;
    g.causal = false;
    g.window_left = 20;
    g.window_right = 20;
    add(g);
  }
  {
    Case v;
    v.name = "varlen_empty_sequences";
    v.lens_q = {37, 0, 70, 5, 12};
    v.lens_k = {50, 20, 66, 0, 12};
    v.q_heads = 4;
    v.kv_heads = 2;
    add(v);
    v.name = "varlen_causal_sinks_alibi";
    v.causal = true;
    v.sinks = true;
    v.alibi = 2;
    add(v);
  }
  {
    Case x;
    x.name = "everything_varlen";
    x.lens_q = {65, 0, 31, 80};
    x.lens_k = {40, 9, 90, 80};
    x.q_heads = 4;
    x.kv_heads = 2;
    x.head_dim = 72;
    x.scale = 0.4f;
    x.softcap = 4.f;
    x.alibi = 1;
    x.sinks = true;
    x.mask = MaskKind::kAdditive;
    x.window_left = 25;
    x.window_right = 7;
    add(x);
    x.name = "everything_dense_bool_mqa";
    x.lens_q.clear();
    x.lens_k.clear();
    x.batch = 2;
    x.seqlen_q = 61;
    x.seqlen_k = 83;
    x.q_heads = 8;
    x.kv_heads = 1;
    x.head_dim = 24;
    x.mask = MaskKind::kBool;
    x.causal = true;
    x.window_right = -1;
    add(x);
    x.name = "odd_tiles_everything";
    x.block_q = 7;
    x.block_k = 13;
    add(x);
    x.name = "tile_one";
    x.block_q = 1;
    x.block_k = 1;
    x.seqlen_q = 19;
    x.seqlen_k = 23;
    add(x);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardCaseTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// The reference against central differences of L(q, k, v) = sum(dO * O) in float64, on tiny
// problems with every option (the allowed set does not depend on q, k, v, so L is smooth).
void CheckFiniteDifferences(const Case& c) {
  const Problem pr = MakeProblem(c, 99);
  const Reference ref = ComputeReference(pr, pr.q.values, pr.k.values, pr.v.values, pr.dout.values);
  auto loss = [&](const std::vector<double>& q, const std::vector<double>& k,
                  const std::vector<double>& v) {
    const Reference r = ComputeReference(pr, q, k, v, pr.dout.values);
    double l = 0;
    for (size_t i = 0; i < r.o.size(); ++i) l += r.o[i] * pr.dout.values[i];
    return l;
  };
  const double h = 1e-5;
  int checked_nonzero = 0;
  for (int which = 0; which < 3; ++which) {
    const std::vector<double>& grad = which == 0 ? ref.dq : which == 1 ? ref.dk : ref.dv;
    std::vector<double> q = pr.q.values, k = pr.k.values, v = pr.v.values;
    std::vector<double>& x = which == 0 ? q : which == 1 ? k : v;
    double max_grad = 0;
    for (double g : grad) max_grad = std::max(max_grad, std::abs(g));
    ASSERT_GT(max_grad, 0.0);
    for (size_t i = 0; i < x.size(); ++i) {
      const double x0 = x[i];
      x[i] = x0 + h;
      const double up = loss(q, k, v);
      x[i] = x0 - h;
      const double down = loss(q, k, v);
      x[i] = x0;
      const double fd = (up - down) / (2 * h);
      ASSERT_NEAR(fd, grad[i], 1e-6 * max_grad) << "tensor " << which << " element " << i;
      checked_nonzero += grad[i] != 0.0;
    }
  }
  EXPECT_GT(checked_nonzero, 0);
}

TEST(BackwardReferenceTest, FiniteDifferenceEveryOptionVarlenGqa) {
  Case c;
  c.lens_q = {3, 0, 4};
  c.lens_k = {4, 2, 3};
  c.q_heads = 4;
  c.kv_heads = 2;
  c.head_dim = 5;
  c.scale = 0.9f;
  c.softcap = 1.5f;
  c.alibi = 2;
  c.sinks = true;
  c.mask = MaskKind::kAdditive;
  c.window_left = 2;
  c.window_right = 1;
  CheckFiniteDifferences(c);
}

TEST(BackwardReferenceTest, FiniteDifferenceBoolMaskCausalSqGtSk) {
  Case c;
  c.batch = 2;
  c.seqlen_q = 5;
  c.seqlen_k = 3;
  c.head_dim = 3;
  c.q_heads = 2;
  c.kv_heads = 1;
  c.causal = true;
  c.mask = MaskKind::kBool;
  CheckFiniteDifferences(c);
}

// The same inputs give bitwise the same gradients on 1 thread and on 4.
TEST(AttentionBackwardTest, DeterministicAcrossThreadCounts) {
  Case c;
  c.lens_q = {65, 3, 130};
  c.lens_k = {140, 20, 100};
  c.q_heads = 4;
  c.kv_heads = 2;
  c.causal = true;
  c.sinks = true;
  const Problem pr = MakeProblem(c, 7);
  const RunResult one = RunKernels(pr, nullptr);
  ThreadPool pool(4);
  const RunResult four = RunKernels(pr, &pool);
  EXPECT_EQ(one.dq.bytes, four.dq.bytes);
  EXPECT_EQ(one.dk.bytes, four.dk.bytes);
  EXPECT_EQ(one.dv.bytes, four.dv.bytes);
}

// Strided layouts: rows padded past the heads; the padding stays untouched.
TEST(AttentionBackwardTest, PaddedRowsAreNotWritten) {
  Case c;
  c.batch = 2;
  c.seqlen_q = 33;
  c.seqlen_k = 41;
  c.head_dim = 16;
  c.causal = true;
  const Problem pr = MakeProblem(c, 5);
  ThreadPool pool(2);
  const RunResult dense = RunKernels(pr, &pool);
  // The same tensors with row stride heads * d + 8: copy the inputs into the padded layout.
  const int pad = 8;
  AttentionBackwardParams p = MakeParams(pr);
  auto padded = [&](const Tensor& t, int heads, int64_t rows, uint8_t fill) {
    std::vector<uint8_t> out(rows * (heads * c.head_dim + pad) * 4, fill);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out.data() + r * (heads * c.head_dim + pad) * 4,
                  t.bytes.data() + r * heads * c.head_dim * 4, heads * c.head_dim * 4);
    }
    return out;
  };
  std::vector<uint8_t> q = padded(pr.q, c.q_heads, pr.total_q, 0);
  std::vector<uint8_t> k = padded(pr.k, c.kv_heads, pr.total_k, 0);
  std::vector<uint8_t> v = padded(pr.v, c.kv_heads, pr.total_k, 0);
  std::vector<uint8_t> dout = padded(pr.dout, c.q_heads, pr.total_q, 0);
  std::vector<uint8_t> o = padded(dense.o, c.q_heads, pr.total_q, 0);
  std::vector<uint8_t> dq(q.size(), 0xff), dk(k.size(), 0xff), dv(v.size(), 0xff);
  const int64_t qrow = c.q_heads * c.head_dim + pad, krow = c.kv_heads * c.head_dim + pad;
  p.kind = WorkKind::kBackward;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o.data();
  p.q_row_stride = p.o_row_stride = qrow;
  p.k_row_stride = p.v_row_stride = krow;
  p.q_batch_stride = p.o_batch_stride = qrow * c.seqlen_q;
  p.k_batch_stride = p.v_batch_stride = krow * c.seqlen_k;
  std::vector<float> lse = dense.lse;
  p.lse = lse.data();
  p.do_ = dout.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  ASSERT_TRUE(AttentionBackward(p, &pool).ok());
  Tensor dq_expected{padded(dense.dq, c.q_heads, pr.total_q, 0xff), {}};
  Tensor dk_expected{padded(dense.dk, c.kv_heads, pr.total_k, 0xff), {}};
  Tensor dv_expected{padded(dense.dv, c.kv_heads, pr.total_k, 0xff), {}};
  EXPECT_EQ(dq, dq_expected.bytes);
  EXPECT_EQ(dk, dk_expected.bytes);
  EXPECT_EQ(dv, dv_expected.bytes);
}

TEST(CheckBackwardParamsTest, NamesTheFieldAndTheRule) {
  Case c;
  const Problem pr = MakeProblem(c, 3);
  AttentionBackwardParams good = MakeParams(pr);
  std::vector<float> lse(pr.total_q * c.q_heads, 0.f);
  std::vector<uint8_t> buf(pr.q.bytes.size());
  good.kind = WorkKind::kBackward;
  good.o = buf.data();
  good.lse = lse.data();
  good.do_ = buf.data();
  good.dq = buf.data();
  good.dk = buf.data();
  good.dv = buf.data();
  EXPECT_TRUE(CheckBackwardParams(good).ok());
  struct Bad {
    const char* field;
    void (*edit)(AttentionBackwardParams&);
  };
  const Bad bads[] = {
      {"kind must be kBackward", [](AttentionBackwardParams& p) { p.kind = WorkKind::kForward; }},
      {"lse must not be null", [](AttentionBackwardParams& p) { p.lse = nullptr; }},
      {"do_ must not be null", [](AttentionBackwardParams& p) { p.do_ = nullptr; }},
      {"dq must not be null", [](AttentionBackwardParams& p) { p.dq = nullptr; }},
      {"dk must not be null", [](AttentionBackwardParams& p) { p.dk = nullptr; }},
      {"dv must not be null", [](AttentionBackwardParams& p) { p.dv = nullptr; }},
      {"q_row_stride must be positive", [](AttentionBackwardParams& p) { p.q_row_stride = 0; }},
  };
  ThreadPool pool(1);
  for (const Bad& bad : bads) {
    AttentionBackwardParams p = good;
    bad.edit(p);
    const absl::Status s = CheckBackwardParams(p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad.field;
    EXPECT_NE(std::string(s.message()).find(bad.field), std::string::npos) << s.message();
    EXPECT_EQ(AttentionBackward(p, &pool).code(), absl::StatusCode::kInvalidArgument);
  }
  // A packed batch whose cu_seqlens do not end at total_q.
  Case v;
  v.lens_q = {3, 4};
  v.lens_k = {3, 4};
  const Problem pv = MakeProblem(v, 3);
  AttentionBackwardParams p = MakeParams(pv);
  std::vector<int32_t> cu = pv.cu_q;
  cu[2] = 6;
  p.kind = WorkKind::kBackward;
  p.cu_seqlens_q = cu.data();
  p.o = buf.data();
  p.lse = lse.data();
  p.do_ = p.dq = p.dk = p.dv = buf.data();
  const absl::Status s = AttentionBackward(p, &pool);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("cu_seqlens_q[batch] must be 7"), std::string::npos)
      << s.message();
}

// One head of seqlen x seqlen float32 scores at head_dim 64 for the cooperative stop: q, k, v,
// o and dO uniform in [-1, 1], lse a constant (the gradients' values do not matter here).
struct StopProblem {
  std::vector<float> q, k, v, o, dout, lse, dq, dk, dv;
  AttentionBackwardParams p;
  explicit StopProblem(int n) {
    const int d = 64;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto* t : {&q, &k, &v, &o, &dout}) {
      t->resize(static_cast<size_t>(n) * d);
      for (float& x : *t) x = u(rng);
    }
    lse.assign(n, 12.f);
    for (auto* t : {&dq, &dk, &dv}) t->assign(static_cast<size_t>(n) * d, 0.f);
    p.kind = WorkKind::kBackward;
    p.dtype = DType::kFloat32;
    p.head_dim = d;
    p.q_heads = p.kv_heads = 1;
    p.softmax_scale = 0.125f;
    p.batch = 1;
    p.seqlen_q = p.seqlen_k = n;
    SetContiguousStrides(p);
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.o = o.data();
    p.lse = lse.data();
    p.do_ = dout.data();
    p.dq = dq.data();
    p.dk = dk.data();
    p.dv = dv.data();
  }
};

TEST(BackwardStopTest, NeverStoppedEqualsAPlainRun) {
  CpuBackend backend(2);
  StopProblem a(300), b(300);
  ASSERT_TRUE(AttentionBackward(a.p, nullptr).ok());
  ASSERT_TRUE(backend.RunBackward(b.p, [] { return false; }).ok());
  EXPECT_EQ(a.dq, b.dq);
  EXPECT_EQ(a.dk, b.dk);
  EXPECT_EQ(a.dv, b.dv);
}

TEST(BackwardStopTest, StopIsAskedBeforeEveryTaskAndEndsTheRunWithinOneTaskPerThread) {
  for (int threads : {1, 2}) {
    CpuBackend backend(threads);
    StopProblem problem(64 * 64);  // 64 key tiles, then 64 query tiles
    std::atomic<int> asked{0};
    constexpr int kStopAfter = 5;
    const absl::Status status =
        backend.RunBackward(problem.p, [&] { return asked.fetch_add(1) >= kStopAfter; });
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
    EXPECT_NE(status.message().find("stopped"), std::string::npos) << status;
    // kStopAfter tasks ran; then each thread asked once more at most.
    EXPECT_LE(asked.load(), kStopAfter + 1 + threads);
  }
}

// A huge backward stopped 20 ms in returns long before it would have finished.
TEST(BackwardStopTest, AStopFreesTheCoresLongBeforeTheEnd) {
  CpuBackend backend(2);
  StopProblem problem(1 << 15);
  const auto start = std::chrono::steady_clock::now();
  const auto stop_at = start + std::chrono::milliseconds(20);
  const absl::Status status =
      backend.RunBackward(problem.p, [&] { return std::chrono::steady_clock::now() >= stop_at; });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_at).count();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  // One task is 64 keys x 32768 query rows x 5 tile products at head_dim 64: 1.3 GFLOP, ~30 ms
  // on one of a 2-core VM's cores, 0.3 s on a very slow or busy one. The whole backward (2 x 512
  // tasks) is ~700 GFLOP: seconds even on 16 fast cores.
  EXPECT_LT(seconds, 1.5);
}

}  // namespace
}  // namespace attention::cpu
