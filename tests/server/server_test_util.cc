#include "tests/server/server_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/attention_params.h"
#include "kernels/dtype.h"
#include "proto/contract_types.h"
#include "tests/reference/reference_attention.h"

namespace attention::testing {
namespace {

// Stores `value` as element `i` of `data` in `dtype`.
void Store(v1::DType dtype, std::string& data, int64_t i, float value) {
  if (dtype == v1::FLOAT32) {
    std::memcpy(&data[4 * i], &value, 4);
    return;
  }
  if (dtype == v1::FLOAT8_E4M3) {
    data[i] = static_cast<char>(FloatToE4M3(value));
    return;
  }
  const uint16_t bits = dtype == v1::FLOAT16 ? FloatToHalf(value) : FloatToBFloat16(value);
  std::memcpy(&data[2 * i], &bits, 2);
}

void FillTensor(v1::Tensor* t, v1::DType dtype, std::vector<int64_t> shape, std::mt19937& rng,
                float lo, float hi) {
  t->set_dtype(dtype);
  const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1},
                                    [](int64_t a, int64_t b) { return a * b; });
  for (int64_t d : shape) t->add_shape(d);
  std::string* data = t->mutable_data();
  data->resize(static_cast<size_t>(n * ContractDTypeSize(dtype)));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == v1::BOOL) {
      (*data)[i] = dist(rng) < lo + 0.8f * (hi - lo) ? 1 : 0;
    } else {
      Store(dtype, *data, i, dist(rng));
    }
  }
}

double LoadOutput(v1::DType dtype, const std::string& data, int64_t i) {
  return LoadElement(*KernelDType(dtype), data.data(), i);
}

}  // namespace

std::string RandomBytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

v1::AttentionRequest MakeRequest(const RequestOptions& o, uint64_t request_id, std::mt19937& rng) {
  v1::AttentionRequest r;
  r.set_request_id(request_id);
  const bool packed = !o.seqlens_q.empty();
  const int64_t total_q = packed
                              ? std::accumulate(o.seqlens_q.begin(), o.seqlens_q.end(), int64_t{0})
                              : int64_t{o.batch} * o.seqlen_q;
  const int64_t total_k = packed
                              ? std::accumulate(o.seqlens_k.begin(), o.seqlens_k.end(), int64_t{0})
                              : int64_t{o.batch} * o.seqlen_k;
  const int batch = packed ? static_cast<int>(o.seqlens_q.size()) : o.batch;
  if (packed) {
    FillTensor(r.mutable_q(), o.dtype, {total_q, o.q_heads, o.head_dim}, rng, -1, 1);
    FillTensor(r.mutable_k(), o.dtype, {total_k, o.kv_heads, o.head_dim}, rng, -1, 1);
    FillTensor(r.mutable_v(), o.dtype, {total_k, o.kv_heads, o.head_dim}, rng, -1, 1);
    r.add_cu_seqlens_q(0);
    r.add_cu_seqlens_k(0);
    for (int b = 0; b < batch; ++b) {
      r.add_cu_seqlens_q(r.cu_seqlens_q(b) + o.seqlens_q[b]);
      r.add_cu_seqlens_k(r.cu_seqlens_k(b) + o.seqlens_k[b]);
    }
  } else {
    FillTensor(r.mutable_q(), o.dtype, {o.batch, o.seqlen_q, o.q_heads, o.head_dim}, rng, -1, 1);
    FillTensor(r.mutable_k(), o.dtype, {o.batch, o.seqlen_k, o.kv_heads, o.head_dim}, rng, -1, 1);
    FillTensor(r.mutable_v(), o.dtype, {o.batch, o.seqlen_k, o.kv_heads, o.head_dim}, rng, -1, 1);
  }
  r.set_causal(o.causal);
  if (o.window_left != -1 || o.window_right != -1) {
    r.mutable_window()->set_left(o.window_left);
    r.mutable_window()->set_right(o.window_right);
  }
  r.set_softcap(o.softcap);
  if (o.softmax_scale) r.set_softmax_scale(*o.softmax_scale);
  if (o.alibi == 1)
    FillTensor(r.mutable_alibi_slopes(), v1::FLOAT32, {o.q_heads}, rng, 0.01f, 0.5f);
  if (o.alibi == 2) {
    FillTensor(r.mutable_alibi_slopes(), v1::FLOAT32, {batch, o.q_heads}, rng, 0.01f, 0.5f);
  }
  if (!o.mask_shape.empty()) FillTensor(r.mutable_mask(), o.mask_dtype, o.mask_shape, rng, -2, 1);
  if (o.sinks) FillTensor(r.mutable_sinks(), v1::FLOAT32, {o.q_heads}, rng, -1.f, 2.f);
  if (o.dtype == v1::FLOAT8_E4M3 && o.descale != 0) {
    // Codes for values in [-1, 1] / factor: rescale the codes FillTensor wrote (values in [-1, 1])
    // by each element's 1 / factor, so the dequantized values stay in [-1, 1].
    const auto descale = [&](v1::Tensor* t, v1::Tensor* factors, int heads) {
      const int n = o.descale == 1 ? 1 : heads;
      FillTensor(factors, v1::FLOAT32, {n}, rng, 1.f / 256, 1.f / 64);
      const float* f = reinterpret_cast<const float*>(factors->data().data());
      std::string& data = *t->mutable_data();
      for (size_t i = 0; i < data.size(); ++i) {
        const int head = static_cast<int>(i / o.head_dim % heads);
        const float value = E4M3ToFloat(static_cast<uint8_t>(data[i]));
        data[i] = static_cast<char>(FloatToE4M3(value / f[o.descale == 1 ? 0 : head]));
      }
    };
    descale(r.mutable_q(), r.mutable_q_descale(), o.q_heads);
    descale(r.mutable_k(), r.mutable_k_descale(), o.kv_heads);
    descale(r.mutable_v(), r.mutable_v_descale(), o.kv_heads);
  }
  r.set_return_lse(o.return_lse);
  return r;
}

std::string ServerBackendUnderTest() {
  const char* backend = std::getenv("ATTN_TEST_BACKEND");
  return backend != nullptr && *backend != '\0' ? backend : "cpu";
}

namespace {

// The forward's params of request `r`, derived from the request alone (host pointers into it; an
// additive 16-bit mask widened into `widened_mask`), and its rows of q.
AttentionParams ParamsFromRequest(const v1::AttentionRequest& r, std::vector<float>* widened_mask,
                                  int64_t* total_q_out) {
  const v1::Tensor& q = r.q();
  const bool packed = r.cu_seqlens_q_size() > 0;
  const int rank = packed ? 3 : 4;
  AttentionParams p;
  p.dtype = KernelDType(q.dtype()).value_or(DType::kBFloat16);
  p.q = q.data().data();
  p.k = r.k().data().data();
  p.v = r.v().data().data();
  p.q_heads = static_cast<int>(q.shape(rank - 2));
  p.kv_heads = static_cast<int>(r.k().shape(rank - 2));
  p.head_dim = static_cast<int>(q.shape(rank - 1));
  int64_t total_q = 0;
  if (packed) {
    p.batch = r.cu_seqlens_q_size() - 1;
    p.cu_seqlens_q = r.cu_seqlens_q().data();
    p.cu_seqlens_k = r.cu_seqlens_k().data();
    p.total_q = total_q = q.shape(0);
    p.total_k = r.k().shape(0);
    for (int b = 0; b < p.batch; ++b) {
      p.seqlen_q = std::max(p.seqlen_q, r.cu_seqlens_q(b + 1) - r.cu_seqlens_q(b));
      p.seqlen_k = std::max(p.seqlen_k, r.cu_seqlens_k(b + 1) - r.cu_seqlens_k(b));
    }
  } else {
    p.batch = static_cast<int>(q.shape(0));
    p.seqlen_q = static_cast<int>(q.shape(1));
    p.seqlen_k = static_cast<int>(r.k().shape(1));
    total_q = int64_t{p.batch} * p.seqlen_q;
  }
  SetContiguousStrides(p);
  p.softmax_scale = r.has_softmax_scale() ? r.softmax_scale() : 1.f / std::sqrt(p.head_dim);
  p.softcap = r.softcap();
  p.causal = r.causal();
  if (r.has_window()) {
    p.window_left = r.window().left();
    p.window_right = r.window().right();
  }
  Normalize(p);
  if (r.has_alibi_slopes()) {
    p.alibi_slopes = reinterpret_cast<const float*>(r.alibi_slopes().data().data());
    p.alibi_batch_stride = r.alibi_slopes().shape_size() == 2 ? p.q_heads : 0;
    p.alibi = true;
  }
  if (r.has_sinks()) {
    p.sinks = true;
    p.sink_logits = reinterpret_cast<const float*>(r.sinks().data().data());
  }
  // FP8: [1] factors apply to every head (head stride 0), [heads] ones per head.
  const auto descale = [](const v1::Tensor& t, const float** factors, int64_t* head_stride) {
    *factors = reinterpret_cast<const float*>(t.data().data());
    *head_stride = t.shape_size() == 1 && t.shape(0) == 1 ? 0 : 1;
  };
  if (r.has_q_descale()) descale(r.q_descale(), &p.q_descale, &p.q_descale_head_stride);
  if (r.has_k_descale()) descale(r.k_descale(), &p.k_descale, &p.k_descale_head_stride);
  if (r.has_v_descale()) descale(r.v_descale(), &p.v_descale, &p.v_descale_head_stride);
  if (r.has_mask()) {
    const v1::Tensor& m = r.mask();
    const int mask_rank = m.shape_size();
    int64_t strides[4] = {0, 0, 0, 0};
    int64_t stride = 1;
    for (int i = mask_rank - 1; i >= 0; --i) {
      strides[4 - mask_rank + i] = m.shape(i) == 1 ? 0 : stride;
      stride *= m.shape(i);
    }
    p.mask_batch_stride = strides[0];
    p.mask_head_stride = strides[1];
    p.mask_row_stride = strides[2];
    p.mask_col_stride = strides[3];
    if (m.dtype() == v1::BOOL) {
      p.mask_kind = MaskKind::kBool;
      p.mask = m.data().data();
    } else {
      p.mask_kind = MaskKind::kAdditive;
      widened_mask->resize(static_cast<size_t>(stride));
      for (int64_t i = 0; i < stride; ++i) {
        (*widened_mask)[i] = static_cast<float>(LoadOutput(m.dtype(), m.data(), i));
      }
      p.mask = widened_mask->data();
    }
  }
  *total_q_out = total_q;
  return p;
}

// FP8 on a GPU: how far each row's LSE may be from the reference's, in lse's layout. Its logits
// come from products of e4m3 values accumulated by the FP8 tensor cores (2^-11 of sum |q||k| per
// logit, bench/cuda/fp8_notes.md) or, for what the FP8 kernel lacks, from bfloat16 copies of the
// dequantized q and k (two roundings of 2^-9): at most 2^-8 |scale| sum_d |q_id| max |k_jd| per
// logit, so per row 1e-3 + 2^-8 |scale| sum_d |q_id| max_j,d |k_jd| (dequantized values; the max
// over the row's sequence and KV head).
std::vector<double> Fp8LseBounds(const AttentionParams& p, int64_t total_q) {
  const auto* q = static_cast<const uint8_t*>(p.q);
  const auto* k = static_cast<const uint8_t*>(p.k);
  const int group = p.q_heads / p.kv_heads;
  std::vector<double> bounds(static_cast<size_t>(total_q * p.q_heads), 0.0);
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t k0 = p.is_varlen() ? p.cu_seqlens_k[b] : 0;
    const int64_t rows_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - q0 : p.seqlen_q;
    const int64_t rows_k = p.is_varlen() ? p.cu_seqlens_k[b + 1] - k0 : p.seqlen_k;
    for (int g = 0; g < p.kv_heads; ++g) {
      const double kd = p.k_descale ? p.k_descale[g * p.k_descale_head_stride] : 1.0;
      double k_max = 0.0;
      for (int64_t j = 0; j < rows_k; ++j) {
        const uint8_t* row =
            k + b * p.k_batch_stride + (k0 + j) * p.k_row_stride + g * p.k_head_stride;
        for (int d = 0; d < p.head_dim; ++d) {
          k_max = std::max(k_max, std::abs(double{E4M3ToFloat(row[d])} * kd));
        }
      }
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const double qd = p.q_descale ? p.q_descale[h * p.q_descale_head_stride] : 1.0;
        for (int64_t i = 0; i < rows_q; ++i) {
          const uint8_t* row =
              q + b * p.q_batch_stride + (q0 + i) * p.q_row_stride + h * p.q_head_stride;
          double q_sum = 0.0;
          for (int d = 0; d < p.head_dim; ++d) {
            q_sum += std::abs(double{E4M3ToFloat(row[d])} * qd);
          }
          const int64_t index = p.is_varlen() ? int64_t{h} * total_q + q0 + i
                                              : (int64_t{b} * p.q_heads + h) * p.seqlen_q + i;
          bounds[static_cast<size_t>(index)] =
              1e-3 + std::ldexp(1.0, -8) * std::abs(p.softmax_scale) * q_sum * k_max;
        }
      }
    }
  }
  return bounds;
}

}  // namespace

std::vector<double> ReferenceOutput(const v1::AttentionRequest& r) {
  std::vector<float> widened_mask;
  int64_t total_q = 0;
  const AttentionParams p = ParamsFromRequest(r, &widened_mask, &total_q);
  std::vector<double> o_ref(static_cast<size_t>(total_q * p.q_heads * p.head_dim));
  std::vector<double> lse_ref(static_cast<size_t>(total_q * p.q_heads));
  ReferenceAttention(p, o_ref.data(), lse_ref.data());
  return o_ref;
}

double OutputValue(const v1::Tensor& o, int64_t i) { return LoadOutput(o.dtype(), o.data(), i); }

double OutputSquaredError(const v1::AttentionRequest& request,
                          const v1::AttentionResponse& response) {
  const std::vector<double> ref = ReferenceOutput(request);
  const v1::Tensor& o = response.o();
  if (o.data().size() != ref.size() * ContractDTypeSize(o.dtype())) {
    return std::numeric_limits<double>::infinity();
  }
  double err = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = OutputValue(o, static_cast<int64_t>(i)) - ref[i];
    err += d * d;
  }
  return err;
}

std::string CompareWithReference(const v1::AttentionRequest& r,
                                 const v1::AttentionResponse& response) {
  const v1::Tensor& q = r.q();
  const bool packed = r.cu_seqlens_q_size() > 0;
  std::vector<float> widened_mask;
  int64_t total_q = 0;
  const AttentionParams p = ParamsFromRequest(r, &widened_mask, &total_q);
  const int64_t o_elements = total_q * p.q_heads * p.head_dim;
  std::vector<double> o_ref(static_cast<size_t>(o_elements));
  std::vector<double> lse_ref(static_cast<size_t>(total_q * p.q_heads));
  ReferenceAttention(p, o_ref.data(), lse_ref.data());

  const v1::Tensor& o = response.o();
  const bool fp8 = q.dtype() == v1::FLOAT8_E4M3;
  const v1::DType o_dtype = fp8 ? v1::BFLOAT16 : q.dtype();
  if (o.dtype() != o_dtype) return absl::StrCat("o.dtype ", o.dtype(), " != ", o_dtype);
  if (absl::StrJoin(o.shape(), ",") != absl::StrJoin(q.shape(), ",")) {
    return absl::StrCat("o.shape [", absl::StrJoin(o.shape(), ","), "] != q.shape");
  }
  if (static_cast<int64_t>(o.data().size()) != o_elements * ContractDTypeSize(o_dtype)) {
    return absl::StrCat("o.data has ", o.data().size(), " bytes");
  }
  // A float32 request is held to the precision its answer says it was computed at (a GPU may
  // compute it from bfloat16 or TF32 products). On the CUDA backend P is rounded to the 16-bit
  // type before the PV product: wider 16-bit tolerances there.
  const bool cuda = ServerBackendUnderTest() == "cuda";
  const bool fp32 = q.dtype() == v1::FLOAT32;
  const v1::Precision computed = fp32 ? response.precision() : v1::PRECISION_FULL;
  const bool bf16_class =
      q.dtype() == v1::BFLOAT16 || fp8 || (fp32 && computed == v1::PRECISION_BF16);
  const double tol = fp8 && cuda                              ? 7e-2
                     : bf16_class                             ? (cuda ? 2.5e-2 : 1.6e-2)
                     : fp32 && computed == v1::PRECISION_TF32 ? 4e-3
                     : fp32                                   ? 1e-4
                     : cuda                                   ? 5e-3
                                                              : 2e-3;
  const double lse_tol = fp32 && computed == v1::PRECISION_BF16   ? 2e-2
                         : fp32 && computed == v1::PRECISION_TF32 ? 4e-3
                                                                  : 1e-3;
  for (int64_t i = 0; i < o_elements; ++i) {
    const double got = LoadOutput(o.dtype(), o.data(), i);
    const double want = o_ref[i];
    if (!(std::abs(got - want) <= tol + tol * std::abs(want))) {
      return absl::StrCat("o[", i, "] = ", got, ", reference ", want, " (request ", r.request_id(),
                          ")");
    }
  }
  if (!r.return_lse()) {
    return response.has_lse() ? "lse returned without return_lse" : "";
  }
  const v1::Tensor& lse = response.lse();
  const std::string want_shape = packed ? absl::StrCat(p.q_heads, ",", total_q)
                                        : absl::StrCat(p.batch, ",", p.q_heads, ",", p.seqlen_q);
  if (lse.dtype() != v1::FLOAT32 || absl::StrJoin(lse.shape(), ",") != want_shape ||
      static_cast<int64_t>(lse.data().size()) != total_q * p.q_heads * 4) {
    return absl::StrCat("lse has dtype ", lse.dtype(), " shape [", absl::StrJoin(lse.shape(), ","),
                        "], want FLOAT32 [", want_shape, "]");
  }
  const std::vector<double> fp8_bounds =
      fp8 && cuda ? Fp8LseBounds(p, total_q) : std::vector<double>{};
  for (int64_t i = 0; i < total_q * p.q_heads; ++i) {
    float got;
    std::memcpy(&got, lse.data().data() + 4 * i, 4);
    const double want = lse_ref[i];
    if (std::isinf(want) && got == want) continue;
    const double row_tol = fp8 && cuda ? fp8_bounds[static_cast<size_t>(i)] : lse_tol;
    if (!(std::abs(got - want) <= row_tol + 1e-4 * std::abs(want))) {
      return absl::StrCat("lse[", i, "] = ", got, ", reference ", want);
    }
  }
  return "";
}

v1::AttentionRequest MakeBackwardRequest(const v1::AttentionRequest& forward,
                                         const v1::AttentionResponse& answer, uint64_t request_id,
                                         std::mt19937& rng) {
  v1::AttentionRequest r = forward;
  r.set_request_id(request_id);
  r.set_backward(true);
  r.set_return_lse(false);
  *r.mutable_o() = answer.o();
  *r.mutable_lse() = answer.lse();
  const std::vector<int64_t> shape(forward.q().shape().begin(), forward.q().shape().end());
  FillTensor(r.mutable_grad_o(), forward.q().dtype(), shape, rng, -1, 1);
  return r;
}

BackwardGradients ReferenceBackward(const AttentionParams& p, const void* grad_o) {
  BackwardGradients g;
  const int64_t total_q = p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  const int64_t total_k = p.is_varlen() ? p.total_k : int64_t{p.batch} * p.seqlen_k;
  const int d = p.head_dim;
  g.dq.assign(static_cast<size_t>(total_q * p.q_heads * d), 0.0);
  g.dk.assign(static_cast<size_t>(total_k * p.kv_heads * d), 0.0);
  g.dv.assign(g.dk.size(), 0.0);
  const int group = p.q_heads / p.kv_heads;
  const double scale = p.softmax_scale;
  std::vector<double> raw, score, prob, dprob;
  std::vector<char> allowed;
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q0 = p.is_varlen() ? p.cu_seqlens_q[b] : 0;
    const int64_t k0 = p.is_varlen() ? p.cu_seqlens_k[b] : 0;
    const int64_t len_q = p.is_varlen() ? p.cu_seqlens_q[b + 1] - q0 : p.seqlen_q;
    const int64_t len_k = p.is_varlen() ? p.cu_seqlens_k[b + 1] - k0 : p.seqlen_k;
    raw.resize(static_cast<size_t>(len_k));
    score.resize(raw.size());
    prob.resize(raw.size());
    dprob.resize(raw.size());
    allowed.resize(raw.size());
    for (int h = 0; h < p.q_heads; ++h) {
      const int kv = h / group;
      const double slope = p.alibi ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.0;
      for (int64_t i = 0; i < len_q; ++i) {
        const int64_t pos = i + len_k - len_q;
        const int64_t q_at = b * p.q_batch_stride + (q0 + i) * p.q_row_stride + h * p.q_head_stride;
        const int64_t o_at = b * p.o_batch_stride + (q0 + i) * p.o_row_stride + h * p.o_head_stride;
        double max_logit = p.sinks ? p.sink_logits[b * p.sink_batch_stride + h]
                                   : -std::numeric_limits<double>::infinity();
        bool any = false;
        for (int64_t j = 0; j < len_k; ++j) {
          bool ok = (p.window_left < 0 || j >= pos - p.window_left) &&
                    (p.window_right < 0 || j <= pos + p.window_right);
          double add = 0;
          if (p.mask_kind != MaskKind::kNone) {
            const int64_t m = b * p.mask_batch_stride + h * p.mask_head_stride +
                              i * p.mask_row_stride + j * p.mask_col_stride;
            if (p.mask_kind == MaskKind::kBool) {
              ok = ok && static_cast<const uint8_t*>(p.mask)[m] != 0;
            } else {
              add = static_cast<const float*>(p.mask)[m];
              ok = ok && !std::isinf(add);
            }
          }
          allowed[j] = ok;
          if (!ok) continue;
          const int64_t k_at =
              b * p.k_batch_stride + (k0 + j) * p.k_row_stride + kv * p.k_head_stride;
          double dot = 0;
          for (int e = 0; e < d; ++e) {
            dot += LoadElement(p.dtype, p.q, q_at + e) * LoadElement(p.dtype, p.k, k_at + e);
          }
          raw[j] = scale * dot;
          const double capped = p.softcap > 0 ? p.softcap * std::tanh(raw[j] / p.softcap) : raw[j];
          score[j] = capped - slope * std::abs(static_cast<double>(pos - j)) + add;
          max_logit = std::max(max_logit, score[j]);
          any = true;
        }
        if (!any) continue;  // no allowed key: o = 0 whatever q, k, v are, so no gradient
        double sum = p.sinks ? std::exp(p.sink_logits[b * p.sink_batch_stride + h] - max_logit) : 0;
        for (int64_t j = 0; j < len_k; ++j) {
          if (allowed[j]) sum += std::exp(score[j] - max_logit);
        }
        const double lse = max_logit + std::log(sum);
        // dP = dO v^T, D = sum_j P_j dP_j (= rowsum(dO * O): the sink has no value vector).
        double row_d = 0;
        for (int64_t j = 0; j < len_k; ++j) {
          if (!allowed[j]) continue;
          prob[j] = std::exp(score[j] - lse);
          const int64_t v_at =
              b * p.v_batch_stride + (k0 + j) * p.v_row_stride + kv * p.v_head_stride;
          double dot = 0;
          for (int e = 0; e < d; ++e) {
            dot += LoadElement(p.dtype, grad_o, o_at + e) * LoadElement(p.dtype, p.v, v_at + e);
          }
          dprob[j] = dot;
          row_d += prob[j] * dot;
        }
        for (int64_t j = 0; j < len_k; ++j) {
          if (!allowed[j]) continue;
          double ds = prob[j] * (dprob[j] - row_d);
          if (p.softcap > 0) {
            const double t = std::tanh(raw[j] / p.softcap);
            ds *= 1 - t * t;
          }
          const int64_t k_at =
              b * p.k_batch_stride + (k0 + j) * p.k_row_stride + kv * p.k_head_stride;
          const int64_t v_at =
              b * p.v_batch_stride + (k0 + j) * p.v_row_stride + kv * p.v_head_stride;
          for (int e = 0; e < d; ++e) {
            g.dq[q_at + e] += scale * ds * LoadElement(p.dtype, p.k, k_at + e);
            g.dk[k_at + e] += scale * ds * LoadElement(p.dtype, p.q, q_at + e);
            g.dv[v_at + e] += prob[j] * LoadElement(p.dtype, grad_o, o_at + e);
          }
        }
      }
    }
  }
  return g;
}

double BackwardTolerance(v1::DType dtype) {
  return dtype == v1::FLOAT32 ? 2e-5 : dtype == v1::FLOAT16 ? 2e-3 : 1.5e-2;
}

std::string CompareBackwardWithReference(const v1::AttentionRequest& r,
                                         const v1::AttentionResponse& response) {
  std::vector<float> widened_mask;
  int64_t total_q = 0;
  AttentionParams p = ParamsFromRequest(r, &widened_mask, &total_q);
  const BackwardGradients want = ReferenceBackward(p, r.grad_o().data().data());
  const double tol = BackwardTolerance(r.q().dtype());
  struct Check {
    const char* name;
    const v1::Tensor& got;
    const v1::Tensor& like;
    const std::vector<double>& want;
  };
  for (const Check& c :
       {Check{"dq", response.dq(), r.q(), want.dq}, Check{"dk", response.dk(), r.k(), want.dk},
        Check{"dv", response.dv(), r.v(), want.dv}}) {
    if (c.got.dtype() != r.q().dtype()) {
      return absl::StrCat(c.name, ".dtype ", c.got.dtype(), " != q.dtype ", r.q().dtype());
    }
    if (absl::StrJoin(c.got.shape(), ",") != absl::StrJoin(c.like.shape(), ",")) {
      return absl::StrCat(c.name, ".shape [", absl::StrJoin(c.got.shape(), ","), "], want [",
                          absl::StrJoin(c.like.shape(), ","), "]");
    }
    const auto n = static_cast<int64_t>(c.want.size());
    if (static_cast<int64_t>(c.got.data().size()) != n * ContractDTypeSize(r.q().dtype())) {
      return absl::StrCat(c.name, ".data has ", c.got.data().size(), " bytes");
    }
    double max_want = 0, max_err = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double got = LoadOutput(c.got.dtype(), c.got.data(), i);
      if (!std::isfinite(got)) return absl::StrCat(c.name, "[", i, "] = ", got);
      max_want = std::max(max_want, std::abs(c.want[i]));
      const double err = std::abs(got - c.want[i]);
      if (err > max_err) {
        max_err = err;
        worst = i;
      }
    }
    if (max_err > tol * max_want) {
      return absl::StrCat(c.name, ": max |error| ", max_err, " at [", worst, "] (got ",
                          LoadOutput(c.got.dtype(), c.got.data(), worst), ", reference ",
                          c.want[worst], ") > ", tol, " x max |reference| ", max_want, " (request ",
                          r.request_id(), ")");
    }
  }
  return "";
}

}  // namespace attention::testing
