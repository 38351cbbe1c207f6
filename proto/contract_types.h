// The one place where the contract's enums (attention.v1.DType, attention.v1.Precision) meet
// the kernels' (attention::DType, attention::Precision), and the contract's element sizes. The
// server's validation, the command-line tool's reference check, the client library and the
// tests all convert here.
#ifndef ATTENTION_PROTO_CONTRACT_TYPES_H_
#define ATTENTION_PROTO_CONTRACT_TYPES_H_

#include <cstdint>
#include <optional>

#include "attention/v1/attention.pb.h"
#include "kernels/kernel_config.h"

namespace attention {

// Bytes per element of a contract dtype: 4 for FLOAT32, 2 for FLOAT16 and BFLOAT16, 1 for
// FLOAT8_E4M3 and BOOL (masks), 0 for DTYPE_UNSPECIFIED and values the contract does not define.
inline int64_t ContractDTypeSize(int dtype) {
  switch (dtype) {
    case v1::FLOAT32:
      return 4;
    case v1::FLOAT16:
    case v1::BFLOAT16:
      return 2;
    case v1::FLOAT8_E4M3:
    case v1::BOOL:
      return 1;
    default:
      return 0;
  }
}

// The kernels' element type of q, k and v for a contract dtype; nullopt for BOOL and values that
// are not a value type.
inline std::optional<DType> KernelDType(int dtype) {
  switch (dtype) {
    case v1::FLOAT32:
      return DType::kFloat32;
    case v1::FLOAT16:
      return DType::kFloat16;
    case v1::BFLOAT16:
      return DType::kBFloat16;
    case v1::FLOAT8_E4M3:
      return DType::kFloat8E4M3;
    default:
      return std::nullopt;
  }
}

inline v1::DType ContractDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::FLOAT32;
    case DType::kFloat16:
      return v1::FLOAT16;
    case DType::kBFloat16:
      return v1::BFLOAT16;
    case DType::kFloat8E4M3:
      return v1::FLOAT8_E4M3;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// The kernels' precision for a contract precision (a valid enum value).
inline Precision KernelPrecision(v1::Precision precision) {
  switch (precision) {
    case v1::PRECISION_TF32:
      return Precision::kTF32;
    case v1::PRECISION_BF16:
      return Precision::kBF16;
    default:
      return Precision::kFull;
  }
}

inline v1::Precision ContractPrecision(Precision precision) {
  switch (precision) {
    case Precision::kTF32:
      return v1::PRECISION_TF32;
    case Precision::kBF16:
      return v1::PRECISION_BF16;
    case Precision::kFull:
      break;
  }
  return v1::PRECISION_FULL;
}

}  // namespace attention

#endif  // ATTENTION_PROTO_CONTRACT_TYPES_H_
