#include "server/packing.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "server/output_pool.h"

namespace attention::server {
namespace {

int64_t Align(int64_t n) {
  return (n + BatchLayout::kAlignment - 1) / BatchLayout::kAlignment * BatchLayout::kAlignment;
}

int64_t RowBytes(const BucketKey& key, int heads) {
  return int64_t{heads} * key.head_dim * DTypeSize(key.dtype);
}

BatchLayout ComputeLayout(const BucketKey& key, int sequences, int64_t total_q, int64_t total_k,
                          bool want_lse, int64_t mask_bytes) {
  BatchLayout l;
  const int64_t q_bytes = total_q * RowBytes(key, key.q_heads);
  const int64_t kv_bytes = total_k * RowBytes(key, key.kv_heads);
  const int64_t cu_bytes = (int64_t{sequences} + 1) * 4;
  l.q = 0;
  l.k = Align(l.q + q_bytes);
  l.v = Align(l.k + kv_bytes);
  l.cu_seqlens_q = Align(l.v + kv_bytes);
  l.cu_seqlens_k = Align(l.cu_seqlens_q + cu_bytes);
  l.alibi = Align(l.cu_seqlens_k + cu_bytes);
  l.mask = Align(l.alibi + (key.alibi ? int64_t{sequences} * key.q_heads * 4 : 0));
  l.input_bytes = Align(l.mask + mask_bytes);
  l.o = 0;
  l.lse = Align(q_bytes);
  l.output_bytes = Align(l.lse + (want_lse ? int64_t{key.q_heads} * total_q * 4 : 0));
  return l;
}

// Sets the dtype and shape of the job's o (and lse) tensors in its response.
void SetOutputHeaders(const Job& job) {
  const RequestSpec& s = job.spec;
  v1::Tensor* o = job.response->mutable_o();
  o->set_dtype(job.request->q().dtype());
  o->mutable_shape()->CopyFrom(job.request->q().shape());
  if (!s.return_lse) return;
  v1::Tensor* lse = job.response->mutable_lse();
  lse->set_dtype(v1::FLOAT32);
  auto* shape = lse->mutable_shape();
  shape->Clear();
  if (s.packed) {
    shape->Add(s.q_heads);
    shape->Add(s.total_q);
  } else {
    shape->Add(s.batch);
    shape->Add(s.q_heads);
    shape->Add(s.seqlen_q);
  }
}

}  // namespace

BucketKey MakeBucketKey(const RequestSpec& spec) {
  BucketKey key;
  key.dtype = spec.dtype;
  key.head_dim = spec.head_dim;
  key.q_heads = spec.q_heads;
  key.kv_heads = spec.kv_heads;
  key.causal = spec.causal;
  key.window_left = spec.window_left;
  key.window_right = spec.window_right;
  key.softcap = spec.softcap;
  key.softmax_scale = spec.softmax_scale;
  key.alibi = spec.alibi_slopes != nullptr;
  key.mask_kind = spec.mask_kind;
  return key;
}

void AddJob(Batch& batch, std::unique_ptr<Job> job) {
  const RequestSpec& s = job->spec;
  if (batch.jobs.empty()) {
    batch.key = MakeBucketKey(s);
    batch.cu_seqlens_q.assign(1, 0);
    batch.cu_seqlens_k.assign(1, 0);
  }
  batch.slices.push_back(JobSlice{batch.sequences, batch.total_q, batch.total_k});
  for (int b = 0; b < s.batch; ++b) {
    const int64_t len_q = s.seqlen_q_of(b);
    const int64_t len_k = s.seqlen_k_of(b);
    batch.cu_seqlens_q.push_back(static_cast<int32_t>(batch.cu_seqlens_q.back() + len_q));
    batch.cu_seqlens_k.push_back(static_cast<int32_t>(batch.cu_seqlens_k.back() + len_k));
    batch.max_seqlen_q = std::max<int>(batch.max_seqlen_q, static_cast<int>(len_q));
    batch.max_seqlen_k = std::max<int>(batch.max_seqlen_k, static_cast<int>(len_k));
    if (s.alibi_slopes != nullptr) {
      const float* slopes = s.alibi_slopes + b * s.alibi_batch_stride;
      batch.alibi_slopes.insert(batch.alibi_slopes.end(), slopes, slopes + s.q_heads);
    }
  }
  batch.sequences += s.batch;
  batch.total_q += s.total_q;
  batch.total_k += s.total_k;
  batch.want_lse = batch.want_lse || s.return_lse;
  batch.flops += s.flops();
  batch.jobs.push_back(std::move(job));
}

int64_t BatchBytesWith(const BucketKey& key, int sequences, int64_t total_q, int64_t total_k,
                       bool want_lse, const RequestSpec& spec) {
  return ComputeLayout(key, sequences + spec.batch, total_q + spec.total_q, total_k + spec.total_k,
                       want_lse || spec.return_lse, spec.mask_bytes)
      .total_bytes();
}

void SealBatch(Batch& batch) {
  const int64_t mask_bytes =
      batch.key.mask_kind == MaskKind::kNone ? 0 : batch.jobs[0]->spec.mask_bytes;
  batch.layout = ComputeLayout(batch.key, batch.sequences, batch.total_q, batch.total_k,
                               batch.want_lse, mask_bytes);
}

void RunCopies(const std::vector<HostCopy>& copies) {
  for (const HostCopy& c : copies) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
}

namespace {

// The copies of one input tensor (`bytes` bytes, in one span at `data` or in `pieces`) to `dst`.
void AppendTensorCopies(char* dst, const char* data, const TensorPieces* pieces, int64_t bytes,
                        std::vector<HostCopy>* copies) {
  if (data != nullptr) {
    copies->push_back({dst, data, bytes});
    return;
  }
  for (const absl::string_view piece : *pieces) {
    if (piece.empty()) continue;
    const auto size = static_cast<int64_t>(piece.size());
    copies->push_back({dst, piece.data(), size});
    dst += size;
  }
}

}  // namespace

void AppendJobInputCopies(const Batch& batch, size_t index, char* inputs,
                          std::vector<HostCopy>* copies) {
  const RequestSpec& s = batch.jobs[index]->spec;
  const JobSlice& slice = batch.slices[index];
  const BatchLayout& l = batch.layout;
  const int64_t k_offset = slice.row_k * RowBytes(batch.key, batch.key.kv_heads);
  AppendTensorCopies(inputs + l.q + slice.row_q * RowBytes(batch.key, batch.key.q_heads), s.q_data,
                     s.q_pieces, s.q_bytes, copies);
  AppendTensorCopies(inputs + l.k + k_offset, s.k_data, s.k_pieces, s.kv_bytes, copies);
  AppendTensorCopies(inputs + l.v + k_offset, s.v_data, s.v_pieces, s.kv_bytes, copies);
}

void StageJobInputs(const Batch& batch, size_t index, char* inputs) {
  std::vector<HostCopy> copies;
  AppendJobInputCopies(batch, index, inputs, &copies);
  RunCopies(copies);
}

void StageMetadata(const Batch& batch, char* inputs) {
  const BatchLayout& l = batch.layout;
  const size_t cu_bytes = batch.cu_seqlens_q.size() * sizeof(int32_t);
  std::memcpy(inputs + l.cu_seqlens_q, batch.cu_seqlens_q.data(), cu_bytes);
  std::memcpy(inputs + l.cu_seqlens_k, batch.cu_seqlens_k.data(), cu_bytes);
  if (!batch.alibi_slopes.empty()) {
    std::memcpy(inputs + l.alibi, batch.alibi_slopes.data(),
                batch.alibi_slopes.size() * sizeof(float));
  }
  if (batch.key.mask_kind != MaskKind::kNone) {
    const RequestSpec& s = batch.jobs[0]->spec;
    std::memcpy(inputs + l.mask, s.mask(), static_cast<size_t>(s.mask_bytes));
  }
}

void StageInputs(const Batch& batch, char* inputs) {
  for (size_t i = 0; i < batch.jobs.size(); ++i) StageJobInputs(batch, i, inputs);
  StageMetadata(batch, inputs);
}

AttentionParams MakeBatchParams(const Batch& batch, const void* inputs, void* outputs) {
  const BucketKey& key = batch.key;
  const BatchLayout& l = batch.layout;
  const char* in = static_cast<const char*>(inputs);
  char* out = static_cast<char*>(outputs);
  AttentionParams p;
  p.dtype = key.dtype;
  p.q = in + l.q;
  p.k = in + l.k;
  p.v = in + l.v;
  p.o = out + l.o;
  p.lse = batch.want_lse ? reinterpret_cast<float*>(out + l.lse) : nullptr;
  p.batch = batch.sequences;
  p.seqlen_q = batch.max_seqlen_q;
  p.seqlen_k = batch.max_seqlen_k;
  p.total_q = batch.total_q;
  p.total_k = batch.total_k;
  p.q_heads = key.q_heads;
  p.kv_heads = key.kv_heads;
  p.head_dim = key.head_dim;
  p.cu_seqlens_q = reinterpret_cast<const int32_t*>(in + l.cu_seqlens_q);
  p.cu_seqlens_k = reinterpret_cast<const int32_t*>(in + l.cu_seqlens_k);
  SetContiguousStrides(p);
  p.softmax_scale = key.softmax_scale;
  p.softcap = key.softcap;
  p.causal = key.causal;
  p.window_left = key.window_left;
  p.window_right = key.window_right;
  if (key.alibi) {
    p.alibi_slopes = reinterpret_cast<const float*>(in + l.alibi);
    p.alibi_batch_stride = key.q_heads;
  }
  if (key.mask_kind != MaskKind::kNone) {
    const RequestSpec& s = batch.jobs[0]->spec;
    p.mask_kind = key.mask_kind;
    p.mask = in + l.mask;
    p.mask_batch_stride = s.mask_batch_stride;
    p.mask_head_stride = s.mask_head_stride;
    p.mask_row_stride = s.mask_row_stride;
    p.mask_col_stride = s.mask_col_stride;
  }
  return p;
}

void SizeBatchOutputs(const Batch& batch) {
  for (const auto& job : batch.jobs) {
    char* o = nullptr;
    float* lse = nullptr;
    SizeJobOutputs(*job, &o, &lse);
  }
}

namespace {

// The copies that move job `index`'s lse runs from the batch's [q_heads, total_q] lse into its
// sized response: packed job [q_heads, total_q]; dense job [batch, q_heads, seqlen_q], so one
// run of seqlen_q rows per (sequence, head).
void AppendJobLseCopies(const Batch& batch, size_t index, const char* outputs,
                        std::vector<HostCopy>* copies) {
  const Job& job = *batch.jobs[index];
  const RequestSpec& s = job.spec;
  if (!s.return_lse) return;
  const char* batch_lse = outputs + batch.layout.lse;
  char* lse = job.response->mutable_lse()->mutable_data()->data();
  const int64_t row_q = batch.slices[index].row_q;
  const int runs = s.packed ? 1 : s.batch;
  const int64_t run_rows = s.packed ? s.total_q : s.seqlen_q;
  constexpr int64_t kFloat = sizeof(float);
  for (int b = 0; b < runs; ++b) {
    for (int h = 0; h < s.q_heads; ++h) {
      const int64_t src_row = h * batch.total_q + row_q + b * run_rows;
      const int64_t dst_row = (int64_t{b} * s.q_heads + h) * run_rows;
      copies->push_back({lse + dst_row * kFloat, batch_lse + src_row * kFloat, run_rows * kFloat});
    }
  }
}

const char* JobOutput(const Batch& batch, size_t index, const char* outputs) {
  return outputs + batch.layout.o +
         batch.slices[index].row_q * RowBytes(batch.key, batch.key.q_heads);
}

}  // namespace

void AppendJobOutputCopies(const Batch& batch, size_t index, const char* outputs,
                           std::vector<HostCopy>* copies) {
  const Job& job = *batch.jobs[index];
  copies->push_back({job.response->mutable_o()->mutable_data()->data(),
                     JobOutput(batch, index, outputs), job.spec.q_bytes});
  AppendJobLseCopies(batch, index, outputs, copies);
}

void ScatterOutputs(const Batch& batch, const char* outputs) {
  std::vector<HostCopy> copies;
  for (size_t i = 0; i < batch.jobs.size(); ++i) {
    const Job& job = *batch.jobs[i];
    SetOutputHeaders(job);
    std::string* o_data = job.response->mutable_o()->mutable_data();
    *o_data = OutputPool::Process().Take(static_cast<size_t>(job.spec.q_bytes));
    std::memcpy(o_data->data(), JobOutput(batch, i, outputs), o_data->size());
    if (!job.spec.return_lse) continue;
    job.response->mutable_lse()->mutable_data()->resize(static_cast<size_t>(job.spec.lse_bytes));
    copies.clear();
    AppendJobLseCopies(batch, i, outputs, &copies);
    RunCopies(copies);
  }
}

void SizeJobOutputs(const Job& job, char** o, float** lse) {
  SetOutputHeaders(job);
  std::string* o_data = job.response->mutable_o()->mutable_data();
  *o_data = OutputPool::Process().Take(static_cast<size_t>(job.spec.q_bytes));
  *o = o_data->data();
  *lse = nullptr;
  if (job.spec.return_lse) {
    std::string* lse_data = job.response->mutable_lse()->mutable_data();
    lse_data->resize(static_cast<size_t>(job.spec.lse_bytes));
    *lse = reinterpret_cast<float*>(lse_data->data());
  }
}

AttentionParams MakeJobParams(const Job& job, void* o, float* lse) {
  const RequestSpec& s = job.spec;
  AttentionParams p;
  p.dtype = s.dtype;
  p.q = s.q_data;
  p.k = s.k_data;
  p.v = s.v_data;
  p.o = o;
  p.lse = lse;
  p.batch = s.batch;
  p.seqlen_q = s.seqlen_q;
  p.seqlen_k = s.seqlen_k;
  p.q_heads = s.q_heads;
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  if (s.packed) {
    p.total_q = s.total_q;
    p.total_k = s.total_k;
    p.cu_seqlens_q = s.cu_seqlens_q;
    p.cu_seqlens_k = s.cu_seqlens_k;
  }
  SetContiguousStrides(p);
  p.softmax_scale = s.softmax_scale;
  p.softcap = s.softcap;
  p.causal = s.causal;
  p.window_left = s.window_left;
  p.window_right = s.window_right;
  p.alibi_slopes = s.alibi_slopes;
  p.alibi_batch_stride = s.alibi_batch_stride;
  p.mask_kind = s.mask_kind;
  p.mask = s.mask();
  p.mask_batch_stride = s.mask_batch_stride;
  p.mask_head_stride = s.mask_head_stride;
  p.mask_row_stride = s.mask_row_stride;
  p.mask_col_stride = s.mask_col_stride;
  return p;
}

void GatherJobInputs(const Job& job, std::vector<char>* buffer, AttentionParams* p) {
  const RequestSpec& s = job.spec;
  buffer->resize(static_cast<size_t>(s.q_bytes + 2 * s.kv_bytes));
  char* q = buffer->data();
  char* k = q + s.q_bytes;
  char* v = k + s.kv_bytes;
  std::vector<HostCopy> copies;
  AppendTensorCopies(q, s.q_data, s.q_pieces, s.q_bytes, &copies);
  AppendTensorCopies(k, s.k_data, s.k_pieces, s.kv_bytes, &copies);
  AppendTensorCopies(v, s.v_data, s.v_pieces, s.kv_bytes, &copies);
  RunCopies(copies);
  p->q = q;
  p->k = k;
  p->v = v;
}

}  // namespace attention::server
