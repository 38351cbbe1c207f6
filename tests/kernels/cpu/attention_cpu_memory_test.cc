// Extra memory of the CPU backend is O(tile), not O(seqlen^2): one 64k-token request (seqlen_q =
// seqlen_k = 65536, float32) must raise the process's peak RSS by far less than one row block of
// scores against all keys (block_q * 65536 * 4 bytes: 16 MiB per thread at block_q 64, 32 MiB
// at 128), let alone the
// 16 GiB of a full score matrix. Peak RSS is read from /proc/self/status (VmHWM) after resetting
// it to the current RSS through /proc/self/clear_refs. A few rows are checked against the float64
// reference on the equivalent one-row problem (row i of a causal 64k problem is the causal
// problem with seqlen_q = 1, seqlen_k = i + 1).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "tests/reference/reference_attention.h"

namespace attention::cpu {
namespace {

constexpr int kTokens = 65536;
constexpr int kHeadDim = 64;
// Below the 16 MiB a single [64, seqlen_k] score block per thread would take.
constexpr double kMaxGrowthMiB = 8.0;

int64_t StatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key));
  }
  return -1;
}

struct Request {
  AttentionParams p;
  std::vector<float> q, k, v, o, lse;
};

void MakeRequest(int window_left, Request& r) {
  AttentionParams& p = r.p;
  p.dtype = DType::kFloat32;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = kTokens;
  p.q_heads = p.kv_heads = 1;
  p.head_dim = kHeadDim;
  p.causal = true;
  p.window_left = window_left;
  p.softmax_scale = 1.0f / std::sqrt(float(kHeadDim));
  SetContiguousStrides(p);
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.f, 1.f);
  const int64_t n = int64_t{kTokens} * kHeadDim;
  for (auto* t : {&r.q, &r.k, &r.v}) {
    t->resize(n);
    for (float& x : *t) x = dist(rng);
  }
  r.o.assign(n, std::nanf(""));
  r.lse.assign(kTokens, std::nanf(""));
  p.q = r.q.data();
  p.k = r.k.data();
  p.v = r.v.data();
  p.o = r.o.data();
  p.lse = r.lse.data();
}

// Checks row i against the reference of the equivalent single-row problem.
void ExpectRowMatches(const Request& r, int64_t i) {
  AttentionParams one = r.p;
  one.seqlen_q = 1;
  one.seqlen_k = static_cast<int>(i + 1);
  one.q = r.q.data() + i * kHeadDim;
  SetContiguousStrides(one);
  std::vector<double> o(kHeadDim), lse(1);
  testing::ReferenceAttention(one, o.data(), lse.data());
  for (int e = 0; e < kHeadDim; ++e) {
    EXPECT_NEAR(r.o[i * kHeadDim + e], o[e], 2e-5 + 2e-5 * std::abs(o[e])) << "row " << i;
  }
  EXPECT_NEAR(r.lse[i], lse[0], 1e-4 + 1e-5 * std::abs(lse[0])) << "row " << i;
}

void RunAndMeasure(int window_left) {
  CpuBackend backend;  // all cores; the workers exist before the baseline is taken
  Request r;
  MakeRequest(window_left, r);
  const int64_t rss_kb = StatusKb("VmRSS:");
  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
  const int64_t reset_kb = StatusKb("VmHWM:");
  ASSERT_LT(reset_kb - rss_kb, 1024) << "could not reset VmHWM through /proc/self/clear_refs";

  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(backend.Run(r.p).ok());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double growth_mib = (StatusKb("VmHWM:") - rss_kb) / 1024.0;
  std::printf(
      "64k-token causal request (window_left %d), %d threads, %s: %.2f s, peak RSS growth "
      "%.2f MiB (inputs and outputs %.1f MiB)\n",
      window_left, backend.num_threads(), CpuIsaName(backend.isa()), secs, growth_mib,
      4.0 * 4 * r.q.size() / (1 << 20));
  EXPECT_LT(growth_mib, kMaxGrowthMiB);
  if (window_left < 0) {  // windows are checked against the reference in attention_cpu_test
    for (int64_t i : {0, 1, 4095, 40000, kTokens - 1}) ExpectRowMatches(r, i);
  }
  for (size_t i = 0; i < r.o.size(); ++i) {
    ASSERT_TRUE(std::isfinite(r.o[i])) << "o[" << i << "] not written";
  }
}

// Sliding window of 256: the same 64k-token shapes and memory path, a few GFLOP.
TEST(CpuAttentionMemory, Window64kTokens) { RunAndMeasure(256); }

// Full causal attention over 64k tokens (0.55 TFLOP, ~5 s on 2 AVX2 cores).
TEST(CpuAttentionMemory, Causal64kTokens) { RunAndMeasure(-1); }

}  // namespace
}  // namespace attention::cpu
