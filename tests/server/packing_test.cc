// Packing and the plan: jobs of one kernel configuration with different layouts and sequence
// lengths become one variable-length launch; its plan run through the CPU backend (staged, or a
// lone job in place) and answered by the service's WriteAnswer, every job's output must equal the
// float64 reference of its own request.
#include "server/packing.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention_cpu.h"
#include "proto/contract_types.h"
#include "server/plan.h"
#include "server/request_wire.h"
#include "server/service.h"
#include "server/session/page_storage.h"
#include "server/session/session_store.h"
#include "server/validation.h"
#include "server/worker_pool.h"
#include "tests/server/server_test_util.h"

namespace attention::server {
namespace {

using testing::CompareWithReference;
using testing::MakeRequest;
using testing::RequestOptions;

// Owns the messages of jobs built in a test.
struct Call {
  v1::AttentionRequest request;
  v1::AttentionResponse response;
};

// A validated job over `request`, answered into `response` (q, k and v's bytes in `data` when
// given). The test keeps the pairing: the answer's response travels in the job's completion in
// the server, here in `responses` parallel to the batch's jobs.
std::unique_ptr<Job> MakeJob(const v1::AttentionRequest& request,
                             const TensorData* data = nullptr) {
  absl::StatusOr<RequestSpec> spec = ValidateRequest(request, {}, data);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto job = std::make_unique<Job>();
  job->request = &request;
  job->q_header = &request.q();
  job->spec = std::move(*spec);
  return job;
}

std::unique_ptr<Job> MakeJob(Call& call) { return MakeJob(call.request); }

// How RunPacked moves the bytes: as the CPU executor does (copies on one thread), or as the GPU
// executor does (copy lists split into small pieces across a WorkerPool, job by job and then the
// metadata, outputs allocated before the kernel runs).
enum class CopyPath { kSerial, kPooled };

// Runs `batch`'s plan as an executor would (stage, run, deliver), then writes each job's answer
// into `responses[i]` as the service does.
void RunPacked(Batch& batch, const std::vector<v1::AttentionResponse*>& responses,
               CopyPath path = CopyPath::kSerial) {
  SealBatch(batch);
  const BatchLayout& l = batch.plan.layout;
  // Poisoned staging: whatever the kernel does not write must not reach a response.
  std::vector<char> staging(static_cast<size_t>(l.total_bytes()), static_cast<char>(0x7f));
  char* outputs = staging.data() + l.input_bytes;
  WorkerPool pool(3);
  std::vector<HostCopy> copies;
  if (path == CopyPath::kSerial) {
    AppendInputCopies(batch, staging.data(), &copies);
    RunCopies(copies);
  } else {
    for (size_t i = 0; i < batch.jobs.size(); ++i) {
      AppendInputCopies(batch, staging.data(), &copies, static_cast<int>(i));
    }
    AppendInputCopies(batch, staging.data(), &copies, kMetadata);
    pool.Copy(copies, 24);  // pieces far smaller than a row
  }
  AllocateOutputs(batch);
  const AttentionParams p = BindParams(batch.plan, staging.data(), outputs);
  cpu::CpuBackend backend(2);
  ASSERT_TRUE(backend.Run(p).ok());
  copies.clear();
  AppendOutputCopies(batch, outputs, &copies);
  if (path == CopyPath::kSerial) {
    RunCopies(copies);
  } else {
    pool.Copy(copies, 20);
  }
  ASSERT_EQ(responses.size(), batch.jobs.size());
  for (size_t i = 0; i < batch.jobs.size(); ++i) WriteAnswer(*batch.jobs[i], responses[i]);
}

template <typename CallPtr>
std::vector<v1::AttentionResponse*> Responses(std::vector<CallPtr>& calls) {
  std::vector<v1::AttentionResponse*> responses;
  for (auto& call : calls) responses.push_back(&call->response);
  return responses;
}

RequestOptions Base(v1::DType dtype) {
  RequestOptions o;
  o.dtype = dtype;
  o.q_heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;
  return o;
}

TEST(PackingTest, MixedDenseAndPackedJobsMatchReference) {
  for (CopyPath path : {CopyPath::kSerial, CopyPath::kPooled}) {
    for (v1::DType dtype : {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16}) {
      std::mt19937 rng(11);
      std::vector<std::unique_ptr<Call>> calls;
      RequestOptions o = Base(dtype);
      o.batch = 2;
      o.seqlen_q = 5;
      o.seqlen_k = 9;
      o.return_lse = true;
      calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 1, rng), {}}));
      o.batch = 1;
      o.seqlen_q = 17;
      o.seqlen_k = 3;
      o.return_lse = false;
      calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 2, rng), {}}));
      RequestOptions packed = Base(dtype);
      packed.seqlens_q = {7, 0, 1};
      packed.seqlens_k = {7, 4, 13};
      packed.return_lse = true;
      calls.push_back(std::make_unique<Call>(Call{MakeRequest(packed, 3, rng), {}}));

      Batch batch;
      for (auto& call : calls) AddJob(batch, MakeJob(*call));
      EXPECT_EQ(batch.sequences, 6);
      EXPECT_EQ(batch.total_q, 10 + 17 + 8);
      EXPECT_EQ(batch.total_k, 18 + 3 + 24);
      EXPECT_EQ(batch.max_seqlen_q, 17);
      EXPECT_EQ(batch.max_seqlen_k, 13);
      EXPECT_TRUE(batch.want_lse);
      EXPECT_EQ(batch.cu_seqlens_q, (std::vector<int32_t>{0, 5, 10, 27, 34, 34, 35}));
      EXPECT_EQ(batch.cu_seqlens_k, (std::vector<int32_t>{0, 9, 18, 21, 28, 32, 45}));
      ASSERT_EQ(batch.slices.size(), 3u);
      EXPECT_EQ(batch.slices[2].first_sequence, 3);
      EXPECT_EQ(batch.slices[2].row_q, 27);
      EXPECT_EQ(batch.slices[2].row_k, 21);

      RunPacked(batch, Responses(calls), path);
      for (auto& call : calls) {
        EXPECT_EQ(CompareWithReference(call->request, call->response), "")
            << "dtype " << v1::DType_Name(dtype) << " pooled " << (path == CopyPath::kPooled);
      }
    }
  }
}

TEST(PackingTest, OptionsAndSlopesPerSequence) {
  std::mt19937 rng(12);
  std::vector<std::unique_ptr<Call>> calls;
  RequestOptions o = Base(v1::BFLOAT16);
  o.causal = true;
  o.window_left = 4;
  o.softcap = 5.f;
  o.softmax_scale = 0.3f;
  o.alibi = 1;  // [q_heads]
  o.batch = 2;
  o.seqlen_q = 6;
  o.seqlen_k = 11;
  calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 1, rng), {}}));
  o.alibi = 2;  // [batch, q_heads]
  o.batch = 3;
  o.seqlen_q = 9;
  o.seqlen_k = 4;
  o.return_lse = true;
  calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 2, rng), {}}));

  Batch batch;
  for (auto& call : calls) AddJob(batch, MakeJob(*call));
  ASSERT_EQ(batch.alibi_slopes.size(), 5u * 4u);
  // Sequence 1 (job 0, per-head slopes) repeats job 0's slopes; sequence 4 is job 1's row 2.
  const float* slopes0 =
      reinterpret_cast<const float*>(calls[0]->request.alibi_slopes().data().data());
  const float* slopes1 =
      reinterpret_cast<const float*>(calls[1]->request.alibi_slopes().data().data());
  EXPECT_EQ(batch.alibi_slopes[1 * 4 + 3], slopes0[3]);
  EXPECT_EQ(batch.alibi_slopes[4 * 4 + 1], slopes1[2 * 4 + 1]);
  RunPacked(batch, Responses(calls));
  for (auto& call : calls) EXPECT_EQ(CompareWithReference(call->request, call->response), "");
}

TEST(PackingTest, MaskedJobThroughStagedLayout) {
  std::mt19937 rng(13);
  for (v1::DType mask_dtype : {v1::BOOL, v1::FLOAT32, v1::FLOAT16}) {
    RequestOptions o = Base(v1::FLOAT16);
    o.batch = 2;
    o.seqlen_q = 7;
    o.seqlen_k = 10;
    o.mask_dtype = mask_dtype;
    o.mask_shape = {2, 1, 7, 10};
    o.return_lse = true;
    Call call{MakeRequest(o, 1, rng), {}};
    Batch batch;
    AddJob(batch, MakeJob(call));
    RunPacked(batch, {&call.response});
    EXPECT_EQ(batch.plan.layout.mask % BatchLayout::kAlignment, 0);
    EXPECT_EQ(CompareWithReference(call.request, call.response), "") << v1::DType_Name(mask_dtype);
  }
}

TEST(PackingTest, LayoutIsAlignedAndBounded) {
  std::mt19937 rng(14);
  RequestOptions o = Base(v1::BFLOAT16);
  o.seqlens_q = {3, 2};
  o.seqlens_k = {1, 5};
  o.alibi = 1;
  o.return_lse = true;
  Call call{MakeRequest(o, 1, rng), {}};
  Batch batch;
  std::unique_ptr<Job> job = MakeJob(call);
  const int64_t predicted = BatchBytesWith(job->spec, 0, 0, 0, false, job->spec);
  AddJob(batch, std::move(job));
  SealBatch(batch);
  const BatchLayout& l = batch.plan.layout;
  for (int64_t offset : {l.q, l.k, l.v, l.cu_seqlens_q, l.cu_seqlens_k, l.alibi, l.sinks, l.mask,
                         l.input_bytes, l.o, l.lse, l.output_bytes}) {
    EXPECT_EQ(offset % BatchLayout::kAlignment, 0);
  }
  EXPECT_GE(l.k - l.q, 5 * 4 * 32 * 2);
  EXPECT_GE(l.lse - l.o, 5 * 4 * 32 * 2);
  EXPECT_GE(l.output_bytes - l.lse, 4 * 5 * 4);
  EXPECT_EQ(l.total_bytes(), predicted);
}

TEST(PackingTest, SingleJobInPlace) {
  std::mt19937 rng(15);
  RequestOptions o = Base(v1::FLOAT32);
  o.seqlens_q = {4, 9};
  o.seqlens_k = {12, 2};
  o.return_lse = true;
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {1, 4, 9, 12};
  Call call{MakeRequest(o, 1, rng), {}};
  Batch batch;
  AddJob(batch, MakeJob(call));
  SealBatch(batch);
  AllocateOutputs(batch);
  Job& job = *batch.jobs[0];
  ASSERT_EQ(job.outputs.lse.size(), static_cast<size_t>(job.spec.lse_bytes));
  std::memset(job.outputs.o.data(), 0x7f, job.outputs.o.size());
  std::vector<char> gathered;
  const AttentionParams p = InPlaceParams(batch, &gathered);
  EXPECT_TRUE(gathered.empty());  // contiguous inputs are read where they are
  EXPECT_EQ(p.o, job.outputs.o.data());
  cpu::CpuBackend backend(2);
  ASSERT_TRUE(backend.Run(p).ok());
  WriteAnswer(job, &call.response);
  EXPECT_EQ(CompareWithReference(call.request, call.response), "");
}

// A request as the server receives it: serialized, split into `piece_bytes` pieces (as gRPC's
// slices split a message) and parsed with its tensors left in those pieces.
struct ReceivedCall {
  v1::AttentionRequest original;  // what the client sent, for the reference
  std::string wire;
  v1::AttentionRequest message;  // without q, k and v's data
  TensorData data;
  v1::AttentionResponse response;
};

std::unique_ptr<ReceivedCall> Receive(v1::AttentionRequest request, size_t piece_bytes) {
  auto call = std::make_unique<ReceivedCall>();
  call->original = std::move(request);
  call->wire = call->original.SerializeAsString();
  WirePieces pieces;
  for (size_t at = 0; at < call->wire.size(); at += piece_bytes) {
    pieces.emplace_back(call->wire.data() + at, std::min(piece_bytes, call->wire.size() - at));
  }
  EXPECT_TRUE(ParseWithoutTensorData(pieces, &call->message, &call->data));
  return call;
}

std::unique_ptr<Job> MakeReceivedJob(ReceivedCall& call) {
  return MakeJob(call.message, &call.data);
}

TEST(PackingTest, InputsInReceivedPiecesAreStagedPieceByPiece) {
  for (CopyPath path : {CopyPath::kSerial, CopyPath::kPooled}) {
    std::mt19937 rng(16);
    std::vector<std::unique_ptr<ReceivedCall>> calls;
    RequestOptions o = Base(v1::BFLOAT16);
    o.batch = 2;
    o.seqlen_q = 33;
    o.seqlen_k = 47;
    o.return_lse = true;
    calls.push_back(Receive(MakeRequest(o, 1, rng), 1000));  // pieces not aligned to rows
    RequestOptions packed = Base(v1::BFLOAT16);
    packed.seqlens_q = {19, 5};
    packed.seqlens_k = {30, 8};
    calls.push_back(Receive(MakeRequest(packed, 2, rng), 1 << 20));  // one piece: in place
    Batch batch;
    for (auto& call : calls) AddJob(batch, MakeReceivedJob(*call));
    EXPECT_FALSE(batch.jobs[0]->spec.inputs_contiguous());
    EXPECT_GT(batch.jobs[0]->spec.q_pieces->size(), 10u);
    EXPECT_TRUE(batch.jobs[1]->spec.inputs_contiguous());
    RunPacked(batch, Responses(calls), path);
    for (auto& call : calls) {
      EXPECT_EQ(CompareWithReference(call->original, call->response), "")
          << "pooled " << (path == CopyPath::kPooled);
    }
  }
}

// A head_dim that is not a multiple of 8 runs with its rows padded to one (PlanHeadDim: the GPU
// kernels read 16-byte chunks): the staged rows carry zeros after the request's elements (the
// staging is poisoned, so a missed zero would show), the kernel sees the padded head_dim with the
// request's scale, and the answers hold the request's columns only. Jobs received in pieces that
// split rows, dense and packed, every dtype, both copy paths.
TEST(PackingTest, HeadDimsPaddedToEightThroughThePlan) {
  for (CopyPath path : {CopyPath::kSerial, CopyPath::kPooled}) {
    for (v1::DType dtype : {v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16}) {
      for (int head_dim : {1, 5, 12, 33}) {
        std::mt19937 rng(31 + head_dim);
        std::vector<std::unique_ptr<ReceivedCall>> calls;
        RequestOptions o = Base(dtype);
        o.head_dim = head_dim;
        o.batch = 2;
        o.seqlen_q = 9;
        o.seqlen_k = 21;
        o.causal = true;
        o.return_lse = true;
        o.softmax_scale = 0.7f;  // one bucket: the scale is part of the configuration
        calls.push_back(Receive(MakeRequest(o, 1, rng), 250));  // pieces split rows
        RequestOptions packed = Base(dtype);
        packed.head_dim = head_dim;
        packed.seqlens_q = {6, 0, 3};
        packed.seqlens_k = {6, 4, 11};
        packed.causal = true;
        packed.softmax_scale = 0.7f;
        calls.push_back(Receive(MakeRequest(packed, 2, rng), 1 << 20));
        Batch batch;
        for (auto& call : calls) AddJob(batch, MakeReceivedJob(*call));
        RunPacked(batch, Responses(calls), path);
        const int padded = (head_dim + 7) / 8 * 8;
        EXPECT_EQ(batch.plan.params.head_dim, padded);
        EXPECT_EQ(PlanHeadDim(batch.config), padded);
        EXPECT_EQ(batch.plan.layout.k, (batch.total_q * 4 * padded * DTypeSize(batch.config.dtype) +
                                        BatchLayout::kAlignment - 1) /
                                           BatchLayout::kAlignment * BatchLayout::kAlignment);
        for (auto& call : calls) {
          EXPECT_EQ(call->response.o().data().size(), call->original.q().data().size());
          EXPECT_EQ(CompareWithReference(call->original, call->response), "")
              << "dtype " << v1::DType_Name(dtype) << " head_dim " << head_dim << " pooled "
              << (path == CopyPath::kPooled);
        }
      }
    }
  }
}

// FLOAT8_E4M3 jobs with different descales (none, per tensor, per head) in one launch: the plan
// expands each sequence's factors into [sequences, heads], pads rows to a multiple of 16, lays o
// out as bfloat16, and every answer matches the reference on its own dequantized inputs.
TEST(PackingTest, Fp8JobsWithTheirOwnDescales) {
  for (CopyPath path : {CopyPath::kSerial, CopyPath::kPooled}) {
    for (int head_dim : {8, 40, 64}) {
      std::mt19937 rng(41 + head_dim);
      std::vector<std::unique_ptr<ReceivedCall>> calls;
      // Job `id` of `descale` kind (RequestOptions::descale), its shape set by `shape`, received in
      // pieces of `piece_bytes`.
      const auto add = [&](uint64_t id, int descale, size_t piece_bytes,
                           const std::function<void(RequestOptions&)>& shape) {
        RequestOptions o = Base(v1::FLOAT8_E4M3);
        o.head_dim = head_dim;
        o.descale = descale;
        shape(o);
        calls.push_back(Receive(MakeRequest(o, id, rng), piece_bytes));
      };
      add(1, 2, 100, [](RequestOptions& o) {  // pieces split rows
        o.batch = 2;
        o.seqlen_q = 9;
        o.seqlen_k = 21;
        o.return_lse = true;
      });
      add(2, 1, 1 << 20, [](RequestOptions& o) {
        o.seqlens_q = {6, 0, 3};
        o.seqlens_k = {6, 4, 11};
      });
      add(3, 0, 1 << 20, [](RequestOptions& o) {
        o.seqlen_q = 4;
        o.seqlen_k = 30;
      });
      Batch batch;
      for (auto& call : calls) AddJob(batch, MakeReceivedJob(*call));
      ASSERT_EQ(batch.sequences, 6);
      ASSERT_EQ(batch.q_descale.size(), 6u * 4);
      ASSERT_EQ(batch.k_descale.size(), 6u * 2);
      ASSERT_EQ(batch.v_descale.size(), 6u * 2);
      const float* per_head =
          reinterpret_cast<const float*>(calls[0]->original.k_descale().data().data());
      const float per_tensor =
          *reinterpret_cast<const float*>(calls[1]->original.q_descale().data().data());
      EXPECT_EQ(batch.k_descale[2 * 1 + 1], per_head[1]);  // sequence 1, kv head 1
      EXPECT_EQ(batch.q_descale[4 * 3 + 2], per_tensor);   // sequence 3 (the packed job's second)
      EXPECT_EQ(batch.v_descale[2 * 5], 1.0f);             // the job without factors
      RunPacked(batch, Responses(calls), path);
      const int padded = (head_dim + 15) / 16 * 16;
      EXPECT_EQ(batch.plan.params.head_dim, padded);
      EXPECT_EQ(batch.plan.params.q_descale_batch_stride, 4);
      EXPECT_EQ(batch.plan.params.k_descale_batch_stride, 2);
      EXPECT_EQ(batch.plan.params.v_descale_head_stride, 1);
      const BatchLayout& l = batch.plan.layout;
      EXPECT_EQ(l.lse - l.o, (batch.total_q * 4 * padded * 2 + BatchLayout::kAlignment - 1) /
                                 BatchLayout::kAlignment * BatchLayout::kAlignment);
      for (auto& call : calls) {
        EXPECT_EQ(call->response.o().dtype(), v1::BFLOAT16);
        EXPECT_EQ(call->response.o().data().size(), 2 * call->original.q().data().size());
        EXPECT_EQ(CompareWithReference(call->original, call->response), "")
            << "head_dim " << head_dim << " pooled " << (path == CopyPath::kPooled);
      }
    }
  }
}

TEST(PackingTest, SingleJobInPiecesIsGatheredThenRunInPlace) {
  std::mt19937 rng(17);
  RequestOptions o = Base(v1::FLOAT16);
  o.batch = 1;
  o.seqlen_q = 40;
  o.seqlen_k = 70;
  o.causal = true;
  o.return_lse = true;
  std::unique_ptr<ReceivedCall> call = Receive(MakeRequest(o, 1, rng), 777);
  Batch batch;
  AddJob(batch, MakeReceivedJob(*call));
  Job& job = *batch.jobs[0];
  ASSERT_FALSE(job.spec.inputs_contiguous());
  SealBatch(batch);
  AllocateOutputs(batch);
  std::memset(job.outputs.o.data(), 0x7f, job.outputs.o.size());
  std::vector<char> gathered(3, 'x');  // reused buffers start with stale bytes
  const AttentionParams p = InPlaceParams(batch, &gathered);
  EXPECT_EQ(gathered.size(), static_cast<size_t>(job.spec.q_bytes + 2 * job.spec.kv_bytes));
  cpu::CpuBackend backend(2);
  ASSERT_TRUE(backend.Run(p).ok());
  WriteAnswer(job, &call->response);
  EXPECT_EQ(CompareWithReference(call->original, call->response), "");
}

TEST(PackingTest, SinksPerSequenceThroughThePlan) {
  std::mt19937 rng(18);
  std::vector<std::unique_ptr<Call>> calls;
  RequestOptions o = Base(v1::FLOAT32);
  o.sinks = true;
  o.batch = 2;
  o.seqlen_q = 5;
  o.seqlen_k = 8;
  o.causal = true;
  o.return_lse = true;
  calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 1, rng), {}}));
  o.batch = 1;
  o.seqlen_q = 9;  // more rows than keys: the first rows see no key (o = 0, lse = sink)
  o.seqlen_k = 4;
  calls.push_back(std::make_unique<Call>(Call{MakeRequest(o, 2, rng), {}}));
  Batch batch;
  for (auto& call : calls) AddJob(batch, MakeJob(*call));
  ASSERT_EQ(batch.sink_logits.size(), 3u * 4u);
  const float* sinks1 = reinterpret_cast<const float*>(calls[1]->request.sinks().data().data());
  EXPECT_EQ(batch.sink_logits[2 * 4 + 3], sinks1[3]);
  RunPacked(batch, Responses(calls));
  for (auto& call : calls) EXPECT_EQ(CompareWithReference(call->request, call->response), "");
}

// Sessions' Attend calls (kind kPagedDecode) of several sessions, each with its own context in
// one host pool, packed into one launch through the plan: each answer must equal the float64
// reference of a stateless request carrying that session's whole context as k and v.
TEST(PackingTest, PagedDecodeBatchOfSessionsMatchesReference) {
  for (v1::DType dtype : {v1::FLOAT32, v1::BFLOAT16}) {
    session::PoolOptions pool_options;
    pool_options.page_bytes = 4096;  // 1 KV-head row of d 32: 8 (fp32) or 16 (bf16) tokens a page
    pool_options.num_pages = 256;
    absl::StatusOr<std::unique_ptr<session::HostPageStorage>> storage =
        session::HostPageStorage::Create(pool_options);
    ASSERT_TRUE(storage.ok()) << storage.status();
    std::vector<std::unique_ptr<session::PageStorage>> storages;
    storages.push_back(*std::move(storage));
    session::StoreOptions store_options;
    store_options.sweep_interval = absl::ZeroDuration();
    absl::StatusOr<std::unique_ptr<session::SessionStore>> store =
        session::SessionStore::Create(store_options, std::move(storages));
    ASSERT_TRUE(store.ok()) << store.status();

    std::mt19937 rng(21);
    // Per session: context length, query rows, options.
    struct SessionCase {
      int context, rows;
      bool causal, key_range;
    };
    const SessionCase cases[] = {
        {37, 1, true, false}, {5, 4, true, false}, {64, 16, false, true}, {0, 2, false, false}};
    std::vector<std::unique_ptr<Call>> calls;  // the stateless equivalents, for the reference
    Batch batch;
    for (const SessionCase& c : cases) {
      session::SessionSpec spec;
      spec.layers = 2;
      spec.kv_heads = 1;
      spec.head_dim = 32;
      spec.dtype = *KernelDType(dtype);
      absl::StatusOr<session::SessionId> id = (*store)->CreateSession(spec);
      ASSERT_TRUE(id.ok()) << id.status();
      // The stateless request: q [1, rows, 4, 32] against k, v [1, context, 1, 32].
      RequestOptions o = Base(dtype);
      o.q_heads = 4;
      o.kv_heads = 1;
      o.seqlen_q = c.rows;
      o.seqlen_k = std::max(c.context, 1);
      o.causal = c.causal;
      o.sinks = true;
      o.alibi = 1;
      o.return_lse = true;
      auto call = std::make_unique<Call>(Call{MakeRequest(o, calls.size(), rng), {}});
      const v1::AttentionRequest& r = call->request;
      session::ReadView view;
      if (c.context > 0) {
        absl::StatusOr<session::AppendResult> appended =
            (*store)->AppendRows(*id, 1, c.context, r.k().data().data(), r.v().data().data());
        ASSERT_TRUE(appended.ok()) << appended.status();
        view = std::move(appended->view);
      } else {
        absl::StatusOr<session::ReadView> empty = (*store)->View(*id, 1);
        ASSERT_TRUE(empty.ok()) << empty.status();
        view = *std::move(empty);
      }
      // The job as the session service makes it: the forward request's spec with the context
      // taken from the view.
      absl::StatusOr<RequestSpec> spec_or = ValidateRequest(r, {});
      ASSERT_TRUE(spec_or.ok()) << spec_or.status();
      auto job = std::make_unique<Job>();
      job->q_header = &r.q();
      job->paged = std::make_unique<PagedContext>();
      job->paged->view = std::move(view);
      job->paged->cu_seqlens_q[1] = c.rows;
      if (c.key_range) {
        job->paged->has_key_range = true;
        job->paged->key_range[0] = 9;
        job->paged->key_range[1] = 40;
      }
      RequestSpec s = *std::move(spec_or);
      s.kind = WorkKind::kPagedDecode;
      s.packed = true;
      s.batch = 1;
      s.total_q = s.seqlen_q = c.rows;
      s.seqlen_k = c.context;
      s.total_k = 0;
      s.kv_bytes = 0;
      s.k_data = s.v_data = nullptr;
      s.cu_seqlens_q = job->paged->cu_seqlens_q;
      s.page_size = job->paged->view.layout().page_size;
      s.lse_bytes = int64_t{4} * s.q_heads * c.rows;
      job->spec = std::move(s);
      AddJob(batch, std::move(job));
      // The reference's request: an empty context is one key masked out by a zero-length key
      // range would be; here it is k, v of one row with every key excluded by a bool mask.
      if (c.context == 0) {
        v1::Tensor* mask = call->request.mutable_mask();
        mask->set_dtype(v1::BOOL);
        mask->add_shape(1);
        mask->add_shape(1);
        mask->set_data(std::string(1, '\0'));
      }
      if (c.key_range) {
        // Keys outside [9, 40) of the context: a bool mask on the stateless request.
        v1::Tensor* mask = call->request.mutable_mask();
        mask->set_dtype(v1::BOOL);
        mask->add_shape(1);
        mask->add_shape(c.context);
        std::string bits(static_cast<size_t>(c.context), '\0');
        for (int j = 9; j < 40; ++j) bits[static_cast<size_t>(j)] = 1;
        mask->set_data(bits);
      }
      calls.push_back(std::move(call));
    }
    EXPECT_EQ(batch.sequences, 4);
    std::vector<v1::AttentionResponse*> responses;
    for (auto& call : calls) responses.push_back(&call->response);
    RunPacked(batch, responses);
    EXPECT_EQ(batch.max_pages,
              (64 + batch.plan.params.page_size - 1) / batch.plan.params.page_size);
    EXPECT_EQ(batch.seqlens_k, (std::vector<int32_t>{37, 5, 64, 0}));
    for (auto& call : calls) {
      // An Attend's lse is [q_heads, n_new] (its q is packed); the stateless request's is
      // [1, q_heads, n_new]: the same bytes.
      ASSERT_EQ(call->response.lse().shape_size(), 2);
      call->response.mutable_lse()->mutable_shape()->Add(0);
      auto* shape = call->response.mutable_lse()->mutable_shape();
      (*shape)[2] = (*shape)[1];
      (*shape)[1] = (*shape)[0];
      (*shape)[0] = 1;
      EXPECT_EQ(CompareWithReference(call->request, call->response), "")
          << v1::DType_Name(dtype) << " request " << call->request.request_id();
    }
    batch.jobs.clear();  // views end before the store
  }
}

}  // namespace
}  // namespace attention::server
