// Validation of the session RPCs (attention.proto, SessionService): session ids with their
// replica, CreateSession's shape and limits, Append's rows, and Attend into a RequestSpec of kind
// WorkKind::kPagedDecode that the batcher queues like any other job.
//
// Every error names the field and the rule, with the codes of attention.proto: INVALID_ARGUMENT
// for a request that breaks the contract, RESOURCE_EXHAUSTED over a configured limit,
// FAILED_PRECONDITION for a session id of another replica. Nothing is allocated from request
// numbers before the checks passed.
#ifndef ATTENTION_SERVER_SESSION_VALIDATION_H_
#define ATTENTION_SERVER_SESSION_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "server/executor.h"
#include "server/request_spec.h"
#include "server/session/page_storage.h"
#include "server/session/session_id.h"
#include "server/session/session_store.h"
#include "server/validation.h"

namespace attention::server {

// Replica names: what --replica_name may be and what a session id carries after '@'. Host-name
// characters (a Kubernetes pod name or a host name), so that a name is usable in an address.
inline constexpr int kMaxReplicaNameLength = 253;

// OK if `name` is 1..253 characters of [A-Za-z0-9.-_]; INVALID_ARGUMENT naming `field` otherwise.
absl::Status CheckReplicaName(absl::string_view name, absl::string_view field = "replica_name");

// The wire form of a session id: the store's 32 hex digits, '@', the replica's name.
std::string SessionIdText(const session::SessionId& id, absl::string_view replica);

// The store's id in `text` (a session id as CreateSession or Fork answered it) when it names
// `replica`. INVALID_ARGUMENT naming session_id for text that is not an id; FAILED_PRECONDITION
// naming the owner for an id of another replica ("... is held by replica attention-1, not
// attention-0: send its calls there").
absl::StatusOr<session::SessionId> ParseSessionIdText(absl::string_view text,
                                                      absl::string_view replica);

// CreateSession -> the store's SessionSpec: layers >= 1, kv_heads >= 1 (and at most
// limits.max_heads), 1 <= head_dim <= kMaxHeadDim, a value dtype, max_tokens >= 1 and
// idle_ttl_ms >= 1 when given. The store checks them against its own limits (layers,
// max_tokens, TTL) and the pool's page size.
absl::StatusOr<session::SessionSpec> ValidateCreateSession(const v1::CreateSessionRequest& request,
                                                           const ValidationLimits& limits);

// Append's k and v against the session's row shape `layout`: each [n, kv_heads, head_dim] of the
// session's dtype, n >= 1 the same for both, n at most limits.max_request_tokens, data length
// n x row bytes. Returns n.
absl::StatusOr<int64_t> ValidateAppend(const v1::AppendRequest& request,
                                       const session::PageLayout& layout,
                                       const ValidationLimits& limits);

// An Attend checked against its session's row shape, before anything is appended: the kernel
// configuration and the request's inputs, everything but the context (its length and pages),
// which comes from the layer once k_new / v_new are appended.
struct AttendInputs {
  RequestSpec spec;      // kind kPagedDecode, configuration and q; context fields unset
  int64_t n_new = 0;     // query rows (= k_new / v_new rows when given)
  bool appends = false;  // k_new / v_new given
};

// Checks an Attend (attention.proto, AttendRequest):
//   q          the session's dtype, rank 3 [n_new, q_heads, head_dim]; n_new >= 1 (at most
//              limits.max_request_tokens), q_heads >= 1 (at most limits.max_heads) and a multiple
//              of the session's kv_heads, head_dim the session's; data length n_new x q_heads x
//              head_dim x dtype size
//   k_new,     both or neither; each the session's dtype, [n_new, kv_heads, head_dim] with q's
//   v_new      n_new, data length to match
//   options    softmax_scale finite with |scale| <= kMaxScoreMultiplier (absent: 1 /
//              sqrt(head_dim)); window sides >= -1; softcap 0 or in [kMinSoftcap,
//              kMaxScoreMultiplier]; alibi_slopes FLOAT32 [q_heads], finite, |slope| <=
//              kMaxScoreMultiplier; sinks FLOAT32 [q_heads], finite, |sink| <= kMaxLogit;
//              precision a Precision value (16-bit dtypes run at PRECISION_FULL)
//   key_range  0 <= start <= end when given
// The spec's pointers point into `request`, which must outlive it.
absl::StatusOr<AttendInputs> ValidateAttend(const v1::AttendRequest& request,
                                            const session::PageLayout& layout,
                                            const ValidationLimits& limits);

// Completes an Attend's spec for the layer `paged->view` holds (its context of L' tokens, the new
// rows included): one packed sequence of n_new query rows against seqlen_k = L' keys in pages of
// the view's page_size, cu_seqlens_q pointing at paged->cu_seqlens_q, the key range clipped to
// [0, L'] into paged->key_range, the device that holds the view's pool (KernelConfig::device),
// and the request's work. RESOURCE_EXHAUSTED when the work is over
// limits.max_request_work.
absl::Status CompleteAttendSpec(const v1::AttendRequest& request, int64_t n_new,
                                const ValidationLimits& limits, PagedContext* paged,
                                RequestSpec& spec);

}  // namespace attention::server

#endif  // ATTENTION_SERVER_SESSION_VALIDATION_H_
