// GPU tests of the float32 backward (kernels/cuda/flash_bwd_fp32.h, through RunAttentionBackward)
// against the float64 reference of backward_reference.h (the gradients of L = sum(dO * O) from
// the definition), inputs drawn in float32. The forward's o and lse come from the reference (o
// rounded to float32, lse to float32), as a training step would hand them over.
//
// Random inputs drawn fresh for every run (seed printed, ATTN_TEST_SEED to replay); dq, dk and dv
// poisoned with NaN before each launch, so an unwritten element fails, and the workspace too;
// ragged tails (lengths not multiples of the 64- and 32-row tiles); every option alone and
// combined; head dims that are multiples of 4 in every bucket (4 to 256); Sq != Sk; packed
// batches with empty sequences; GQA and MQA; long sequences (many query tiles summed into one
// dK / dV, many key tiles into one dQ); both dQ modes, the deterministic one bit-identical across
// two runs.
//
// Tolerance, stated once: max |got - ref| <= 1e-5 x max(max |ref|, Floor(ref)) per tensor, every
// element finite (the contract's float32 accuracy for PRECISION_FULL, which the backward always
// is); Floor is 0.1 x the largest |ref| of dq, dk and dv, for gradients that are 0 in exact
// arithmetic (Floor's comment).
// A row with no allowed key must get dq exactly 0.
//
// Exits 77 (ctest SKIP) without a CUDA device. A case whose head dim this build did not compile
// (ATTN_KERNEL_HEAD_DIMS) is reported as skipped, never as passed.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/dtype.h"
#include "tests/kernels/cuda/backward_reference.h"

namespace attention::cuda {
namespace {

constexpr double kTolerance = 1e-5;
constexpr double kFloorFraction = 0.1;

// The scale a tensor's error is measured against: its own max |ref|, but at least kFloorFraction
// of the largest of dq, dk and dv. A gradient that is 0 in exact arithmetic (one key per row gives
// dS = P (dP - D) = 0) comes out at the float32 rounding of dP - D, summed over the rows, which no
// relative bound of 0 admits; dv (sum of P dO) is then of the problem's scale.
double Floor(const bwd_test::Reference& ref) {
  double m = 0;
  for (const std::vector<double>* t : {&ref.dq, &ref.dk, &ref.dv}) {
    for (double x : *t) m = std::max(m, std::abs(x));
  }
  return kFloorFraction * m;
}

uint64_t Seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("ATTN_TEST_SEED");
    const uint64_t s =
        env != nullptr
            ? std::strtoull(env, nullptr, 10)
            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("attention_backward_fp32_test: ATTN_TEST_SEED=%llu\n",
                static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

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

std::vector<float> AsFloat(const std::vector<double>& x) { return {x.begin(), x.end()}; }

struct Gradients {
  std::vector<float> dq, dk, dv;
};

// The launch parameters of a problem, its tensors uploaded into `buf` (dq, dk, dv NaN).
AttentionBackwardParams Upload(const Problem& pr, const Reference& ref, bool deterministic,
                               DeviceBuffers& buf) {
  const Case& c = pr.c;
  AttentionBackwardParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = DType::kFloat32;
  p.precision = Precision::kFull;
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
  p.q = buf.Upload(AsFloat(pr.q));
  p.k = buf.Upload(AsFloat(pr.k));
  p.v = buf.Upload(AsFloat(pr.v));
  p.o = buf.Upload(AsFloat(ref.o));
  p.do_ = buf.Upload(AsFloat(pr.dout));
  p.lse = buf.Upload(AsFloat(ref.lse));
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
  p.dq = buf.Upload(std::vector<float>(pr.q.size(), NAN));
  p.dk = buf.Upload(std::vector<float>(pr.k.size(), NAN));
  p.dv = buf.Upload(std::vector<float>(pr.v.size(), NAN));
  return p;
}

// Runs the backward on the device `runs` times (outputs poisoned before each), returning each
// run's gradients; empty on a launch error (reported).
std::vector<Gradients> RunDevice(const Problem& pr, const Reference& ref, bool deterministic,
                                 int runs) {
  DeviceBuffers buf;
  const AttentionBackwardParams p = Upload(pr, ref, deterministic, buf);
  const size_t ws_bytes = std::max<size_t>(BackwardWorkspaceBytes(p), 256);
  void* workspace = nullptr;
  EXPECT_EQ(cudaMalloc(&workspace, ws_bytes), cudaSuccess);
  buf.owned.push_back(workspace);
  const std::vector<float> poison_q(pr.q.size(), NAN);
  const std::vector<float> poison_k(pr.k.size(), NAN);
  std::vector<Gradients> out;
  for (int run = 0; run < runs; ++run) {
    // The preprocess must initialize everything the kernels read.
    cudaMemset(workspace, 0xff, ws_bytes);
    cudaMemcpy(p.dq, poison_q.data(), poison_q.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(p.dk, poison_k.data(), poison_k.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(p.dv, poison_k.data(), poison_k.size() * 4, cudaMemcpyHostToDevice);
    const absl::Status status = RunAttentionBackward(p, workspace, nullptr);
    EXPECT_TRUE(status.ok()) << status;
    const cudaError_t err = cudaDeviceSynchronize();
    EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    if (!status.ok() || err != cudaSuccess) return {};
    Gradients g;
    g.dq.resize(pr.q.size());
    g.dk.resize(pr.k.size());
    g.dv.resize(pr.v.size());
    cudaMemcpy(g.dq.data(), p.dq, g.dq.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dk.data(), p.dk, g.dk.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dv.data(), p.dv, g.dv.size() * 4, cudaMemcpyDeviceToHost);
    out.push_back(std::move(g));
  }
  return out;
}

// max |got - ref| <= kTolerance * max(max |ref|, floor), every element finite. Returns the ratio
// max error / max |ref| for the summary line.
double ExpectClose(const std::string& what, const std::vector<float>& got,
                   const std::vector<double>& ref, double floor) {
  double max_ref = 0, max_err = 0;
  int64_t worst = -1, non_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i];
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
  EXPECT_LE(max_err, kTolerance * std::max(max_ref, floor))
      << what << ": max error " << max_err << " at element " << worst << ", max |ref| " << max_ref
      << " (ratio " << max_err / max_ref << ", tolerance " << kTolerance << ")";
  const double ratio = max_ref > 0 ? max_err / max_ref : max_err;
  std::printf("    %-12s max err / max |ref| = %.2e\n", what.c_str(), ratio);
  return ratio;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const auto fp32 = [](Case c) {
    c.dtypes = {DType::kFloat32};
    return c;
  };
  // Every bucket, with head dims at its bottom, inside it and at its top; ragged tails.
  for (int d : {4, 12, 32, 36, 60, 64, 68, 100, 128, 132, 160, 188, 192, 200, 224, 252, 256}) {
    cases.push_back(fp32(Case("dim" + std::to_string(d)).Seq(130, 110).Dim(d)));
  }
  for (int d : {64, 128, 256, 96, 44}) {
    cases.push_back(fp32(Case("causal_dim" + std::to_string(d)).Seq(130, 130).Dim(d).Causal()));
  }
  // Sq != Sk, bottom-right aligned.
  cases.push_back(fp32(Case("sq_lt_sk_causal").Seq(50, 200).Causal()));
  cases.push_back(fp32(Case("sq_gt_sk_causal").Seq(200, 70).Causal()));
  cases.push_back(fp32(Case("sq_gt_sk").Seq(150, 33).Dim(128)));
  cases.push_back(fp32(Case("single_query_row").Seq(1, 150).Causal()));
  cases.push_back(fp32(Case("single_key").Seq(90, 1).Dim(160)));
  // Windows.
  cases.push_back(fp32(Case("window").Seq(200, 200).Window(40, 10)));
  cases.push_back(fp32(Case("window_left_only").Seq(160, 190).Window(30, -1).Dim(192)));
  cases.push_back(fp32(Case("window_right_only").Seq(190, 160).Window(-1, 7)));
  cases.push_back(fp32(Case("window_narrow").Seq(150, 150).Window(0, 0).Dim(128)));
  // Score options.
  cases.push_back(fp32(Case("softcap").Seq(130, 150).Softcap(5.f).Scale(0.5f)));
  cases.push_back(fp32(Case("softcap_causal").Seq(130, 130).Softcap(30.f).Causal().Dim(128)));
  cases.push_back(fp32(Case("alibi").Seq(120, 140).Alibi(1).Causal()));
  cases.push_back(fp32(Case("alibi_per_batch").Batch(2).Seq(90, 90).Alibi(2).Dim(224)));
  cases.push_back(fp32(Case("bool_mask").Batch(2).Seq(100, 120).Mask(MaskKind::kBool)));
  cases.push_back(
      fp32(Case("additive_mask").Seq(100, 120).Mask(MaskKind::kAdditive).Causal().Dim(256)));
  cases.push_back(fp32(Case("negative_scale").Seq(80, 80).Scale(-0.1f)));
  cases.push_back(fp32(Case("negative_scale_softcap").Seq(70, 80).Scale(-0.3f).Softcap(4.f)));
  cases.push_back(fp32(Case("everything")
                           .Batch(2)
                           .Seq(110, 150)
                           .Heads(4, 2)
                           .Dim(96)
                           .Window(50, 3)
                           .Softcap(8.f)
                           .Alibi(2)
                           .Mask(MaskKind::kAdditive)
                           .Sinks()));
  // Sinks (through lse only), with and without a fully masked row.
  cases.push_back(fp32(Case("sinks").Seq(100, 100).Sinks().Causal()));
  cases.push_back(fp32(Case("sinks_bool_mask").Seq(70, 90).Sinks().Mask(MaskKind::kBool)));
  // GQA / MQA: dK and dV summed over the group's query heads.
  cases.push_back(fp32(Case("gqa").Seq(130, 130).Heads(8, 2).Causal()));
  cases.push_back(fp32(Case("mqa").Seq(100, 160).Heads(6, 1).Dim(128)));
  // Packed batches: empty sequences, Sq != Sk per sequence, tails.
  cases.push_back(fp32(Case("packed").Packed({150, 1, 77, 0, 64}, {180, 60, 77, 30, 0}).Causal()));
  cases.push_back(fp32(Case("packed_window_gqa")
                           .Packed({33, 130, 65}, {97, 64, 200})
                           .Heads(4, 2)
                           .Window(25, 0)
                           .Dim(128)));
  cases.push_back(fp32(Case("packed_general")
                           .Packed({40, 0, 90}, {60, 20, 90})
                           .Dim(72)
                           .Mask(MaskKind::kBool)
                           .Alibi(1)));
  // Long sums: dK / dV over 2048 query rows of two heads, dQ over 2048 keys.
  cases.push_back(fp32(Case("long").Seq(2048, 2048).Heads(2, 1).Dim(64)));
  cases.push_back(fp32(Case("long_causal").Seq(1000, 1000).Heads(2, 1).Causal().Dim(128)));
  return cases;
}

class BackwardFp32Test : public ::testing::TestWithParam<Case> {};

// False when this build has no kernel for the case (reported as skipped).
bool RunCase(const Case& c, bool deterministic) {
  KernelConfig config;
  config.kind = WorkKind::kBackward;
  config.dtype = DType::kFloat32;
  config.head_dim = c.head_dim;
  config.q_heads = c.q_heads;
  config.kv_heads = c.kv_heads;
  const absl::Status supported = CheckBackwardFp32Supported(config);
  if (supported.code() == absl::StatusCode::kUnimplemented) return false;
  EXPECT_TRUE(supported.ok()) << supported;
  std::printf("  %s fp32%s\n", c.name.c_str(), deterministic ? " deterministic" : "");
  const Problem pr = MakeProblem(c, DType::kFloat32, Seed() ^ std::hash<std::string>{}(c.name));
  const Reference ref = ComputeReference(pr);
  const std::vector<Gradients> got = RunDevice(pr, ref, deterministic, deterministic ? 2 : 1);
  if (got.empty()) return true;
  const std::string tag = deterministic ? "det " : "";
  const double floor = Floor(ref);
  ExpectClose(tag + "dq", got[0].dq, ref.dq, floor);
  ExpectClose(tag + "dk", got[0].dk, ref.dk, floor);
  ExpectClose(tag + "dv", got[0].dv, ref.dv, floor);
  if (deterministic) {
    // Bitwise: NaN never appears here (ExpectClose counted non-finite elements).
    EXPECT_EQ(std::memcmp(got[0].dq.data(), got[1].dq.data(), got[0].dq.size() * 4), 0)
        << "deterministic dq differs between two runs";
    EXPECT_EQ(std::memcmp(got[0].dk.data(), got[1].dk.data(), got[0].dk.size() * 4), 0)
        << "deterministic dk differs between two runs";
    EXPECT_EQ(std::memcmp(got[0].dv.data(), got[1].dv.data(), got[0].dv.size() * 4), 0)
        << "deterministic dv differs between two runs";
  }
  for (int b = 0; b < pr.c.batch; ++b) {
    for (int h = 0; h < pr.c.q_heads; ++h) {
      for (int i = 0; i < pr.len_q(b); ++i) {
        if (!ref.no_keys[pr.lse_index(b, i, h)]) continue;
        const int64_t base = pr.q_index(b, i, h);
        for (int e = 0; e < pr.c.head_dim; ++e) {
          const float x = got[0].dq[base + e];
          if (x != 0.f) {
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

TEST_P(BackwardFp32Test, MatchesReference) {
  int ran = 0;
  for (bool deterministic : {false, true}) ran += RunCase(GetParam(), deterministic) ? 1 : 0;
  if (ran == 0) GTEST_SKIP() << "no float32 backward kernel for this head dim in this build";
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardFp32Test, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// The host API's float32 rules: head_dim a multiple of 4, 16-byte rows of every tensor, and the
// workspace without a dq accumulator; CheckSupported follows the routing switch.
TEST(BackwardFp32HostApiTest, ChecksAndWorkspace) {
  AttentionBackwardParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = DType::kFloat32;
  p.head_dim = 6;
  p.q_heads = p.kv_heads = 1;
  p.softmax_scale = 0.125f;
  absl::Status s = CheckBackwardFp32Supported(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("multiple of 4"), std::string::npos) << s;

  p.head_dim = 36;
  EXPECT_EQ(CheckSupported(p).ok(), Float32BackwardRouted().ok()) << CheckSupported(p);
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 8;
  SetContiguousStrides(p);
  alignas(16) static float tensors[8][8 * 36];
  p.q = tensors[0];
  p.k = tensors[1];
  p.v = tensors[2];
  p.o = tensors[3];
  p.do_ = tensors[4];
  p.dq = tensors[5];
  p.dk = tensors[6];
  p.dv = tensors[7];
  static float lse[8];
  p.lse = lse;
  s = CheckBackwardLaunch(p);
  if (CheckBackwardFp32Supported(p).ok()) {
    EXPECT_TRUE(s.ok()) << s;
  }
  p.dk = tensors[6] + 2;  // 8-byte aligned only
  s = CheckBackwardLaunch(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);

  // D and lse_log2 per (row, head): 2 arrays of 8 floats, each aligned to 256 bytes, in both
  // dQ modes.
  p.deterministic = false;
  EXPECT_EQ(BackwardWorkspaceBytes(p), 512u);
  p.deterministic = true;
  EXPECT_EQ(BackwardWorkspaceBytes(p), 512u);
}

}  // namespace
}  // namespace attention::cuda

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("attention_backward_fp32_test: no CUDA device, skipping\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
