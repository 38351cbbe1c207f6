// attention_cli call: one Attention call with inputs from .npy files or random ones; writes o
// (and lse) as .npy and optionally checks o against the local CPU backend.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

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
    "           [--save_inputs=PREFIX]\n"
    "\n"
    "Sends one request and prints the answer's shape and the server's timings. bf16 .npy files\n"
    "hold the raw 16-bit patterns as '<u2' (x.view(np.uint16) in NumPy). --check recomputes\n"
    "the answer with the local CPU backend and fails (exit 1) beyond the dtype's tolerance.";

void PrintMs(const char* name, int64_t ns) { std::printf("  %-10s %10.3f ms\n", name, ns * 1e-6); }

}  // namespace

int CallCommand(const std::vector<std::string>& args) {
  ConnectionFlags connection;
  ProblemFlags problem;
  std::string q, k, v, out, lse_out, save_inputs;
  bool random = false, check = false;
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
  if (absl::Status status = flags.Parse(args); !status.ok()) return Fail(status);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (!lse_out.empty() && !problem.return_lse) {
    return Fail(absl::InvalidArgumentError("--lse_out: needs --return_lse"));
  }
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
  std::printf("latency: %.3f ms (client)\n",
              std::chrono::duration<double, std::milli>(latency).count());
  const v1::Timings& t = response->timings();
  std::printf("server timings:\n");
  PrintMs("queue", t.queue_ns());
  PrintMs("transfer", t.transfer_ns());
  PrintMs("kernel", t.kernel_ns());
  PrintMs("total", t.total_ns());
  std::printf("batch: %d requests, %d sequences, %lld query tokens on %s\n",
              response->batch().requests(), response->batch().sequences(),
              static_cast<long long>(response->batch().tokens_q()),
              response->batch().device().c_str());
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
    std::printf("check against the local CPU backend: max abs error %.3g, relative L2 error %.3g",
                result->max_abs_error, result->relative_l2_error);
    if (problem.return_lse) std::printf(", lse max abs error %.3g", result->lse_max_abs_error);
    std::printf("\n");
    if (result->mismatches > 0) {
      std::printf("check FAILED: %lld elements beyond tolerance %g * (1 + |want|)\n",
                  static_cast<long long>(result->mismatches), result->tolerance);
      return 1;
    }
    std::printf("check passed (tolerance %g * (1 + |want|))\n", result->tolerance);
  }
  return 0;
}

}  // namespace attention::client::cli
