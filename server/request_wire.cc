#include "server/request_wire.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"

namespace attention::server {
namespace {

using google::protobuf::internal::WireFormatLite;

constexpr uint32_t kFieldQ = v1::AttentionRequest::kQFieldNumber;
constexpr uint32_t kFieldK = v1::AttentionRequest::kKFieldNumber;
constexpr uint32_t kFieldV = v1::AttentionRequest::kVFieldNumber;
static_assert(kFieldK == kFieldQ + 1 && kFieldV == kFieldK + 1,
              "Strip indexes q, k and v by field number - kFieldQ");
constexpr uint32_t kFieldData = v1::Tensor::kDataFieldNumber;

// Random access to a message split into pieces, by offset from its first byte.
class PieceReader {
 public:
  explicit PieceReader(const WirePieces& pieces) : pieces_(pieces) {
    starts_.reserve(pieces.size() + 1);
    int64_t offset = 0;
    for (const absl::string_view piece : pieces) {
      starts_.push_back(offset);
      offset += static_cast<int64_t>(piece.size());
    }
    starts_.push_back(offset);
  }

  int64_t size() const { return starts_.back(); }

  // Reads a varint at *offset (before `end`); false if truncated or longer than 10 bytes.
  bool Varint(int64_t* offset, int64_t end, uint64_t* value) const {
    uint64_t result = 0;
    for (int i = 0; i < 10; ++i) {
      if (*offset >= end) return false;
      const uint8_t byte = At((*offset)++);
      result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
      if ((byte & 0x80) == 0) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  // Appends the spans that hold bytes [offset, offset + length) to `spans`, in order.
  void Spans(int64_t offset, int64_t length, TensorPieces* spans) const {
    while (length > 0) {
      const size_t i = PieceOf(offset);
      const int64_t local = offset - starts_[i];
      const int64_t n = std::min<int64_t>(length, static_cast<int64_t>(pieces_[i].size()) - local);
      spans->push_back(pieces_[i].substr(static_cast<size_t>(local), static_cast<size_t>(n)));
      offset += n;
      length -= n;
    }
  }

  void Append(int64_t offset, int64_t length, std::string* out) const {
    while (length > 0) {
      const size_t i = PieceOf(offset);
      const int64_t local = offset - starts_[i];
      const int64_t n = std::min<int64_t>(length, static_cast<int64_t>(pieces_[i].size()) - local);
      out->append(pieces_[i].data() + local, static_cast<size_t>(n));
      offset += n;
      length -= n;
    }
  }

 private:
  // The piece holding byte `offset` (< size()); empty pieces are never returned.
  size_t PieceOf(int64_t offset) const {
    if (offset >= starts_[cached_] && offset < starts_[cached_ + 1]) return cached_;
    const auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
    cached_ = static_cast<size_t>(it - starts_.begin()) - 1;
    return cached_;
  }

  uint8_t At(int64_t offset) const {
    const size_t i = PieceOf(offset);
    return static_cast<uint8_t>(pieces_[i][static_cast<size_t>(offset - starts_[i])]);
  }

  const WirePieces& pieces_;
  std::vector<int64_t> starts_;
  mutable size_t cached_ = 0;
};

// kUnusual: anything the scan does not take apart itself (groups, tags past 32 bits, field 0,
// truncated or oversized fields); protobuf's own parse then decides.
enum class Scan { kOk, kUnusual };

struct Field {
  uint32_t number;
  int wire_type;
  int64_t start;    // the tag's first byte
  int64_t payload;  // a length-delimited field's first payload byte
  int64_t end;      // one past the field
};

// Reads the field starting at *offset (before `end`) and moves past it.
Scan NextField(const PieceReader& r, int64_t* offset, int64_t end, Field* f) {
  f->start = *offset;
  uint64_t tag = 0;
  if (!r.Varint(offset, end, &tag) || tag > std::numeric_limits<uint32_t>::max()) {
    return Scan::kUnusual;
  }
  f->number = static_cast<uint32_t>(tag >> 3);
  f->wire_type = static_cast<int>(tag & 7);
  if (f->number == 0) return Scan::kUnusual;
  uint64_t value = 0;
  switch (f->wire_type) {
    case WireFormatLite::WIRETYPE_VARINT:
      if (!r.Varint(offset, end, &value)) return Scan::kUnusual;
      break;
    case WireFormatLite::WIRETYPE_FIXED64:
      *offset += 8;
      break;
    case WireFormatLite::WIRETYPE_FIXED32:
      *offset += 4;
      break;
    case WireFormatLite::WIRETYPE_LENGTH_DELIMITED:
      if (!r.Varint(offset, end, &value) || value > std::numeric_limits<int32_t>::max()) {
        return Scan::kUnusual;
      }
      f->payload = *offset;
      *offset += static_cast<int64_t>(value);
      break;
    case WireFormatLite::WIRETYPE_START_GROUP:
    case WireFormatLite::WIRETYPE_END_GROUP:
      return Scan::kUnusual;
    default:
      return Scan::kUnusual;
  }
  if (*offset > end) return Scan::kUnusual;
  f->end = *offset;
  return Scan::kOk;
}

// Copies the Tensor message in [begin, end) to `out` without its data fields; the last data
// field's payload (protobuf keeps the last of repeated singular fields) goes to *data_field.
Scan StripTensor(const PieceReader& r, int64_t begin, int64_t end, std::string* out,
                 Field* data_field, bool* has_data) {
  int64_t offset = begin;
  while (offset < end) {
    Field f;
    if (const Scan s = NextField(r, &offset, end, &f); s != Scan::kOk) return s;
    if (f.number == kFieldData && f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      *data_field = f;
      *has_data = true;
      continue;
    }
    r.Append(f.start, f.end - f.start, out);
  }
  return Scan::kOk;
}

Scan Strip(const PieceReader& r, std::string* stripped, Field (&data)[3], bool (&has)[3]) {
  int64_t offset = 0;
  std::string tensor;
  while (offset < r.size()) {
    Field f;
    if (const Scan s = NextField(r, &offset, r.size(), &f); s != Scan::kOk) return s;
    const bool is_tensor = f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED &&
                           f.number >= kFieldQ && f.number <= kFieldV;
    if (!is_tensor) {
      r.Append(f.start, f.end - f.start, stripped);
      continue;
    }
    const int index = static_cast<int>(f.number - kFieldQ);
    tensor.clear();
    if (const Scan s = StripTensor(r, f.payload, f.end, &tensor, &data[index], &has[index]);
        s != Scan::kOk) {
      return s;
    }
    google::protobuf::io::StringOutputStream out(stripped);
    google::protobuf::io::CodedOutputStream coded(&out);
    WireFormatLite::WriteBytes(static_cast<int>(f.number), tensor, &coded);
  }
  return Scan::kOk;
}

}  // namespace

bool ParseWithoutTensorData(const WirePieces& pieces, v1::AttentionRequest* request,
                            TensorData* data) {
  const PieceReader reader(pieces);
  TensorPieces* spans[3] = {&data->q, &data->k, &data->v};
  for (TensorPieces* s : spans) s->clear();
  std::string stripped;
  Field fields[3];
  bool has[3] = {false, false, false};
  if (Strip(reader, &stripped, fields, has) != Scan::kOk) {
    // protobuf's own parse over one copy of the message.
    std::string whole;
    whole.reserve(static_cast<size_t>(reader.size()));
    reader.Append(0, reader.size(), &whole);
    if (!request->ParseFromString(whole)) return false;
    const std::string* own[3] = {&request->q().data(), &request->k().data(), &request->v().data()};
    for (int i = 0; i < 3; ++i) {
      if (!own[i]->empty()) spans[i]->emplace_back(*own[i]);
    }
    return true;
  }
  if (!request->ParseFromString(stripped)) return false;
  for (int i = 0; i < 3; ++i) {
    if (has[i]) reader.Spans(fields[i].payload, fields[i].end - fields[i].payload, spans[i]);
  }
  return true;
}

}  // namespace attention::server
