// The float64 reference of the CUDA backward's GPU test (attention_backward_cuda_test; the warp
// emulator's backward_kernel_emulation_test has its own): a case's random inputs rounded to the
// dtype, and o, lse, dq, dk, dv of L = sum(dO * O) computed from the definition (the softmax
// over the allowed keys and the sink, pulled back through dz_j = p_j (dp_j - sum_a p_a dp_a) and
// the softcap's tanh; the CPU backward's test checks the same formula against finite
// differences).
#ifndef ATTENTION_TESTS_KERNELS_CUDA_BACKWARD_REFERENCE_H_
#define ATTENTION_TESTS_KERNELS_CUDA_BACKWARD_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/dtype.h"

namespace attention::cuda::bwd_test {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// The dtypes a case runs in unless it names its own. Built with push_back: GCC 12 at -O2 reports
// a maybe-uninitialized false positive (-Werror in CI) for an initializer-list member default.
inline std::vector<DType> SixteenBitDtypes() {
  std::vector<DType> dtypes;
  dtypes.reserve(2);
  dtypes.push_back(DType::kBFloat16);
  dtypes.push_back(DType::kFloat16);
  return dtypes;
}

struct Case {
  std::string name;
  int batch = 1;
  int seqlen_q = 100;
  int seqlen_k = 100;
  int q_heads = 2;
  int kv_heads = 2;
  int head_dim = 64;
  std::vector<int> lens_q, lens_k;  // packed batch when set
  bool causal = false;
  int window_left = -1, window_right = -1;
  int alibi = 0;  // 0 off, 1 [q_heads], 2 [batch, q_heads]
  float softcap = 0.f;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  MaskKind mask = MaskKind::kNone;
  bool sinks = false;
  std::vector<DType> dtypes = SixteenBitDtypes();

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& Seq(int q, int k) {
    seqlen_q = q;
    seqlen_k = k;
    return *this;
  }
  Case& Batch(int b) {
    batch = b;
    return *this;
  }
  Case& Heads(int q, int kv) {
    q_heads = q;
    kv_heads = kv;
    return *this;
  }
  Case& Dim(int d) {
    head_dim = d;
    return *this;
  }
  Case& Packed(std::vector<int> q, std::vector<int> k) {
    lens_q = std::move(q);
    lens_k = std::move(k);
    return *this;
  }
  Case& Causal() {
    causal = true;
    return *this;
  }
  Case& Window(int l, int r) {
    window_left = l;
    window_right = r;
    return *this;
  }
  Case& Alibi(int kind) {
    alibi = kind;
    return *this;
  }
  Case& Softcap(float c) {
    softcap = c;
    return *this;
  }
  Case& Scale(float s) {
    scale = s;
    return *this;
  }
  Case& Mask(MaskKind m) {
    mask = m;
    return *this;
  }
  Case& Sinks() {
    sinks = true;
    return *this;
  }
  Case& DTypes(std::vector<DType> d) {
    dtypes = std::move(d);
    return *this;
  }
};

inline double RoundTo(DType dtype, double x) {
  const float f = static_cast<float>(x);
  if (dtype == DType::kFloat32) return f;
  return dtype == DType::kFloat16 ? HalfToFloat(FloatToHalf(f))
                                  : BFloat16ToFloat(FloatToBFloat16(f));
}

inline uint16_t Encode(DType dtype, double x) {
  const float f = static_cast<float>(x);
  return dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBFloat16(f);
}

inline double Decode(DType dtype, uint16_t h) {
  return dtype == DType::kFloat16 ? HalfToFloat(h) : BFloat16ToFloat(h);
}

// A case's inputs (already rounded to the dtype) with the contiguous layouts' addressing.
struct Problem {
  Case c{""};
  DType dtype = DType::kBFloat16;
  bool packed = false;
  int64_t total_q = 0, total_k = 0;
  std::vector<int32_t> cu_q, cu_k;
  std::vector<double> q, k, v, dout;
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

inline Problem MakeProblem(const Case& c_in, DType dtype, uint64_t seed) {
  Problem pr;
  pr.c = c_in;
  pr.dtype = dtype;
  Case& c = pr.c;
  std::mt19937_64 rng(seed);
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
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const auto fill = [&](std::vector<double>& t, int64_t n) {
    t.resize(n);
    for (double& x : t) x = RoundTo(dtype, dist(rng));
  };
  fill(pr.q, pr.total_q * c.q_heads * c.head_dim);
  fill(pr.k, pr.total_k * c.kv_heads * c.head_dim);
  fill(pr.v, pr.total_k * c.kv_heads * c.head_dim);
  fill(pr.dout, pr.total_q * c.q_heads * c.head_dim);
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

// The float64 reference: o, lse and the gradients of L = sum(dO * O).
struct Reference {
  std::vector<double> o, lse, dq, dk, dv;
  std::vector<bool> no_keys;  // per lse element: the row has no allowed key
};

inline Reference ComputeReference(const Problem& pr) {
  const Case& c = pr.c;
  const int d = c.head_dim;
  const double scale = pr.scale();
  Reference r;
  r.o.assign(pr.q.size(), 0.0);
  r.dq.assign(pr.q.size(), 0.0);
  r.dk.assign(pr.k.size(), 0.0);
  r.dv.assign(pr.v.size(), 0.0);
  r.lse.assign(pr.total_q * c.q_heads, -kInf);
  r.no_keys.assign(r.lse.size(), false);
  const int window_right = c.causal ? 0 : c.window_right;
  for (int b = 0; b < c.batch; ++b) {
    const int lq = pr.len_q(b), lk = pr.len_k(b);
    for (int h = 0; h < c.q_heads; ++h) {
      const int g = h / (c.q_heads / c.kv_heads);
      for (int i = 0; i < lq; ++i) {
        const int64_t pos = i + int64_t{lk} - lq;
        const double* qi = &pr.q[pr.q_index(b, i, h)];
        const double* doi = &pr.dout[pr.q_index(b, i, h)];
        std::vector<int> keys;
        std::vector<double> z, dcap;
        for (int j = 0; j < lk; ++j) {
          if (c.window_left >= 0 && j < pos - c.window_left) continue;
          if (window_right >= 0 && j > pos + window_right) continue;
          if (c.mask == MaskKind::kBool && pr.bool_mask[pr.mask_index(b, h, i, j)] == 0) continue;
          const double* kj = &pr.k[pr.k_index(b, j, g)];
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
            s -= pr.slopes[(c.alibi == 2 ? b * c.q_heads : 0) + h] *
                 static_cast<double>(std::llabs(pos - j));
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
        if (m == 0) continue;
        const double top = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double x : z) sum += std::exp(x - top);
        r.lse[pr.lse_index(b, i, h)] = top + std::log(sum);
        std::vector<double> prob(n), dp(n, 0.0);
        double* oi = &r.o[pr.q_index(b, i, h)];
        double mean_dp = 0;  // sum_a p_a dp_a (the sink's dp is 0)
        for (int a = 0; a < n; ++a) {
          prob[a] = std::exp(z[a] - top) / sum;
          const double* vj = &pr.v[pr.k_index(b, keys[a], g)];
          for (int e = 0; e < d; ++e) {
            oi[e] += prob[a] * vj[e];
            dp[a] += doi[e] * vj[e];
          }
          mean_dp += prob[a] * dp[a];
        }
        for (int a = 0; a < n; ++a) {
          const double ds = prob[a] * (dp[a] - mean_dp) * dcap[a] * scale;
          const int j = keys[a];
          const double* kj = &pr.k[pr.k_index(b, j, g)];
          double* dqi = &r.dq[pr.q_index(b, i, h)];
          double* dkj = &r.dk[pr.k_index(b, j, g)];
          double* dvj = &r.dv[pr.k_index(b, j, g)];
          for (int e = 0; e < d; ++e) {
            dqi[e] += ds * kj[e];
            dkj[e] += ds * qi[e];
            dvj[e] += prob[a] * doi[e];
          }
        }
      }
    }
  }
  return r;
}

}  // namespace attention::cuda::bwd_test

#endif  // ATTENTION_TESTS_KERNELS_CUDA_BACKWARD_REFERENCE_H_
