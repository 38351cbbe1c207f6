// GPU tests of the CUDA backward kernels (kernels/cuda/flash_bwd_kernel.cuh, RunAttentionBackward)
// against the float64 reference of backward_reference.h (the gradients of L = sum(dO * O) from the
// definition). The forward's o and lse come from the reference too (o rounded to the dtype, lse
// to float32), as a training step would hand them over.
//
// Random inputs drawn fresh for every run (seed printed, ATTN_TEST_SEED to replay); dq, dk and dv
// poisoned with NaN (all bits set) before each launch, so an unwritten element fails; ragged
// sequence tails (lengths not multiples of the 64-row tiles); every option alone and combined;
// head dims 64, 128, 256 and odd ones (40, 72, 96, 200); Sq != Sk; packed batches with empty
// sequences; GQA and MQA; both dQ modes, and the deterministic one bit-identical across two runs.
// The default dQ mode runs on each dK / dV kernel that covers the case, whatever the server's
// route: the mma.sync kernel always, the Hopper (wgmma) kernel too on a compute capability 9.0
// device in a build with sm_90a (head-dim buckets 64, 128 and 256, the last in its head-dim split
// form; lines tagged "sm90"). In a build with ATTN_BENCH_BWD_SM90_VARIANTS=ON, each of
// backward_bench --sm90-variants' configurations (bench/cuda/backward_sm90_variants.h) runs too
// on every case it serves (bfloat16, the dense variant, its bucket; lines tagged with its name),
// so that no configuration is timed without having matched the float64 gradients.
//
// Tolerance, per tensor and stated once: max |got - ref| <= tol x max |ref|, every element
// finite; float16 2e-3, bfloat16 1.5e-2, the CPU backward's (the kernels round P and dS to the
// dtype before their tensor-core products, as FlashAttention-2 does, on top of the inputs' and
// outputs' roundings; on an H100 the largest ratio seen is 5.3e-3 for bfloat16).
// A row with no allowed key must get dq exactly 0.
//
// Exits 77 (ctest SKIP) without a CUDA device. A case whose dtype or head dim this build did not
// compile (ATTN_KERNEL_DTYPES / ATTN_KERNEL_HEAD_DIMS) is reported as skipped, never as passed.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/cuda/backward_sm90_variants.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/dtype.h"
#include "tests/kernels/cuda/backward_reference.h"

namespace attention::cuda {
namespace {

double ToleranceFor(DType dtype) { return dtype == DType::kFloat16 ? 2e-3 : 1.5e-2; }

const char* DTypeName(DType d) { return d == DType::kFloat16 ? "fp16" : "bf16"; }

uint64_t Seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("ATTN_TEST_SEED");
    const uint64_t s =
        env != nullptr
            ? std::strtoull(env, nullptr, 10)
            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("attention_backward_cuda_test: ATTN_TEST_SEED=%llu\n",
                static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

using namespace bwd_test;  // NOLINT: the shared reference's Case, Problem, Reference

// Device copies of a problem's inputs and outputs, freed on destruction.
struct DeviceBuffers {
  std::vector<void*> owned;
  ~DeviceBuffers() {
    for (void* p : owned) cudaFree(p);
  }
  template <typename T>
  T* Upload(const std::vector<T>& host) {
    void* d = nullptr;
    const size_t bytes = std::max<size_t>(host.size() * sizeof(T), 16);
    if (cudaMalloc(&d, bytes) != cudaSuccess) return nullptr;
    owned.push_back(d);
    if (!host.empty()) cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return static_cast<T*>(d);
  }
};

std::vector<uint16_t> Encoded(DType dtype, const std::vector<double>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = Encode(dtype, x[i]);
  return out;
}

struct Gradients {
  std::vector<uint16_t> dq, dk, dv;
};

// RunAttentionBackward (kAuto: the server's route), or its steps with the dK / dV kernel of
// `family` (DispatchFlashBwd after the same checks, normalization and window clamp), or with
// those steps, the Hopper kernel configuration `variant` (a bfloat16 dense launch) when given.
absl::Status LaunchBackward(const AttentionBackwardParams& params, void* workspace,
                            BwdKernelFamily family, const BwdSm90Variant* variant) {
  if (family == BwdKernelFamily::kAuto && variant == nullptr) {
    return RunAttentionBackward(params, workspace, nullptr);
  }
  if (absl::Status s = CheckBackwardLaunch(params); !s.ok()) return s;
  AttentionBackwardParams p = params;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (p.batch == 0) return absl::OkStatus();
  if (variant == nullptr) return DispatchFlashBwd(p, workspace, nullptr, family);
  if (p.dtype != DType::kBFloat16 || p.deterministic ||
      SelectBackwardVariant(p) != BwdVariant::kDense) {
    return absl::InvalidArgumentError(std::string("variant ") + variant->name +
                                      ": serves bfloat16 dense launches in the default dQ mode");
  }
  if (const cudaError_t err = variant->run(p, workspace, nullptr); err != cudaSuccess) {
    return absl::InternalError(std::string("variant ") + variant->name + ": " +
                               cudaGetErrorString(err));
  }
  return absl::OkStatus();
}

// Runs the backward on the device `runs` times (outputs poisoned before each) with the dK / dV
// kernel of `family` (or `variant`), returning each run's gradients; empty on a launch error
// (reported).
std::vector<Gradients> RunDevice(const Problem& pr, const Reference& ref, bool deterministic,
                                 BwdKernelFamily family, const BwdSm90Variant* variant, int runs) {
  const Case& c = pr.c;
  DeviceBuffers buf;
  AttentionBackwardParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = pr.dtype;
  p.head_dim = c.head_dim;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.softmax_scale = pr.scale();
  p.softcap = c.softcap;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.deterministic = deterministic;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = c.seqlen_k;
  Normalize(p);
  if (pr.packed) {
    p.cu_seqlens_q = buf.Upload(pr.cu_q);
    p.cu_seqlens_k = buf.Upload(pr.cu_k);
    p.total_q = pr.total_q;
    p.total_k = pr.total_k;
  }
  SetContiguousStrides(p);
  p.q = buf.Upload(Encoded(pr.dtype, pr.q));
  p.k = buf.Upload(Encoded(pr.dtype, pr.k));
  p.v = buf.Upload(Encoded(pr.dtype, pr.v));
  p.o = buf.Upload(Encoded(pr.dtype, ref.o));
  p.do_ = buf.Upload(Encoded(pr.dtype, pr.dout));
  std::vector<float> lse(ref.lse.begin(), ref.lse.end());
  p.lse = buf.Upload(lse);
  if (c.alibi != 0) {
    p.alibi = true;
    p.alibi_slopes = buf.Upload(pr.slopes);
    p.alibi_batch_stride = c.alibi == 2 ? c.q_heads : 0;
  }
  if (c.sinks) {
    p.sinks = true;
    p.sink_logits = buf.Upload(pr.sinks);
  }
  p.mask_kind = c.mask;
  if (c.mask == MaskKind::kBool) p.mask = buf.Upload(pr.bool_mask);
  if (c.mask == MaskKind::kAdditive) p.mask = buf.Upload(pr.additive);
  p.mask_batch_stride = pr.mask_batch_stride;
  p.mask_head_stride = pr.mask_head_stride;
  p.mask_row_stride = pr.mask_row_stride;
  p.mask_col_stride = 1;
  const std::vector<uint16_t> poison_q(pr.q.size(), 0xffff);
  const std::vector<uint16_t> poison_k(pr.k.size(), 0xffff);
  p.dq = buf.Upload(poison_q);
  p.dk = buf.Upload(poison_k);
  p.dv = buf.Upload(poison_k);
  const size_t ws_bytes = BackwardWorkspaceBytes(p);
  void* workspace = nullptr;
  EXPECT_EQ(cudaMalloc(&workspace, std::max<size_t>(ws_bytes, 256)), cudaSuccess);
  buf.owned.push_back(workspace);
  // Poison the workspace too: the preprocess must initialize everything the kernels read.
  cudaMemset(workspace, 0xff, std::max<size_t>(ws_bytes, 256));

  std::vector<Gradients> out;
  for (int run = 0; run < runs; ++run) {
    cudaMemcpy(p.dq, poison_q.data(), poison_q.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(p.dk, poison_k.data(), poison_k.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(p.dv, poison_k.data(), poison_k.size() * 2, cudaMemcpyHostToDevice);
    const absl::Status status = LaunchBackward(p, workspace, family, variant);
    EXPECT_TRUE(status.ok()) << status;
    const cudaError_t err = cudaDeviceSynchronize();
    EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    if (!status.ok() || err != cudaSuccess) return {};
    Gradients g;
    g.dq.resize(pr.q.size());
    g.dk.resize(pr.k.size());
    g.dv.resize(pr.v.size());
    cudaMemcpy(g.dq.data(), p.dq, g.dq.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dk.data(), p.dk, g.dk.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dv.data(), p.dv, g.dv.size() * 2, cudaMemcpyDeviceToHost);
    out.push_back(std::move(g));
  }
  return out;
}

// max |got - ref| <= tol * max |ref|, every element finite.
void ExpectClose(const std::string& what, DType dtype, const std::vector<uint16_t>& got,
                 const std::vector<double>& ref) {
  const double tol = ToleranceFor(dtype);
  double max_ref = 0, max_err = 0;
  int64_t worst = -1, non_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = Decode(dtype, got[i]);
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
  // Floor: a gradient that is 0 in exact arithmetic (a one-key window gives dS = P (dP - D) = 0)
  // comes out at the float32 rounding of unit-scale products (1.7e-7 seen on an H100), which no
  // relative bound of 0 admits.
  EXPECT_LE(max_err, tol * std::max(max_ref, 1e-3))
      << what << ": max error " << max_err << " at element " << worst << ", max |ref| " << max_ref
      << " (ratio " << max_err / max_ref << ", tolerance " << tol << ")";
  std::printf("    %-28s max err / max |ref| = %.2e\n", what.c_str(),
              max_ref > 0 ? max_err / max_ref : max_err);
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  // Head dims: the three main buckets and odd ones padded into theirs; ragged tails.
  for (int d : {64, 128, 256, 40, 72, 96, 200}) {
    cases.push_back(Case("dim" + std::to_string(d)).Seq(130, 130).Dim(d));
    cases.push_back(Case("causal_dim" + std::to_string(d)).Seq(130, 130).Dim(d).Causal());
  }
  cases.push_back(Case("dim32_160_224").Seq(70, 90).Dim(32));
  cases.push_back(Case("dim160").Seq(70, 90).Dim(160).Causal());
  cases.push_back(Case("dim224").Seq(70, 90).Dim(224).Window(20, 5));
  // Sq != Sk, bottom-right aligned.
  cases.push_back(Case("sq_lt_sk_causal").Seq(50, 200).Causal());
  cases.push_back(Case("sq_gt_sk_causal").Seq(200, 70).Causal());
  cases.push_back(Case("sq_gt_sk").Seq(150, 33).Dim(128));
  cases.push_back(Case("single_query_row").Seq(1, 150).Causal());
  // Windows.
  cases.push_back(Case("window").Seq(200, 200).Window(40, 10));
  cases.push_back(Case("window_left_only").Seq(160, 190).Window(30, -1));
  cases.push_back(Case("window_right_only").Seq(190, 160).Window(-1, 7));
  cases.push_back(Case("window_narrow").Seq(150, 150).Window(0, 0).Dim(128));
  // Options of the general variant.
  cases.push_back(Case("softcap").Seq(130, 150).Softcap(5.f).Scale(0.5f));
  cases.push_back(Case("softcap_causal").Seq(130, 130).Softcap(30.f).Causal().Dim(128));
  cases.push_back(Case("alibi").Seq(120, 140).Alibi(1).Causal());
  cases.push_back(Case("alibi_per_batch").Batch(2).Seq(90, 90).Alibi(2));
  cases.push_back(Case("bool_mask").Batch(2).Seq(100, 120).Mask(MaskKind::kBool));
  cases.push_back(Case("additive_mask").Seq(100, 120).Mask(MaskKind::kAdditive).Causal());
  cases.push_back(Case("negative_scale").Seq(80, 80).Scale(-0.1f));
  cases.push_back(Case("everything")
                      .Batch(2)
                      .Seq(110, 150)
                      .Heads(4, 2)
                      .Dim(96)
                      .Window(50, 3)
                      .Softcap(8.f)
                      .Alibi(2)
                      .Mask(MaskKind::kAdditive)
                      .Sinks());
  // Sinks (through lse only), with and without a fully masked row.
  cases.push_back(Case("sinks").Seq(100, 100).Sinks().Causal());
  cases.push_back(Case("sinks_bool_mask").Seq(70, 90).Sinks().Mask(MaskKind::kBool));
  // GQA / MQA: dK and dV summed over the group's query heads.
  cases.push_back(Case("gqa").Seq(130, 130).Heads(8, 2).Causal());
  cases.push_back(Case("mqa").Seq(100, 160).Heads(6, 1).Dim(128));
  // Packed batches: empty sequences, Sq != Sk per sequence, tails.
  cases.push_back(Case("packed").Packed({150, 1, 77, 0, 64}, {180, 60, 77, 30, 0}).Causal());
  cases.push_back(Case("packed_window_gqa")
                      .Packed({33, 130, 65}, {97, 64, 200})
                      .Heads(4, 2)
                      .Window(25, 0)
                      .Dim(128));
  cases.push_back(Case("packed_general")
                      .Packed({40, 0, 90}, {60, 20, 90})
                      .Dim(72)
                      .Mask(MaskKind::kBool)
                      .Alibi(1));
  // Longer sequences: many query tiles per key tile, many key tiles per query tile.
  cases.push_back(
      Case("long_causal").Seq(700, 700).Heads(2, 1).Causal().Dim(128).DTypes({DType::kBFloat16}));
  // Bucket 256's split kernel over many query tiles per key tile (its stage, prefetch and
  // stagger paths), GQA, causal and not.
  cases.push_back(
      Case("long_dim256").Seq(520, 600).Heads(4, 2).Dim(256).DTypes({DType::kBFloat16}));
  cases.push_back(Case("long_causal_dim256")
                      .Seq(600, 600)
                      .Heads(2, 1)
                      .Causal()
                      .Dim(256)
                      .DTypes({DType::kBFloat16}));
  return cases;
}

class BackwardTest : public ::testing::TestWithParam<Case> {};

// The kernel a case runs on when `family` is requested (SelectBackwardKernelFamily reads only the
// configuration).
BwdKernelFamily ChosenFamily(const Case& c, DType dtype, bool deterministic,
                             BwdKernelFamily family) {
  AttentionParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = dtype;
  p.head_dim = c.head_dim;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.deterministic = deterministic;
  return SelectBackwardKernelFamily(p, family);
}

bool RunCase(const Case& c, DType dtype, bool deterministic, BwdKernelFamily family,
             const BwdSm90Variant* variant = nullptr) {
  KernelConfig config;
  config.kind = WorkKind::kBackward;
  config.dtype = dtype;
  config.head_dim = c.head_dim;
  config.q_heads = c.q_heads;
  config.kv_heads = c.kv_heads;
  config.softmax_scale = 1.f;
  const absl::Status supported = CheckSupported(config);
  if (supported.code() == absl::StatusCode::kUnimplemented) return false;
  EXPECT_TRUE(supported.ok()) << supported;
  const bool sm90 = ChosenFamily(c, dtype, deterministic, family) == BwdKernelFamily::kSm90;
  std::printf("  %s %s%s, dK / dV kernel %s%s%s\n", c.name.c_str(), DTypeName(dtype),
              deterministic ? " deterministic" : "",
              BwdKernelFamilyName(ChosenFamily(c, dtype, deterministic, family)),
              variant != nullptr ? ", variant " : "", variant != nullptr ? variant->name : "");
  const Problem pr = MakeProblem(c, dtype, Seed() ^ std::hash<std::string>{}(c.name));
  const Reference ref = ComputeReference(pr);
  const std::vector<Gradients> got =
      RunDevice(pr, ref, deterministic, family, variant, deterministic ? 2 : 1);
  if (got.empty()) return true;
  const std::string tag =
      variant != nullptr
          ? std::string(DTypeName(dtype)) + " " + variant->name + " "
          : std::string(DTypeName(dtype)) + (deterministic ? " det " : " ") + (sm90 ? "sm90 " : "");
  ExpectClose(tag + "dq", dtype, got[0].dq, ref.dq);
  ExpectClose(tag + "dk", dtype, got[0].dk, ref.dk);
  ExpectClose(tag + "dv", dtype, got[0].dv, ref.dv);
  if (deterministic) {
    EXPECT_TRUE(got[0].dq == got[1].dq) << "deterministic dq differs between two runs";
    EXPECT_TRUE(got[0].dk == got[1].dk) << "deterministic dk differs between two runs";
    EXPECT_TRUE(got[0].dv == got[1].dv) << "deterministic dv differs between two runs";
  }
  for (int b = 0; b < pr.c.batch; ++b) {
    for (int h = 0; h < pr.c.q_heads; ++h) {
      for (int i = 0; i < pr.len_q(b); ++i) {
        if (!ref.no_keys[pr.lse_index(b, i, h)]) continue;
        const int64_t base = pr.q_index(b, i, h);
        for (int e = 0; e < pr.c.head_dim; ++e) {
          const double x = Decode(dtype, got[0].dq[base + e]);
          if (x != 0.0) {
            ADD_FAILURE() << "dq of a row without keys is " << x << " (b " << b << " h " << h
                          << " i " << i << ")";
            return true;
          }
        }
      }
    }
  }
  return true;
}

TEST_P(BackwardTest, MatchesReference) {
  const Case& c = GetParam();
  int ran = 0;
  for (DType dtype : c.dtypes) {
    for (bool deterministic : {false, true}) {
      // Both dQ modes for bfloat16; float16 runs the default one.
      if (deterministic && dtype == DType::kFloat16) continue;
      // The server's route (RunAttentionBackward), then the other dK / dV kernel where the
      // Hopper one covers the case (the default dQ mode only).
      ran += RunCase(c, dtype, deterministic, BwdKernelFamily::kAuto) ? 1 : 0;
      if (ChosenFamily(c, dtype, deterministic, BwdKernelFamily::kSm90) == BwdKernelFamily::kSm90) {
        const bool routed =
            ChosenFamily(c, dtype, deterministic, BwdKernelFamily::kAuto) == BwdKernelFamily::kSm90;
        RunCase(c, dtype, deterministic, routed ? BwdKernelFamily::kSm80 : BwdKernelFamily::kSm90);
      }
    }
  }
#ifdef ATTN_BENCH_BWD_SM90_VARIANTS
  // Each Hopper kernel configuration of backward_sm90_variants.h on the cases it serves: bfloat16,
  // the dense variant (no softcap, ALiBi or mask, a positive scale), its head-dim bucket, where
  // the Hopper kernel covers the case.
  const bool dense =
      c.alibi == 0 && !(c.softcap > 0.f) && c.mask == MaskKind::kNone && c.scale >= 0.f;
  const bool bf16 = std::find(c.dtypes.begin(), c.dtypes.end(), DType::kBFloat16) != c.dtypes.end();
  if (dense && bf16 &&
      ChosenFamily(c, DType::kBFloat16, false, BwdKernelFamily::kSm90) == BwdKernelFamily::kSm90) {
    for (const BwdSm90Variant& v : BwdSm90Variants()) {
      if (v.head_dim != CompiledHeadDimBucket(c.head_dim)) continue;
      ran += RunCase(c, DType::kBFloat16, false, BwdKernelFamily::kSm90, &v) ? 1 : 0;
    }
  }
#endif
  if (ran == 0) GTEST_SKIP() << "no kernel for this case in this build";
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// A float32 request is served where the float32 backward (attention_backward_fp32_test) is
// routed, and refused naming the rule where it is not.
TEST(BackwardHostApiTest, EmptyAndFloat32) {
  AttentionBackwardParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = DType::kFloat32;
  p.head_dim = 64;
  p.q_heads = p.kv_heads = 1;
  p.softmax_scale = 0.125f;
  const absl::Status s = CheckSupported(p);
  if (Float32BackwardRouted().ok()) {
    EXPECT_TRUE(s.ok()) << s;
  } else {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(s.message().find("float32"), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("attention_backward_cuda_test: no CUDA device, skipping\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
