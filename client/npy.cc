#include "attention/client/npy.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/internal.h"

namespace attention::client {
namespace {

constexpr std::string_view kMagic = "\x93NUMPY";

absl::Status HeaderError(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("npy header: ", AsAbsl(what)));
}

// The text after "'key':" in a header dict, with leading spaces removed.
absl::StatusOr<std::string_view> ValueOf(std::string_view header, std::string_view key) {
  for (const char quote : {'\'', '"'}) {
    const std::string pattern =
        absl::StrCat(std::string(1, quote), AsAbsl(key), std::string(1, quote), ":");
    const size_t at = header.find(pattern);
    if (at == std::string_view::npos) continue;
    std::string_view rest = header.substr(at + pattern.size());
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    return rest;
  }
  return HeaderError(absl::StrCat("no '", AsAbsl(key), "' entry"));
}

absl::StatusOr<DType> DTypeFromDescr(std::string_view descr) {
  if (descr == "<f4") return v1::FLOAT32;
  if (descr == "<f2") return v1::FLOAT16;
  if (descr == "<u2") return v1::BFLOAT16;
  if (descr == "|b1" || descr == "|u1") return v1::BOOL;
  return HeaderError(absl::StrCat("descr '", AsAbsl(descr),
                                  "' is not one of '<f4', '<f2', '<u2' (bfloat16 bits), '|b1', "
                                  "'|u1' (little-endian float32, float16, bfloat16, bool)"));
}

absl::StatusOr<std::string_view> DescrOf(DType dtype) {
  switch (dtype) {
    case v1::FLOAT32:
      return "<f4";
    case v1::FLOAT16:
      return "<f2";
    case v1::BFLOAT16:
      return "<u2";
    case v1::BOOL:
      return "|b1";
    case v1::FLOAT8_E4M3:
      // '|u1' already reads as BOOL, and NumPy has no e4m3 type: the codes need their descales
      // anyway, which a .npy file cannot carry.
      return absl::InvalidArgumentError(
          "npy: FLOAT8_E4M3 tensors are not written as .npy (no NumPy element type, and their "
          "descale factors would be lost)");
    default:
      return absl::InvalidArgumentError("npy: tensor dtype must be set");
  }
}

absl::Status IoError(std::string_view what, const std::string& path) {
  const int error = errno;
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(AsAbsl(what), " ", path, ": ", std::strerror(error)));
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// The parsed header of a .npy file: everything but the data, which starts at data_offset.
struct NpyHeader {
  DType dtype;
  std::vector<int64_t> shape;
  size_t data_offset;
  int64_t data_bytes;  // NumElements(shape) * DTypeSize(dtype)
};

// Parses the header at the start of `contents` (which may stop after the header).
absl::StatusOr<NpyHeader> ParseHeader(std::string_view contents) {
  if (contents.substr(0, kMagic.size()) != kMagic || contents.size() < 10) {
    return HeaderError("not a .npy file (magic string \\x93NUMPY missing)");
  }
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(contents[i]); };
  const int major = byte(6);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = byte(8) | (size_t{byte(9)} << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (contents.size() < 12) return HeaderError("truncated");
    header_len =
        byte(8) | (size_t{byte(9)} << 8) | (size_t{byte(10)} << 16) | (size_t{byte(11)} << 24);
    header_start = 12;
  } else {
    return HeaderError(absl::StrCat("format version ", major, " is not 1, 2 or 3"));
  }
  if (contents.size() < header_start + header_len) return HeaderError("truncated");
  const std::string_view header = contents.substr(header_start, header_len);

  NpyHeader parsed;
  parsed.data_offset = header_start + header_len;
  absl::StatusOr<std::string_view> descr_value = ValueOf(header, "descr");
  if (!descr_value.ok()) return descr_value.status();
  if (descr_value->empty() || (descr_value->front() != '\'' && descr_value->front() != '"')) {
    return HeaderError("'descr' is not a string (structured arrays are not supported)");
  }
  const size_t descr_end = descr_value->find(descr_value->front(), 1);
  if (descr_end == std::string_view::npos) return HeaderError("unterminated 'descr'");
  absl::StatusOr<DType> dtype = DTypeFromDescr(descr_value->substr(1, descr_end - 1));
  if (!dtype.ok()) return dtype.status();
  parsed.dtype = *dtype;

  absl::StatusOr<std::string_view> fortran = ValueOf(header, "fortran_order");
  if (!fortran.ok()) return fortran.status();
  if (fortran->substr(0, 4) == "True") {
    return HeaderError("fortran_order is True; save a C-ordered array (np.ascontiguousarray)");
  }
  if (fortran->substr(0, 5) != "False") return HeaderError("'fortran_order' is not True or False");

  absl::StatusOr<std::string_view> shape_value = ValueOf(header, "shape");
  if (!shape_value.ok()) return shape_value.status();
  const size_t close = shape_value->find(')');
  if (shape_value->empty() || shape_value->front() != '(' || close == std::string_view::npos) {
    return HeaderError("'shape' is not a tuple");
  }
  const std::string_view dims = shape_value->substr(1, close - 1);
  for (absl::string_view dim : absl::StrSplit(AsAbsl(dims), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(dim), &d) || d < 0) {
      return HeaderError(absl::StrCat("'shape' entry '", dim, "' is not a non-negative integer"));
    }
    parsed.shape.push_back(d);
  }
  const int64_t elements = NumElements(parsed.shape);
  if (elements < 0 || elements > INT64_MAX / 4) return HeaderError("'shape' is too large");
  parsed.data_bytes = elements * DTypeSize(parsed.dtype);
  return parsed;
}

absl::Status DataSizeError(const NpyHeader& header, uint64_t bytes) {
  return absl::InvalidArgumentError(absl::StrCat("npy data: ", bytes, " bytes do not hold shape (",
                                                 absl::StrJoin(header.shape, ", "), ") of ",
                                                 DTypeName(header.dtype)));
}

}  // namespace

absl::StatusOr<NpyArray> ParseNpy(std::string_view contents) {
  absl::StatusOr<NpyHeader> header = ParseHeader(contents);
  if (!header.ok()) return header.status();
  const std::string_view data = contents.substr(header->data_offset);
  if (static_cast<uint64_t>(header->data_bytes) != data.size()) {
    return DataSizeError(*header, data.size());
  }
  return NpyArray{header->dtype, std::move(header->shape), std::string(data)};
}

absl::StatusOr<std::string> EncodeNpy(const TensorView& tensor) {
  absl::StatusOr<std::string_view> descr = DescrOf(tensor.dtype);
  if (!descr.ok()) return descr.status();
  const int64_t bytes = tensor.num_bytes();
  if (bytes < 0) return absl::InvalidArgumentError("npy: tensor shape has a negative dimension");
  std::string shape = absl::StrJoin(tensor.shape, ", ");
  if (tensor.shape.size() == 1) shape += ",";
  std::string header = absl::StrCat("{'descr': '", AsAbsl(*descr),
                                    "', 'fortran_order': False, 'shape': (", shape, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n', padded with spaces to 64 bytes.
  const size_t unpadded = kMagic.size() + 4 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  if (header.size() > 0xffff) return absl::InvalidArgumentError("npy: shape has too many dims");

  std::string out;
  out.reserve(kMagic.size() + 4 + header.size() + static_cast<size_t>(bytes));
  out.append(kMagic.data(), kMagic.size());
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out.append(header);
  if (bytes > 0) out.append(static_cast<const char*>(tensor.data), static_cast<size_t>(bytes));
  return out;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return IoError("cannot open", path);
  if (std::fseek(file.get(), 0, SEEK_END) != 0) return IoError("cannot seek", path);
  const long size = std::ftell(file.get());
  if (size < 0 || std::fseek(file.get(), 0, SEEK_SET) != 0) return IoError("cannot seek", path);
  // Read the header, then the data straight into the array's buffer.
  std::string head(static_cast<size_t>(std::min<long>(size, 1 << 16)), '\0');
  if (std::fread(head.data(), 1, head.size(), file.get()) != head.size()) {
    return IoError("cannot read", path);
  }
  absl::StatusOr<NpyHeader> header = ParseHeader(head);
  if (!header.ok()) {
    return absl::Status(header.status().code(),
                        absl::StrCat(path, ": ", header.status().message()));
  }
  const uint64_t data_size = static_cast<uint64_t>(size) - header->data_offset;
  if (data_size != static_cast<uint64_t>(header->data_bytes)) {
    const absl::Status error = DataSizeError(*header, data_size);
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", error.message()));
  }
  NpyArray array{header->dtype, std::move(header->shape), std::string()};
  array.data.resize(data_size);
  const size_t in_head = head.size() - header->data_offset;
  std::memcpy(array.data.data(), head.data() + header->data_offset, in_head);
  const size_t rest = array.data.size() - in_head;
  if (std::fread(array.data.data() + in_head, 1, rest, file.get()) != rest) {
    return IoError("cannot read", path);
  }
  return array;
}

absl::Status WriteNpy(const std::string& path, const TensorView& tensor) {
  absl::StatusOr<std::string> contents = EncodeNpy(tensor);
  if (!contents.ok()) return contents.status();
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "wb"));
  if (!file) return IoError("cannot create", path);
  if (std::fwrite(contents->data(), 1, contents->size(), file.get()) != contents->size() ||
      std::fflush(file.get()) != 0) {
    return IoError("cannot write", path);
  }
  return absl::OkStatus();
}

}  // namespace attention::client
