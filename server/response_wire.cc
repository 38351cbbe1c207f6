#include "server/response_wire.h"

#include <cstdint>
#include <string>

#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/slice.h"

namespace attention::server {
namespace {

// Field numbers and wire types (proto/attention/v1/attention.proto).
constexpr uint32_t kResponseFieldO = 2;
constexpr uint32_t kTensorFieldData = 3;
constexpr uint32_t kWireLen = 2;

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

size_t VarintSize(uint64_t value) {
  size_t n = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++n;
  }
  return n;
}

void DeleteString(void* data) { delete static_cast<std::string*>(data); }

}  // namespace

void SerializeResponseWithoutCopy(v1::AttentionResponse* response, grpc::ByteBuffer* wire) {
  if (!response->has_o() || response->o().data().size() < kMinZeroCopyBytes) {
    bool own_buffer = false;
    grpc::SerializationTraits<v1::AttentionResponse>::Serialize(*response, wire, &own_buffer);
    response->Clear();
    return;
  }
  auto* data = new std::string;
  data->swap(*response->mutable_o()->mutable_data());
  // o's header (dtype, shape), then its data field's tag and length; the data follows as a slice.
  const std::string o_header = response->o().SerializeAsString();
  const uint64_t o_length = o_header.size() + VarintSize(kTensorFieldData << 3 | kWireLen) +
                            VarintSize(data->size()) + data->size();
  std::string prefix;
  AppendVarint(kResponseFieldO << 3 | kWireLen, &prefix);
  AppendVarint(o_length, &prefix);
  prefix += o_header;
  AppendVarint(kTensorFieldData << 3 | kWireLen, &prefix);
  AppendVarint(data->size(), &prefix);
  response->clear_o();
  const std::string rest = response->SerializeAsString();
  response->Clear();
  const grpc::Slice slices[3] = {grpc::Slice(prefix),
                                 grpc::Slice(data->data(), data->size(), DeleteString, data),
                                 grpc::Slice(rest)};
  grpc::ByteBuffer buffer(slices, rest.empty() ? 2 : 3);
  wire->Swap(&buffer);
}

}  // namespace attention::server
