#include "attention/client/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/internal.h"
#include "kernels/dtype.h"
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
    case v1::FLOAT8_E4M3:
      return "float8_e4m3";
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
  if (name == "fp8" || name == "e4m3" || name == "float8_e4m3") return v1::FLOAT8_E4M3;
  if (name == "bool") return v1::BOOL;
  return absl::InvalidArgumentError(absl::StrCat("dtype: unknown element type '", AsAbsl(name),
                                                 "' (want fp32, fp16, bf16, fp8 or bool)"));
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

float E4M3ToFloat(uint8_t code) { return ::attention::E4M3ToFloat(code); }

uint8_t QuantizeE4M3(float x, float descale) { return ::attention::FloatToE4M3(x / descale); }

absl::StatusOr<E4M3Tensor> QuantizeTensorE4M3(const std::vector<float>& values,
                                              std::vector<int64_t> shape, bool per_head) {
  const int64_t elements = NumElements(shape);
  bool dims_ok = shape.size() >= 2;
  for (const int64_t d : shape) dims_ok = dims_ok && d >= 1;
  if (!dims_ok || elements < 0 || static_cast<uint64_t>(elements) != values.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "QuantizeTensorE4M3: shape [", absl::StrJoin(shape, ", "),
        "] must have rank >= 2 ([..., heads, head_dim]) with dimensions >= 1 and hold the ",
        values.size(), " values"));
  }
  const int64_t head_dim = shape[shape.size() - 1];
  const int64_t heads = shape[shape.size() - 2];
  const int64_t groups = per_head ? heads : 1;
  const auto group_of = [&](int64_t i) { return per_head ? i / head_dim % heads : 0; };
  E4M3Tensor t;
  t.descale.assign(static_cast<size_t>(groups), 0.f);
  for (int64_t i = 0; i < elements; ++i) {
    const float x = values[static_cast<size_t>(i)];
    if (!std::isfinite(x)) {
      return absl::InvalidArgumentError(
          absl::StrCat("QuantizeTensorE4M3: values[", i, "] is not finite (", x, ")"));
    }
    float& largest = t.descale[static_cast<size_t>(group_of(i))];
    largest = std::max(largest, std::fabs(x));
  }
  // 448: e4m3's largest finite magnitude. A group of zeros keeps factor 1.
  for (float& factor : t.descale) factor = factor > 0.f ? factor / 448.f : 1.f;
  t.codes.resize(static_cast<size_t>(elements));
  for (int64_t i = 0; i < elements; ++i) {
    t.codes[static_cast<size_t>(i)] =
        QuantizeE4M3(values[static_cast<size_t>(i)], t.descale[static_cast<size_t>(group_of(i))]);
  }
  t.shape = std::move(shape);
  return t;
}

}  // namespace attention::client
