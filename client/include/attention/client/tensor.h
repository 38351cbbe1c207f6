// Typed views of caller memory, and the conversions between them and the contract's Tensor
// message. A request's tensors are copied exactly once, into the request message (protobuf owns
// the bytes it serializes); answers are read in place or copied once into caller memory.
#ifndef ATTENTION_CLIENT_TENSOR_H_
#define ATTENTION_CLIENT_TENSOR_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"

namespace attention::client {

// Element type, as the contract names it: v1::FLOAT32, v1::FLOAT16, v1::BFLOAT16,
// v1::FLOAT8_E4M3, v1::BOOL.
using DType = ::attention::v1::DType;

// Bytes per element of `dtype`; 0 for DTYPE_UNSPECIFIED and values the contract does not define.
int64_t DTypeSize(DType dtype);

// "float32", "float16", "bfloat16", "float8_e4m3", "bool" or "unspecified".
const char* DTypeName(DType dtype);

// Accepts fp32|float32|f32, fp16|float16|half|f16, bf16|bfloat16, fp8|e4m3|float8_e4m3, bool
// (case-sensitive).
absl::StatusOr<DType> ParseDType(std::string_view name);

// Product of the dimensions (1 for a scalar shape); -1 when a dimension is negative or the
// product overflows int64.
int64_t NumElements(const std::vector<int64_t>& shape);

// A read-only view of NumElements(shape) elements of `dtype` at `data`, row-major (last dimension
// fastest), little-endian. The view does not own the memory; it must outlive the use of the view.
struct TensorView {
  DType dtype = ::attention::v1::DTYPE_UNSPECIFIED;
  const void* data = nullptr;
  std::vector<int64_t> shape;

  int64_t num_elements() const { return NumElements(shape); }
  int64_t num_bytes() const { return num_elements() * DTypeSize(dtype); }
  // Typed access; T must match dtype's width (float for FLOAT32, uint16_t for the 16-bit types).
  template <typename T>
  const T* data_as() const {
    return static_cast<const T*>(data);
  }
};

// A writable view of caller memory, laid out as TensorView.
struct MutableTensorView {
  DType dtype = ::attention::v1::DTYPE_UNSPECIFIED;
  void* data = nullptr;
  std::vector<int64_t> shape;

  int64_t num_elements() const { return NumElements(shape); }
  int64_t num_bytes() const { return num_elements() * DTypeSize(dtype); }
};

// Fills `tensor` from `view`: dtype, shape and one copy of the bytes. INVALID_ARGUMENT naming
// `field` when the dtype is unspecified, a dimension is negative, or data is null while the view
// holds elements.
absl::Status SetTensor(std::string_view field, const TensorView& view,
                       ::attention::v1::Tensor* tensor);

// Views the bytes of a received tensor in place (valid while `tensor` lives). INVALID_ARGUMENT
// when the data length is not NumElements(shape) * DTypeSize(dtype).
absl::StatusOr<TensorView> ViewTensor(const ::attention::v1::Tensor& tensor);

// Copies a received tensor into `dst`. INVALID_ARGUMENT when dtype or shape differ from dst's
// or the tensor's data length does not match its shape.
absl::Status CopyTensor(const ::attention::v1::Tensor& tensor, const MutableTensorView& dst);

// FLOAT8_E4M3 (OCP E4M3FN, attention.proto): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits,
// no infinities, 0x7f / 0xff NaN, largest finite magnitude 448.
//
// The value of an e4m3 code (exact in a float; NaN for 0x7f and 0xff).
float E4M3ToFloat(uint8_t code);
// The e4m3 code nearest to `x / descale`, ties to even; magnitudes beyond 448 saturate to +-448,
// NaN gives 0x7f. `descale` is the factor the server multiplies the code by (> 0).
uint8_t QuantizeE4M3(float x, float descale = 1.0f);

// A FLOAT8_E4M3 tensor and its descale factors (AttentionRequest.q_descale, ...), as
// QuantizeTensorE4M3 makes them; view() and descale_view() point into it.
struct E4M3Tensor {
  std::vector<int64_t> shape;
  std::vector<uint8_t> codes;  // NumElements(shape), row-major
  std::vector<float> descale;  // [1] (per tensor) or [heads] (per head)
  TensorView view() const { return {::attention::v1::FLOAT8_E4M3, codes.data(), shape}; }
  TensorView descale_view() const {
    return {::attention::v1::FLOAT32, descale.data(), {static_cast<int64_t>(descale.size())}};
  }
};

// Quantizes float32 `values` laid out as `shape` (q, k or v: [..., heads, head_dim], rank >= 2) to
// FLOAT8_E4M3 with one descale factor for the whole tensor (`per_head` false) or one per head
// (the second-to-last dimension): factor = max |x| / 448 over its values (1 for all zeros), code
// = QuantizeE4M3(x, factor), so each group uses e4m3's whole range and its largest value maps to
// 448. INVALID_ARGUMENT when the shape is not of rank >= 2 with dimensions >= 1 matching
// values.size(), or a value is not finite.
absl::StatusOr<E4M3Tensor> QuantizeTensorE4M3(const std::vector<float>& values,
                                              std::vector<int64_t> shape, bool per_head);

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_TENSOR_H_
