#include "server/response_wire.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/slice.h"
#include "server/output_pool.h"

namespace attention::server {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

// gRPC is done with o's data: the buffer goes back to the pool for a later answer.
void ReleaseOutput(void* data) {
  std::unique_ptr<std::string> o(static_cast<std::string*>(data));
  OutputPool::Process().Give(std::move(*o));
}

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
  const uint32_t data_tag = WireFormatLite::MakeTag(v1::Tensor::kDataFieldNumber,
                                                    WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  const uint64_t o_length = o_header.size() + CodedOutputStream::VarintSize32(data_tag) +
                            CodedOutputStream::VarintSize64(data->size()) + data->size();
  std::string prefix;
  {
    google::protobuf::io::StringOutputStream out(&prefix);
    CodedOutputStream coded(&out);
    coded.WriteTag(WireFormatLite::MakeTag(v1::AttentionResponse::kOFieldNumber,
                                           WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    coded.WriteVarint64(o_length);
    coded.WriteString(o_header);
    coded.WriteTag(data_tag);
    coded.WriteVarint64(data->size());
  }
  response->clear_o();
  const std::string rest = response->SerializeAsString();
  response->Clear();
  const grpc::Slice slices[3] = {grpc::Slice(prefix),
                                 grpc::Slice(data->data(), data->size(), ReleaseOutput, data),
                                 grpc::Slice(rest)};
  grpc::ByteBuffer buffer(slices, rest.empty() ? 2 : 3);
  wire->Swap(&buffer);
}

}  // namespace attention::server
