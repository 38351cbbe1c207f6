// GPU test of the FP8 (E4M3) Hopper forward kernel (kernels/cuda/flash_fwd_fp8.h) against a
// float64 reference on the dequantized inputs (e4m3 x descale). Random inputs drawn fresh for
// every run (seed printed, ATTN_TEST_SEED to replay), rounded to e4m3 from a normal distribution;
// o (bfloat16) and lse poisoned with NaN before the launch and guarded past their ends; ragged
// tails, causal with seqlen_q above and below seqlen_k (rows without keys), GQA and MQA, head dims
// 64 / 96 / 128 / 256, per-tensor, per-head and per-sequence descales, softcap, sinks, sequences
// long enough that the stage rings wrap, and packed batches (ragged, empty sequences, NaN values
// in the V rows of a sequence no query reads, which the previous sequence's last KV tile must not
// see).
//
// Tolerance, per output element (row i, dim d), from the kernel's numerics (flash_fwd_fp8.h):
// P is rounded to e4m3 for P V (relative 2^-4 above 2^-6, absolute 2^-10 below, in units of the
// running row max, which only shrink at the end), the products' float32 accumulation on the
// tensor cores is taken at 2^-11 of sum |q||k| per logit (FP8 wgmma keeps fewer accumulator bits
// than float32), and o is rounded to bfloat16:
//   |o - ref| <= ((2^-4 + 2^-10) sum_j p_j |v_jd| + 2^-10 sum_j |v_jd|
//                 + 2^-10 sum_j a_j p_j |v_jd|) / denom + 2^-8 |ref| + 1e-6 max |v|
// with p_j = e^(s_j - m) over the allowed keys, denom their sum (and the sink's), a_j = scale
// q_descale k_descale sum |q||k| of key j. LSE: |lse - ref| <= 1e-3 + 2^-10 max_j a_j. A variant
// that divides by the sum of the rounded P (Fp8TileConfig::sum_mma) moves that sum by at most
// e = sum_j ((2^-4 + 2^-10 (1 + a_j)) p_j + 2^-10): its bound is (the numerator above + |ref| e)
// / (denom - e) and the LSE's gains -log(1 - e / denom), unless the LSE comes from float32 sums
// of the unrounded P (Fp8TileConfig::lse_f32). A lazy variant
// (Fp8TileConfig::lazy, spec) takes P against a running max up to 2^8 in P below the row's max: the
// same relative rounding and a smaller absolute one in units of the true max, so the same bounds.
// The inputs use logits of standard deviation about 3 (peaked rows), where a wrong key order or
// scale gives errors of the order of |v|, far above the bound. The measured error is printed per
// case.
//
// ATTN_FP8_VARIANT=LABEL (a label of Fp8Variants(), in a build with ATTN_BENCH_FP8_VARIANTS) runs
// every case on that tile configuration; cases of another bucket are reported as skipped.
//
// Exits 77 (ctest SKIP) without a CUDA device, on a device other than compute capability 9.0
// and in a build without the kernel, so it never passes vacuously.
#include "kernels/cuda/flash_fwd_fp8.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp8_launch.h"
#include "kernels/cuda/flash_fwd_fp8_variants.h"
#include "kernels/dtype.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace attention::cuda {
namespace {

// The variant ATTN_FP8_VARIANT names, or null for the host API's default.
const Fp8Variant* Variant() {
  static const Fp8Variant* variant = []() -> const Fp8Variant* {
    const char* env = std::getenv("ATTN_FP8_VARIANT");
    if (env == nullptr) return nullptr;
    for (const Fp8Variant& v : Fp8Variants()) {
      if (v.Label() == env) return &v;
    }
    return nullptr;
  }();
  return variant;
}

enum class Descales { kNone, kPerTensor, kPerHead, kPerSequence };

struct Case {
  std::string name;
  int batch = 1;
  int seqlen_q = 128;
  int seqlen_k = 128;
  int q_heads = 2;
  int kv_heads = 2;
  int head_dim = 128;
  bool causal = false;
  float softcap = 0.f;
  bool sinks = false;
  bool lse = true;
  Descales descales = Descales::kPerTensor;
  double q_sigma = 2.0;     // standard deviation of q before rounding (k and v: 1)
  std::vector<int> lens_q;  // packed batch when not empty
  std::vector<int> lens_k;
  bool nan_in_unread_rows = false;  // packed: V rows of sequences without queries are NaN
  int spike_every = 0;  // > 0: every spike_every-th key row scaled by 8 (logits jump across tiles)

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& Batch(int b) {
    batch = b;
    return *this;
  }
  Case& Seq(int q, int k) {
    seqlen_q = q;
    seqlen_k = k;
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
  Case& Causal() {
    causal = true;
    return *this;
  }
  Case& Softcap(float c) {
    softcap = c;
    return *this;
  }
  Case& Sinks() {
    sinks = true;
    return *this;
  }
  Case& NoLse() {
    lse = false;
    return *this;
  }
  Case& Scales(Descales d) {
    descales = d;
    return *this;
  }
  Case& Diffuse() {
    q_sigma = 0.5;
    return *this;
  }
  Case& Spikes(int every) {
    spike_every = every;
    return *this;
  }
  Case& NanInUnreadRows() {
    nan_in_unread_rows = true;
    return *this;
  }
  Case& Varlen(std::vector<int> q, std::vector<int> k) {
    lens_q = std::move(q);
    lens_k = std::move(k);
    batch = static_cast<int>(lens_q.size());
    seqlen_q = seqlen_k = 0;
    for (int len : lens_q) seqlen_q = std::max(seqlen_q, len);
    for (int len : lens_k) seqlen_k = std::max(seqlen_k, len);
    return *this;
  }
};

std::vector<Case> Cases() {
  std::vector<Case> c;
  c.push_back(Case("d128_s256").Seq(256, 256));
  c.push_back(Case("d128_diffuse").Seq(384, 384).Diffuse());
  c.push_back(Case("d128_ragged_gqa_causal").Batch(2).Seq(200, 333).Heads(4, 2).Causal());
  c.push_back(Case("d128_sq_gt_sk_causal").Batch(2).Seq(300, 77).Causal());
  c.push_back(Case("d128_long_mqa").Seq(1024, 2048).Heads(4, 1).Scales(Descales::kPerHead));
  c.push_back(Case("d128_long_causal").Seq(1500, 2100).Causal().Scales(Descales::kPerHead));
  c.push_back(
      Case("d128_per_sequence").Batch(3).Seq(129, 257).Heads(4, 2).Scales(Descales::kPerSequence));
  c.push_back(Case("d128_no_descale").Seq(100, 190).Scales(Descales::kNone).NoLse());
  c.push_back(Case("d128_softcap_sinks").Batch(2).Seq(190, 300).Softcap(20.f).Sinks());
  // Keys whose logits are about 8x the others' in some KV tiles only: a row's max jumps by far
  // more than 2^8 in P between tiles, both ways (the kernel walks the tiles from the last down),
  // which a lazy or speculative softmax must handle (Fp8Traits::kLazy, kSpec).
  c.push_back(Case("d128_spikes").Seq(300, 900).Heads(2, 1).Spikes(301));
  c.push_back(Case("d128_spikes_causal").Seq(700, 700).Causal().Spikes(97));
  c.push_back(Case("d64").Batch(2).Seq(333, 333).Dim(64));
  c.push_back(Case("d64_causal_gqa").Batch(2).Seq(333, 500).Dim(64).Heads(6, 2).Causal());
  c.push_back(Case("d96").Seq(200, 260).Dim(96));
  c.push_back(Case("d256").Batch(2).Seq(260, 300).Dim(256));
  c.push_back(Case("d256_causal_sinks").Seq(300, 300).Dim(256).Causal().Sinks());
  c.push_back(Case("varlen").Varlen({1, 130, 0, 257, 64, 300}, {5, 300, 17, 129, 0, 300}));
  c.push_back(Case("varlen_causal_gqa")
                  .Varlen({300, 1, 0, 1000, 129, 77}, {300, 1, 0, 1000, 129, 200})
                  .Heads(4, 2)
                  .Causal()
                  .Scales(Descales::kPerSequence));
  c.push_back(
      Case("varlen_nan_unread").Varlen({300, 0, 200, 0}, {300, 77, 129, 64}).NanInUnreadRows());
  c.push_back(Case("varlen_d256_softcap")
                  .Varlen({200, 65, 0, 130}, {130, 65, 10, 400})
                  .Dim(256)
                  .Causal()
                  .Softcap(30.f));
  c.push_back(Case("varlen_d64_sinks").Varlen({77, 200, 1}, {500, 200, 9}).Dim(64).Sinks());
  return c;
}

struct Result {
  double max_err = 0;    // max |o - ref|
  double max_ref = 0;    // max |ref|
  double max_ratio = 0;  // max |o - ref| / bound
  double max_lse_err = 0;
  int64_t failures = 0;
  std::string first_failure;
};

void RunCase(const Case& k) {
  std::mt19937_64 rng(testing::TestSeed("flash_fwd_fp8_test") ^ std::hash<std::string>()(k.name));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.5, 2.0);
  const bool packed = !k.lens_q.empty();
  const int d = k.head_dim;
  const int hq = k.q_heads;
  const int hk = k.kv_heads;
  std::vector<int> cu_q(k.batch + 1, 0), cu_k(k.batch + 1, 0);
  for (int b = 0; b < k.batch; ++b) {
    cu_q[b + 1] = cu_q[b] + (packed ? k.lens_q[b] : k.seqlen_q);
    cu_k[b + 1] = cu_k[b] + (packed ? k.lens_k[b] : k.seqlen_k);
  }
  const int64_t rows_q = cu_q[k.batch];
  const int64_t rows_k = cu_k[k.batch];
  std::vector<uint8_t> q(rows_q * hq * d), kk(rows_k * hk * d), v(rows_k * hk * d);
  for (auto& x : q) x = FloatToE4M3(static_cast<float>(k.q_sigma * normal(rng)));
  for (auto& x : kk) x = FloatToE4M3(static_cast<float>(normal(rng)));
  if (k.spike_every > 0) {
    for (int64_t r = 0; r < rows_k; ++r) {
      if (r % k.spike_every != k.spike_every / 2) continue;
      for (int i = 0; i < hk * d; ++i) {
        uint8_t& x = kk[r * hk * d + i];
        x = FloatToE4M3(8.f * E4M3ToFloat(x));
      }
    }
  }
  for (auto& x : v) x = FloatToE4M3(static_cast<float>(normal(rng)));
  if (k.nan_in_unread_rows) {
    for (int b = 0; b < k.batch; ++b) {
      if (cu_q[b + 1] != cu_q[b]) continue;
      for (int64_t r = cu_k[b]; r < cu_k[b + 1]; ++r) {
        for (int i = 0; i < hk * d; ++i) v[r * hk * d + i] = 0x7f;
      }
    }
  }
  // Descales: [1], [heads] or [batch, heads].
  const int64_t scale_batches = k.descales == Descales::kPerSequence ? k.batch : 1;
  const auto draw_scales = [&](int heads) {
    std::vector<float> s;
    const int64_t n = k.descales == Descales::kNone        ? 0
                      : k.descales == Descales::kPerTensor ? 1
                                                           : scale_batches * heads;
    for (int64_t i = 0; i < n; ++i) s.push_back(static_cast<float>(uniform(rng)));
    return s;
  };
  const std::vector<float> qs = draw_scales(hq), ks = draw_scales(hk), vs = draw_scales(hk);
  const int64_t head_stride =
      k.descales == Descales::kPerHead || k.descales == Descales::kPerSequence ? 1 : 0;
  const auto factor = [&](const std::vector<float>& s, int heads, int b, int h) -> double {
    if (s.empty()) return 1.0;
    const int64_t bs = k.descales == Descales::kPerSequence ? heads : 0;
    return s[b * bs + h * head_stride];
  };
  std::vector<float> sinks;
  if (k.sinks) {
    for (int h = 0; h < hq; ++h) sinks.push_back(static_cast<float>(2.0 * normal(rng)));
  }

  // Device buffers; o and lse with a guard of 256 elements past their ends.
  constexpr int64_t kGuard = 256;
  const int64_t o_elems = rows_q * hq * d;
  const int64_t lse_elems = rows_q * hq;
  void *dq, *dk, *dv, *dout, *dws = nullptr;
  float *dlse, *dqs = nullptr, *dks = nullptr, *dvs = nullptr, *dsinks = nullptr;
  int32_t *dcu_q = nullptr, *dcu_k = nullptr;
  CUDA_OK(cudaMalloc(&dq, std::max<int64_t>(q.size(), 16)));
  CUDA_OK(cudaMalloc(&dk, std::max<int64_t>(kk.size(), 16)));
  CUDA_OK(cudaMalloc(&dv, std::max<int64_t>(v.size(), 16)));
  CUDA_OK(cudaMalloc(&dout, (o_elems + kGuard) * 2));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dlse), (lse_elems + kGuard) * 4));
  CUDA_OK(cudaMemcpy(dq, q.data(), q.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dk, kk.data(), kk.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dv, v.data(), v.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(dout, 0xff, (o_elems + kGuard) * 2));  // bfloat16 NaN
  CUDA_OK(cudaMemset(dlse, 0xff, (lse_elems + kGuard) * 4));
  const auto upload = [&](const std::vector<float>& h, float** dptr) {
    if (h.empty()) return;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(dptr), h.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(*dptr, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  };
  upload(qs, &dqs);
  upload(ks, &dks);
  upload(vs, &dvs);
  upload(sinks, &dsinks);
  if (packed) {
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dcu_q), cu_q.size() * 4));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dcu_k), cu_k.size() * 4));
    CUDA_OK(cudaMemcpy(dcu_q, cu_q.data(), cu_q.size() * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dcu_k, cu_k.data(), cu_k.size() * 4, cudaMemcpyHostToDevice));
  }

  AttentionParams p;
  p.dtype = DType::kFloat8E4M3;
  p.head_dim = d;
  p.q_heads = hq;
  p.kv_heads = hk;
  p.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  p.softcap = k.softcap;
  p.causal = k.causal;
  p.sinks = k.sinks;
  p.q = dq;
  p.k = dk;
  p.v = dv;
  p.o = dout;
  p.lse = k.lse ? dlse : nullptr;
  p.batch = k.batch;
  p.seqlen_q = k.seqlen_q;
  p.seqlen_k = k.seqlen_k;
  if (packed) {
    p.cu_seqlens_q = dcu_q;
    p.cu_seqlens_k = dcu_k;
    p.total_q = rows_q;
    p.total_k = rows_k;
  }
  SetContiguousStrides(p);
  p.sink_logits = dsinks;
  p.q_descale = dqs;
  p.k_descale = dks;
  p.v_descale = dvs;
  const int64_t bs_q = k.descales == Descales::kPerSequence ? hq : 0;
  const int64_t bs_k = k.descales == Descales::kPerSequence ? hk : 0;
  p.q_descale_batch_stride = bs_q;
  p.k_descale_batch_stride = p.v_descale_batch_stride = bs_k;
  p.q_descale_head_stride = p.k_descale_head_stride = p.v_descale_head_stride = head_stride;

  const size_t ws_bytes = Fp8WorkspaceBytes(p);
  if (ws_bytes > 0) CUDA_OK(cudaMalloc(&dws, ws_bytes));
  const absl::Status status = Variant() != nullptr
                                  ? RunFlashFwdFp8Variant(p, *Variant(), dws, nullptr)
                                  : RunFlashFwdFp8(p, dws, nullptr);
  if (status.code() == absl::StatusCode::kUnimplemented) {
    GTEST_SKIP() << k.name << ": " << status;  // a bucket this build or variant lacks
  }
  ASSERT_TRUE(status.ok()) << k.name << ": " << status;
  CUDA_OK(cudaDeviceSynchronize());

  std::vector<uint16_t> out(o_elems + kGuard);
  std::vector<float> lse(lse_elems + kGuard);
  CUDA_OK(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
  for (void* ptr : {dq, dk, dv, dout, static_cast<void*>(dlse), static_cast<void*>(dqs),
                    static_cast<void*>(dks), static_cast<void*>(dvs), static_cast<void*>(dsinks),
                    static_cast<void*>(dcu_q), static_cast<void*>(dcu_k), dws}) {
    if (ptr != nullptr) CUDA_OK(cudaFree(ptr));
  }
  for (int64_t i = o_elems; i < o_elems + kGuard; ++i) ASSERT_EQ(out[i], 0xffff) << "o guard";
  for (int64_t i = lse_elems; i < lse_elems + kGuard; ++i) {
    ASSERT_TRUE(std::isnan(lse[i])) << "lse guard";
  }

  // The float64 reference, row by row, with the bound of the file comment.
  const auto decode = [](const std::vector<uint8_t>& x) {
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = E4M3ToFloat(x[i]);
    return out;
  };
  const std::vector<double> qf = decode(q), kf = decode(kk), vf = decode(v);
  Result res;
  const double scale = p.softmax_scale;
  // The configuration that ran: the variant's, or the host API's default for the bucket.
  const Fp8TileConfig config = Variant() != nullptr ? Variant()->config
                                                    : DefaultFp8TileConfig(d <= 64    ? 64
                                                                           : d <= 128 ? 128
                                                                                      : 256);
  const bool sum_of_rounded_p = config.sum_mma;
  const bool lse_of_rounded_p = config.sum_mma && !config.lse_f32;
  std::vector<double> s, a, pj;
  for (int b = 0; b < k.batch; ++b) {
    const int len_q = cu_q[b + 1] - cu_q[b];
    const int len_k = cu_k[b + 1] - cu_k[b];
    for (int h = 0; h < hq; ++h) {
      const int g = h / (hq / hk);
      const double qk = scale * factor(qs, hq, b, h) * factor(ks, hk, b, g);
      const double vd = factor(vs, hk, b, g);
      const double sink = k.sinks ? sinks[h] : -INFINITY;
      for (int i = 0; i < len_q; ++i) {
        const int64_t qrow = (cu_q[b] + i) * hq + h;
        const int last = k.causal ? std::min(len_k - 1, i + len_k - len_q) : len_k - 1;
        s.assign(std::max(last + 1, 0), 0.0);
        a.assign(s.size(), 0.0);
        double m = -INFINITY;
        double a_max = 0;
        for (int j = 0; j <= last; ++j) {
          const int64_t krow = (cu_k[b] + j) * hk + g;
          double dot = 0, abs_dot = 0;
          for (int c = 0; c < d; ++c) {
            const double x = qf[qrow * d + c] * kf[krow * d + c];
            dot += x;
            abs_dot += std::fabs(x);
          }
          double sc = qk * dot;
          if (k.softcap > 0) sc = k.softcap * std::tanh(sc / k.softcap);
          s[j] = sc;
          a[j] = qk * abs_dot;
          a_max = std::max(a_max, a[j]);
          m = std::max(m, sc);
        }
        double denom = 0;
        pj.assign(s.size(), 0.0);
        for (size_t j = 0; j < s.size(); ++j) denom += (pj[j] = std::exp(s[j] - m));
        if (k.sinks && !s.empty()) denom += std::exp(sink - m);
        double ref_lse = s.empty() ? sink : m + std::log(denom);
        // Row sums of the rounded P (a variant with the sums on the tensor cores): the sum moves
        // by at most e_sum, so o gains |ref| e_sum in the numerator and the LSE -log(1 - e_sum /
        // denom).
        double e_sum = 0;
        if (sum_of_rounded_p) {
          for (size_t j = 0; j < s.size(); ++j) {
            e_sum += (std::ldexp(1.0, -4) + std::ldexp(1.0, -10) * (1 + a[j])) * pj[j] +
                     std::ldexp(1.0, -10);
          }
        }
        const double lse_tol =
            1e-3 + std::ldexp(a_max, -10) +
            (lse_of_rounded_p && e_sum > 0 ? -std::log(std::max(1e-300, 1 - e_sum / denom)) : 0.0);
        if (k.lse) {
          const int64_t at =
              packed ? h * rows_q + cu_q[b] + i : (int64_t{b} * hq + h) * k.seqlen_q + i;
          const double got = lse[at];
          const double err =
              std::isinf(ref_lse) && std::isinf(got) && got < 0 ? 0.0 : std::fabs(got - ref_lse);
          res.max_lse_err = std::max(res.max_lse_err, err);
          if (!(err <= lse_tol)) {
            if (res.failures++ == 0) {
              res.first_failure = "lse b " + std::to_string(b) + " h " + std::to_string(h) +
                                  " row " + std::to_string(i) + ": " + std::to_string(got) +
                                  " vs " + std::to_string(ref_lse);
            }
          }
        }
        for (int c = 0; c < d; ++c) {
          double num = 0, pv = 0, sv = 0, av = 0, vmax = 0;
          for (size_t j = 0; j < s.size(); ++j) {
            const int64_t krow = (cu_k[b] + static_cast<int64_t>(j)) * hk + g;
            const double vv = vf[krow * d + c] * vd;
            num += pj[j] * vv;
            pv += pj[j] * std::fabs(vv);
            sv += std::fabs(vv);
            av += a[j] * pj[j] * std::fabs(vv);
            vmax = std::max(vmax, std::fabs(vv));
          }
          const double ref = s.empty() ? 0.0 : num / denom;
          const double numer =
              (std::ldexp(1.0, -4) + std::ldexp(1.0, -10)) * pv + std::ldexp(sv + av, -10);
          const double bound =
              s.empty() ? 0.0
              : sum_of_rounded_p
                  ? (numer + std::fabs(ref) * e_sum) / std::max(1e-300, denom - e_sum) +
                        std::ldexp(std::fabs(ref), -8) + 1e-6 * vmax
                  : numer / denom + std::ldexp(std::fabs(ref), -8) + 1e-6 * vmax;
          const double got = BFloat16ToFloat(out[qrow * d + c]);
          const double err = std::fabs(got - ref);
          res.max_err = std::max(res.max_err, std::isnan(err) ? INFINITY : err);
          res.max_ref = std::max(res.max_ref, std::fabs(ref));
          if (bound > 0) res.max_ratio = std::max(res.max_ratio, err / bound);
          if (!(err <= bound)) {
            if (res.failures++ == 0) {
              res.first_failure = "o b " + std::to_string(b) + " h " + std::to_string(h) + " row " +
                                  std::to_string(i) + " dim " + std::to_string(c) + ": " +
                                  std::to_string(got) + " vs " + std::to_string(ref) + " (bound " +
                                  std::to_string(bound) + ")";
            }
          }
        }
      }
    }
  }
  std::printf("  %-28s max|o-ref| %.3e = %.3e x max|ref|, max err/bound %.3f, max lse err %.2e\n",
              k.name.c_str(), res.max_err, res.max_ref > 0 ? res.max_err / res.max_ref : 0.0,
              res.max_ratio, res.max_lse_err);
  EXPECT_EQ(res.failures, 0) << k.name << ": " << res.failures << " elements off, first "
                             << res.first_failure;
}

class Fp8Test : public ::testing::TestWithParam<Case> {};

TEST_P(Fp8Test, MatchesFloat64OnDequantizedInputs) { RunCase(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Cases, Fp8Test, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (const char* env = std::getenv("ATTN_FP8_VARIANT"); env != nullptr) {
    if (attention::cuda::Variant() == nullptr) {
      std::printf("flash_fwd_fp8_test: no variant '%s' in this build (ATTN_BENCH_FP8_VARIANTS)\n",
                  env);
      return 2;
    }
    std::printf("flash_fwd_fp8_test: every case on variant %s\n", env);
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("flash_fwd_fp8_test: no CUDA device, skipping\n");
    return 77;
  }
  // The kernel's refusal of this build or device (a minimal valid launch's check).
  attention::AttentionParams p;
  p.dtype = attention::DType::kFloat8E4M3;
  p.head_dim = 128;
  p.q_heads = p.kv_heads = 1;
  p.softmax_scale = 0.1f;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 16;
  attention::SetContiguousStrides(p);
  const absl::Status s = attention::cuda::CheckFlashFwdFp8(p);
  if (s.code() == absl::StatusCode::kUnimplemented) {
    std::printf("flash_fwd_fp8_test: %s, skipping\n", std::string(s.message()).c_str());
    return 77;
  }
  return RUN_ALL_TESTS();
}
