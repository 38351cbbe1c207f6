// The float32 backward's device code (kernels/cuda/flash_bwd_fp32_kernel.cuh: the preprocess,
// the dK / dV kernel with its dq atomics, the deterministic dQ kernel) compiled by the host
// compiler and run on the CPU by the warp emulator (emulation/warp_emulator.h), every block of
// every grid in the order DispatchFlashBwdFp32 launches them, against the float64 gradients of
// backward_reference.h. Runs anywhere (label cpu): CI, which has no GPU, executes the kernels'
// thread grids and micro-tiles for each tile configuration (64 x 64 with 16 and 8 column
// threads, 64 x 32 with 8 and 16), the swapped tile ranges, every score
// option, GQA sums, packed batches, the workspace addressing and the barrier order (each case
// also runs with the warps serialized in reverse, which reads a tile before it is written if a
// barrier is missing). The GPU test (attention_backward_fp32_test) covers the hardware, many more
// shapes and the sanitizers.
//
// Tolerance as the GPU test's: max |got - ref| <= 1e-5 x max(max |ref|, Floor) per tensor. The
// outputs are poisoned with NaN, each with a poisoned tail that must stay untouched; dq of a row
// without an allowed key must be exactly 0.
#include "warp_emulator.h"  // before the kernels: it provides what nvcc would

// clang-format off
#include "kernels/cuda/flash_bwd_fp32_kernel.cuh"
// clang-format on

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_fp32_traits.h"
#include "kernels/cuda/flash_bwd_launch.h"
#include "tests/kernels/cuda/backward_reference.h"

// The kernels' `extern __shared__` array.
namespace attention::cuda::bwd_fp32 {
alignas(1024) unsigned char smem[emu::kSmemBytes];
}  // namespace attention::cuda::bwd_fp32

namespace attention::cuda {
namespace {

using namespace bwd_test;  // NOLINT: the shared reference's Case, Problem, Reference

constexpr double kTolerance = 1e-5;
constexpr double kFloorFraction = 0.1;

// The scale a tensor's error is measured against: its own max |ref|, but at least kFloorFraction
// of the largest of dq, dk and dv. A gradient that is 0 in exact arithmetic (one key per row gives
// dS = P (dP - D) = 0) comes out at the float32 rounding of dP - D, summed over the rows, which no
// relative bound of 0 admits; dv (sum of P dO) is then of the problem's scale.
double Floor(const Reference& ref) {
  double m = 0;
  for (const std::vector<double>* t : {&ref.dq, &ref.dk, &ref.dv}) {
    for (double x : *t) m = std::max(m, std::abs(x));
  }
  return kFloorFraction * m;
}
constexpr int kGuard = 64;  // poisoned elements after each output

// Runs `kernel` as every block of `grid`, shared memory poisoned with NaN before each block.
template <typename Kernel>
void RunGrid(dim3 grid, int threads, int smem_bytes, Kernel&& kernel) {
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(bwd_fp32::smem, 0xff, sizeof(bwd_fp32::smem));
        emu::RunBlock(grid, dim3(x, y, z), threads, bwd_fp32::smem, kernel, smem_bytes);
      }
    }
  }
}

// The launches of DispatchFlashBwdFp32 for bucket kHeadDim (flash_bwd_fp32_launch.cuh's grids).
template <int kHeadDim>
void LaunchEmulated(const BwdParams& p) {
  constexpr BwdFp32TileConfig t = DefaultBwdFp32TileConfig(kHeadDim);
  using Traits = BwdFp32Traits<kHeadDim, t.block_n, t.block_m>;
  constexpr int kPrep = bwd_fp32::kFp32PrepRows;
  RunGrid(dim3((p.seqlen_q + kPrep - 1) / kPrep, p.q_heads, p.batch), 32 * kPrep, 0,
          [&p] { bwd_fp32::Fp32BwdPreprocessKernel<kPrep>(p); });
  RunGrid(dim3((p.seqlen_k + t.block_n - 1) / t.block_n, p.kv_heads, p.batch), Traits::kNThreads,
          Traits::kSmemBytes, [&p] { bwd_fp32::FlashBwdFp32Kernel<Traits>(p); });
  if (p.deterministic) {
    RunGrid(dim3((p.seqlen_q + t.block_m - 1) / t.block_m, p.q_heads, p.batch), Traits::kNThreads,
            Traits::kSmemBytes, [&p] { bwd_fp32::FlashBwdFp32DqKernel<Traits>(p); });
  }
}

using Launcher = void (*)(const BwdParams&);

Launcher LauncherFor(int head_dim) {
  if (head_dim <= 64) return &LaunchEmulated<64>;
  if (head_dim <= 96) return &LaunchEmulated<96>;
  if (head_dim <= 160) return &LaunchEmulated<160>;
  return &LaunchEmulated<256>;
}

std::vector<float> AsFloat(const std::vector<double>& x) { return {x.begin(), x.end()}; }

// A NaN-poisoned output of n elements and kGuard more.
std::vector<float> Poisoned(size_t n) { return std::vector<float>(n + kGuard, NAN); }

void ExpectClose(const std::string& what, const std::vector<float>& got,
                 const std::vector<double>& ref, double floor) {
  double max_ref = 0, max_err = 0;
  int64_t non_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++non_finite;
      continue;
    }
    max_ref = std::max(max_ref, std::abs(ref[i]));
    max_err = std::max(max_err, std::abs(got[i] - ref[i]));
  }
  EXPECT_EQ(non_finite, 0) << what << ": elements not finite (unwritten?)";
  EXPECT_LE(max_err, kTolerance * std::max(max_ref, floor))
      << what << ": max error " << max_err << ", max |ref| " << max_ref;
  for (size_t i = ref.size(); i < got.size(); ++i) {
    if (!std::isnan(got[i])) {
      ADD_FAILURE() << what << ": wrote past its last element, at " << i;
      break;
    }
  }
}

void RunCase(const Case& c, bool deterministic, emu::Schedule schedule) {
  SCOPED_TRACE(c.name + (deterministic ? " deterministic" : "") +
               (schedule == emu::Schedule::kSerialReversed ? " serial-reversed" : ""));
  const Problem pr = MakeProblem(c, DType::kFloat32, std::hash<std::string>{}(c.name));
  const Reference ref = ComputeReference(pr);
  const std::vector<float> q = AsFloat(pr.q), k = AsFloat(pr.k), v = AsFloat(pr.v);
  const std::vector<float> o = AsFloat(ref.o), dout = AsFloat(pr.dout), lse = AsFloat(ref.lse);
  std::vector<float> dq = Poisoned(q.size()), dk = Poisoned(k.size()), dv = Poisoned(v.size());

  BwdParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = DType::kFloat32;
  p.head_dim = pr.c.head_dim;
  p.q_heads = pr.c.q_heads;
  p.kv_heads = pr.c.kv_heads;
  p.softmax_scale = pr.scale();
  p.softcap = pr.c.softcap;
  p.causal = pr.c.causal;
  p.window_left = pr.c.window_left;
  p.window_right = pr.c.window_right;
  p.deterministic = deterministic;
  p.batch = pr.c.batch;
  p.seqlen_q = pr.c.seqlen_q;
  p.seqlen_k = pr.c.seqlen_k;
  Normalize(p);
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (pr.packed) {
    p.cu_seqlens_q = pr.cu_q.data();
    p.cu_seqlens_k = pr.cu_k.data();
    p.total_q = pr.total_q;
    p.total_k = pr.total_k;
  }
  SetContiguousStrides(p);
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = const_cast<float*>(o.data());  // an input of the backward
  p.do_ = dout.data();
  p.lse = const_cast<float*>(lse.data());
  if (pr.c.alibi != 0) {
    p.alibi = true;
    p.alibi_slopes = pr.slopes.data();
    p.alibi_batch_stride = pr.c.alibi == 2 ? pr.c.q_heads : 0;
  }
  if (pr.c.sinks) {
    p.sinks = true;
    p.sink_logits = pr.sinks.data();
  }
  p.mask_kind = pr.c.mask;
  if (pr.c.mask == MaskKind::kBool) p.mask = pr.bool_mask.data();
  if (pr.c.mask == MaskKind::kAdditive) p.mask = pr.additive.data();
  p.mask_batch_stride = pr.mask_batch_stride;
  p.mask_head_stride = pr.mask_head_stride;
  p.mask_row_stride = pr.mask_row_stride;
  p.mask_col_stride = 1;
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  // The workspace (D and lse_log2, [q_heads, q_rows]), poisoned.
  p.q_rows = pr.total_q;
  std::vector<float> dsum(p.q_rows * p.q_heads, NAN), lse_log2(p.q_rows * p.q_heads, NAN);
  p.dsum = dsum.data();
  p.lse_log2 = lse_log2.data();

  emu::BlockSchedule() = schedule;
  LauncherFor(p.head_dim)(p);
  emu::BlockSchedule() = emu::Schedule::kLockstep;

  const double floor = Floor(ref);
  ExpectClose("dq", dq, ref.dq, floor);
  ExpectClose("dk", dk, ref.dk, floor);
  ExpectClose("dv", dv, ref.dv, floor);
  for (int b = 0; b < pr.c.batch; ++b) {
    for (int h = 0; h < pr.c.q_heads; ++h) {
      for (int i = 0; i < pr.len_q(b); ++i) {
        if (!ref.no_keys[pr.lse_index(b, i, h)]) continue;
        for (int e = 0; e < pr.c.head_dim; ++e) {
          ASSERT_EQ(dq[pr.q_index(b, i, h) + e], 0.f) << "dq of a row without keys";
        }
      }
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const auto fp32 = [](Case c) {
    c.dtypes = {DType::kFloat32};
    return c;
  };
  // Bucket 64 (64 x 64 tiles, 16 column threads): tails, Sq != Sk, masks, sinks.
  cases.push_back(fp32(Case("dim64").Seq(70, 90).Dim(64)));
  cases.push_back(fp32(Case("dim36_causal").Seq(90, 70).Dim(36).Causal()));
  cases.push_back(fp32(Case("window_gqa").Seq(80, 100).Heads(4, 2).Window(20, 3).Dim(64)));
  cases.push_back(
      fp32(Case("bool_mask_sinks").Batch(2).Seq(40, 70).Mask(MaskKind::kBool).Sinks().Dim(64)));
  // Bucket 96 (8 column threads, three chunks each): softcap, ALiBi, additive mask.
  cases.push_back(fp32(Case("general96")
                           .Seq(70, 80)
                           .Heads(2, 1)
                           .Dim(92)
                           .Softcap(6.f)
                           .Alibi(2)
                           .Mask(MaskKind::kAdditive)));
  // Bucket 160 (64 x 32 tiles, 8 column threads): packed with empty sequences, window.
  cases.push_back(fp32(Case("packed160")
                           .Packed({40, 0, 33, 9}, {50, 12, 0, 40})
                           .Heads(2, 1)
                           .Dim(148)
                           .Window(10, 0)));
  // Bucket 256 (64 x 32 tiles, 16 column threads): negative scale, MQA.
  cases.push_back(fp32(Case("dim256").Seq(40, 45).Heads(3, 1).Dim(256).Scale(-0.05f)));
  // One key: dq and dk are 0 in exact arithmetic (Floor).
  cases.push_back(fp32(Case("single_key").Seq(40, 1).Dim(60)));
  return cases;
}

class BackwardFp32EmulationTest : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardFp32EmulationTest, MatchesReference) {
  for (bool deterministic : {false, true}) {
    RunCase(GetParam(), deterministic, emu::Schedule::kLockstep);
  }
  RunCase(GetParam(), false, emu::Schedule::kSerialReversed);
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardFp32EmulationTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace attention::cuda
