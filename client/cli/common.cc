#include "client/cli/common.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "attention/client/npy.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/dtype.h"
#include "proto/contract_types.h"

namespace attention::client::cli {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, ": cannot read ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Element i of a FLOAT32 / FLOAT16 / BFLOAT16 buffer as float.
float LoadFloat(v1::DType dtype, const void* data, int64_t i) {
  switch (dtype) {
    case v1::FLOAT32:
      return static_cast<const float*>(data)[i];
    case v1::FLOAT16:
      return HalfToFloat(static_cast<const uint16_t*>(data)[i]);
    default:
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[i]);
  }
}

// `count` standard normal values in `dtype`, as bytes.
std::string RandomBytes(v1::DType dtype, int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::string bytes(static_cast<size_t>(count * DTypeSize(dtype)), '\0');
  for (int64_t i = 0; i < count; ++i) {
    const float x = normal(rng);
    if (dtype == v1::FLOAT32) {
      std::memcpy(&bytes[i * 4], &x, 4);
    } else {
      const uint16_t h = dtype == v1::FLOAT16 ? FloatToHalf(x) : FloatToBFloat16(x);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  return bytes;
}

absl::StatusOr<std::vector<int32_t>> ParseOffsets(const std::string& flag,
                                                  const std::string& text) {
  std::vector<int32_t> offsets;
  if (text.empty()) return offsets;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    int32_t value;
    if (!absl::SimpleAtoi(item, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", item, "' is not an integer offset"));
    }
    offsets.push_back(value);
  }
  return offsets;
}

absl::Status SetFromNpy(const std::string& flag, const std::string& path, v1::Tensor* tensor) {
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  if (!array.ok()) {
    return absl::Status(array.status().code(),
                        absl::StrCat("--", flag, ": ", array.status().message()));
  }
  tensor->set_dtype(array->dtype);
  tensor->mutable_shape()->Assign(array->shape.begin(), array->shape.end());
  *tensor->mutable_data() = std::move(array->data);
  return absl::OkStatus();
}

}  // namespace

void ConnectionFlags::Register(FlagSet& flags) {
  flags.Add("target", &target,
            "Server address: host:port, a comma-separated list of IP:port (round robin), or any "
            "gRPC target such as dns:///name:port");
  flags.Add("tls_ca", &tls_ca,
            "PEM file of the roots that sign the server's certificate; "
            "setting any --tls_* flag turns TLS on");
  flags.Add("tls_cert", &tls_cert, "Client certificate chain (PEM) for mutual TLS");
  flags.Add("tls_key", &tls_key, "Client private key (PEM) for mutual TLS");
  flags.Add("tls_server_name", &tls_server_name,
            "Name to check the server's certificate against instead of the target host");
  flags.Add("auth_token_file", &auth_token_file,
            "File whose contents (trailing newline removed) are sent as 'authorization: Bearer "
            "<token>'");
  flags.Add("max_message_bytes", &max_message_bytes, "Largest message sent or received");
  flags.Add("retry_attempts", &retry_attempts,
            "Attempts per call when the server answers UNAVAILABLE (1 = no retries, at most 5)");
}

absl::StatusOr<ClientOptions> ConnectionFlags::Options(bool private_connection) const {
  if (target.empty()) return absl::InvalidArgumentError("--target: required (host:port)");
  if (max_message_bytes <= 0 || max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError("--max_message_bytes: must be in [1, 2^31 - 1]");
  }
  ClientOptions options;
  options.max_message_bytes = static_cast<int>(max_message_bytes);
  options.retry.max_attempts = retry_attempts;
  options.private_connection = private_connection;
  if (!tls_ca.empty() || !tls_cert.empty() || !tls_key.empty() || !tls_server_name.empty()) {
    TlsOptions tls;
    tls.server_name_override = tls_server_name;
    for (const auto& [flag, path, pem] : {std::tuple<const char*, const std::string*, std::string*>{
                                              "tls_ca", &tls_ca, &tls.root_certs_pem},
                                          {"tls_cert", &tls_cert, &tls.client_cert_pem},
                                          {"tls_key", &tls_key, &tls.client_key_pem}}) {
      if (path->empty()) continue;
      absl::StatusOr<std::string> contents = ReadFile(flag, *path);
      if (!contents.ok()) return contents.status();
      *pem = *std::move(contents);
    }
    options.tls = std::move(tls);
  }
  if (!auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadFile("auth_token_file", auth_token_file);
    if (!token.ok()) return token.status();
    std::string value(absl::StripTrailingAsciiWhitespace(*token));
    options.metadata.emplace_back("authorization", absl::StrCat("Bearer ", value));
  }
  return options;
}

absl::StatusOr<Client> ConnectionFlags::Connect() const {
  absl::StatusOr<ClientOptions> options = Options();
  if (!options.ok()) return options.status();
  return Client::Create(target, *options);
}

void ProblemFlags::Register(FlagSet& flags, bool with_shape) {
  if (with_shape) {
    flags.Add("batch", &batch, "Sequences per request");
    flags.Add("seqlen", &seqlen, "Query tokens per sequence");
    flags.Add("seqlen_k", &seqlen_k, "Key/value tokens per sequence (0: --seqlen)");
    flags.Add("heads", &heads, "Query heads");
    flags.Add("kv_heads", &kv_heads, "Key/value heads, dividing --heads (0: --heads)");
    flags.Add("head_dim", &head_dim, "Head dimension");
    flags.Add("dtype", &dtype,
              "Element type: bf16, fp16, fp32 or fp8 (e4m3 with per-head descales; o bfloat16)");
    flags.Add("seed", &seed, "Seed of the random inputs");
  }
  flags.Add("cu_seqlens_q", &cu_seqlens_q,
            "Packed layout: batch + 1 query offsets, e.g. 0,30,74 (random inputs then ignore "
            "--batch and --seqlen)");
  flags.Add("cu_seqlens_k", &cu_seqlens_k, "Packed layout: batch + 1 key offsets, e.g. 0,60,100");
  flags.Add("causal", &causal, "Causal masking (bottom-right aligned)");
  flags.Add("window_left", &window_left, "Sliding window, keys before the query (-1: unbounded)");
  flags.Add("window_right", &window_right, "Sliding window, keys after the query (-1: unbounded)");
  flags.Add("softcap", &softcap, "Logit soft-capping (0: off)");
  flags.Add("softmax_scale", &softmax_scale, "Score scale (0: 1 / sqrt(head_dim))");
  flags.Add("return_lse", &return_lse, "Ask for the log-sum-exp as well");
}

absl::Status ProblemFlags::ApplyOptions(v1::AttentionRequest* request) const {
  request->set_causal(causal);
  if (window_left != -1 || window_right != -1) {
    request->mutable_window()->set_left(window_left);
    request->mutable_window()->set_right(window_right);
  }
  request->set_softcap(static_cast<float>(softcap));
  if (softmax_scale != 0) request->set_softmax_scale(static_cast<float>(softmax_scale));
  request->set_return_lse(return_lse);
  for (const auto& [flag, text, field] :
       {std::tuple<const char*, const std::string*, google::protobuf::RepeatedField<int32_t>*>{
            "cu_seqlens_q", &cu_seqlens_q, request->mutable_cu_seqlens_q()},
        {"cu_seqlens_k", &cu_seqlens_k, request->mutable_cu_seqlens_k()}}) {
    absl::StatusOr<std::vector<int32_t>> offsets = ParseOffsets(flag, *text);
    if (!offsets.ok()) return offsets.status();
    field->Assign(offsets->begin(), offsets->end());
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AttentionRequest> RandomRequest(const ProblemFlags& problem) {
  absl::StatusOr<v1::DType> dtype = ParseDType(problem.dtype);
  if (!dtype.ok() || *dtype == v1::BOOL) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype: '", problem.dtype, "' is not bf16, fp16, fp32 or fp8"));
  }
  const int seqlen_k = problem.seqlen_k > 0 ? problem.seqlen_k : problem.seqlen;
  const int kv_heads = problem.kv_heads > 0 ? problem.kv_heads : problem.heads;
  for (const auto& [flag, value] : {std::pair<const char*, int>{"batch", problem.batch},
                                    {"seqlen", problem.seqlen},
                                    {"seqlen_k", seqlen_k},
                                    {"heads", problem.heads},
                                    {"kv_heads", kv_heads},
                                    {"head_dim", problem.head_dim}}) {
    if (value <= 0) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": must be > 0"));
  }
  if (problem.heads % kv_heads != 0) {
    return absl::InvalidArgumentError("--kv_heads: must divide --heads");
  }
  v1::AttentionRequest request;
  if (absl::Status status = problem.ApplyOptions(&request); !status.ok()) return status;
  std::vector<int64_t> q_shape = {problem.batch, problem.seqlen, problem.heads, problem.head_dim};
  std::vector<int64_t> kv_shape = {problem.batch, seqlen_k, kv_heads, problem.head_dim};
  if (request.cu_seqlens_q_size() > 0 || request.cu_seqlens_k_size() > 0) {
    if (request.cu_seqlens_q_size() < 2 || request.cu_seqlens_k_size() < 2) {
      return absl::InvalidArgumentError(
          "--cu_seqlens_q: the packed layout needs --cu_seqlens_q and --cu_seqlens_k, with "
          "batch + 1 offsets each");
    }
    const int32_t total_q = *request.cu_seqlens_q().rbegin();
    const int32_t total_k = *request.cu_seqlens_k().rbegin();
    if (total_q <= 0 || total_k <= 0) {
      return absl::InvalidArgumentError("--cu_seqlens_q: the last offsets must be > 0");
    }
    q_shape = {total_q, problem.heads, problem.head_dim};
    kv_shape = {total_k, kv_heads, problem.head_dim};
  }
  std::mt19937_64 rng(static_cast<uint64_t>(problem.seed));
  if (*dtype == v1::FLOAT8_E4M3) {
    // Standard normal values quantized per head (QuantizeTensorE4M3), with their descales.
    for (auto [name, tensor, shape, descale] :
         {std::tuple<const char*, v1::Tensor*, const std::vector<int64_t>*, v1::Tensor*>{
              "q", request.mutable_q(), &q_shape, request.mutable_q_descale()},
          {"k", request.mutable_k(), &kv_shape, request.mutable_k_descale()},
          {"v", request.mutable_v(), &kv_shape, request.mutable_v_descale()}}) {
      std::normal_distribution<float> normal;
      std::vector<float> values(static_cast<size_t>(NumElements(*shape)));
      for (float& x : values) x = normal(rng);
      absl::StatusOr<E4M3Tensor> quantized = QuantizeTensorE4M3(values, *shape, true);
      if (!quantized.ok()) return quantized.status();
      if (absl::Status s = SetTensor(name, quantized->view(), tensor); !s.ok()) return s;
      if (absl::Status s =
              SetTensor(absl::StrCat(name, "_descale"), quantized->descale_view(), descale);
          !s.ok()) {
        return s;
      }
    }
    return request;
  }
  for (auto [tensor, shape] :
       {std::pair<v1::Tensor*, const std::vector<int64_t>*>{request.mutable_q(), &q_shape},
        {request.mutable_k(), &kv_shape},
        {request.mutable_v(), &kv_shape}}) {
    tensor->set_dtype(*dtype);
    tensor->mutable_shape()->Assign(shape->begin(), shape->end());
    *tensor->mutable_data() = RandomBytes(*dtype, NumElements(*shape), rng);
  }
  return request;
}

absl::StatusOr<v1::AttentionRequest> RequestFromFiles(const std::string& q_path,
                                                      const std::string& k_path,
                                                      const std::string& v_path,
                                                      const ProblemFlags& problem) {
  v1::AttentionRequest request;
  for (const auto& [flag, path, tensor] :
       {std::tuple<const char*, const std::string*, v1::Tensor*>{"q", &q_path, request.mutable_q()},
        {"k", &k_path, request.mutable_k()},
        {"v", &v_path, request.mutable_v()}}) {
    if (path->empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": required without --random"));
    }
    absl::Status status = SetFromNpy(flag, *path, tensor);
    if (!status.ok()) return status;
  }
  if (absl::Status status = problem.ApplyOptions(&request); !status.ok()) return status;
  return request;
}

absl::StatusOr<ProblemShape> ShapeOf(const v1::AttentionRequest& request) {
  ProblemShape s;
  s.packed = request.cu_seqlens_q_size() > 0;
  const int rank = s.packed ? 3 : 4;
  const v1::Tensor& q = request.q();
  const v1::Tensor& k = request.k();
  if (q.shape_size() != rank || k.shape_size() != rank || request.v().shape_size() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("q, k and v must have rank ", rank, s.packed ? " (packed)" : " (dense)"));
  }
  if (s.packed) {
    const auto& cu_q = request.cu_seqlens_q();
    const auto& cu_k = request.cu_seqlens_k();
    if (cu_q.size() < 2 || cu_k.size() != cu_q.size()) {
      return absl::InvalidArgumentError(
          "cu_seqlens_q and cu_seqlens_k need batch + 1 offsets each");
    }
    s.batch = cu_q.size() - 1;
    for (int b = 0; b < s.batch; ++b) {
      s.seqlen_q = std::max<int64_t>(s.seqlen_q, cu_q[b + 1] - cu_q[b]);
      s.seqlen_k = std::max<int64_t>(s.seqlen_k, cu_k[b + 1] - cu_k[b]);
    }
    s.query_tokens = q.shape(0);
  } else {
    s.batch = q.shape(0);
    s.seqlen_q = q.shape(1);
    s.seqlen_k = k.shape(1);
    s.query_tokens = s.batch * s.seqlen_q;
  }
  s.q_heads = q.shape(rank - 2);
  s.kv_heads = k.shape(rank - 2);
  s.head_dim = q.shape(rank - 1);
  return s;
}

namespace {

// The kernel parameters of `request`, its tensors read in place (contiguous strides), options
// and cu_seqlens included; `cu_q` and `cu_k` hold the offsets p points to. UNIMPLEMENTED for a
// mask or ALiBi slopes (not checked by the CLI).
absl::Status LocalParams(const v1::AttentionRequest& request, const ProblemShape& shape,
                         std::vector<int32_t>& cu_q, std::vector<int32_t>& cu_k,
                         AttentionParams& p) {
  const v1::Tensor& q = request.q();
  const bool packed = shape.packed;
  if (request.has_mask() || request.has_alibi_slopes()) {
    return absl::UnimplementedError("check: masks and ALiBi are not checked by the CLI");
  }
  const std::optional<::attention::DType> dtype = KernelDType(q.dtype());
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(
        "check: q.dtype must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT8_E4M3");
  }
  p.dtype = *dtype;
  // FP8 descales: [1] per tensor (head stride 0) or [heads] (head stride 1); the server checked
  // them (an answer came back).
  const auto descale = [](const v1::Tensor& t, const float** factors, int64_t* head_stride) {
    *factors = reinterpret_cast<const float*>(t.data().data());
    *head_stride = t.shape_size() == 1 && t.shape(0) == 1 ? 0 : 1;
  };
  if (request.has_q_descale()) descale(request.q_descale(), &p.q_descale, &p.q_descale_head_stride);
  if (request.has_k_descale()) descale(request.k_descale(), &p.k_descale, &p.k_descale_head_stride);
  if (request.has_v_descale()) descale(request.v_descale(), &p.v_descale, &p.v_descale_head_stride);
  cu_q.assign(request.cu_seqlens_q().begin(), request.cu_seqlens_q().end());
  cu_k.assign(request.cu_seqlens_k().begin(), request.cu_seqlens_k().end());
  p.batch = static_cast<int>(shape.batch);
  p.seqlen_q = static_cast<int>(shape.seqlen_q);
  p.seqlen_k = static_cast<int>(shape.seqlen_k);
  if (packed) {
    p.total_q = q.shape(0);
    p.total_k = request.k().shape(0);
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
  }
  p.q_heads = static_cast<int>(shape.q_heads);
  p.kv_heads = static_cast<int>(shape.kv_heads);
  p.head_dim = static_cast<int>(shape.head_dim);
  p.q = q.data().data();
  p.k = request.k().data().data();
  p.v = request.v().data().data();
  p.softmax_scale = request.has_softmax_scale() ? request.softmax_scale()
                                                : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  p.softcap = request.softcap();
  p.causal = request.causal();
  if (request.has_window()) {
    p.window_left = request.window().left();
    p.window_right = request.window().right();
  }
  if (request.has_sinks()) {
    p.sinks = true;
    p.sink_logits = reinterpret_cast<const float*>(request.sinks().data().data());
  }
  SetContiguousStrides(p);
  return absl::OkStatus();
}

// Query rows times query heads: the lse's element count.
int64_t LseCount(const AttentionParams& p) {
  return int64_t{p.q_heads} * (p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q);
}

// Whether the answer ran on a GPU (a wider tolerance: its own summation order).
bool RanOnGpu(const v1::AttentionResponse& response) {
  return absl::StartsWith(response.batch().device(), "cuda");
}

}  // namespace

absl::StatusOr<CheckResult> CheckWithCpuBackend(const v1::AttentionRequest& request,
                                                const v1::AttentionResponse& response) {
  absl::StatusOr<ProblemShape> shape = ShapeOf(request);
  if (!shape.ok()) return shape.status();
  const v1::Tensor& q = request.q();
  // o has q's dtype, BFLOAT16 for FLOAT8_E4M3 inputs.
  const bool fp8 = q.dtype() == v1::FLOAT8_E4M3;
  const v1::DType o_dtype = fp8 ? v1::BFLOAT16 : q.dtype();
  const size_t o_bytes = q.data().size() / DTypeSize(q.dtype()) * DTypeSize(o_dtype);
  if (response.o().dtype() != o_dtype || response.o().data().size() != o_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("check: o is not ", DTypeName(o_dtype), " of q's shape"));
  }
  AttentionParams p;
  std::vector<int32_t> cu_q, cu_k;
  if (absl::Status s = LocalParams(request, *shape, cu_q, cu_k, p); !s.ok()) return s;
  std::string o(o_bytes, '\0');
  p.o = o.data();
  const int64_t lse_count = LseCount(p);
  std::vector<float> lse;
  if (request.return_lse()) {
    lse.resize(static_cast<size_t>(lse_count));
    p.lse = lse.data();
  }
  Normalize(p);
  cpu::CpuBackend backend;
  absl::Status status = backend.Run(p);
  if (!status.ok()) return status;

  CheckResult result;
  // Float32 requests are judged at the precision the response says they ran at (a server that
  // computed PRECISION_BF16 rounded q, k and v to bfloat16); 16-bit ones at their dtype's, a bit
  // wider on a GPU (its own summation order). FP8 ones at bfloat16's (o's type), and on a GPU at
  // 2^-4, the step of e4m3 to which its FP8 kernel rounds the probabilities P.
  const bool on_gpu = RanOnGpu(response);
  const bool fp32 = q.dtype() == v1::FLOAT32;
  const bool bf16_class =
      q.dtype() == v1::BFLOAT16 || fp8 || (fp32 && response.precision() == v1::PRECISION_BF16);
  const bool tf32 = fp32 && response.precision() == v1::PRECISION_TF32;
  result.tolerance = fp8 && on_gpu ? 6.25e-2
                     : bf16_class  ? (on_gpu ? 2.5e-2 : 1.6e-2)
                     : tf32        ? 5e-3
                     : fp32        ? 1e-4
                     : on_gpu      ? 5e-3
                                   : 2e-3;
  const double lse_tolerance = bf16_class && fp32 ? 2e-2 : tf32 ? 5e-3 : 1e-3;
  const int64_t elements = static_cast<int64_t>(o.size()) / DTypeSize(o_dtype);
  double diff2 = 0, want2 = 0;
  for (int64_t i = 0; i < elements; ++i) {
    const double got = LoadFloat(o_dtype, response.o().data().data(), i);
    const double want = LoadFloat(o_dtype, o.data(), i);
    const double error = std::abs(got - want);
    if (!(error <= result.tolerance * (1 + std::abs(want)))) ++result.mismatches;
    if (error > result.max_abs_error || std::isnan(error)) result.max_abs_error = error;
    diff2 += (got - want) * (got - want);
    want2 += want * want;
  }
  result.relative_l2_error = want2 > 0 ? std::sqrt(diff2 / want2) : std::sqrt(diff2);
  if (request.return_lse()) {
    const v1::Tensor& got_lse = response.lse();
    if (got_lse.dtype() != v1::FLOAT32 ||
        got_lse.data().size() != static_cast<size_t>(lse_count) * 4) {
      return absl::InvalidArgumentError("check: lse is missing or not FLOAT32 of the right size");
    }
    const float* got = reinterpret_cast<const float*>(got_lse.data().data());
    for (int64_t i = 0; i < lse_count; ++i) {
      if (std::isinf(lse[i]) && got[i] == lse[i]) continue;
      const double error = std::abs(double{got[i]} - lse[i]);
      if (!(error <= lse_tolerance + 1e-4 * std::abs(lse[i]))) ++result.mismatches;
      if (error > result.lse_max_abs_error || std::isnan(error)) result.lse_max_abs_error = error;
    }
  }
  return result;
}

absl::StatusOr<v1::AttentionRequest> BackwardRequest(const v1::AttentionRequest& forward,
                                                     const v1::AttentionResponse& answer,
                                                     int64_t seed, bool deterministic) {
  if (forward.q().dtype() == v1::FLOAT8_E4M3) {
    return absl::FailedPreconditionError(
        "backward: FLOAT8_E4M3 inputs are forward only (attention.proto)");
  }
  if (!answer.has_lse() || answer.lse().data().empty()) {
    return absl::FailedPreconditionError(
        "backward: the forward answer has no lse (the server ignored return_lse)");
  }
  if (answer.o().dtype() != forward.q().dtype() ||
      answer.o().data().size() != forward.q().data().size()) {
    return absl::FailedPreconditionError("backward: the forward answer's o does not match q");
  }
  v1::AttentionRequest request = forward;
  request.set_backward(true);
  request.set_return_lse(false);
  request.set_deterministic(deterministic);
  *request.mutable_o() = answer.o();
  *request.mutable_lse() = answer.lse();
  v1::Tensor* grad_o = request.mutable_grad_o();
  grad_o->set_dtype(forward.q().dtype());
  *grad_o->mutable_shape() = forward.q().shape();
  // A stream of its own, apart from q, k and v's (which used `seed` itself).
  std::mt19937_64 rng(static_cast<uint64_t>(seed) ^ 0x9e3779b97f4a7c15ull);
  *grad_o->mutable_data() = RandomBytes(
      forward.q().dtype(),
      static_cast<int64_t>(forward.q().data().size()) / DTypeSize(forward.q().dtype()), rng);
  return request;
}

absl::StatusOr<CheckResult> CheckBackwardWithCpuBackend(const v1::AttentionRequest& request,
                                                        const v1::AttentionResponse& response) {
  absl::StatusOr<ProblemShape> shape = ShapeOf(request);
  if (!shape.ok()) return shape.status();
  const v1::Tensor& q = request.q();
  const v1::Tensor& k = request.k();
  for (const auto& [name, got, like] :
       {std::tuple<const char*, const v1::Tensor*, const v1::Tensor*>{"dq", &response.dq(), &q},
        {"dk", &response.dk(), &k},
        {"dv", &response.dv(), &k}}) {
    if (got->dtype() != like->dtype() || got->data().size() != like->data().size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("check: ", name, " does not have the dtype and size of its input"));
    }
  }
  AttentionBackwardParams p;
  std::vector<int32_t> cu_q, cu_k;
  if (absl::Status s = LocalParams(request, *shape, cu_q, cu_k, p); !s.ok()) return s;
  if (request.o().data().size() != q.data().size() ||
      request.grad_o().data().size() != q.data().size() ||
      request.lse().data().size() != static_cast<size_t>(LseCount(p)) * 4) {
    return absl::InvalidArgumentError("check: o, grad_o or lse do not match q");
  }
  // lse is read as floats: copied out of the message's bytes, which need not be aligned.
  std::vector<float> lse(static_cast<size_t>(LseCount(p)));
  std::memcpy(lse.data(), request.lse().data().data(), lse.size() * 4);
  p.kind = WorkKind::kBackward;
  p.o = const_cast<char*>(request.o().data().data());
  p.lse = lse.data();
  p.do_ = request.grad_o().data().data();
  std::string dq(q.data().size(), '\0'), dk(k.data().size(), '\0'), dv(k.data().size(), '\0');
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  Normalize(p);
  cpu::CpuBackend backend;
  if (absl::Status s = backend.RunBackward(p, [] { return false; }); !s.ok()) return s;

  // The forward's tolerances (CheckResult): a gradient is a few more float32 sums of the same
  // products, and its 16-bit answer one more rounding.
  CheckResult result;
  const bool on_gpu = RanOnGpu(response);
  result.tolerance = q.dtype() == v1::BFLOAT16  ? (on_gpu ? 2.5e-2 : 1.6e-2)
                     : q.dtype() == v1::FLOAT32 ? 1e-4
                     : on_gpu                   ? 5e-3
                                                : 2e-3;
  double diff2 = 0, want2 = 0;
  for (const auto& [got, want] :
       {std::pair<const std::string*, const std::string*>{&response.dq().data(), &dq},
        {&response.dk().data(), &dk},
        {&response.dv().data(), &dv}}) {
    const int64_t elements = static_cast<int64_t>(want->size()) / DTypeSize(q.dtype());
    for (int64_t i = 0; i < elements; ++i) {
      const double g = LoadFloat(q.dtype(), got->data(), i);
      const double w = LoadFloat(q.dtype(), want->data(), i);
      const double error = std::abs(g - w);
      if (!(error <= result.tolerance * (1 + std::abs(w)))) ++result.mismatches;
      if (error > result.max_abs_error || std::isnan(error)) result.max_abs_error = error;
      diff2 += (g - w) * (g - w);
      want2 += w * w;
    }
  }
  result.relative_l2_error = want2 > 0 ? std::sqrt(diff2 / want2) : std::sqrt(diff2);
  return result;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace attention::client::cli
