#include "server/plan.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "server/executor.h"
#include "server/output_pool.h"
#include "server/session/page_storage.h"

namespace attention::server {
namespace {

int64_t Align(int64_t n) {
  return (n + BatchLayout::kAlignment - 1) / BatchLayout::kAlignment * BatchLayout::kAlignment;
}

// The bytes of one (token, head) row of head_dim elements of `dtype` (the inputs' config.dtype,
// or OutputDType(config.dtype) for o): in a request, and in the batch's buffers (PlanHeadDim
// elements).
int64_t HeadRowBytes(const KernelConfig& config, DType dtype) {
  return int64_t{config.head_dim} * DTypeSize(dtype);
}
int64_t PaddedHeadRowBytes(const KernelConfig& config, DType dtype) {
  return int64_t{PlanHeadDim(config)} * DTypeSize(dtype);
}

// The bytes of one token's `heads` rows in the batch's buffers: of the inputs (q, k, v, and a
// backward's o, grad_o, dq, dk, dv, all in config.dtype), and of a forward's o.
int64_t RowBytes(const KernelConfig& config, int heads) {
  return int64_t{heads} * PaddedHeadRowBytes(config, config.dtype);
}
int64_t OutputRowBytes(const KernelConfig& config, int heads) {
  return int64_t{heads} * PaddedHeadRowBytes(config, OutputDType(config.dtype));
}

// Zeros for the padding of a row: at most 15 elements of 1 byte or 7 of 4 bytes (PlanHeadDim).
constexpr char kZeroPad[32] = {};

// The input copies of one tensor (`bytes` bytes, in one span at `data` or in `pieces`) to offset
// `dst` of the input block. Rows of `row_bytes` in the request become rows of `padded_row_bytes`
// in the block, the rest of each one zero-filled (the same copy when the two are equal).
void PlanTensor(int64_t dst, const char* data, const TensorPieces* pieces, int64_t bytes,
                std::vector<InputCopy>* copies, int64_t row_bytes = 0,
                int64_t padded_row_bytes = 0) {
  const auto plan_span = [&](int64_t offset, const char* src, int64_t size) {
    if (row_bytes == padded_row_bytes) {
      copies->push_back({dst + offset, src, size});
      return;
    }
    // Split at row ends: the part of each row in this span, and the row's padding after its
    // last byte. A row may straddle two spans (received pieces).
    while (size > 0) {
      const int64_t row = offset / row_bytes;
      const int64_t in_row = offset % row_bytes;
      const int64_t n = std::min(size, row_bytes - in_row);
      copies->push_back({dst + row * padded_row_bytes + in_row, src, n});
      if (in_row + n == row_bytes) {
        copies->push_back(
            {dst + row * padded_row_bytes + row_bytes, kZeroPad, padded_row_bytes - row_bytes});
      }
      offset += n;
      src += n;
      size -= n;
    }
  };
  if (data != nullptr) {
    plan_span(0, data, bytes);
    return;
  }
  int64_t offset = 0;
  for (const absl::string_view piece : *pieces) {
    if (piece.empty()) continue;
    const auto size = static_cast<int64_t>(piece.size());
    plan_span(offset, piece.data(), size);
    offset += size;
  }
}

// PlanTensor for a [rows, heads, head_dim] tensor of `config`'s dtype: its rows padded to
// PlanHeadDim(config) in the block.
void PlanHeadRows(const KernelConfig& config, int64_t dst, const char* data,
                  const TensorPieces* pieces, int64_t bytes, std::vector<InputCopy>* copies) {
  PlanTensor(dst, data, pieces, bytes, copies, HeadRowBytes(config, config.dtype),
             PaddedHeadRowBytes(config, config.dtype));
}

// The output copies of `bytes` of a [rows, heads, head_dim] result of `dtype` at offset `src` of
// the output block (rows padded to PlanHeadDim) into job `index`'s `tensor`, whose rows are
// unpadded.
void PlanHeadRowOutputs(const KernelConfig& config, DType dtype, int index, OutputTensor tensor,
                        int64_t src, int64_t bytes, std::vector<OutputCopy>* copies) {
  const int64_t row_bytes = HeadRowBytes(config, dtype);
  const int64_t padded_row_bytes = PaddedHeadRowBytes(config, dtype);
  if (row_bytes == padded_row_bytes) {
    copies->push_back({index, tensor, 0, src, bytes});
    return;
  }
  for (int64_t row = 0; row * row_bytes < bytes; ++row) {
    copies->push_back({index, tensor, row * row_bytes, src + row * padded_row_bytes, row_bytes});
  }
}

void PlanMetadata(const Batch& batch, std::vector<InputCopy>* copies) {
  const BatchLayout& l = batch.plan.layout;
  const auto cu_bytes = static_cast<int64_t>(batch.cu_seqlens_q.size() * sizeof(int32_t));
  copies->push_back(
      {l.cu_seqlens_q, reinterpret_cast<const char*>(batch.cu_seqlens_q.data()), cu_bytes});
  copies->push_back(
      {l.cu_seqlens_k, reinterpret_cast<const char*>(batch.cu_seqlens_k.data()), cu_bytes});
  if (batch.config.mask_kind != MaskKind::kNone) {
    const RequestSpec& s = batch.jobs[0]->spec;
    copies->push_back({l.mask, static_cast<const char*>(s.mask()), s.mask_bytes});
  }
  // The batch's per-sequence vectors (int32 or float), each where the layout puts it.
  const auto vector = [copies](int64_t dst, const auto& v) {
    if (!v.empty()) {
      copies->push_back({dst, reinterpret_cast<const char*>(v.data()),
                         static_cast<int64_t>(v.size() * sizeof(v[0]))});
    }
  };
  vector(l.alibi, batch.alibi_slopes);
  vector(l.sinks, batch.sink_logits);
  vector(l.page_table, batch.page_table);
  vector(l.seqlens_k, batch.seqlens_k);
  vector(l.key_range, batch.key_range);
  vector(l.q_descale, batch.q_descale);
  vector(l.k_descale, batch.k_descale);
  vector(l.v_descale, batch.v_descale);
}

// A paged batch's page table ([sequences, max_pages], each job's one sequence from its view;
// short lists padded with page 0, which no kernel reads past a sequence's length), context
// lengths, and key ranges (every key when a job gave none), from the jobs' pinned views.
void GatherPagedContexts(Batch& batch) {
  batch.page_table.clear();
  batch.seqlens_k.clear();
  batch.key_range.clear();
  batch.max_pages = 1;
  bool any_range = false;
  for (const auto& job : batch.jobs) {
    batch.max_pages =
        std::max<int>(batch.max_pages, static_cast<int>(job->paged->view.page_table().size()));
    any_range = any_range || job->paged->has_key_range;
  }
  for (const auto& job : batch.jobs) {
    const PagedContext& c = *job->paged;
    const auto pages = c.view.page_table();
    batch.page_table.insert(batch.page_table.end(), pages.begin(), pages.end());
    batch.page_table.resize(batch.page_table.size() + (batch.max_pages - pages.size()), 0);
    const auto tokens = static_cast<int32_t>(c.view.tokens());
    batch.seqlens_k.push_back(tokens);
    if (any_range) {
      batch.key_range.push_back(c.has_key_range ? c.key_range[0] : 0);
      batch.key_range.push_back(c.has_key_range ? c.key_range[1] : tokens);
    }
  }
}

// Calls visit(job_offset, batch_offset, bytes) for each run of rows of job `index`'s lse in the
// batch's [q_heads, total_q] lse (a packed job's lse is [q_heads, total_q]; a dense job's
// [batch, q_heads, seqlen_q], so one run of seqlen_q rows per (sequence, head)), offsets in bytes
// from either lse's start.
template <typename Visit>
void ForEachLseRun(const Batch& batch, int index, Visit visit) {
  const RequestSpec& s = batch.jobs[index]->spec;
  const JobSlice& slice = batch.slices[index];
  const int runs = s.packed ? 1 : s.batch;
  const int64_t run_rows = s.packed ? s.total_q : s.seqlen_q;
  constexpr int64_t kFloat = sizeof(float);
  for (int b = 0; b < runs; ++b) {
    for (int h = 0; h < s.q_heads; ++h) {
      const int64_t batch_row = h * batch.total_q + slice.row_q + b * run_rows;
      const int64_t job_row = (int64_t{b} * s.q_heads + h) * run_rows;
      visit(job_row * kFloat, batch_row * kFloat, run_rows * kFloat);
    }
  }
}

// The output copies of job `index`: o, then its lse runs; or a backward job's dq, dk and dv.
void PlanJobOutputs(const Batch& batch, int index, std::vector<OutputCopy>* copies) {
  const RequestSpec& s = batch.jobs[index]->spec;
  const JobSlice& slice = batch.slices[index];
  const BatchLayout& l = batch.plan.layout;
  const KernelConfig& config = batch.config;
  if (config.kind == WorkKind::kBackward) {
    const int64_t q_offset = slice.row_q * RowBytes(config, config.q_heads);
    const int64_t k_offset = slice.row_k * RowBytes(config, config.kv_heads);
    const DType dtype = config.dtype;
    PlanHeadRowOutputs(config, dtype, index, OutputTensor::kDq, l.dq + q_offset, s.q_bytes, copies);
    PlanHeadRowOutputs(config, dtype, index, OutputTensor::kDk, l.dk + k_offset, s.kv_bytes,
                       copies);
    PlanHeadRowOutputs(config, dtype, index, OutputTensor::kDv, l.dv + k_offset, s.kv_bytes,
                       copies);
    return;
  }
  const int64_t o_offset = slice.row_q * OutputRowBytes(config, config.q_heads);
  PlanHeadRowOutputs(config, OutputDType(config.dtype), index, OutputTensor::kO, l.o + o_offset,
                     s.o_bytes(), copies);
  if (!s.return_lse) return;
  ForEachLseRun(batch, index, [&](int64_t job_offset, int64_t batch_offset, int64_t bytes) {
    copies->push_back({index, OutputTensor::kLse, job_offset, l.lse + batch_offset, bytes});
  });
}

// The input copies of backward job `index`'s saved o, grad_o and lse (request bytes, one span
// each) into the batch's layout.
void PlanBackwardInputs(const Batch& batch, int index, std::vector<InputCopy>* copies) {
  const RequestSpec& s = batch.jobs[index]->spec;
  const BatchLayout& l = batch.plan.layout;
  const KernelConfig& config = batch.config;
  const int64_t q_offset = batch.slices[index].row_q * RowBytes(config, config.q_heads);
  PlanHeadRows(config, l.saved_o + q_offset, s.o_data, nullptr, s.q_bytes, copies);
  PlanHeadRows(config, l.grad_o + q_offset, s.grad_o_data, nullptr, s.q_bytes, copies);
  const char* lse = reinterpret_cast<const char*>(s.lse_data);
  ForEachLseRun(batch, index, [&](int64_t job_offset, int64_t batch_offset, int64_t bytes) {
    copies->push_back({l.saved_lse + batch_offset, lse + job_offset, bytes});
  });
}

}  // namespace

BatchLayout LayoutFor(const KernelConfig& config, int sequences, int64_t total_q, int64_t total_k,
                      bool want_lse, int64_t mask_bytes, int64_t page_table_entries,
                      bool key_ranges) {
  BatchLayout l;
  const int64_t q_bytes = total_q * RowBytes(config, config.q_heads);
  const int64_t kv_bytes = total_k * RowBytes(config, config.kv_heads);
  const int64_t cu_bytes = (int64_t{sequences} + 1) * 4;
  const int64_t per_head_bytes = int64_t{sequences} * config.q_heads * 4;
  l.q = 0;
  l.k = Align(l.q + q_bytes);
  l.v = Align(l.k + kv_bytes);
  l.cu_seqlens_q = Align(l.v + kv_bytes);
  l.cu_seqlens_k = Align(l.cu_seqlens_q + cu_bytes);
  l.alibi = Align(l.cu_seqlens_k + cu_bytes);
  l.sinks = Align(l.alibi + (config.alibi ? per_head_bytes : 0));
  l.mask = Align(l.sinks + (config.sinks ? per_head_bytes : 0));
  l.page_table = Align(l.mask + mask_bytes);
  const bool paged = config.kind == WorkKind::kPagedDecode;
  l.seqlens_k = Align(l.page_table + page_table_entries * 4);
  l.key_range = Align(l.seqlens_k + (paged ? int64_t{sequences} * 4 : 0));
  const bool fp8 = config.dtype == DType::kFloat8E4M3;
  l.q_descale = Align(l.key_range + (key_ranges ? int64_t{sequences} * 8 : 0));
  l.k_descale = Align(l.q_descale + (fp8 ? per_head_bytes : 0));
  const int64_t per_kv_head_bytes = fp8 ? int64_t{sequences} * config.kv_heads * 4 : 0;
  l.v_descale = Align(l.k_descale + per_kv_head_bytes);
  l.saved_o = Align(l.v_descale + per_kv_head_bytes);
  const bool backward = config.kind == WorkKind::kBackward;
  const int64_t lse_bytes = int64_t{config.q_heads} * total_q * 4;
  l.grad_o = Align(l.saved_o + (backward ? q_bytes : 0));
  l.saved_lse = Align(l.grad_o + (backward ? q_bytes : 0));
  l.input_bytes = Align(l.saved_lse + (backward ? lse_bytes : 0));
  if (backward) {
    l.dq = 0;
    l.dk = Align(q_bytes);
    l.dv = Align(l.dk + kv_bytes);
    l.output_bytes = Align(l.dv + kv_bytes);
    return l;
  }
  l.o = 0;
  l.lse = Align(total_q * OutputRowBytes(config, config.q_heads));
  l.output_bytes = Align(l.lse + (want_lse ? lse_bytes : 0));
  return l;
}

int PlanHeadDim(const KernelConfig& config) {
  const int multiple =
      config.dtype == DType::kFloat8E4M3 ? kPlanHeadDimMultipleFp8 : kPlanHeadDimMultiple;
  if (config.kind == WorkKind::kPagedDecode || config.head_dim % multiple == 0) {
    return config.head_dim;
  }
  return (config.head_dim + multiple - 1) / multiple * multiple;
}

void RunCopies(const std::vector<HostCopy>& copies) {
  for (const HostCopy& c : copies) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
}

void MakePlan(Batch& batch) {
  Plan& plan = batch.plan;
  const KernelConfig& config = batch.config;
  const bool paged = config.kind == WorkKind::kPagedDecode;
  if (paged) GatherPagedContexts(batch);
  const int64_t mask_bytes =
      config.mask_kind == MaskKind::kNone ? 0 : batch.jobs[0]->spec.mask_bytes;
  plan.layout =
      LayoutFor(config, batch.sequences, batch.total_q, batch.total_k, batch.want_lse, mask_bytes,
                static_cast<int64_t>(batch.page_table.size()), !batch.key_range.empty());
  const BatchLayout& l = plan.layout;

  plan.inputs.clear();
  plan.outputs.clear();
  plan.first_input.clear();
  for (size_t i = 0; i < batch.jobs.size(); ++i) {
    plan.first_input.push_back(plan.inputs.size());
    const RequestSpec& s = batch.jobs[i]->spec;
    const JobSlice& slice = batch.slices[i];
    const int64_t k_offset = slice.row_k * RowBytes(config, config.kv_heads);
    PlanHeadRows(config, l.q + slice.row_q * RowBytes(config, config.q_heads), s.q_data, s.q_pieces,
                 s.q_bytes, &plan.inputs);
    if (!paged) {
      PlanHeadRows(config, l.k + k_offset, s.k_data, s.k_pieces, s.kv_bytes, &plan.inputs);
      PlanHeadRows(config, l.v + k_offset, s.v_data, s.v_pieces, s.kv_bytes, &plan.inputs);
    }
    if (config.kind == WorkKind::kBackward)
      PlanBackwardInputs(batch, static_cast<int>(i), &plan.inputs);
    PlanJobOutputs(batch, static_cast<int>(i), &plan.outputs);
  }
  plan.first_input.push_back(plan.inputs.size());
  PlanMetadata(batch, &plan.inputs);

  AttentionParams& p = plan.params;
  p = AttentionParams();
  static_cast<KernelConfig&>(p) = config;
  p.batch = batch.sequences;
  p.seqlen_q = batch.max_seqlen_q;
  p.seqlen_k = batch.max_seqlen_k;
  p.total_q = batch.total_q;
  p.total_k = batch.total_k;
  // The kernels see the padded rows; the scale stays the request's (RequestSpec always holds an
  // explicit softmax_scale, 1 / sqrt of the request's head_dim by default).
  p.head_dim = PlanHeadDim(config);
  if (config.alibi) p.alibi_batch_stride = config.q_heads;
  if (config.sinks) p.sink_batch_stride = config.q_heads;
  if (config.dtype == DType::kFloat8E4M3) {
    // [sequences, heads] factors (AddJob): one per (sequence, head).
    p.q_descale_batch_stride = config.q_heads;
    p.k_descale_batch_stride = p.v_descale_batch_stride = config.kv_heads;
    p.q_descale_head_stride = p.k_descale_head_stride = p.v_descale_head_stride = 1;
  }
  if (paged) {
    // K and V stay in the session pool (every job of a batch reads the same pool).
    const session::ReadView& view = batch.jobs[0]->paged->view;
    session::SetPagedKV(view.layout(), view.base(), p);
    p.page_table_stride = batch.max_pages;
    p.seqlen_k = 0;
    for (int32_t tokens : batch.seqlens_k) p.seqlen_k = std::max(p.seqlen_k, tokens);
    p.total_k = 0;
  }
  if (config.mask_kind != MaskKind::kNone) {
    const RequestSpec& s = batch.jobs[0]->spec;
    p.mask_batch_stride = s.mask_batch_stride;
    p.mask_head_stride = s.mask_head_stride;
    p.mask_row_stride = s.mask_row_stride;
    p.mask_col_stride = s.mask_col_stride;
  }
}

AttentionParams BindParams(const Plan& plan, const void* inputs, void* outputs) {
  const BatchLayout& l = plan.layout;
  const char* in = static_cast<const char*>(inputs);
  char* out = static_cast<char*>(outputs);
  AttentionParams p = plan.params;
  p.q = in + l.q;
  p.o = out + l.o;
  p.lse = l.output_bytes > l.lse ? reinterpret_cast<float*>(out + l.lse) : nullptr;
  p.cu_seqlens_q = reinterpret_cast<const int32_t*>(in + l.cu_seqlens_q);
  if (p.kind == WorkKind::kPagedDecode) {
    // q, o and lse packed; k and v as MakePlan set them (the pool).
    const AttentionParams paged_kv = p;
    SetContiguousStrides(p);
    p.k_batch_stride = paged_kv.k_batch_stride;
    p.k_row_stride = paged_kv.k_row_stride;
    p.k_head_stride = paged_kv.k_head_stride;
    p.v_batch_stride = paged_kv.v_batch_stride;
    p.v_row_stride = paged_kv.v_row_stride;
    p.v_head_stride = paged_kv.v_head_stride;
    p.page_table = reinterpret_cast<const int32_t*>(in + l.page_table);
    p.seqlens_k = reinterpret_cast<const int32_t*>(in + l.seqlens_k);
    if (l.input_bytes > l.key_range)
      p.key_range = reinterpret_cast<const int32_t*>(in + l.key_range);
  } else {
    p.k = in + l.k;
    p.v = in + l.v;
    p.cu_seqlens_k = reinterpret_cast<const int32_t*>(in + l.cu_seqlens_k);
    SetContiguousStrides(p);  // the packed layout's (cu_seqlens are set)
  }
  if (p.alibi) p.alibi_slopes = reinterpret_cast<const float*>(in + l.alibi);
  if (p.sinks) p.sink_logits = reinterpret_cast<const float*>(in + l.sinks);
  if (p.mask_kind != MaskKind::kNone) p.mask = in + l.mask;
  if (p.dtype == DType::kFloat8E4M3) {
    p.q_descale = reinterpret_cast<const float*>(in + l.q_descale);
    p.k_descale = reinterpret_cast<const float*>(in + l.k_descale);
    p.v_descale = reinterpret_cast<const float*>(in + l.v_descale);
  }
  if (p.kind == WorkKind::kBackward) {
    // The kernel reads the saved o and lse; it writes neither.
    p.o = const_cast<char*>(in + l.saved_o);
    p.lse = reinterpret_cast<float*>(const_cast<char*>(in + l.saved_lse));
  }
  return p;
}

BackwardBuffers BindBackward(const Plan& plan, const void* inputs, void* outputs) {
  const BatchLayout& l = plan.layout;
  const char* in = static_cast<const char*>(inputs);
  char* out = static_cast<char*>(outputs);
  return {in + l.grad_o, out + l.dq, out + l.dk, out + l.dv};
}

void AppendInputCopies(const Batch& batch, char* inputs, std::vector<HostCopy>* copies, int job) {
  const Plan& plan = batch.plan;
  size_t begin = 0, end = plan.inputs.size();
  if (job == kMetadata) {
    begin = plan.first_input.back();
  } else if (job != kAllInputs) {
    begin = plan.first_input[static_cast<size_t>(job)];
    end = plan.first_input[static_cast<size_t>(job) + 1];
  }
  for (size_t i = begin; i < end; ++i) {
    const InputCopy& c = plan.inputs[i];
    copies->push_back({inputs + c.dst, c.src, c.bytes});
  }
}

void AllocateOutputs(Batch& batch) {
  for (const auto& job : batch.jobs) {
    JobOutputs& out = job->outputs;
    if (job->spec.kind == WorkKind::kBackward) {
      out.dq = OutputPool::Process().Take(static_cast<size_t>(job->spec.q_bytes));
      out.dk = OutputPool::Process().Take(static_cast<size_t>(job->spec.kv_bytes));
      out.dv = OutputPool::Process().Take(static_cast<size_t>(job->spec.kv_bytes));
      continue;
    }
    out.o = OutputPool::Process().Take(static_cast<size_t>(job->spec.o_bytes()));
    if (job->spec.return_lse) out.lse.resize(static_cast<size_t>(job->spec.lse_bytes));
  }
}

void AppendOutputCopies(const Batch& batch, const char* outputs, std::vector<HostCopy>* copies) {
  for (const OutputCopy& c : batch.plan.outputs) {
    JobOutputs& out = batch.jobs[static_cast<size_t>(c.job)]->outputs;
    char* dst = out.tensor(c.tensor).data() + c.dst;
    copies->push_back({dst, outputs + c.src, c.bytes});
  }
}

AttentionParams InPlaceParams(Batch& batch, std::vector<char>* gathered) {
  Job& job = *batch.jobs[0];
  const RequestSpec& s = job.spec;
  AttentionParams p;
  static_cast<KernelConfig&>(p) = s;
  p.q = s.q_data;
  p.k = s.k_data;
  p.v = s.v_data;
  p.o = job.outputs.o.data();
  p.lse = s.return_lse ? reinterpret_cast<float*>(job.outputs.lse.data()) : nullptr;
  p.batch = s.batch;
  p.seqlen_q = s.seqlen_q;
  p.seqlen_k = s.seqlen_k;
  if (s.packed) {
    p.total_q = s.total_q;
    p.total_k = s.total_k;
    p.cu_seqlens_q = s.cu_seqlens_q;
    p.cu_seqlens_k = s.cu_seqlens_k;
  }
  SetContiguousStrides(p);
  p.alibi_slopes = s.alibi_slopes;
  p.alibi_batch_stride = s.alibi_batch_stride;
  p.sink_logits = s.sink_logits;
  p.sink_batch_stride = 0;
  p.mask = s.mask();
  p.mask_batch_stride = s.mask_batch_stride;
  p.mask_head_stride = s.mask_head_stride;
  p.mask_row_stride = s.mask_row_stride;
  p.mask_col_stride = s.mask_col_stride;
  p.q_descale = s.q_descale;
  p.k_descale = s.k_descale;
  p.v_descale = s.v_descale;
  p.q_descale_head_stride = s.q_descale_head_stride;
  p.k_descale_head_stride = s.k_descale_head_stride;
  p.v_descale_head_stride = s.v_descale_head_stride;
  if (!s.inputs_contiguous()) {
    // The inputs lie in several received pieces: gather them into one reused buffer.
    gathered->resize(static_cast<size_t>(s.q_bytes + 2 * s.kv_bytes));
    char* q = gathered->data();
    std::vector<InputCopy> planned;
    PlanTensor(0, s.q_data, s.q_pieces, s.q_bytes, &planned);
    PlanTensor(s.q_bytes, s.k_data, s.k_pieces, s.kv_bytes, &planned);
    PlanTensor(s.q_bytes + s.kv_bytes, s.v_data, s.v_pieces, s.kv_bytes, &planned);
    for (const InputCopy& c : planned) std::memcpy(q + c.dst, c.src, static_cast<size_t>(c.bytes));
    p.q = q;
    p.k = q + s.q_bytes;
    p.v = q + s.q_bytes + s.kv_bytes;
  }
  return p;
}

}  // namespace attention::server
