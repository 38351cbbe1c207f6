// Fuzz target: untrusted bytes -> AttentionRequest parse -> ValidateRequest -> CPU backend, the
// path every request takes through the server, minus gRPC. Built as a libFuzzer binary with
// clang (-fsanitize=fuzzer,address,undefined; tests/fuzz/CMakeLists.txt) and, in every build, as
// a plain program that replays the checked-in corpus (corpus_main.cc).
//
// Besides memory errors and undefined behaviour (the sanitizers), it checks the contract:
//   - the server's parse, which leaves q, k and v's data in gRPC's buffers as spans of the pieces
//     they arrived in (request_wire.h), agrees with protobuf's on every input, the input split
//     into three pieces at points taken from its own bytes;
//   - a rejected request gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with a "field: rule" message;
//   - a validated request runs on the CPU backend without error (validation is the only gate:
//     a backend refusal would reach the user as an error validation should have given);
//   - a validated request whose q, k and v values are finite and within 2^48 (every FLOAT16
//     value; for FLOAT8_E4M3 the dequantized values, code x descale) gets a finite o and an lse
//     without NaN or +inf (CheckFinite passes): the value bounds of server/validation.h keep
//     every score finite, whatever the options;
//   - a validated backward request (AttentionRequest.backward) runs on the CPU backward kernel
//     alone and packed twice into one batch, with the same dq, dk and dv bit for bit (RunBackward);
//   - the same request as the server parsed it (data in pieces) packed into a batch (twice, so
//     that offsets are not zero; alone when it has a mask) through the batcher's packing path
//     (AddJob, SealBatch, the plan's copies, BindParams, WriteAnswer) answers the same o and lse
//     as the request run in place, up to float32 rounding (Agree: the backend may tile a packed
//     launch differently), o only where no partial sum can overflow float32.
// A broken rule prints what broke and aborts, which libFuzzer (and ctest) report as a crash.
//
// Random byte mutations almost never keep a request valid (every tensor's data must hold exactly
// its shape's elements), so the libFuzzer build adds a structure-aware mutator
// (LLVMFuzzerCustomMutator): it parses the input, changes one field as a client could (a
// dimension, a dtype, an offset, an option, a mask, slopes or FP8 descales), usually resizes the
// tensors'
// data to fit the new shapes, and serializes it again; one mutation in four stays byte-level.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "attention/v1/attention.pb.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/dtype.h"
#include "proto/contract_types.h"
#include "server/executor.h"
#include "server/packing.h"
#include "server/plan.h"
#include "server/request_wire.h"
#include "server/service.h"
#include "server/validation.h"

namespace attention::server {
namespace {

// Small limits keep every input cheap to run; the byte-length rules (data must hold every element)
// bound the work by the input size anyway. The answer limit is the server's default.
ValidationLimits FuzzLimits() {
  ValidationLimits limits;
  limits.max_request_tokens = 512;
  limits.max_request_sequences = 32;
  limits.max_heads = 32;
  limits.max_request_work = 1e9;
  return limits;
}

// The magnitude within which every q, k and v value keeps the results finite (server/
// validation.h, Values).
constexpr float kFiniteInputBound = 0x1p48f;

// Floating-point operations above which a validated request is not run (the checks up to
// validation still are): keeps one input under a few milliseconds with the sanitizers.
constexpr double kMaxFlops = 5e7;

cpu::CpuBackend& Backend() {
  // One worker: deterministic and cheap to start. Never destroyed (libFuzzer exits from anywhere).
  static cpu::CpuBackend* backend = [] {
    cpu::CpuBackendOptions options;
    options.num_threads = 1;
    return new cpu::CpuBackend(options);
  }();
  return *backend;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "request_fuzzer: contract broken: %s\n", what.c_str());
  std::abort();
}

// Bytes per element of q, k, v or o of `dtype` (FLOAT32, FLOAT16, BFLOAT16 or FLOAT8_E4M3).
size_t ElementBytes(int dtype) {
  return dtype == v1::FLOAT32 ? 4 : dtype == v1::FLOAT8_E4M3 ? 1 : 2;
}

// Element i of `bytes` holding `dtype` values, as float (an FP8 code's own value, not descaled).
float Element(const std::string& bytes, int dtype, size_t i) {
  if (dtype == v1::FLOAT32) {
    float x;
    std::memcpy(&x, bytes.data() + 4 * i, 4);
    return x;
  }
  if (dtype == v1::FLOAT8_E4M3) return E4M3ToFloat(static_cast<uint8_t>(bytes[i]));
  uint16_t h;
  std::memcpy(&h, bytes.data() + 2 * i, 2);
  return dtype == v1::FLOAT16 ? HalfToFloat(h) : BFloat16ToFloat(h);
}

// The largest of an FP8 tensor's descale factors (`descale`, validated: FLOAT32, finite, > 0),
// 1 when absent or for other dtypes: every dequantized value is at most |code| times it.
float MaxFactor(const v1::Tensor& t, const v1::Tensor& descale) {
  if (t.dtype() != v1::FLOAT8_E4M3 || descale.data().empty()) return 1.f;
  float max = 0.f;
  for (size_t i = 0; i + 4 <= descale.data().size(); i += 4) {
    float factor;
    std::memcpy(&factor, descale.data().data() + i, 4);
    max = std::max(max, factor);
  }
  return max;
}

// The largest finite magnitude among the values of tensor `t` (q, k or v), dequantized by at
// most `factor` (MaxFactor).
float MaxMagnitude(const v1::Tensor& t, float factor = 1.f) {
  const size_t n = t.data().size() / ElementBytes(t.dtype());
  float max = 0.f;
  for (size_t i = 0; i < n; ++i) {
    const float x = std::fabs(Element(t.data(), t.dtype(), i)) * factor;
    if (std::isfinite(x) && x > max) max = x;
  }
  return max;
}

// Whether every value of tensor `t` (q, k or v), dequantized by at most `factor`, is finite and
// within `bound`.
bool AllWithin(const v1::Tensor& t, float bound, float factor = 1.f) {
  const size_t n = t.data().size() / ElementBytes(t.dtype());
  for (size_t i = 0; i < n; ++i) {
    if (!(std::fabs(Element(t.data(), t.dtype(), i)) * factor <= bound)) return false;
  }
  return true;
}

// Whether two computations of the same outputs agree. A packed launch may tile a request
// differently from a launch of its own (the CPU backend picks its query block per launch), which
// changes float32 rounding: allowed are 1e-5 relative to `scale` + |value| (scale: the largest
// |v|, which bounds o; 1 for lse), plus one unit in the last place of a 16-bit output type.
// Non-finite values must match in kind (both NaN, or the same infinity). On a difference, prints
// the first differing element.
bool Agree(const std::string& a, const std::string& b, int dtype, float scale) {
  if (a.size() != b.size()) {
    std::fprintf(stderr, "request_fuzzer: %zu bytes vs %zu\n", a.size(), b.size());
    return false;
  }
  if (a == b) return true;
  const size_t n = a.size() / ElementBytes(dtype);
  const float ulp16 = dtype == v1::FLOAT16 ? 0x1p-10f : dtype == v1::BFLOAT16 ? 0x1p-7f : 0.f;
  for (size_t i = 0; i < n; ++i) {
    const float x = Element(a, dtype, i), y = Element(b, dtype, i);
    bool ok = false;
    if (std::isnan(x) || std::isnan(y)) {
      ok = std::isnan(x) && std::isnan(y);
    } else if (std::isinf(x) || std::isinf(y)) {
      ok = x == y;
    } else {
      const float magnitude = std::max(std::fabs(x), std::fabs(y));
      ok = std::fabs(x - y) <= 1e-5f * (scale + magnitude) + ulp16 * magnitude;
    }
    if (!ok) {
      std::fprintf(stderr, "request_fuzzer: element %zu: %.9g vs %.9g\n", i, x, y);
      return false;
    }
  }
  return true;
}

std::unique_ptr<Job> MakeJob(const v1::AttentionRequest& request, const ValidationLimits& limits,
                             const TensorData* data = nullptr) {
  absl::StatusOr<RequestSpec> spec = ValidateRequest(request, limits, data);
  if (!spec.ok()) Fail("a request validated once failed a second validation");
  auto job = std::make_unique<Job>();
  job->request = &request;
  job->q_header = &request.q();
  job->spec = std::move(*spec);
  return job;
}

// What happened to one input (AttentionFuzzRun's result).
enum Outcome { kNotAProto = 0, kRejected = 1, kRan = 2, kTooLargeToRun = 3 };

std::string Join(const TensorPieces& spans) {
  std::string s;
  for (const absl::string_view span : spans) s.append(span.data(), span.size());
  return s;
}

// The server's own parse of the input split into three pieces: it must agree with protobuf's
// (`protobuf_ok`, `want`) on accept / reject, the data bytes and the rest of the message.
void CheckWireParse(const WirePieces& pieces, bool protobuf_ok, const v1::AttentionRequest& want,
                    v1::AttentionRequest* got, TensorData* spans) {
  const bool ok = ParseWithoutTensorData(pieces, got, spans);
  if (ok != protobuf_ok) Fail(std::string("wire parse accepts: ") + (ok ? "yes" : "no"));
  if (!ok) return;
  if (Join(spans->q) != want.q().data() || Join(spans->k) != want.k().data() ||
      Join(spans->v) != want.v().data()) {
    Fail("wire parse found other q / k / v data than protobuf");
  }
  v1::AttentionRequest whole = *got;
  if (whole.has_q()) whole.mutable_q()->set_data(Join(spans->q));
  if (whole.has_k()) whole.mutable_k()->set_data(Join(spans->k));
  if (whole.has_v()) whole.mutable_v()->set_data(Join(spans->v));
  if (whole.SerializeAsString() != want.SerializeAsString()) {
    Fail("wire parse and protobuf disagree on the message");
  }
}

// Runs `batch` (sealed, kind kBackward) as the CPU executor does: staged by the plan's copies,
// the backward kernel, the output copies; then answers each job as the service does.
std::vector<v1::AttentionResponse> RunBackwardBatch(Batch& batch) {
  AllocateOutputs(batch);
  const BatchLayout& layout = batch.plan.layout;
  std::vector<char> staging(static_cast<size_t>(layout.total_bytes()));
  std::vector<HostCopy> host_copies;
  AppendInputCopies(batch, staging.data(), &host_copies);
  RunCopies(host_copies);
  char* outputs = staging.data() + layout.input_bytes;
  AttentionBackwardParams p;
  static_cast<AttentionParams&>(p) = BindParams(batch.plan, staging.data(), outputs);
  const BackwardBuffers buffers = BindBackward(batch.plan, staging.data(), outputs);
  p.do_ = buffers.grad_o;
  p.dq = buffers.dq;
  p.dk = buffers.dk;
  p.dv = buffers.dv;
  const absl::Status status = Backend().RunBackward(p, [] { return false; });
  if (!status.ok()) Fail("CPU backend refused a validated backward batch: " + status.ToString());
  host_copies.clear();
  AppendOutputCopies(batch, outputs, &host_copies);
  RunCopies(host_copies);
  std::vector<v1::AttentionResponse> answers(batch.jobs.size());
  for (size_t i = 0; i < batch.jobs.size(); ++i) WriteAnswer(*batch.jobs[i], &answers[i]);
  return answers;
}

// A validated backward request: alone in a batch, then (as the server parsed it, data in pieces)
// twice in one packed batch (alone when it has a mask). Every answer has dq, dk and dv of the
// right dtype and size and no o or lse, and the packed copies equal the lone run bit for bit (the
// backward kernel's sums run in a fixed order per sequence, whatever else the launch holds).
// Finiteness is not checked: lse is the client's, and one below the row's true log-sum-exp makes
// e^(s - lse) overflow.
Outcome RunBackward(const v1::AttentionRequest& request, const v1::AttentionRequest& wire_request,
                    const TensorData& wire_data, const RequestSpec& spec) {
  const ValidationLimits limits = FuzzLimits();
  Batch single;
  AddJob(single, MakeJob(request, limits));
  SealBatch(single);
  const v1::AttentionResponse alone = RunBackwardBatch(single).front();
  const int copies = spec.mask_kind != MaskKind::kNone ? 1 : 2;
  Batch batch;
  for (int i = 0; i < copies; ++i) AddJob(batch, MakeJob(wire_request, limits, &wire_data));
  SealBatch(batch);
  for (const v1::AttentionResponse& r : RunBackwardBatch(batch)) {
    if (r.has_o() || r.has_lse()) Fail("a backward answer holds o or lse");
    if (r.dq().data().size() != static_cast<size_t>(spec.q_bytes) ||
        r.dk().data().size() != static_cast<size_t>(spec.kv_bytes) ||
        r.dv().data().size() != static_cast<size_t>(spec.kv_bytes)) {
      Fail("a backward answer's dq, dk or dv has the wrong size");
    }
    if (r.dq().dtype() != request.q().dtype() || r.dk().dtype() != request.q().dtype()) {
      Fail("a backward answer's dtype is not q's");
    }
    if (r.dq().data() != alone.dq().data() || r.dk().data() != alone.dk().data() ||
        r.dv().data() != alone.dv().data()) {
      Fail("packed dq, dk or dv differ from the request run alone");
    }
  }
  return kRan;
}

Outcome RunOne(const uint8_t* data, size_t size) {
  v1::AttentionRequest request;
  const bool parsed = request.ParseFromArray(data, static_cast<int>(size));
  const char* bytes = reinterpret_cast<const char*>(data);
  size_t a = size == 0 ? 0 : data[0] % (size + 1);
  size_t b = size == 0 ? 0 : data[size - 1] * 257u % (size + 1);
  if (a > b) std::swap(a, b);
  const WirePieces pieces = {{bytes, a}, {bytes + a, b - a}, {bytes + b, size - b}};
  v1::AttentionRequest wire_request;
  TensorData wire_data;
  CheckWireParse(pieces, parsed, request, &wire_request, &wire_data);
  if (!parsed) return kNotAProto;
  const ValidationLimits limits = FuzzLimits();
  absl::StatusOr<RequestSpec> spec = ValidateRequest(request, limits);
  if (!spec.ok()) {
    const absl::Status& s = spec.status();
    if (!absl::IsInvalidArgument(s) && !absl::IsResourceExhausted(s)) {
      Fail("validation answered " + s.ToString());
    }
    if (!absl::StrContains(s.message(), ": ")) {
      Fail("validation message names no field: " + std::string(s.message()));
    }
    return kRejected;
  }
  if (spec->flops() > kMaxFlops) return kTooLargeToRun;
  if (spec->kind == WorkKind::kBackward)
    return RunBackward(request, wire_request, wire_data, *spec);

  // In place, as the CPU executor runs a batch of one; answered as the service answers.
  v1::AttentionResponse single;
  {
    Batch batch;
    AddJob(batch, MakeJob(request, limits));
    SealBatch(batch);
    AllocateOutputs(batch);
    std::vector<char> gathered;
    const absl::Status status = Backend().Run(InPlaceParams(batch, &gathered));
    if (!status.ok()) Fail("CPU backend refused a validated request: " + status.ToString());
    const absl::Status finite = CheckFinite(*batch.jobs[0]);
    if (!finite.ok() &&
        AllWithin(request.q(), kFiniteInputBound, MaxFactor(request.q(), request.q_descale())) &&
        AllWithin(request.k(), kFiniteInputBound, MaxFactor(request.k(), request.k_descale())) &&
        AllWithin(request.v(), kFiniteInputBound, MaxFactor(request.v(), request.v_descale()))) {
      Fail("inputs within the value bounds gave a non-finite result: " + finite.ToString());
    }
    WriteAnswer(*batch.jobs[0], &single);
  }

  // Packed, as the batcher and every executor run a batch of several: the plan's copies in,
  // the kernel, the plan's copies out.
  const bool masked = spec->mask_kind != MaskKind::kNone;
  const int copies = masked ? 1 : 2;
  std::vector<v1::AttentionResponse> packed(static_cast<size_t>(copies));
  Batch batch;
  for (int i = 0; i < copies; ++i) AddJob(batch, MakeJob(wire_request, limits, &wire_data));
  SealBatch(batch);
  AllocateOutputs(batch);
  const BatchLayout& layout = batch.plan.layout;
  std::vector<char> staging(static_cast<size_t>(layout.total_bytes()));
  std::vector<HostCopy> host_copies;
  AppendInputCopies(batch, staging.data(), &host_copies);
  RunCopies(host_copies);
  char* outputs = staging.data() + layout.input_bytes;
  const absl::Status status = Backend().Run(BindParams(batch.plan, staging.data(), outputs));
  if (!status.ok()) Fail("CPU backend refused a packed batch: " + status.ToString());
  host_copies.clear();
  AppendOutputCopies(batch, outputs, &host_copies);
  RunCopies(host_copies);
  for (int i = 0; i < copies; ++i) WriteAnswer(*batch.jobs[static_cast<size_t>(i)], &packed[i]);

  const int dtype = single.o().dtype();  // q's, BFLOAT16 for FLOAT8_E4M3
  const float v_scale = MaxMagnitude(request.v(), MaxFactor(request.v(), request.v_descale()));
  // o sums up to total_k products p * v with p <= 1: below this bound no partial sum can overflow
  // float32. Above it, whether one overflows depends on the order of the sums (a tiling choice),
  // so the two computations may legitimately differ (an infinity against a finite value).
  const bool o_comparable = v_scale * static_cast<float>(spec->total_k + 1) < 1e37f;
  for (const v1::AttentionResponse& r : packed) {
    if (o_comparable && !Agree(r.o().data(), single.o().data(), dtype, v_scale)) {
      Fail("packed o differs from the request run in place");
    }
    if (r.o().shape_size() != single.o().shape_size() || r.o().dtype() != single.o().dtype()) {
      Fail("packed o header differs from the request run in place");
    }
    if (request.return_lse() && !Agree(r.lse().data(), single.lse().data(), v1::FLOAT32, 1.f)) {
      Fail("packed lse differs from the request run in place");
    }
    if (!request.return_lse() && r.has_lse()) Fail("lse returned without return_lse");
  }
  return kRan;
}

#ifdef ATTN_LIBFUZZER
// Resizes `t`'s data to its shape's elements (when small enough), keeping existing bytes and
// filling new ones from `rng`.
void FitData(v1::Tensor* t, std::mt19937& rng) {
  uint64_t elements = 1;
  for (int64_t d : t->shape()) {
    if (d < 0 || d > 4096) return;
    elements *= static_cast<uint64_t>(d);
    if (elements > 65536) return;
  }
  const size_t bytes = elements * static_cast<size_t>(ContractDTypeSize(t->dtype()));
  std::string* data = t->mutable_data();
  const size_t old = data->size();
  data->resize(bytes);
  for (size_t i = old; i < bytes; ++i) (*data)[i] = static_cast<char>(rng() % 7 == 0 ? 0 : rng());
}

// A small dimension, mostly 1..8, sometimes an edge value.
int64_t SmallDim(std::mt19937& rng) {
  static const int64_t kEdges[] = {0, -1, 16, 17, 31, 64, 127, 128, 256, 257};
  return rng() % 8 == 0 ? kEdges[rng() % 10] : 1 + static_cast<int64_t>(rng() % 8);
}

// One structural change to `r`, as a client could make.
void MutateRequest(v1::AttentionRequest& r, std::mt19937& rng) {
  v1::Tensor* tensors[] = {r.mutable_q(), r.mutable_k(), r.mutable_v()};
  switch (rng() % 16) {
    case 0: {  // one dimension of q, k or v
      v1::Tensor* t = tensors[rng() % 3];
      if (t->shape_size() > 0)
        t->set_shape(static_cast<int>(rng() % t->shape_size()), SmallDim(rng));
      break;
    }
    case 1: {  // the same dimension of q, k and v (head_dim, heads, batch)
      const int64_t d = SmallDim(rng);
      const int axis = static_cast<int>(rng() % 4);
      for (v1::Tensor* t : tensors) {
        if (axis < t->shape_size()) t->set_shape(axis, d);
      }
      break;
    }
    case 2: {  // every dtype at once
      const v1::DType dtypes[] = {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16, v1::FLOAT8_E4M3};
      const v1::DType dtype = dtypes[rng() % 4];
      for (v1::Tensor* t : tensors) t->set_dtype(dtype);
      break;
    }
    case 3:  // dense <-> packed
      if (r.cu_seqlens_q_size() > 0) {
        r.clear_cu_seqlens_q();
        r.clear_cu_seqlens_k();
        for (v1::Tensor* t : tensors) {
          auto* shape = t->mutable_shape();
          shape->Clear();
          for (int i = 0; i < 4; ++i) shape->Add(1 + static_cast<int64_t>(rng() % 4));
        }
      } else {
        for (v1::Tensor* t : tensors) {
          auto* shape = t->mutable_shape();
          if (shape->size() == 4) {
            int64_t rows = 0;
            if (__builtin_mul_overflow(shape->Get(0), shape->Get(1), &rows)) rows = -1;
            shape->erase(shape->begin());
            shape->Set(0, rows);
          }
        }
        const int64_t total_q = r.q().shape_size() > 0 ? r.q().shape(0) : 0;
        const int64_t total_k = r.k().shape_size() > 0 ? r.k().shape(0) : 0;
        // Unsigned: a dimension of INT64_MAX must not overflow the + 1.
        const int64_t cut_q =
            total_q > 0 ? static_cast<int64_t>(rng() % (static_cast<uint64_t>(total_q) + 1)) : 0;
        const int64_t cut_k =
            total_k > 0 ? static_cast<int64_t>(rng() % (static_cast<uint64_t>(total_k) + 1)) : 0;
        for (int64_t v : {int64_t{0}, cut_q, total_q}) r.add_cu_seqlens_q(static_cast<int32_t>(v));
        for (int64_t v : {int64_t{0}, cut_k, total_k}) r.add_cu_seqlens_k(static_cast<int32_t>(v));
      }
      break;
    case 4:  // one offset
      if (r.cu_seqlens_q_size() > 0) {
        auto* cu = rng() % 2 == 0 ? r.mutable_cu_seqlens_q() : r.mutable_cu_seqlens_k();
        if (cu->size() > 0) {
          const int i = static_cast<int>(rng() % cu->size());
          // In 64 bits and clamped: an offset near INT32_MIN or INT32_MAX must not overflow
          // here (UBSan stopped run E on it), the server's own checks see the extreme values.
          const int64_t moved = int64_t{cu->Get(i)} + static_cast<int64_t>(rng() % 5) - 2;
          cu->Set(i, static_cast<int32_t>(
                         std::clamp<int64_t>(moved, std::numeric_limits<int32_t>::min(),
                                             std::numeric_limits<int32_t>::max())));
        }
      }
      break;
    case 5:
      r.set_causal(!r.causal());
      break;
    case 6:
      r.mutable_window()->set_left(static_cast<int32_t>(rng() % 12) - 2);
      r.mutable_window()->set_right(static_cast<int32_t>(rng() % 12) - 2);
      break;
    case 7:
      r.set_softcap(rng() % 3 == 0 ? 0.f : static_cast<float>(rng() % 5000) / 100.f);
      break;
    case 8:
      if (rng() % 3 == 0) {
        r.clear_softmax_scale();
      } else {
        r.set_softmax_scale(static_cast<float>(static_cast<int>(rng() % 400) - 100) / 100.f);
      }
      break;
    case 9:
      r.set_return_lse(!r.return_lse());
      break;
    case 10: {  // ALiBi slopes: none, [q_heads], [batch, q_heads]
      const int rank = static_cast<int>(rng() % 3);
      if (rank == 0 || r.q().shape_size() < 3) {
        r.clear_alibi_slopes();
        break;
      }
      const int q_rank = r.q().shape_size();
      const int64_t heads = r.q().shape(q_rank - 2);
      const int64_t batch = r.cu_seqlens_q_size() > 0 ? r.cu_seqlens_q_size() - 1 : r.q().shape(0);
      v1::Tensor* a = r.mutable_alibi_slopes();
      a->set_dtype(v1::FLOAT32);
      a->clear_shape();
      if (rank == 2) a->add_shape(batch);
      a->add_shape(heads);
      a->clear_data();
      FitData(a, rng);
      break;
    }
    case 11: {  // a mask of some rank, broadcast dimensions, dtype
      if (rng() % 4 == 0) {
        r.clear_mask();
        break;
      }
      const v1::DType dtypes[] = {v1::BOOL, v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16};
      v1::Tensor* m = r.mutable_mask();
      m->set_dtype(dtypes[rng() % 4]);
      m->clear_shape();
      const int rank = 2 + static_cast<int>(rng() % 3);
      for (int i = 0; i < rank; ++i) m->add_shape(rng() % 3 == 0 ? 1 : SmallDim(rng));
      m->clear_data();
      FitData(m, rng);
      break;
    }
    case 12: {  // a few bytes of tensor data (values: NaN, infinities, denormals, large)
      v1::Tensor* t = tensors[rng() % 3];
      std::string* data = t->mutable_data();
      if (!data->empty()) (*data)[rng() % data->size()] = static_cast<char>(rng());
      break;
    }
    case 13:  // forward <-> backward (o, lse and grad_o shaped below), deterministic or not
      r.set_backward(!r.backward());
      if (rng() % 2 == 0) r.set_deterministic(!r.deterministic());
      if (!r.backward() && rng() % 2 == 0) {
        r.clear_o();
        r.clear_lse();
        r.clear_grad_o();
      }
      break;
    case 14: {  // an FP8 descale: absent, [1], [heads] or another size; factors of any value
      v1::Tensor* descales[] = {r.mutable_q_descale(), r.mutable_k_descale(),
                                r.mutable_v_descale()};
      const int which = static_cast<int>(rng() % 3);
      if (rng() % 4 == 0) {
        (which == 0 ? r.clear_q_descale() : which == 1 ? r.clear_k_descale() : r.clear_v_descale());
        break;
      }
      const v1::Tensor& like = which == 0 ? r.q() : r.k();
      const int64_t heads = like.shape_size() >= 2 ? like.shape(like.shape_size() - 2) : 1;
      v1::Tensor* d = descales[which];
      d->set_dtype(rng() % 8 == 0 ? v1::FLOAT16 : v1::FLOAT32);
      d->clear_shape();
      d->add_shape(rng() % 2 == 0 ? 1 : rng() % 4 == 0 ? SmallDim(rng) : heads);
      d->clear_data();
      FitData(d, rng);
      // Mostly sensible factors (2^-12 .. 2^4), sometimes 0, negative, huge or NaN (random bytes).
      if (d->dtype() == v1::FLOAT32 && rng() % 4 != 0) {
        std::string* data = d->mutable_data();
        for (size_t i = 0; i + 4 <= data->size(); i += 4) {
          const float factor = std::ldexp(1.f, static_cast<int>(rng() % 17) - 12);
          std::memcpy(data->data() + i, &factor, 4);
        }
      }
      break;
    }
    default:  // kv_heads: a divisor of q_heads or not
      if (r.k().shape_size() >= 3 && r.v().shape_size() == r.k().shape_size()) {
        const int axis = r.k().shape_size() - 2;
        const int64_t kv = 1 + static_cast<int64_t>(rng() % 4);
        r.mutable_k()->set_shape(axis, kv);
        r.mutable_v()->set_shape(axis, kv);
      }
      break;
  }
  if (rng() % 8 != 0) {
    for (v1::Tensor* t : tensors) FitData(t, rng);
    if (r.has_mask() && rng() % 2 == 0) FitData(r.mutable_mask(), rng);
    if (r.backward()) {
      // o and grad_o as q, lse FLOAT32 in the forward's lse shape (dense [batch, q_heads,
      // seqlen_q], packed [q_heads, total_q]).
      for (v1::Tensor* t : {r.mutable_o(), r.mutable_grad_o()}) {
        t->set_dtype(r.q().dtype());
        *t->mutable_shape() = r.q().shape();
        FitData(t, rng);
      }
      const int rank = r.q().shape_size();
      v1::Tensor* lse = r.mutable_lse();
      lse->set_dtype(v1::FLOAT32);
      lse->clear_shape();
      if (rank == 4) {
        for (int axis : {0, 2, 1}) lse->add_shape(r.q().shape(axis));
      } else if (rank == 3) {
        lse->add_shape(r.q().shape(1));
        lse->add_shape(r.q().shape(0));
      }
      FitData(lse, rng);
    }
  }
}
#endif  // ATTN_LIBFUZZER

}  // namespace
}  // namespace attention::server

#ifdef ATTN_LIBFUZZER
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  std::mt19937 rng(seed);
  attention::v1::AttentionRequest request;
  if (rng() % 4 == 0 || !request.ParseFromArray(data, static_cast<int>(size))) {
    return LLVMFuzzerMutate(data, size, max_size);
  }
  attention::server::MutateRequest(request, rng);
  const std::string bytes = request.SerializeAsString();
  if (bytes.size() > max_size) return LLVMFuzzerMutate(data, size, max_size);
  std::memcpy(data, bytes.data(), bytes.size());
  return bytes.size();
}
#endif  // ATTN_LIBFUZZER

// The outcome of one input: 0 not an AttentionRequest, 1 rejected by validation, 2 validated and
// run, 3 validated but above the fuzzer's work bound. Used by the corpus replay to check that each
// seed still does what its name says.
extern "C" int AttentionFuzzRun(const uint8_t* data, size_t size) {
  return attention::server::RunOne(data, size);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  AttentionFuzzRun(data, size);
  return 0;
}
