// Host-side logic of the CUDA backward pass that runs without a GPU: what CheckSupported and
// CheckBackwardLaunch accept and refuse (naming the rule), the workspace's size (no
// seqlen_q x seqlen_k term; no dq accumulator in deterministic mode), the variant choice, and
// the dK / dV kernel's query-tile range (block_info.h with queries and keys swapped) against a
// brute-force scan of the window rule.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_bwd_dispatch.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "kernels/cuda/flash_fwd_dispatch.h"

namespace attention::cuda {
namespace {

KernelConfig BackwardConfig() {
  KernelConfig c;
  c.kind = WorkKind::kBackward;
  c.dtype = DTypeCompiled(DType::kBFloat16) ? DType::kBFloat16 : DType::kFloat16;
  c.head_dim = CompiledHeadDimBucket(64) != 0 ? 64 : CompiledHeadDimBucket(1);
  c.q_heads = 4;
  c.kv_heads = 2;
  c.softmax_scale = 0.125f;
  return c;
}

AttentionBackwardParams LaunchParams() {
  AttentionBackwardParams p;
  static_cast<KernelConfig&>(p) = BackwardConfig();
  p.batch = 2;
  p.seqlen_q = 100;
  p.seqlen_k = 130;
  SetContiguousStrides(p);
  // Never dereferenced: the checks read no memory behind the pointers.
  alignas(16) static char dummy[64];
  p.q = p.k = p.v = p.do_ = dummy;
  p.o = p.dq = p.dk = p.dv = dummy;
  p.lse = reinterpret_cast<float*>(dummy);
  return p;
}

// The kernels' checks of configuration `c` (CheckBackwardLaunch, which holds whatever the
// routing switch says).
absl::Status Check(const KernelConfig& c) {
  AttentionBackwardParams p = LaunchParams();
  static_cast<KernelConfig&>(p) = c;
  if (c.sinks) p.sink_logits = p.lse;  // never dereferenced
  return CheckBackwardLaunch(p);
}

TEST(BackwardSupportTest, AcceptsAndRefusesNamingTheRule) {
  const KernelConfig c = BackwardConfig();
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  // float32 takes the float32 backward kernel (flash_bwd_fp32.h): head dims multiples of 4.
  KernelConfig x = c;
  x.dtype = DType::kFloat32;
  EXPECT_TRUE(Check(x).ok()) << Check(x);
  x.head_dim = 6;
  absl::Status s = Check(x);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("multiple of 4"), std::string::npos) << s;
  x = c;
  x.head_dim = 60;
  s = Check(x);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("multiple of 8"), std::string::npos) << s;
  x = c;
  x.head_dim = 264;
  EXPECT_NE(Check(x).code(), absl::StatusCode::kOk);
  // Sinks only enter through lse: no kernel of their own to route.
  x = c;
  x.sinks = true;
  EXPECT_TRUE(Check(x).ok()) << Check(x);
  x = c;
  x.deterministic = true;
  EXPECT_TRUE(Check(x).ok()) << Check(x);
}

// CheckSupported (what the server asks before it queues a request) adds the routing switch:
// every backward configuration is refused, naming why, while the kernels await their GPU check.
TEST(BackwardSupportTest, CheckSupportedFollowsTheRoutingSwitch) {
  const KernelConfig c = BackwardConfig();
  const absl::Status routed = BackwardKernelsRouted();
  if (routed.ok()) {
    EXPECT_TRUE(CheckSupported(c).ok()) << CheckSupported(c);
  } else {
    EXPECT_EQ(routed.code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(routed.message().find("not routed"), std::string::npos) << routed;
    EXPECT_EQ(CheckSupported(c), routed);
  }
  EXPECT_TRUE(Check(c).ok()) << Check(c);
}

TEST(BackwardSupportTest, LaunchChecks) {
  const AttentionBackwardParams p = LaunchParams();
  EXPECT_TRUE(CheckBackwardLaunch(p).ok()) << CheckBackwardLaunch(p);
  AttentionBackwardParams x = p;
  x.do_ = nullptr;
  EXPECT_EQ(CheckBackwardLaunch(x).code(), absl::StatusCode::kInvalidArgument);
  x = p;
  x.lse = nullptr;
  EXPECT_EQ(CheckBackwardLaunch(x).code(), absl::StatusCode::kInvalidArgument);
  x = p;
  x.dq = static_cast<char*>(x.dq) + 2;
  absl::Status s = CheckBackwardLaunch(x);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("dq must be 16-byte aligned"), std::string::npos) << s;
  x = p;
  x.dk = static_cast<char*>(x.dk) + 4;
  EXPECT_NE(CheckBackwardLaunch(x).message().find("dk"), std::string::npos);
  x = p;
  x.kind = WorkKind::kForward;
  EXPECT_FALSE(CheckBackwardLaunch(x).ok());
  // Missing workspace for real work.
  EXPECT_EQ(RunAttentionBackward(p, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(BackwardWorkspaceTest, LinearInRowsAndSmallerWhenDeterministic) {
  AttentionBackwardParams p = LaunchParams();
  const int64_t rows = int64_t{p.batch} * p.seqlen_q;
  const size_t bytes = BackwardWorkspaceBytes(p);
  // dq_accum [rows, q_heads, head_dim] + D and lse_log2 [q_heads, rows], float32, 256-aligned.
  const int64_t accum = rows * p.q_heads * p.head_dim * 4;
  const int64_t per_row = rows * p.q_heads * 4;
  EXPECT_GE(static_cast<int64_t>(bytes), accum + 2 * per_row);
  EXPECT_LE(static_cast<int64_t>(bytes), accum + 2 * per_row + 3 * 256);
  // Longer keys change nothing: no seqlen_q x seqlen_k term.
  AttentionBackwardParams longer = p;
  longer.seqlen_k = 100000;
  EXPECT_EQ(BackwardWorkspaceBytes(longer), bytes);
  AttentionBackwardParams det = p;
  det.deterministic = true;
  EXPECT_LE(static_cast<int64_t>(BackwardWorkspaceBytes(det)), 2 * per_row + 2 * 256);
  // Packed: sized by total_q.
  AttentionBackwardParams packed = p;
  static const int32_t cu[3] = {0, 10, 30};
  packed.cu_seqlens_q = packed.cu_seqlens_k = cu;
  packed.total_q = packed.total_k = 30;
  const BwdWorkspaceLayout layout = BackwardWorkspaceLayout(packed);
  EXPECT_EQ(layout.q_rows, 30);
  EXPECT_EQ(layout.dq_accum, 0);
  EXPECT_EQ(layout.dsum % 256, 0);
  EXPECT_EQ(layout.lse_log2 % 256, 0);
}

TEST(BackwardVariantTest, GeneralForLogitOptions) {
  AttentionBackwardParams p = LaunchParams();
  EXPECT_EQ(SelectBackwardVariant(p), BwdVariant::kDense);
  p.causal = true;
  p.window_right = 0;
  EXPECT_EQ(SelectBackwardVariant(p), BwdVariant::kDense);
  AttentionBackwardParams x = p;
  x.softcap = 30.f;
  EXPECT_EQ(SelectBackwardVariant(x), BwdVariant::kGeneral);
  x = p;
  x.alibi = true;
  EXPECT_EQ(SelectBackwardVariant(x), BwdVariant::kGeneral);
  x = p;
  x.mask_kind = MaskKind::kBool;
  EXPECT_EQ(SelectBackwardVariant(x), BwdVariant::kGeneral);
  x = p;
  x.softmax_scale = -1.f;
  EXPECT_EQ(SelectBackwardVariant(x), BwdVariant::kGeneral);
}

// The dK / dV kernel visits, for key tile [key0, key0 + keys), the query tiles
// KvTiles(key0, keys, len_k, len_q, block_m, right, left): every query tile holding a pair
// (i, j) with j allowed for i must be inside, and TileNeedsMask (swapped the same way) must be
// true wherever a pair of the two tiles is not allowed or a query row lies past len_q.
TEST(BackwardTileRangeTest, SwappedRangeMatchesBruteForce) {
  constexpr int kBlockM = 64;
  constexpr int kBlockN = 64;
  const int lens[] = {1, 37, 64, 100, 130, 257};
  const int sides[] = {-1, 0, 5, 64, 100};
  for (int len_q : lens) {
    for (int len_k : lens) {
      for (int left : sides) {
        for (int right : sides) {
          int l = left;
          int r = right;
          ClampWindow(len_q, len_k, l, r);
          const int shift = len_k - len_q;
          const auto allowed = [&](int i, int j) {
            return i < len_q && j < len_k && (l < 0 || j >= i + shift - l) &&
                   (r < 0 || j <= i + shift + r);
          };
          for (int key0 = 0; key0 < len_k; key0 += kBlockN) {
            const int keys = std::min(kBlockN, len_k - key0);
            const KvTileRange range = KvTiles(key0, keys, len_k, len_q, kBlockM, r, l);
            for (int m = 0; m * kBlockM < len_q; ++m) {
              bool any = false;
              bool all = true;
              for (int i = m * kBlockM; i < (m + 1) * kBlockM; ++i) {
                for (int j = key0; j < key0 + keys; ++j) {
                  const bool a = allowed(i, j);
                  any |= a;
                  all &= a;
                }
              }
              const bool inside = m >= range.begin && m < range.end;
              if (any) {
                EXPECT_TRUE(inside) << "len_q " << len_q << " len_k " << len_k << " window (" << l
                                    << ", " << r << ") key0 " << key0 << " m " << m;
              }
              if (inside && !all) {
                EXPECT_TRUE(TileNeedsMask(m, key0, keys, len_k, len_q, kBlockM, r, l))
                    << "len_q " << len_q << " len_k " << len_k << " window (" << l << ", " << r
                    << ") key0 " << key0 << " m " << m;
              }
            }
          }
        }
      }
    }
  }
}

// Both kernels' default tiles of bucket kHeadDim fit sm_80's 163 KB of shared memory per block.
template <int kHeadDim>
void ExpectDefaultTilesFit() {
  SCOPED_TRACE(kHeadDim);
  EXPECT_LE(DefaultBwdKernelTraits<kHeadDim>::type::kSmemBytes, 163 * 1024);
  EXPECT_LE(DefaultBwdDqKernelTraits<kHeadDim>::type::kSmemBytes, 163 * 1024);
}

TEST(BackwardTraitsTest, SharedMemoryFitsEveryBucket) {
  ExpectDefaultTilesFit<32>();
  ExpectDefaultTilesFit<64>();
  ExpectDefaultTilesFit<96>();
  ExpectDefaultTilesFit<128>();
  ExpectDefaultTilesFit<160>();
  ExpectDefaultTilesFit<192>();
  ExpectDefaultTilesFit<224>();
  ExpectDefaultTilesFit<256>();
}

// Bucket 128's default: 128-key tiles, S^T and dK / dV over 4 x 2 warps of 32 keys, dQ over 2 x 4
// warps of 32 queries x 32 columns (FlashAttention-2's sm_80 / sm_90 layout), two query stages.
TEST(BackwardTraitsTest, Bucket128WarpGrids) {
  using Traits = DefaultBwdKernelTraits<128>::type;
  EXPECT_EQ(Traits::kBlockM, 64);
  EXPECT_EQ(Traits::kBlockN, 128);
  EXPECT_EQ(Traits::kSdpMTiles, 2);
  EXPECT_EQ(Traits::kSdpWarpCols, 32);
  EXPECT_EQ(Traits::kDkvMTiles, 2);
  EXPECT_EQ(Traits::kWarpD, 64);
  EXPECT_EQ(Traits::kDqMTiles, 2);
  EXPECT_EQ(Traits::kWarpQD, 32);
  EXPECT_EQ(Traits::kAccumulatorFloats, 192);
  EXPECT_EQ(Traits::kQStages, 2);
  EXPECT_EQ(Traits::kSmemBytes, 160 * 1024 + 2 * 2 * 4 * 64);
}

// The Hopper dK / dV kernel: buckets 64 and 128 only; 128-key tiles of two warpgroups with
// head_dim + block_m = 192 accumulator floats per thread; each warpgroup's dQ share one m64n64
// product (queries split at 64, head_dim at 128); K, V, two stages of Q / dO, dS^T, lse and D
// within sm_90's 227 KB with the 1 KB the kernel aligns its base with.
TEST(BackwardTraitsTest, Sm90KernelTiles) {
  for (int bucket : {32, 96, 160, 192, 224}) EXPECT_FALSE(HasSm90BwdKernel(bucket)) << bucket;
  using T64 = DefaultBwdSm90KernelTraits<64>::type;
  using T128 = DefaultBwdSm90KernelTraits<128>::type;
  static_assert(HasSm90BwdKernel(64) && HasSm90BwdKernel(128));
  EXPECT_EQ(T64::kBlockM, 128);
  EXPECT_EQ(T128::kBlockM, 64);
  EXPECT_EQ(T64::kBlockN, 128);
  EXPECT_EQ(T128::kBlockN, 128);
  EXPECT_EQ(T64::kAccumulatorFloats, 192);
  EXPECT_EQ(T128::kAccumulatorFloats, 192);
  EXPECT_EQ(T64::kDqWarpgroupsM, 2);
  EXPECT_EQ(T128::kDqWarpgroupsM, 1);
  EXPECT_TRUE(T64::kOverlap && T128::kOverlap);
  // K, V 16 KB each; Q, dO 16 KB each per stage; dS^T 32 KB; lse, D 1 KB per stage.
  EXPECT_EQ(T64::kSmemBytes, 130 * 1024);
  // K, V 32 KB each; Q, dO 16 KB each per stage; dS^T 16 KB; lse, D 512 bytes per stage.
  EXPECT_EQ(T128::kSmemBytes, 145 * 1024);
  EXPECT_LE(T64::kSmemLaunchBytes, 227 * 1024);
  EXPECT_LE(T128::kSmemLaunchBytes, 227 * 1024);
}

// The head-dim split form at 256: 64 x 64 tiles, two warpgroups of 128 head_dim columns each
// (dK + dV 128 floats per thread, dQ in two m64n64 passes), K, V, two stages of Q / dO, dS^T,
// the 16 KB exchange scratch, lse and D within sm_90's 227 KB.
TEST(BackwardTraitsTest, Sm90SplitKernelTiles) {
  static_assert(HasSm90BwdKernel(256) && Sm90BwdSplitsHeadDim(256));
  static_assert(!Sm90BwdSplitsHeadDim(64) && !Sm90BwdSplitsHeadDim(128));
  using T = DefaultBwdSm90KernelTraits<256>::type;
  static_assert(T::kSplitHeadDim && !DefaultBwdSm90KernelTraits<128>::type::kSplitHeadDim);
  EXPECT_EQ(T::kBlockM, 64);
  EXPECT_EQ(T::kBlockN, 64);
  EXPECT_EQ(T::kNThreads, 256);
  EXPECT_EQ(T::kHalfDim, 128);
  EXPECT_EQ(T::kNTilesD, 16);
  EXPECT_EQ(T::kDqPasses, 2);
  EXPECT_EQ(T::kAccumulatorFloats, 192);
  // The default form: dQ by bulk reductions (the first pass early), Q / dO by TMA.
  EXPECT_TRUE(T::kDqBulk && T::kTmaQ && T::kDqEarly);
  EXPECT_FALSE(T::kDqOverlap || T::kPrefetchA);
  // K, V 32 KB each; Q, dO 32 KB each per stage; dS^T 8 KB; scratch 16 KB; lse, D 512 bytes per
  // stage; one 8-byte mbarrier per stage.
  EXPECT_EQ(T::kSmemBytes, 216 * 1024 + 2 * 512 + 2 * 8);
  EXPECT_LE(T::kSmemLaunchBytes, 227 * 1024);
  // The fallback where the driver builds no tensor maps: atomics, cp.async, no mbarriers.
  using Serial = BwdSm90SplitKernelTraits<256>;
  EXPECT_FALSE(Serial::kDqBulk || Serial::kTmaQ);
  EXPECT_EQ(Serial::kSmemBytes, 216 * 1024 + 2 * 512);
}

// Which dK / dV kernel a launch gets: never the Hopper one in deterministic mode, for a bucket it
// does not cover, or when the mma.sync kernel is asked for (whatever the device).
TEST(BackwardKernelFamilyTest, Sm90OnlyWhereItCovers) {
  AttentionParams p;
  p.kind = WorkKind::kBackward;
  p.dtype = DTypeCompiled(DType::kBFloat16) ? DType::kBFloat16 : DType::kFloat16;
  p.q_heads = p.kv_heads = 2;
  for (int head_dim : {64, 128, 256}) {
    p.head_dim = head_dim;
    p.deterministic = true;
    EXPECT_EQ(SelectBackwardKernelFamily(p, BwdKernelFamily::kSm90), BwdKernelFamily::kSm80);
    p.deterministic = false;
    EXPECT_EQ(SelectBackwardKernelFamily(p, BwdKernelFamily::kSm80), BwdKernelFamily::kSm80);
    const int bucket = CompiledHeadDimBucket(head_dim);
    if (bucket == 0 || !HasSm90BwdKernel(bucket)) {
      EXPECT_EQ(SelectBackwardKernelFamily(p, BwdKernelFamily::kSm90), BwdKernelFamily::kSm80);
    }
  }
  EXPECT_STREQ(BwdKernelFamilyName(BwdKernelFamily::kSm90), "sm90 (wgmma)");
  EXPECT_STREQ(BwdKernelFamilyName(BwdKernelFamily::kSm80), "sm80 (mma.sync)");
}

}  // namespace
}  // namespace attention::cuda
