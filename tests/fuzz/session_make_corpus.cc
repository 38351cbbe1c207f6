// Writes the seed corpus of the session fuzzer (session_fuzzer.cc) into a directory:
//   session_fuzzer_make_corpus tests/fuzz/session_corpus
// Each seed is a sequence of SessionRequests framed as field-1 length-delimited records, with
// "#k" naming the k-th session the sequence created. "valid_*" seeds must succeed call by call,
// "bad_*" seeds must have a call refused (corpus_main.cc checks both).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace {

using attention::v1::SessionRequest;
using attention::v1::Tensor;

std::mt19937 rng(20261205);

Tensor Rows(attention::v1::DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.set_dtype(dtype);
  int64_t elements = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    elements *= d;
  }
  // Values in [-1, 1]: any bytes of a float32 / 16-bit value of small magnitude.
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  std::string data;
  for (int64_t i = 0; i < elements; ++i) {
    const float f = value(rng);
    if (dtype == attention::v1::FLOAT32) {
      data.append(reinterpret_cast<const char*>(&f), 4);
    } else {
      // bfloat16: the upper half of the float32 (a value of magnitude <= 1).
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t half = static_cast<uint16_t>(bits >> 16);
      data.append(reinterpret_cast<const char*>(&half), 2);
    }
  }
  t.set_data(data);
  return t;
}

SessionRequest Create(int layers, int kv_heads, int head_dim, attention::v1::DType dtype) {
  SessionRequest r;
  r.mutable_create()->set_layers(layers);
  r.mutable_create()->set_kv_heads(kv_heads);
  r.mutable_create()->set_head_dim(head_dim);
  r.mutable_create()->set_dtype(dtype);
  return r;
}

SessionRequest Append(const std::string& id, int layer, int64_t n, int kv_heads, int head_dim,
                      attention::v1::DType dtype) {
  SessionRequest r;
  r.mutable_append()->set_session_id(id);
  r.mutable_append()->set_layer(layer);
  *r.mutable_append()->mutable_k() = Rows(dtype, {n, kv_heads, head_dim});
  *r.mutable_append()->mutable_v() = Rows(dtype, {n, kv_heads, head_dim});
  return r;
}

SessionRequest Attend(const std::string& id, int layer, int64_t n, int q_heads, int kv_heads,
                      int head_dim, attention::v1::DType dtype, bool append) {
  SessionRequest r;
  attention::v1::AttendRequest* a = r.mutable_attend();
  a->set_session_id(id);
  a->set_layer(layer);
  *a->mutable_q() = Rows(dtype, {n, q_heads, head_dim});
  if (append) {
    *a->mutable_k_new() = Rows(dtype, {n, kv_heads, head_dim});
    *a->mutable_v_new() = Rows(dtype, {n, kv_heads, head_dim});
  }
  a->set_causal(true);
  a->set_return_lse(true);
  return r;
}

SessionRequest Simple(const std::string& kind, const std::string& id, int64_t tokens = 0) {
  SessionRequest r;
  if (kind == "fork") {
    r.mutable_fork()->set_session_id(id);
    r.mutable_fork()->set_prefix_tokens(tokens);
  } else if (kind == "truncate") {
    r.mutable_truncate()->set_session_id(id);
    r.mutable_truncate()->set_tokens(tokens);
  } else if (kind == "release") {
    r.mutable_release()->set_session_id(id);
  } else {
    r.mutable_get()->set_session_id(id);
  }
  return r;
}

void Write(const std::string& dir, const std::string& name,
           const std::vector<SessionRequest>& calls) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    for (const SessionRequest& call : calls) {
      coded.WriteTag((1u << 3) | 2u);
      coded.WriteVarint32(static_cast<uint32_t>(call.ByteSizeLong()));
      call.SerializeToCodedStream(&coded);
    }
  }
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  using attention::v1::BFLOAT16;
  using attention::v1::FLOAT32;
  // A decode loop: prefill, steps, a fork that diverges, a truncate, reads, releases.
  Write(dir, "valid_decode",
        {Create(2, 2, 16, BFLOAT16), Append("#0", 0, 20, 2, 16, BFLOAT16),
         Append("#0", 1, 20, 2, 16, BFLOAT16), Attend("#0", 0, 1, 4, 2, 16, BFLOAT16, true),
         Attend("#0", 1, 1, 4, 2, 16, BFLOAT16, true), Simple("fork", "#0", 15),
         Attend("#1", 0, 3, 4, 2, 16, BFLOAT16, true),
         Attend("#0", 0, 2, 4, 2, 16, BFLOAT16, false), Simple("truncate", "#0", 18),
         Simple("get", "#0"), Simple("get", "#1"), Simple("release", "#0"),
         Attend("#1", 1, 1, 4, 2, 16, BFLOAT16, true), Simple("release", "#1")});
  Write(dir, "valid_mqa_float32",
        {Create(1, 1, 8, FLOAT32), Attend("#0", 0, 2, 3, 1, 8, FLOAT32, true),
         Attend("#0", 0, 1, 3, 1, 8, FLOAT32, true), Simple("get", "#0")});
  // Refusals that must leave the sessions as they were.
  Write(dir, "bad_dtype_then_ok",
        {Create(1, 2, 16, BFLOAT16), Append("#0", 0, 5, 2, 16, FLOAT32),
         Attend("#0", 0, 1, 4, 2, 16, BFLOAT16, true)});
  // 16 tokens per 4 KiB page: 250 tokens take the pool's 16 pages, and the session in the call
  // cannot be evicted for itself.
  Write(dir, "bad_pool_exhausted",
        {Create(1, 2, 16, FLOAT32), Append("#0", 0, 250, 2, 16, FLOAT32),
         Attend("#0", 0, 20, 2, 2, 16, FLOAT32, true), Simple("get", "#0")});
  Write(dir, "bad_fork_past_the_end",
        {Create(1, 1, 8, BFLOAT16), Append("#0", 0, 3, 1, 8, BFLOAT16), Simple("fork", "#0", 4)});
  Write(dir, "bad_other_replica", {Simple("get", "0123456789abcdef0123456789abcdef@replica-7")});
  Write(dir, "bad_malformed_id", {Simple("truncate", "not an id", 1)});
  Write(dir, "bad_released_twice",
        {Create(1, 1, 8, BFLOAT16), Simple("release", "#0"), Simple("release", "#0")});
  Write(dir, "bad_empty_call", {SessionRequest()});
  Write(dir, "bad_layer_out_of_range",
        {Create(2, 1, 8, BFLOAT16), Attend("#0", 2, 1, 1, 1, 8, BFLOAT16, true)});
  std::printf("wrote 10 seeds to %s\n", dir.c_str());
  return 0;
}
