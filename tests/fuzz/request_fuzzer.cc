// Fuzz target: untrusted bytes -> AttentionRequest parse -> ValidateRequest -> CPU backend, the
// path every request takes through the server, minus gRPC. Built as a libFuzzer binary with
// clang (-fsanitize=fuzzer,address,undefined; tests/fuzz/CMakeLists.txt) and, in every build, as
// a plain program that replays the checked-in corpus (corpus_main.cc).
//
// Besides memory errors and undefined behaviour (the sanitizers), it checks the contract:
//   - a rejected request gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with a "field: rule" message;
//   - a validated request runs on the CPU backend without error (validation is the only gate:
//     a backend refusal would reach the user as an error validation should have given);
//   - the same request packed into a batch (twice, so that offsets are not zero; alone when it has
//     a mask) through the batcher's packing path (AddJob, SealBatch, StageInputs, MakeBatchParams,
//     ScatterOutputs) answers the same o and lse bytes as the request run in place.
// A broken rule prints what broke and aborts, which libFuzzer (and ctest) report as a crash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "attention/v1/attention.pb.h"
#include "kernels/cpu/attention_cpu.h"
#include "server/executor.h"
#include "server/packing.h"
#include "server/validation.h"

namespace attention::server {
namespace {

// Small limits keep every input cheap to run; the byte-length rules (data must hold every element)
// bound the work by the input size anyway.
ValidationLimits FuzzLimits() {
  ValidationLimits limits;
  limits.max_request_tokens = 512;
  limits.max_request_sequences = 32;
  limits.max_heads = 32;
  return limits;
}

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

// Equal bytes, or equal as values of `dtype` where both are NaN (a NaN's payload may differ).
bool SameOutput(const std::string& a, const std::string& b, size_t element_size) {
  if (a.size() != b.size()) return false;
  if (a == b) return true;
  for (size_t i = 0; i + element_size <= a.size(); i += element_size) {
    if (std::memcmp(a.data() + i, b.data() + i, element_size) == 0) continue;
    if (element_size == 4) {
      float x, y;
      std::memcpy(&x, a.data() + i, 4);
      std::memcpy(&y, b.data() + i, 4);
      if (std::isnan(x) && std::isnan(y)) continue;
    } else {
      uint16_t x, y;
      std::memcpy(&x, a.data() + i, 2);
      std::memcpy(&y, b.data() + i, 2);
      // NaN in both float16 (exponent 0x7c00, mantissa != 0) or both bfloat16 (0x7f80, != 0):
      // the dtype is one of the two, and each test holds only for a NaN of that dtype.
      const bool half_nan =
          (x & 0x7c00) == 0x7c00 && (x & 0x3ff) != 0 && (y & 0x7c00) == 0x7c00 && (y & 0x3ff) != 0;
      const bool bf16_nan =
          (x & 0x7f80) == 0x7f80 && (x & 0x7f) != 0 && (y & 0x7f80) == 0x7f80 && (y & 0x7f) != 0;
      if (half_nan || bf16_nan) continue;
    }
    return false;
  }
  return true;
}

std::unique_ptr<Job> MakeJob(const v1::AttentionRequest& request, v1::AttentionResponse* response,
                             const ValidationLimits& limits) {
  absl::StatusOr<RequestSpec> spec = ValidateRequest(request, limits);
  if (!spec.ok()) Fail("a request validated once failed a second validation");
  auto job = std::make_unique<Job>();
  job->request = &request;
  job->response = response;
  job->spec = std::move(*spec);
  return job;
}

// What happened to one input (AttentionFuzzRun's result).
enum Outcome { kNotAProto = 0, kRejected = 1, kRan = 2, kTooLargeToRun = 3 };

Outcome RunOne(const uint8_t* data, size_t size) {
  v1::AttentionRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return kNotAProto;
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

  // In place, as the CPU executor runs a batch of one.
  v1::AttentionResponse single;
  {
    std::unique_ptr<Job> job = MakeJob(request, &single, limits);
    char* o = nullptr;
    float* lse = nullptr;
    SizeJobOutputs(*job, &o, &lse);
    const absl::Status status = Backend().Run(MakeJobParams(*job, o, lse));
    if (!status.ok()) Fail("CPU backend refused a validated request: " + status.ToString());
  }

  // Packed, as the batcher and every executor run a batch of several.
  const bool masked = spec->mask_kind != MaskKind::kNone;
  const int copies = masked ? 1 : 2;
  std::vector<v1::AttentionResponse> packed(static_cast<size_t>(copies));
  Batch batch;
  for (int i = 0; i < copies; ++i) AddJob(batch, MakeJob(request, &packed[i], limits));
  SealBatch(batch);
  std::vector<char> staging(static_cast<size_t>(batch.layout.total_bytes()));
  StageInputs(batch, staging.data());
  char* outputs = staging.data() + batch.layout.input_bytes;
  const absl::Status status = Backend().Run(MakeBatchParams(batch, staging.data(), outputs));
  if (!status.ok()) Fail("CPU backend refused a packed batch: " + status.ToString());
  ScatterOutputs(batch, outputs);

  const size_t element_size = request.q().dtype() == v1::FLOAT32 ? 4 : 2;
  for (const v1::AttentionResponse& r : packed) {
    if (!SameOutput(r.o().data(), single.o().data(), element_size)) {
      Fail("packed o differs from the request run in place");
    }
    if (r.o().shape_size() != single.o().shape_size() || r.o().dtype() != single.o().dtype()) {
      Fail("packed o header differs from the request run in place");
    }
    if (request.return_lse() && !SameOutput(r.lse().data(), single.lse().data(), 4)) {
      Fail("packed lse differs from the request run in place");
    }
    if (!request.return_lse() && r.has_lse()) Fail("lse returned without return_lse");
  }
  return kRan;
}

}  // namespace
}  // namespace attention::server

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
