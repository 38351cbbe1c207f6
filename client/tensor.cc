#include "attention/client/tensor.h"

#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/internal.h"
#include "proto/contract_types.h"

namespace attention::client {

int64_t DTypeSize(DType dtype) { return ContractDTypeSize(dtype); }

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case v1::FLOAT32:
      return "float32";
    case v1::FLOAT16:
      return "float16";
    case v1::BFLOAT16:
      return "bfloat16";
    case v1::BOOL:
      return "bool";
    default:
      return "unspecified";
  }
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "fp32" || name == "float32" || name == "f32") return v1::FLOAT32;
  if (name == "fp16" || name == "float16" || name == "half" || name == "f16") return v1::FLOAT16;
  if (name == "bf16" || name == "bfloat16") return v1::BFLOAT16;
  if (name == "bool") return v1::BOOL;
  return absl::InvalidArgumentError(absl::StrCat("dtype: unknown element type '", AsAbsl(name),
                                                 "' (want fp32, fp16, bf16 or bool)"));
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

absl::Status SetTensor(std::string_view field, const TensorView& view, v1::Tensor* tensor) {
  if (DTypeSize(view.dtype) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(field), ".dtype: must be set"));
  }
  const int64_t elements = view.num_elements();
  if (elements < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(field), ".shape: dimensions must be >= 0 with an int64 product, got [",
                     absl::StrJoin(view.shape, ", "), "]"));
  }
  if (elements > 0 && view.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(field), ".data: null pointer for ", elements, " elements"));
  }
  tensor->set_dtype(view.dtype);
  tensor->mutable_shape()->Assign(view.shape.begin(), view.shape.end());
  tensor->set_data(view.data, static_cast<size_t>(elements * DTypeSize(view.dtype)));
  return absl::OkStatus();
}

absl::StatusOr<TensorView> ViewTensor(const v1::Tensor& tensor) {
  TensorView view;
  view.dtype = tensor.dtype();
  view.shape.assign(tensor.shape().begin(), tensor.shape().end());
  view.data = tensor.data().data();
  const int64_t size = DTypeSize(view.dtype);
  const int64_t elements = view.num_elements();
  if (size == 0 || elements < 0 || static_cast<uint64_t>(elements * size) != tensor.data().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor: ", tensor.data().size(), " data bytes do not hold shape [",
                     absl::StrJoin(view.shape, ", "), "] of ", DTypeName(view.dtype)));
  }
  return view;
}

absl::Status CopyTensor(const v1::Tensor& tensor, const MutableTensorView& dst) {
  absl::StatusOr<TensorView> src = ViewTensor(tensor);
  if (!src.ok()) return src.status();
  if (src->dtype != dst.dtype || src->shape != dst.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination: tensor is ", DTypeName(src->dtype), " [",
                     absl::StrJoin(src->shape, ", "), "] but the destination is ",
                     DTypeName(dst.dtype), " [", absl::StrJoin(dst.shape, ", "), "]"));
  }
  if (src->num_bytes() > 0) {
    std::memcpy(dst.data, src->data, static_cast<size_t>(src->num_bytes()));
  }
  return absl::OkStatus();
}

}  // namespace attention::client
