// The backward kernels' device code (kernels/cuda/flash_bwd_kernel.cuh: the dK / dV kernel with
// its dQ atomics, and the deterministic dQ kernel), compiled by the host compiler and run on the
// CPU by the warp emulator (emulation/warp_emulator.h: ldmatrix with and without .trans, the
// m16n8k16 16-bit MMA with exact products, barriers), against the float64 reference
// (backward_reference.h). Runs anywhere (label cpu), so CI, which has no GPU, executes the
// kernels' fragment layouts, the swapped tile ranges, masks, softcap's chain rule, GQA summation,
// packed batches and barrier order; attention_backward_cuda_test covers the hardware, more
// shapes and the element-wise kernels (flash_bwd_prepost.cu), which this test replaces by the
// same arithmetic on the host.
#include "warp_emulator.h"  // before the kernel: it provides what nvcc would

// clang-format off
#include "kernels/cuda/flash_bwd_kernel.cuh"
// clang-format on

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "tests/kernels/cuda/backward_reference.h"

// The kernels' `extern __shared__` array.
namespace attention::cuda::bwd {
alignas(1024) unsigned char smem[emu::kSmemBytes];
}  // namespace attention::cuda::bwd

namespace attention::cuda {
namespace {

using namespace bwd_test;  // NOLINT: the shared reference's Case, Problem, Reference

// Runs `kernel` over `grid`, one block at a time, shared memory poisoned with NaN before each.
template <typename Kernel>
void RunGrid(dim3 grid, int threads, Kernel&& kernel) {
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(bwd::smem, 0xff, sizeof(bwd::smem));
        emu::RunBlock(grid, dim3(x, y, z), threads, bwd::smem, kernel);
      }
    }
  }
}

struct HostRun {
  std::vector<uint16_t> q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse, dq_accum, dsum, lse_log2;
  std::vector<int32_t> cu_q, cu_k;
};

// The backward of `pr` through the emulated kernels, with the preprocess and postprocess of
// flash_bwd_prepost.cu done on the host.
template <typename Element, int kHeadDim, bool kGeneral>
void RunEmulated(const Problem& pr, const Reference& ref, bool deterministic, HostRun& h) {
  const Case& c = pr.c;
  BwdParams p;
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
  ClampWindow(p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
  if (pr.packed) {
    h.cu_q = pr.cu_q;
    h.cu_k = pr.cu_k;
    p.cu_seqlens_q = h.cu_q.data();
    p.cu_seqlens_k = h.cu_k.data();
    p.total_q = pr.total_q;
    p.total_k = pr.total_k;
  }
  SetContiguousStrides(p);
  const auto encode = [&](const std::vector<double>& x) {
    std::vector<uint16_t> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = Encode(pr.dtype, x[i]);
    return out;
  };
  h.q = encode(pr.q);
  h.k = encode(pr.k);
  h.v = encode(pr.v);
  h.o = encode(ref.o);
  h.dout = encode(pr.dout);
  h.lse.assign(ref.lse.begin(), ref.lse.end());
  h.dq.assign(pr.q.size(), 0xffff);
  h.dk.assign(pr.k.size(), 0xffff);
  h.dv.assign(pr.v.size(), 0xffff);
  p.q = h.q.data();
  p.k = h.k.data();
  p.v = h.v.data();
  p.o = h.o.data();
  p.do_ = h.dout.data();
  p.lse = h.lse.data();
  p.dq = h.dq.data();
  p.dk = h.dk.data();
  p.dv = h.dv.data();
  if (c.alibi != 0) {
    p.alibi = true;
    p.alibi_slopes = pr.slopes.data();
    p.alibi_batch_stride = c.alibi == 2 ? c.q_heads : 0;
  }
  if (c.sinks) {
    p.sinks = true;
    p.sink_logits = pr.sinks.data();
  }
  p.mask_kind = c.mask;
  if (c.mask == MaskKind::kBool) p.mask = pr.bool_mask.data();
  if (c.mask == MaskKind::kAdditive) p.mask = pr.additive.data();
  p.mask_batch_stride = pr.mask_batch_stride;
  p.mask_head_stride = pr.mask_head_stride;
  p.mask_row_stride = pr.mask_row_stride;
  p.mask_col_stride = 1;

  // Preprocess: D, lse_log2 (workspace rows = the reference's q rows) and dq_accum = 0, the
  // latter poisoned first where deterministic mode must not read it.
  p.q_rows = pr.total_q;
  h.dsum.assign(c.q_heads * pr.total_q, 0.f);
  h.lse_log2.assign(c.q_heads * pr.total_q, 0.f);
  h.dq_accum.assign(pr.total_q * c.q_heads * c.head_dim, deterministic ? NAN : 0.f);
  for (int b = 0; b < c.batch; ++b) {
    for (int hd = 0; hd < c.q_heads; ++hd) {
      for (int i = 0; i < pr.len_q(b); ++i) {
        const int64_t ws = hd * pr.total_q + pr.q_row(b, i);
        float sum = 0.f;
        for (int e = 0; e < c.head_dim; ++e) {
          const int64_t idx = pr.q_index(b, i, hd) + e;
          sum = std::fma(static_cast<float>(Decode(pr.dtype, h.o[idx])),
                         static_cast<float>(Decode(pr.dtype, h.dout[idx])), sum);
        }
        h.dsum[ws] = sum;
        const float lse = h.lse[pr.lse_index(b, i, hd)];
        h.lse_log2[ws] = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
      }
    }
  }
  p.dsum = h.dsum.data();
  p.lse_log2 = h.lse_log2.data();
  p.dq_accum = deterministic ? nullptr : h.dq_accum.data();

  constexpr BwdTileConfig t = DefaultBwdTileConfig(kHeadDim);
  using Traits = BwdKernelTraits<kHeadDim, t.block_m, t.block_n, t.warps>;
  RunGrid(dim3((p.seqlen_k + t.block_n - 1) / t.block_n, p.kv_heads, p.batch), Traits::kNThreads,
          [&p] { bwd::FlashBwdKernel<Traits, Element, kGeneral>(p); });
  if (deterministic) {
    constexpr BwdTileConfig tq = DefaultBwdDqTileConfig(kHeadDim);
    using DqTraits = BwdDqKernelTraits<kHeadDim, tq.block_m, tq.block_n, tq.warps>;
    RunGrid(dim3((p.seqlen_q + tq.block_m - 1) / tq.block_m, p.q_heads, p.batch),
            DqTraits::kNThreads, [&p] { bwd::FlashBwdDqKernel<DqTraits, Element, kGeneral>(p); });
  } else {
    // Postprocess: dq = dq_accum * scale.
    for (int b = 0; b < c.batch; ++b) {
      for (int hd = 0; hd < c.q_heads; ++hd) {
        for (int i = 0; i < pr.len_q(b); ++i) {
          for (int e = 0; e < c.head_dim; ++e) {
            const int64_t idx = pr.q_index(b, i, hd) + e;
            h.dq[idx] = Encode(pr.dtype, h.dq_accum[idx] * p.softmax_scale);
          }
        }
      }
    }
  }
}

void ExpectClose(const std::string& what, DType dtype, const std::vector<uint16_t>& got,
                 const std::vector<double>& ref) {
  // The emulator's products are exact: only the roundings of P, dS and the outputs remain.
  const double tol = dtype == DType::kFloat16 ? 2e-3 : 1.5e-2;
  double max_ref = 0, max_err = 0;
  int64_t non_finite = 0, worst = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = Decode(dtype, got[i]);
    if (!std::isfinite(g)) {
      ++non_finite;
      continue;
    }
    max_ref = std::max(max_ref, std::abs(ref[i]));
    if (std::abs(g - ref[i]) > max_err) {
      max_err = std::abs(g - ref[i]);
      worst = static_cast<int64_t>(i);
    }
  }
  EXPECT_EQ(non_finite, 0) << what << ": elements not finite (unwritten?)";
  EXPECT_LE(max_err, tol * std::max(max_ref, 1e-6))
      << what << ": max error " << max_err << " at " << worst << ", max |ref| " << max_ref;
  std::printf("  %-24s max err / max |ref| = %.2e\n", what.c_str(),
              max_ref > 0 ? max_err / max_ref : max_err);
}

template <typename Element, int kHeadDim, bool kGeneral>
void Check(const Case& c, bool deterministic) {
  const DType dtype = std::is_same_v<Element, __nv_bfloat16> ? DType::kBFloat16 : DType::kFloat16;
  const Problem pr = MakeProblem(c, dtype, 2026);
  const Reference ref = ComputeReference(pr);
  HostRun h;
  try {
    RunEmulated<Element, kHeadDim, kGeneral>(pr, ref, deterministic, h);
  } catch (const std::exception& e) {
    FAIL() << c.name << ": " << e.what();
  }
  const std::string tag = c.name + (deterministic ? " det " : " ");
  ExpectClose(tag + "dq", dtype, h.dq, ref.dq);
  ExpectClose(tag + "dk", dtype, h.dk, ref.dk);
  ExpectClose(tag + "dv", dtype, h.dv, ref.dv);
}

TEST(BwdKernelEmulationTest, DenseCausalGqa) {
  Check<__nv_bfloat16, 64, false>(Case("causal_gqa").Seq(70, 90).Heads(4, 2).Causal(), false);
}

TEST(BwdKernelEmulationTest, DenseWindowSqGtSk) {
  Check<__half, 32, false>(Case("window").Seq(100, 40).Window(20, 5).Dim(32), false);
}

TEST(BwdKernelEmulationTest, GeneralPackedOddHeadDim) {
  Check<__half, 96, true>(Case("packed_general")
                              .Packed({33, 0, 70}, {50, 20, 65})
                              .Dim(72)
                              .Softcap(5.f)
                              .Alibi(1)
                              .Mask(MaskKind::kBool),
                          false);
}

TEST(BwdKernelEmulationTest, DeterministicGeneralSinks) {
  Check<__nv_bfloat16, 64, true>(
      Case("det_additive_sinks").Seq(60, 80).Mask(MaskKind::kAdditive).Sinks().Causal(), true);
}

TEST(BwdKernelEmulationTest, DeterministicHeadDim256) {
  Check<__nv_bfloat16, 256, false>(Case("det_d256").Seq(40, 70).Heads(2, 1).Dim(256), true);
}

TEST(BwdKernelEmulationTest, HeadDim256Atomics) {
  Check<__nv_bfloat16, 256, false>(Case("d256").Seq(40, 70).Heads(2, 1).Dim(256).Causal(), false);
}

}  // namespace
}  // namespace attention::cuda
