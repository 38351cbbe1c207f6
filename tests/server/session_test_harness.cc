#include "tests/server/session_test_harness.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "proto/contract_types.h"
#include "tests/server/server_test_util.h"
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
#include "kernels/cuda/attention_cuda.h"
#include "server/cuda/cuda_executor.h"
#include "server/cuda/device_page_storage.h"
#endif

namespace attention::testing {

std::unique_ptr<InProcessSessionServer> InProcessSessionServer::Start(
    const SessionServerOptions& options, std::string* error) {
  std::unique_ptr<InProcessSessionServer> s(new InProcessSessionServer());
  session::PoolOptions pool;
  pool.page_bytes = options.page_bytes;
  pool.num_pages = options.num_pages;
  const bool cuda = ServerBackendUnderTest() == "cuda";
  absl::StatusOr<std::unique_ptr<session::PageStorage>> storage;
  if (cuda) {
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
    // Fails (does not skip) while the paged kernels are switched off: the GPU suite then says
    // that sessions are not served on this GPU build.
    if (absl::Status routed = cuda::PagedKernelsRouted(); !routed.ok()) {
      *error = absl::StrCat("sessions on the GPU: ", routed.message());
      return nullptr;
    }
    storage = server::DevicePageStorage::Create(0, pool);
#else
    storage = absl::UnimplementedError("ATTN_TEST_BACKEND=cuda: this test has no CUDA executor");
#endif
  } else {
    storage = session::HostPageStorage::Create(pool);
  }
  if (!storage.ok()) {
    *error = std::string(storage.status().message());
    return nullptr;
  }
  [[maybe_unused]] session::PageStorage* const pool_storage = storage->get();
  std::vector<std::unique_ptr<session::PageStorage>> storages;
  storages.push_back(std::move(*storage));
  session::StoreOptions store_options;
  store_options.limits = options.limits;
  store_options.sweep_interval = options.sweep_interval;
  absl::StatusOr<std::unique_ptr<session::SessionStore>> store =
      session::SessionStore::Create(store_options, std::move(storages));
  if (!store.ok()) {
    *error = std::string(store.status().message());
    return nullptr;
  }
  s->store_ = std::move(*store);
  if (options.registry != nullptr) {
    s->metrics_ = std::make_unique<server::SessionMetrics>(
        options.registry, std::vector<std::string>{cuda ? "cuda:0" : "cpu"});
    s->metrics_->StartPolling(s->store_.get(), std::chrono::milliseconds(50));
  }
  server::ExecutorOptions executor;
  executor.cpu_threads = options.cpu_threads;
  if (options.device_memory_bytes > 0) executor.device_memory_bytes = options.device_memory_bytes;
  if (options.pinned_host_bytes > 0) executor.pinned_host_bytes = options.pinned_host_bytes;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (cuda) {
    absl::StatusOr<std::unique_ptr<server::CudaExecutor>> device =
        server::CudaExecutor::Create(0, executor, nullptr);
    if (!device.ok()) {
      *error = std::string(device.status().message());
      return nullptr;
    }
    (*device)->set_page_storage(static_cast<server::DevicePageStorage*>(pool_storage));
    s->executor_ = std::move(*device);
  }
#endif
  if (!cuda) s->executor_ = std::make_unique<server::CpuExecutor>(executor, nullptr);
  s->batcher_ = std::make_unique<server::Batcher>(
      options.batcher, std::vector<server::Executor*>{s->executor_.get()}, nullptr);
  server::SessionServiceOptions service;
  service.replica = options.replica;
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (cuda) service.check_kernel = cuda::CheckSupported;
#endif
  if (!options.availability.ok()) {
    service.check_kernel = [refusal = options.availability](const KernelConfig&) {
      return refusal;
    };
  }
  service.limits = options.limits_per_request;
  s->service_ = std::make_unique<server::SessionServiceImpl>(service, s->store_.get(),
                                                             s->batcher_.get(), s->metrics_.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(1 << 30);
  builder.SetMaxSendMessageSize(1 << 30);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || port == 0) {
    *error = "cannot start the gRPC server on 127.0.0.1:0";
    return nullptr;
  }
  s->address_ = "127.0.0.1:" + std::to_string(port);
  return s;
}

int64_t InProcessSessionServer::device_pool_row_writes() const {
#ifdef ATTENTION_HAVE_CUDA_EXECUTOR
  if (ServerBackendUnderTest() == "cuda") {
    return static_cast<const server::DevicePageStorage&>(store_->pool(0).storage()).row_writes();
  }
#endif
  return -1;
}

InProcessSessionServer::~InProcessSessionServer() {
  if (service_ != nullptr) service_->StartDrain();
  if (batcher_ != nullptr) batcher_->Drain(server::Clock::now() + std::chrono::seconds(30));
  if (service_ != nullptr) {
    service_->WaitForCalls(server::Clock::now() + std::chrono::seconds(30));
  }
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  if (batcher_ != nullptr) batcher_->Shutdown();
  if (executor_ != nullptr) executor_->Shutdown();
  server_.reset();
  service_.reset();
  batcher_.reset();
  executor_.reset();
  metrics_.reset();
  store_.reset();
}

std::shared_ptr<grpc::Channel> InProcessSessionServer::Channel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  return grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
}

std::string RandomValues(v1::DType dtype, int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  const int64_t size = ContractDTypeSize(dtype);
  std::string bytes(static_cast<size_t>(count * size), '\0');
  for (int64_t i = 0; i < count; ++i) {
    const float f = value(rng);
    if (dtype == v1::FLOAT32) {
      std::memcpy(&bytes[i * 4], &f, 4);
    } else {
      const uint16_t h = dtype == v1::FLOAT16 ? FloatToHalf(f) : FloatToBFloat16(f);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  return bytes;
}

v1::Tensor RandomTensor(v1::DType dtype, const std::vector<int64_t>& shape, std::mt19937& rng) {
  v1::Tensor t;
  t.set_dtype(dtype);
  int64_t count = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    count *= d;
  }
  t.set_data(RandomValues(dtype, count, rng));
  return t;
}

SessionModel::SessionModel(v1::DType dtype, int layers, int kv_heads, int head_dim)
    : dtype(dtype),
      layers(layers),
      kv_heads(kv_heads),
      head_dim(head_dim),
      k(static_cast<size_t>(layers)),
      v(static_cast<size_t>(layers)) {}

int64_t SessionModel::row_bytes() const {
  return int64_t{kv_heads} * head_dim * ContractDTypeSize(dtype);
}

int64_t SessionModel::tokens(int layer) const {
  return static_cast<int64_t>(k[static_cast<size_t>(layer)].size()) / row_bytes();
}

void SessionModel::Append(int layer, const std::string& k_rows, const std::string& v_rows) {
  k[static_cast<size_t>(layer)] += k_rows;
  v[static_cast<size_t>(layer)] += v_rows;
}

void SessionModel::Truncate(int64_t tokens) {
  for (int layer = 0; layer < layers; ++layer) {
    const size_t keep = static_cast<size_t>(std::min(this->tokens(layer), tokens) * row_bytes());
    k[static_cast<size_t>(layer)].resize(keep);
    v[static_cast<size_t>(layer)].resize(keep);
  }
}

SessionModel SessionModel::Fork(int64_t prefix) const {
  SessionModel child = *this;
  child.Truncate(prefix);
  return child;
}

v1::AttentionRequest ReferenceRequest(const SessionModel& model, const v1::AttendRequest& a) {
  v1::AttentionRequest r;
  *r.mutable_q() = a.q();
  const int64_t n = a.q().shape(0);
  const int64_t context = model.tokens(a.layer());
  for (v1::Tensor* t : {r.mutable_k(), r.mutable_v()}) {
    t->set_dtype(model.dtype);
    t->add_shape(context);
    t->add_shape(model.kv_heads);
    t->add_shape(model.head_dim);
  }
  r.mutable_k()->set_data(model.k[static_cast<size_t>(a.layer())]);
  r.mutable_v()->set_data(model.v[static_cast<size_t>(a.layer())]);
  r.add_cu_seqlens_q(0);
  r.add_cu_seqlens_q(static_cast<int32_t>(n));
  r.add_cu_seqlens_k(0);
  r.add_cu_seqlens_k(static_cast<int32_t>(context));
  r.set_causal(a.causal());
  if (a.has_softmax_scale()) r.set_softmax_scale(a.softmax_scale());
  if (a.has_window()) *r.mutable_window() = a.window();
  r.set_softcap(a.softcap());
  if (a.has_alibi_slopes()) *r.mutable_alibi_slopes() = a.alibi_slopes();
  if (a.has_sinks()) *r.mutable_sinks() = a.sinks();
  r.set_return_lse(a.return_lse());
  r.set_precision(a.precision());
  return r;
}

std::string CheckAttend(const SessionModel& model, const v1::AttendRequest& attend,
                        const v1::AttentionResponse& response) {
  return CompareWithReference(ReferenceRequest(model, attend), response);
}

namespace {

double Load(v1::DType dtype, const std::string& data, int64_t i) {
  if (dtype == v1::FLOAT32) {
    float f;
    std::memcpy(&f, data.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, data.data() + 2 * i, 2);
  return dtype == v1::FLOAT16 ? HalfToFloat(h) : BFloat16ToFloat(h);
}

void Store(v1::DType dtype, std::string& data, int64_t i, double value) {
  const float f = static_cast<float>(value);
  if (dtype == v1::FLOAT32) {
    std::memcpy(&data[4 * i], &f, 4);
    return;
  }
  const uint16_t h = dtype == v1::FLOAT16 ? FloatToHalf(f) : FloatToBFloat16(f);
  std::memcpy(&data[2 * i], &h, 2);
}

}  // namespace

v1::AttentionResponse MergePartials(const v1::AttentionResponse& a,
                                    const v1::AttentionResponse& b) {
  v1::AttentionResponse merged = a;
  const v1::DType dtype = a.o().dtype();
  // o [n, q_heads, d], lse [q_heads, n].
  const int64_t n = a.o().shape(0), heads = a.o().shape(1), d = a.o().shape(2);
  std::string& o = *merged.mutable_o()->mutable_data();
  std::string& lse = *merged.mutable_lse()->mutable_data();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < n; ++r) {
      float la, lb;
      std::memcpy(&la, a.lse().data().data() + 4 * (h * n + r), 4);
      std::memcpy(&lb, b.lse().data().data() + 4 * (h * n + r), 4);
      const double m = std::max<double>(la, lb);
      const double l = m == -kInf ? -kInf : m + std::log(std::exp(la - m) + std::exp(lb - m));
      const double wa = l == -kInf ? 0 : std::exp(la - l);
      const double wb = l == -kInf ? 0 : std::exp(lb - l);
      const float lf = static_cast<float>(l);
      std::memcpy(&lse[4 * (h * n + r)], &lf, 4);
      for (int64_t c = 0; c < d; ++c) {
        const int64_t i = (r * heads + h) * d + c;
        Store(dtype, o, i, wa * Load(dtype, a.o().data(), i) + wb * Load(dtype, b.o().data(), i));
      }
    }
  }
  return merged;
}

}  // namespace attention::testing
