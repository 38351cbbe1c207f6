// NumPy .npy files (format versions 1.0, 2.0 and 3.0), C order, little-endian, for the element
// types of the contract:
//   '<f4' FLOAT32, '<f2' FLOAT16, '|b1' or '|u1' BOOL (one byte, nonzero = true),
//   '<u2' BFLOAT16: NumPy has no bfloat16, so bf16 tensors are stored as their raw 16-bit
//   patterns in a uint16 array ( np.save(path, x.view(np.uint16)) for an ml_dtypes.bfloat16 x;
//   x = np.load(path).view(ml_dtypes.bfloat16) to read one back).
#ifndef ATTENTION_CLIENT_NPY_H_
#define ATTENTION_CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/client/tensor.h"

namespace attention::client {

// An array read from a .npy file; owns its bytes.
struct NpyArray {
  DType dtype = ::attention::v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  std::string data;

  TensorView view() const { return TensorView{dtype, data.data(), shape}; }
};

// Decodes the contents of a .npy file. INVALID_ARGUMENT naming the problem for a bad magic,
// header, an element type outside the list above, Fortran order, or a data length that does not
// match the shape.
absl::StatusOr<NpyArray> ParseNpy(std::string_view contents);

// Encodes `tensor` as a version 1.0 .npy file (header padded to 64 bytes, as NumPy writes it).
absl::StatusOr<std::string> EncodeNpy(const TensorView& tensor);

// File forms of the two above. NOT_FOUND / PERMISSION_DENIED / INTERNAL for I/O errors, naming
// the path.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const TensorView& tensor);

}  // namespace attention::client

#endif  // ATTENTION_CLIENT_NPY_H_
