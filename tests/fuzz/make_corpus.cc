// Writes the fuzz target's seed corpus into a directory: `request_fuzzer_make_corpus DIR`.
// Valid requests of every dtype, layout and option (small shapes: a few hundred bytes each) and
// malformed ones breaking one rule each. The files in tests/fuzz/corpus are this program's output
// (fixed seed), checked in; rerun it after changing the contract and commit the difference.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "tests/server/server_test_util.h"

namespace attention::testing {
namespace {

struct Seed {
  std::string name;
  std::string bytes;
};

RequestOptions Small(v1::DType dtype = v1::BFLOAT16) {
  RequestOptions o;
  o.dtype = dtype;
  o.batch = 2;
  o.seqlen_q = 5;
  o.seqlen_k = 7;
  o.q_heads = 2;
  o.kv_heads = 1;
  o.head_dim = 8;
  return o;
}

RequestOptions Packed(v1::DType dtype = v1::FLOAT16) {
  RequestOptions o = Small(dtype);
  o.seqlens_q = {3, 0, 4};
  o.seqlens_k = {5, 2, 4};
  return o;
}

std::vector<Seed> Seeds() {
  std::mt19937 rng(2024);
  std::vector<Seed> seeds;
  auto add = [&](const std::string& name, const RequestOptions& o,
                 const std::function<void(v1::AttentionRequest&)>& edit = nullptr) {
    v1::AttentionRequest r = MakeRequest(o, seeds.size() + 1, rng);
    if (edit) edit(r);
    seeds.push_back({name, r.SerializeAsString()});
  };

  // Valid: every dtype in both layouts, then one option at a time.
  for (auto [dtype, name] : {std::pair{v1::BFLOAT16, "bf16"}, std::pair{v1::FLOAT16, "fp16"},
                             std::pair{v1::FLOAT32, "fp32"}}) {
    add(std::string("valid_dense_") + name, Small(dtype));
    add(std::string("valid_packed_") + name, Packed(dtype));
  }
  RequestOptions o = Small();
  o.causal = true;
  add("valid_dense_causal", o);
  o = Small();
  o.seqlen_q = 9;
  o.seqlen_k = 3;
  o.causal = true;
  o.return_lse = true;
  add("valid_dense_causal_rows_without_keys_lse", o);
  o = Packed();
  o.causal = true;
  o.return_lse = true;
  add("valid_packed_causal_lse", o);
  o = Small();
  o.window_left = 2;
  o.window_right = 1;
  add("valid_window", o);
  o = Packed(v1::FLOAT32);
  o.window_left = 0;
  o.window_right = -1;
  add("valid_packed_window_left0", o);
  o = Small(v1::FLOAT16);
  o.softcap = 5.f;
  o.softmax_scale = 0.7f;
  add("valid_softcap_scale", o);
  o = Small();
  o.alibi = 1;
  add("valid_alibi_per_head", o);
  o = Packed();
  o.alibi = 2;
  o.return_lse = true;
  add("valid_packed_alibi_per_sequence", o);
  o = Small();
  o.q_heads = 4;
  o.kv_heads = 2;
  o.return_lse = true;
  add("valid_gqa_lse", o);
  o = Small(v1::FLOAT32);
  o.batch = 1;
  o.seqlen_q = 1;
  o.seqlen_k = 12;
  add("valid_decode_one_query", o);
  o = Small();
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {2, 1, 5, 7};
  add("valid_mask_bool", o);
  o = Small(v1::FLOAT32);
  o.mask_dtype = v1::FLOAT32;
  o.mask_shape = {2, 2, 5, 7};
  o.return_lse = true;
  add("valid_mask_additive_fp32_full", o);
  o = Small(v1::FLOAT16);
  o.mask_dtype = v1::FLOAT16;
  o.mask_shape = {1, 7};
  add("valid_mask_additive_fp16_broadcast", o);
  o = Packed(v1::BFLOAT16);
  o.mask_dtype = v1::BFLOAT16;
  o.mask_shape = {2, 1, 5};
  o.causal = true;
  add("valid_packed_mask_bf16", o);
  o = Small();
  o.head_dim = 256;
  o.batch = 1;
  o.seqlen_q = 2;
  o.seqlen_k = 2;
  o.q_heads = o.kv_heads = 1;
  add("valid_head_dim_256", o);

  // Malformed: one rule broken each.
  const RequestOptions base = Small();
  add("bad_q_dtype_bool", base, [](auto& r) { r.mutable_q()->set_dtype(v1::BOOL); });
  add("bad_q_dtype_unknown", base,
      [](auto& r) { r.mutable_q()->set_dtype(static_cast<v1::DType>(99)); });
  add("bad_k_dtype_mismatch", base, [](auto& r) { r.mutable_k()->set_dtype(v1::FLOAT32); });
  add("bad_q_rank", base, [](auto& r) { r.mutable_q()->mutable_shape()->RemoveLast(); });
  add("bad_negative_dim", base, [](auto& r) { r.mutable_q()->set_shape(1, -5); });
  add("bad_zero_dim", base, [](auto& r) { r.mutable_k()->set_shape(1, 0); });
  add("bad_overflowing_shape", base, [](auto& r) {
    r.mutable_q()->set_shape(0, int64_t{1} << 40);
    r.mutable_k()->set_shape(0, int64_t{1} << 40);
    r.mutable_v()->set_shape(0, int64_t{1} << 40);
  });
  add("bad_shape_product_overflow", base, [](auto& r) {
    for (int i = 0; i < 4; ++i) r.mutable_q()->set_shape(i, int64_t{1} << 20);
  });
  add("bad_data_length", base, [](auto& r) { r.mutable_v()->mutable_data()->resize(3); });
  add("bad_v_shape", base, [](auto& r) { r.mutable_v()->set_shape(2, 2); });
  add("bad_head_dim_mismatch", base, [](auto& r) { r.mutable_k()->set_shape(3, 4); });
  add("bad_head_dim_too_large", base, [](auto& r) {
    r.mutable_q()->set_shape(3, 300);
    r.mutable_k()->set_shape(3, 300);
    r.mutable_v()->set_shape(3, 300);
  });
  add("bad_heads_not_multiple", base, [](auto& r) {
    r.mutable_q()->set_shape(2, 3);
    r.mutable_k()->set_shape(2, 2);
    r.mutable_v()->set_shape(2, 2);
  });
  add("bad_batch_mismatch", base, [](auto& r) { r.mutable_k()->set_shape(0, 3); });
  add("bad_too_many_tokens", base, [](auto& r) { r.mutable_q()->set_shape(1, 100000); });
  add("bad_cu_seqlens_only_q", base, [](auto& r) { r.add_cu_seqlens_q(0); });
  const RequestOptions packed = Packed();
  add("bad_cu_seqlens_decreasing", packed, [](auto& r) { r.set_cu_seqlens_q(2, 1); });
  add("bad_cu_seqlens_first_nonzero", packed, [](auto& r) { r.set_cu_seqlens_k(0, 1); });
  add("bad_cu_seqlens_last_mismatch", packed, [](auto& r) { r.set_cu_seqlens_q(3, 6); });
  add("bad_cu_seqlens_size_mismatch", packed, [](auto& r) { r.add_cu_seqlens_k(11); });
  add("bad_cu_seqlens_negative", packed, [](auto& r) { r.set_cu_seqlens_q(1, -2147483647); });
  add("bad_softmax_scale_nan", base,
      [](auto& r) { r.set_softmax_scale(std::numeric_limits<float>::quiet_NaN()); });
  add("bad_softcap_negative", base, [](auto& r) { r.set_softcap(-1.f); });
  add("bad_softcap_inf", base,
      [](auto& r) { r.set_softcap(std::numeric_limits<float>::infinity()); });
  add("bad_window_left", base, [](auto& r) { r.mutable_window()->set_left(-7); });
  add("valid_window_int32_max", base, [](auto& r) {
    r.mutable_window()->set_left(std::numeric_limits<int32_t>::max());
    r.mutable_window()->set_right(std::numeric_limits<int32_t>::max());
  });
  o = Small();
  o.alibi = 1;
  add("bad_alibi_shape", o, [](auto& r) { r.mutable_alibi_slopes()->set_shape(0, 3); });
  add("bad_alibi_inf", o, [](auto& r) {
    const float inf = std::numeric_limits<float>::infinity();
    r.mutable_alibi_slopes()->mutable_data()->replace(0, 4, reinterpret_cast<const char*>(&inf), 4);
  });
  add("bad_alibi_dtype", o, [](auto& r) { r.mutable_alibi_slopes()->set_dtype(v1::FLOAT16); });
  o = Small();
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {2, 1, 5, 7};
  add("bad_mask_broadcast", o, [](auto& r) { r.mutable_mask()->set_shape(2, 4); });
  add("bad_mask_rank", o, [](auto& r) { r.mutable_mask()->mutable_shape()->RemoveLast(); });
  add("bad_mask_dtype", o, [](auto& r) { r.mutable_mask()->set_dtype(static_cast<v1::DType>(7)); });
  add("bad_mask_data_length", o, [](auto& r) { r.mutable_mask()->mutable_data()->push_back(1); });

  // Extreme values (issue 26): finite ones past the value bounds gave NaN answers with status OK,
  // and NaN or +inf in a float mask gave all-NaN rows; the bounds themselves are valid.
  const float inf = std::numeric_limits<float>::infinity();
  auto set_floats = [](v1::Tensor* t, const std::vector<float>& values) {
    t->set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  };
  add("bad_softmax_scale_huge", base, [](auto& r) { r.set_softmax_scale(3e38f); });
  add("bad_softmax_scale_huge_negative", base, [](auto& r) { r.set_softmax_scale(-70000.f); });
  add("valid_softmax_scale_max", base, [](auto& r) { r.set_softmax_scale(65536.f); });
  add("bad_softcap_tiny", base, [](auto& r) { r.set_softcap(1e-30f); });
  add("bad_softcap_huge", base, [](auto& r) { r.set_softcap(3e38f); });
  add("valid_softcap_bounds", base, [](auto& r) {
    r.set_softcap(0x1p-16f);
    r.set_softmax_scale(65536.f);
  });
  o = Small();
  o.alibi = 1;
  add("bad_alibi_huge", o, [&](auto& r) { set_floats(r.mutable_alibi_slopes(), {0.5f, 3e38f}); });
  add("bad_alibi_huge_negative", o, [&](auto& r) {
    set_floats(r.mutable_alibi_slopes(), {-3e38f, 0.5f});
  });
  add("valid_alibi_max_slopes", o, [&](auto& r) {
    set_floats(r.mutable_alibi_slopes(), {65536.f, -65536.f});
  });
  o = Small(v1::FLOAT32);
  o.mask_dtype = v1::FLOAT32;
  o.mask_shape = {5, 7};
  auto mask_with = [&](float value) {
    return [&set_floats, value](v1::AttentionRequest& r) {
      std::vector<float> mask(35, 0.f);
      mask[3] = value;
      set_floats(r.mutable_mask(), mask);
    };
  };
  add("bad_mask_fp32_huge", o, mask_with(3e38f));
  add("bad_mask_fp32_nan", o, mask_with(std::numeric_limits<float>::quiet_NaN()));
  add("bad_mask_fp32_plus_inf", o, mask_with(inf));
  add("valid_mask_fp32_minus_inf_and_bounds", o, [&](auto& r) {
    std::vector<float> mask(35, 0.f);
    mask[0] = -inf;
    mask[1] = 0x1p100f;
    mask[2] = -0x1p100f;
    for (int j = 7; j < 14; ++j) mask[j] = -inf;  // a row without keys
    set_floats(r.mutable_mask(), mask);
  });
  o = Small(v1::FLOAT16);
  o.mask_dtype = v1::FLOAT16;
  o.mask_shape = {1, 7};
  add("bad_mask_fp16_nan", o, [](auto& r) {
    const uint16_t nan = 0x7e00;
    r.mutable_mask()->mutable_data()->replace(2, 2, reinterpret_cast<const char*>(&nan), 2);
  });
  o.mask_dtype = v1::BFLOAT16;
  add("bad_mask_bf16_huge", o, [](auto& r) {
    const uint16_t huge = 0x7f61;  // about 3e38
    r.mutable_mask()->mutable_data()->replace(4, 2, reinterpret_cast<const char*>(&huge), 2);
  });
  o = Small();
  o.sinks = true;
  add("bad_sinks_huge", o, [&](auto& r) { set_floats(r.mutable_sinks(), {3e38f, 0.f}); });
  add("valid_sinks_bounds", o, [&](auto& r) {
    set_floats(r.mutable_sinks(), {0x1p100f, -0x1p100f});
  });
  o = Small(v1::FLOAT16);
  add("valid_fp16_extreme_inputs", o, [](auto& r) {
    // Every q and k value at +-65504, the largest FLOAT16, with the largest scale: finite.
    r.set_softmax_scale(65536.f);
    for (v1::Tensor* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) {
      std::string& data = *t->mutable_data();
      for (size_t i = 0; i + 1 < data.size(); i += 2) {
        data[i] = static_cast<char>(0xff);
        data[i + 1] = static_cast<char>(i % 4 == 0 ? 0x7b : 0xfb);
      }
    }
  });

  // The backward pass (AttentionRequest.backward): valid requests of every dtype, layout and
  // option, and one broken rule each. o and grad_o are copies of q (any values are valid), lse
  // random finite values in the forward's lse shape.
  auto add_backward = [&](const std::string& name, const RequestOptions& options,
                          const std::function<void(v1::AttentionRequest&)>& edit = nullptr) {
    add(name, options, [&](v1::AttentionRequest& r) {
      r.set_backward(true);
      *r.mutable_o() = r.q();
      *r.mutable_grad_o() = r.q();
      const bool packed = r.cu_seqlens_q_size() > 0;
      const int rank = r.q().shape_size();
      v1::Tensor* lse = r.mutable_lse();
      lse->set_dtype(v1::FLOAT32);
      if (!packed) lse->add_shape(r.q().shape(0));
      lse->add_shape(r.q().shape(rank - 2));
      lse->add_shape(packed ? r.q().shape(0) : r.q().shape(1));
      int64_t n = 1;
      for (int64_t d : lse->shape()) n *= d;
      std::uniform_real_distribution<float> dist(0.f, 3.f);
      std::vector<float> values(static_cast<size_t>(n));
      for (float& x : values) x = dist(rng);
      set_floats(lse, values);
      if (edit) edit(r);
    });
  };
  for (auto [dtype, name] : {std::pair{v1::BFLOAT16, "bf16"}, std::pair{v1::FLOAT16, "fp16"},
                             std::pair{v1::FLOAT32, "fp32"}}) {
    add_backward(std::string("valid_backward_dense_") + name, Small(dtype));
    add_backward(std::string("valid_backward_packed_") + name, Packed(dtype));
  }
  o = Packed(v1::BFLOAT16);
  o.causal = true;
  o.window_left = 2;
  o.softcap = 5.f;
  o.alibi = 2;
  o.sinks = true;
  add_backward("valid_backward_every_option", o);
  o = Small(v1::FLOAT32);
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {o.seqlen_q, o.seqlen_k};
  add_backward("valid_backward_bool_mask", o);
  o.mask_dtype = v1::FLOAT16;
  add_backward("valid_backward_additive_mask", o);
  o = Small();
  add_backward("valid_backward_lse_neg_inf", o, [](auto& r) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    std::memcpy(&(*r.mutable_lse()->mutable_data())[4], &neg_inf, 4);
  });
  add_backward("bad_backward_missing_o", o, [](auto& r) { r.clear_o(); });
  add_backward("bad_backward_missing_lse", o, [](auto& r) { r.clear_lse(); });
  add_backward("bad_backward_missing_grad_o", o, [](auto& r) { r.clear_grad_o(); });
  add_backward("bad_backward_o_dtype", o, [](auto& r) { r.mutable_o()->set_dtype(v1::FLOAT32); });
  add_backward("bad_backward_grad_o_shape", o,
               [](auto& r) { r.mutable_grad_o()->set_shape(1, 6); });
  add_backward("bad_backward_grad_o_length", o,
               [](auto& r) { r.mutable_grad_o()->mutable_data()->pop_back(); });
  add_backward("bad_backward_lse_dtype", o,
               [](auto& r) { r.mutable_lse()->set_dtype(v1::BFLOAT16); });
  add_backward("bad_backward_lse_shape", o, [](auto& r) { r.mutable_lse()->set_shape(0, 3); });
  add_backward("bad_backward_lse_nan", o, [](auto& r) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(&(*r.mutable_lse()->mutable_data())[0], &nan, 4);
  });
  add_backward("bad_backward_lse_pos_inf", o, [](auto& r) {
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(&(*r.mutable_lse()->mutable_data())[8], &inf, 4);
  });
  add_backward("bad_forward_with_backward_inputs", o, [](auto& r) { r.set_backward(false); });
  add_backward("valid_backward_deterministic", o, [](auto& r) { r.set_deterministic(true); });

  // Wire-level damage: a truncated message, and bytes that are no protobuf at all.
  const std::string whole = seeds.front().bytes;
  seeds.push_back({"wire_truncated", whole.substr(0, whole.size() / 2)});
  seeds.push_back(
      {"wire_garbage", std::string("\xff\xff\xff\xff\x0f garbage \x00\x01\x00\x00", 18)});
  seeds.push_back({"wire_empty", ""});

  // FLOAT8_E4M3 (issue 23; after every older seed, so that those keep their bytes): valid
  // requests with each kind of descale and option, and one broken rule each.
  o = Small(v1::FLOAT8_E4M3);
  add("valid_fp8_dense", o);
  o.descale = 1;
  add("valid_fp8_descale_per_tensor", o);
  o.descale = 2;
  add("valid_fp8_descale_per_head", o);
  o = Packed(v1::FLOAT8_E4M3);
  o.descale = 2;
  o.causal = true;
  o.softcap = 5.f;
  o.alibi = 2;
  o.sinks = true;
  o.return_lse = true;
  add("valid_fp8_packed_every_option", o);
  o = Small(v1::FLOAT8_E4M3);
  o.descale = 1;
  o.mask_dtype = v1::BOOL;
  o.mask_shape = {o.seqlen_q, o.seqlen_k};
  add("valid_fp8_bool_mask", o);
  add("valid_fp8_huge_descale_zero_codes", o, [&](auto& r) {
    // Codes 0 with the largest finite factor: every value 0, the result finite.
    for (v1::Tensor* t : {r.mutable_q(), r.mutable_k()}) {
      std::fill(t->mutable_data()->begin(), t->mutable_data()->end(), '\0');
    }
    set_floats(r.mutable_q_descale(), {3.4e38f});
    set_floats(r.mutable_k_descale(), {3.4e38f});
  });
  add("valid_fp8_nan_code", o, [](auto& r) { (*r.mutable_k()->mutable_data())[3] = '\x7f'; });
  add("bad_fp8_descale_zero", o, [&](auto& r) { set_floats(r.mutable_q_descale(), {0.f}); });
  add("bad_fp8_descale_negative", o, [&](auto& r) { set_floats(r.mutable_k_descale(), {-2.f}); });
  add("bad_fp8_descale_nan", o, [&](auto& r) {
    set_floats(r.mutable_v_descale(), {std::numeric_limits<float>::quiet_NaN()});
  });
  add("bad_fp8_descale_inf", o, [&](auto& r) { set_floats(r.mutable_v_descale(), {inf}); });
  add("bad_fp8_descale_shape", o, [](auto& r) { r.mutable_q_descale()->set_shape(0, 3); });
  add("bad_fp8_descale_dtype", o, [](auto& r) { r.mutable_k_descale()->set_dtype(v1::BFLOAT16); });
  add("bad_fp8_descale_data_length", o,
      [](auto& r) { r.mutable_v_descale()->mutable_data()->push_back('\0'); });
  add("bad_fp8_mixed_dtypes", o, [](auto& r) { r.mutable_k()->set_dtype(v1::BFLOAT16); });
  add("bad_fp8_data_length", o, [](auto& r) { r.mutable_q()->mutable_data()->pop_back(); });
  add("bad_descale_on_bf16", Small(), [&](auto& r) { set_floats(r.mutable_q_descale(), {1.f}); });
  add("bad_fp8_backward", o, [](auto& r) { r.set_backward(true); });
  return seeds;
}

}  // namespace
}  // namespace attention::testing

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  for (const auto& seed : attention::testing::Seeds()) {
    std::ofstream out(std::string(argv[1]) + "/" + seed.name, std::ios::binary | std::ios::trunc);
    out << seed.bytes;
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", seed.name.c_str());
      return 1;
    }
  }
  return 0;
}
