// attention_cli call: one Attention call with inputs from .npy files or random ones; writes o
// (and lse) as .npy and optionally checks o against the local CPU backend. With --backward, the
// forward (with lse) and then AttentionBackward with a random grad_o: dq, dk and dv.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attention/client/npy.h"
#include "client/cli/commands.h"
#include "client/cli/common.h"

namespace attention::client::cli {
namespace {

constexpr char kUsage[] =
    "Usage: attention_cli call --target=HOST:PORT\n"
    "           (--q=q.npy --k=k.npy --v=v.npy [--cu_seqlens_q=0,5,12 --cu_seqlens_k=0,7,15]\n"
    "            | --random [--batch=1 --seqlen=128 --heads=16 --head_dim=64 --dtype=bf16 ...])\n"
    "           [--causal --window_left=N --window_right=N --softcap=X --softmax_scale=X]\n"
    "           [--out=o.npy] [--return_lse --lse_out=lse.npy] [--check] [--timeout_ms=N]\n"
    "           [--save_inputs=PREFIX] [--backward [--deterministic] [--grad_out=PREFIX]]\n"
    "\n"
    "Sends one request and prints the answer's shape and the server's timings. bf16 .npy files\n"
    "hold the raw 16-bit patterns as '<u2' (x.view(np.uint16) in NumPy). --check recomputes\n"
    "the answer with the local CPU backend and fails (exit 1) beyond the dtype's tolerance.\n"
    "--backward then sends AttentionBackward for the answer (the forward asks for lse) with a\n"
    "random grad_o and prints dq, dk and dv; --check then checks them too.";

void PrintMs(const char* name, int64_t ns) { std::printf("  %-10s %10.3f ms\n", name, ns * 1e-6); }

void PrintTimings(const char* label, const v1::AttentionResponse& response,
                  std::chrono::steady_clock::duration latency) {
  std::printf("%slatency: %.3f ms (client)\n", label,
              std::chrono::duration<double, std::milli>(latency).count());
  const v1::Timings& t = response.timings();
  std::printf("%sserver timings:\n", label);
  PrintMs("queue", t.queue_ns());
  PrintMs("transfer", t.transfer_ns());
  PrintMs("kernel", t.kernel_ns());
  PrintMs("total", t.total_ns());
  std::printf("%sbatch: %d requests, %d sequences, %lld query tokens on %s\n", label,
              response.batch().requests(), response.batch().sequences(),
              static_cast<long long>(response.batch().tokens_q()),
              response.batch().device().c_str());
}

// Prints the check's result; returns whether it passed.
bool ReportCheck(const char* what, const CheckResult& result, bool with_lse) {
  std::printf("check %sagainst the local CPU backend: max abs error %.3g, relative L2 error %.3g",
              what, result.max_abs_error, result.relative_l2_error);
  if (with_lse) std::printf(", lse max abs error %.3g", result.lse_max_abs_error);
  std::printf("\n");
  if (result.mismatches > 0) {
    std::printf("check FAILED: %lld elements beyond tolerance %g * (1 + |want|)\n",
                static_cast<long long>(result.mismatches), result.tolerance);
    return false;
  }
  std::printf("check passed (tolerance %g * (1 + |want|))\n", result.tolerance);
  return true;
}

// The backward step of `call --backward`: AttentionBackward for `forward`'s answer, dq, dk and
// dv printed (and written, and checked). Returns the exit code.
int CallBackward(const Client& client, const CallOptions& call, const v1::AttentionRequest& forward,
                 const v1::AttentionResponse& answer, int64_t seed, bool deterministic,
                 const std::string& grad_out, bool check) {
  absl::StatusOr<v1::AttentionRequest> request =
      BackwardRequest(forward, answer, seed, deterministic);
  if (!request.ok()) return Fail(request.status());
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<v1::AttentionResponse> response = client.AttentionBackward(*request, call);
  const auto latency = std::chrono::steady_clock::now() - start;
  if (!response.ok()) {
    return Fail(absl::Status(response.status().code(),
                             absl::StrCat("AttentionBackward: ", response.status().message())));
  }
  for (const auto& [name, tensor] :
       {std::pair<const char*, const v1::Tensor*>{"dq", &response->dq()},
        {"dk", &response->dk()},
        {"dv", &response->dv()}}) {
    absl::StatusOr<TensorView> view = ViewTensor(*tensor);
    if (!view.ok()) return Fail(view.status());
    std::printf("%s: %s [%s]\n", name, DTypeName(view->dtype),
                absl::StrJoin(view->shape, ", ").c_str());
    if (!grad_out.empty()) {
      const std::string path = grad_out + name + ".npy";
      if (absl::Status status = WriteNpy(path, *view); !status.ok()) return Fail(status);
      std::printf("wrote %s\n", path.c_str());
    }
  }
  PrintTimings("backward ", *response, latency);
  if (check) {
    absl::StatusOr<CheckResult> result = CheckBackwardWithCpuBackend(*request, *response);
    if (!result.ok()) return Fail(result.status());
    if (!ReportCheck("of dq, dk, dv ", *result, false)) return 1;
  }
  return 0;
}

}  // namespace

int CallCommand(const std::vector<std::string>& args) {
  ConnectionFlags connection;
  ProblemFlags problem;
  std::string q, k, v, out, lse_out, save_inputs, grad_out;
  bool random = false, check = false, backward = false, deterministic = false;
  int64_t timeout_ms = 0;
  FlagSet flags(kUsage);
  connection.Register(flags);
  flags.Add("q", &q,
            "q as .npy: [batch, seqlen_q, heads, head_dim] or packed [total_q, heads, "
            "head_dim]");
  flags.Add("k", &k, "k as .npy, laid out as q with seqlen_k and kv_heads");
  flags.Add("v", &v, "v as .npy, shaped as k");
  flags.Add("random", &random, "Random inputs shaped by the shape flags instead of files");
  flags.Add(
      "save_inputs", &save_inputs,
      "Write the inputs as PREFIXq.npy, PREFIXk.npy, PREFIXv.npy (e.g. --save_inputs=/tmp/a_)");
  problem.Register(flags, /*with_shape=*/true);
  flags.Add("out", &out, "Write o here as .npy");
  flags.Add("lse_out", &lse_out, "Write lse here as .npy (with --return_lse)");
  flags.Add("check", &check, "Compare o (and lse) with the local CPU backend");
  flags.Add("timeout_ms", &timeout_ms, "Deadline of the call (0: none)");
  flags.Add("backward", &backward,
            "Then the backward pass: AttentionBackward with the answer's o and lse and a random "
            "grad_o (--seed); prints dq, dk, dv");
  flags.Add("deterministic", &deterministic,
            "With --backward: ask for bit-identical gradients (AttentionRequest.deterministic)");
  flags.Add("grad_out", &grad_out,
            "With --backward: write PREFIXdq.npy, PREFIXdk.npy, PREFIXdv.npy");
  if (absl::Status status = flags.Parse(args); !status.ok()) return Fail(status);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (!lse_out.empty() && !problem.return_lse) {
    return Fail(absl::InvalidArgumentError("--lse_out: needs --return_lse"));
  }
  if (!backward && (deterministic || !grad_out.empty())) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--", deterministic ? "deterministic" : "grad_out", ": needs --backward")));
  }
  if (backward) problem.return_lse = true;
  if (random && (!q.empty() || !k.empty() || !v.empty())) {
    return Fail(absl::InvalidArgumentError("--random: give either --random or --q/--k/--v"));
  }
  absl::StatusOr<v1::AttentionRequest> request =
      random ? RandomRequest(problem) : RequestFromFiles(q, k, v, problem);
  if (!request.ok()) return Fail(request.status());
  if (!save_inputs.empty()) {
    for (const auto& [name, tensor] :
         {std::pair<const char*, const v1::Tensor*>{"q", &request->q()},
          {"k", &request->k()},
          {"v", &request->v()}}) {
      absl::StatusOr<TensorView> view = ViewTensor(*tensor);
      if (!view.ok()) return Fail(view.status());
      if (absl::Status status = WriteNpy(save_inputs + name + ".npy", *view); !status.ok()) {
        return Fail(status);
      }
    }
  }
  absl::StatusOr<Client> client = connection.Connect();
  if (!client.ok()) return Fail(client.status());

  CallOptions call;
  if (timeout_ms > 0) call.timeout = std::chrono::milliseconds(timeout_ms);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<v1::AttentionResponse> response = client->Attention(*request, call);
  const auto latency = std::chrono::steady_clock::now() - start;
  if (!response.ok()) return Fail(response.status());

  absl::StatusOr<TensorView> o = ViewTensor(response->o());
  if (!o.ok()) return Fail(o.status());
  std::printf("o: %s [%s]\n", DTypeName(o->dtype), absl::StrJoin(o->shape, ", ").c_str());
  PrintTimings("", *response, latency);
  if (!out.empty()) {
    if (absl::Status status = WriteNpy(out, *o); !status.ok()) return Fail(status);
    std::printf("wrote %s\n", out.c_str());
  }
  if (!lse_out.empty()) {
    absl::StatusOr<TensorView> lse = ViewTensor(response->lse());
    if (!lse.ok()) return Fail(lse.status());
    if (absl::Status status = WriteNpy(lse_out, *lse); !status.ok()) return Fail(status);
    std::printf("wrote %s\n", lse_out.c_str());
  }
  if (check) {
    absl::StatusOr<CheckResult> result = CheckWithCpuBackend(*request, *response);
    if (!result.ok()) return Fail(result.status());
    if (!ReportCheck("", *result, problem.return_lse)) return 1;
  }
  if (backward) {
    return CallBackward(*client, call, *request, *response, problem.seed, deterministic, grad_out,
                        check);
  }
  return 0;
}

}  // namespace attention::client::cli
