"""K/V sessions (attention.v1.SessionService): the server keeps each sequence's K and V, so a
decode step sends q and the new token's k and v instead of the whole context.

    from attention_client import SessionClient
    with SessionClient("127.0.0.1:50051") as client:
        s = client.create_session(layers=32, kv_heads=8, head_dim=128, dtype="bfloat16")
        s.append(layer, k_prefill, v_prefill)           # [n, kv_heads, head_dim] each
        o = s.attend(layer, q, k_new=k, v_new=v, causal=True)  # q [n_new, q_heads, head_dim]

Arrays as in Client (numpy float32 / float16, ml_dtypes.bfloat16 or uint16 bfloat16 bits).

Routing: a session lives on one replica, named in its id ("<32 hex digits>@<replica>").
create_session goes to the client's target; every later call of the session goes to its replica,
at resolve(replica) (e.g. "{replica}.attention-sessions:50051".format); without resolve, to the
target. Each replica gets one SessionStream, shared by its sessions: a session's calls go out in
the order they are made and the server applies them in that order. A stream that ended (the
replica drained or restarted) is replaced at the next call; the sessions themselves are lost
with a restart (NOT_FOUND "no session ... here"): create them again and append their context.
"""
import concurrent.futures
import itertools
import queue
import threading

import grpc
import numpy as np

from attention_client.client import (AttentionError, _set_tensor, _to_numpy, attention_pb2,
                                     channel_target)

try:
    from attention.v1 import attention_pb2_grpc
except ImportError as error:
    raise ImportError("the attention.v1 stubs are missing: run client/python/generate_stubs.py "
                      "and put its output directory on sys.path") from error

_DTYPES = {"float32": attention_pb2.FLOAT32, "float16": attention_pb2.FLOAT16,
           "bfloat16": attention_pb2.BFLOAT16}
_PRECISIONS = {"full": attention_pb2.PRECISION_FULL, "tf32": attention_pb2.PRECISION_TF32,
               "bf16": attention_pb2.PRECISION_BF16}
_END = object()


class _Stream:
    """One SessionStream: calls are queued to a request iterator in order; a reader thread pairs
    answers with calls by request_id and completes their futures."""

    def __init__(self, stub, metadata):
        self._queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending = {}
        self._ended = None  # the AttentionError every later call gets
        self._responses = stub.SessionStream(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="attn-session-stream",
                                        daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            request = self._queue.get()
            if request is _END:
                return
            yield request

    def usable(self):
        with self._lock:
            return self._ended is None

    def submit(self, request):
        future = concurrent.futures.Future()
        with self._lock:
            if self._ended is not None:
                future.set_exception(self._ended)
                return future
            request.request_id = next(self._ids)
            self._pending[request.request_id] = future
            self._queue.put(request)
        return future

    def _read(self):
        error = AttentionError(grpc.StatusCode.INTERNAL,
                               "session stream: the stream ended without answering this call")
        try:
            for response in self._responses:
                with self._lock:
                    future = self._pending.pop(response.request_id, None)
                if future is None:
                    continue
                if response.HasField("error") and response.error.code != 0:
                    future.set_exception(AttentionError(_status_code(response.error.code),
                                                        response.error.message))
                else:
                    future.set_result(response)
        except grpc.RpcError as failure:
            error = AttentionError(failure.code(), failure.details())
        with self._lock:
            self._ended = AttentionError(grpc.StatusCode.UNAVAILABLE,
                                         "session stream: the stream has ended; call again")
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(error)

    def close(self):
        """Half-closes and waits for the answers still due."""
        self._queue.put(_END)
        self._reader.join()


def _status_code(number):
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


class Session:
    """A handle on one session: id (its credential), replica, page_size (tokens per page).
    Thread-safe; calls block until answered unless named _async."""

    def __init__(self, client, session_id, replica, page_size=0):
        self._client = client
        self.id = session_id
        self.replica = replica
        self.page_size = page_size

    def _call(self, **call):
        return self._client._stream(self.replica).submit(attention_pb2.SessionRequest(**call))

    def append(self, layer, k, v):
        """Appends k and v ([n, kv_heads, head_dim] each) to `layer`; returns its new length."""
        request = attention_pb2.AppendRequest(session_id=self.id, layer=layer)
        _set_tensor(request.k, k, "k")
        _set_tensor(request.v, v, "v")
        return self._call(append=request).result().append.tokens

    def attend_async(self, layer, q, *, k_new=None, v_new=None, causal=False, softmax_scale=None,
                     window=None, softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False,
                     precision="full", key_range=None):
        """As attend(), without waiting: a future whose result() is o (or (o, lse))."""
        if (k_new is None) != (v_new is None):
            raise ValueError("k_new, v_new: give both or neither")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        request = attention_pb2.AttendRequest(session_id=self.id, layer=layer, causal=causal,
                                              softcap=softcap, return_lse=return_lse,
                                              precision=_PRECISIONS[precision])
        _set_tensor(request.q, q, "q")
        if k_new is not None:
            _set_tensor(request.k_new, k_new, "k_new")
            _set_tensor(request.v_new, v_new, "v_new")
        if softmax_scale is not None:
            request.softmax_scale = softmax_scale
        if window is not None and tuple(window) != (-1, -1):
            request.window.left, request.window.right = window
        if alibi_slopes is not None:
            _set_tensor(request.alibi_slopes, np.asarray(alibi_slopes, np.float32), "alibi_slopes")
        if sinks is not None:
            _set_tensor(request.sinks, np.asarray(sinks, np.float32), "sinks")
        if key_range is not None:
            request.key_range.start, request.key_range.end = key_range
        like = np.asarray(q)
        answer = self._call(attend=request)
        result = concurrent.futures.Future()

        def done(call):
            try:
                response = call.result().attend
                o = _to_numpy(response.o, like=like)
                result.set_result((o, _to_numpy(response.lse)) if return_lse else o)
            except AttentionError as error:
                result.set_exception(error)

        answer.add_done_callback(done)
        return result

    def attend(self, layer, q, **options):
        """Attention of q ([n_new, q_heads, head_dim]) against `layer` after appending k_new /
        v_new ([n_new, kv_heads, head_dim], optional). Options as Client.attention (causal is
        bottom-right against the context), plus key_range=(start, end): that range's partial o
        and lse. Returns o [n_new, q_heads, head_dim], or (o, lse [q_heads, n_new]) with
        return_lse=True. Raises AttentionError."""
        return self.attend_async(layer, q, **options).result()

    def fork(self, prefix_tokens):
        """A new session sharing the first prefix_tokens rows of every layer (copy-on-write)."""
        request = attention_pb2.ForkRequest(session_id=self.id, prefix_tokens=prefix_tokens)
        answer = self._call(fork=request).result().fork
        return Session(self._client, answer.session_id, answer.replica, self.page_size)

    def truncate(self, tokens):
        """Rolls every layer back to at most `tokens` rows."""
        self._call(truncate=attention_pb2.TruncateRequest(session_id=self.id,
                                                          tokens=tokens)).result()

    def release(self):
        """Ends the session."""
        self._call(release=attention_pb2.ReleaseSessionRequest(session_id=self.id)).result()

    def info(self):
        """The GetSessionResponse: tokens per layer, pages, limits, last use."""
        return self._call(get=attention_pb2.GetSessionRequest(session_id=self.id)).result().get


class SessionClient:
    """Sessions over one target. Thread-safe; close() (or `with`) ends every stream.

    target: "host:port", a list of IP:port (round robin for create_session), or a gRPC target.
    resolve: replica name -> "host:port" of its gRPC port (None: the target serves every
    replica). metadata: (key, value) pairs sent with every call (a bearer token).
    """

    def __init__(self, target, *, resolve=None, max_message_bytes=1 << 30, metadata=(),
                 timeout=None):
        self._options = [("grpc.max_send_message_length", max_message_bytes),
                         ("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.service_config",
                          '{"loadBalancingConfig": [{"round_robin": {}}]}')]
        self._entry = grpc.insecure_channel(channel_target(target), options=self._options)
        self._resolve = resolve
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._channels = {}
        self._streams = {}

    def close(self):
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
            channels, self._channels = list(self._channels.values()), {}
        for stream in streams:
            stream.close()
        for channel in channels:
            channel.close()
        self._entry.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def create_session(self, *, layers, kv_heads, head_dim, dtype="bfloat16", max_tokens=None,
                       idle_ttl_s=None):
        """A new session on the replica the target picks. dtype: float32, float16 or bfloat16."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        request = attention_pb2.CreateSessionRequest(layers=layers, kv_heads=kv_heads,
                                                     head_dim=head_dim, dtype=_DTYPES[dtype])
        if max_tokens is not None:
            request.max_tokens = max_tokens
        if idle_ttl_s is not None:
            request.idle_ttl_ms = int(round(idle_ttl_s * 1000))
        stub = attention_pb2_grpc.SessionServiceStub(self._entry)
        try:
            answer = stub.CreateSession(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise AttentionError(error.code(), error.details()) from None
        return Session(self, answer.session_id, answer.replica, answer.page_size)

    def attach(self, session_id):
        """A handle on an existing session from its id."""
        replica = session_id.partition("@")[2]
        if not replica:
            raise ValueError("session_id must be '<32 hex digits>@<replica>'")
        return Session(self, session_id, replica)

    def _stream(self, replica):
        with self._lock:
            stream = self._streams.get(replica)
            if stream is not None and stream.usable():
                return stream
            if self._resolve is None:
                channel = self._entry
            else:
                channel = self._channels.get(replica)
                if channel is None:
                    channel = grpc.insecure_channel(self._resolve(replica),
                                                    options=self._options)
                    self._channels[replica] = channel
            stream = _Stream(attention_pb2_grpc.SessionServiceStub(channel), self._metadata)
            self._streams[replica] = stream
            return stream
