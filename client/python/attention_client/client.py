"""The Client class: numpy arrays in, numpy arrays out, gRPC errors as AttentionError.

Element types: numpy float32 -> FLOAT32, float16 -> FLOAT16, ml_dtypes.bfloat16 (when installed)
-> BFLOAT16, and uint16 -> BFLOAT16 as raw bit patterns (numpy has no bfloat16; see
bfloat16_bits). FP8: uint8 q, k, v (or ml_dtypes.float8_e4m3fn) -> FLOAT8_E4M3 codes, with
q_descale / k_descale / v_descale factors (see quantize_e4m3, e4m3_encode, e4m3_decode). o comes
back in q's numpy dtype (uint16 bit patterns for uint16 q); for FP8 q it is BFLOAT16:
ml_dtypes.bfloat16 when installed, else uint16 bit patterns. lse comes back as float32. Returned
arrays are read-only views of the response bytes; .copy() them to modify.
"""
import concurrent.futures
import ipaddress
import json

import grpc
import numpy as np

try:
    from attention.v1 import attention_pb2, attention_pb2_grpc
except ImportError as error:
    raise ImportError("the attention.v1 stubs are missing: run client/python/generate_stubs.py "
                      "and put its output directory on sys.path") from error

try:
    import ml_dtypes
    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
    _FLOAT8_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
except ImportError:
    _BFLOAT16 = None
    _FLOAT8_E4M3 = None

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


class AttentionError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `message` the server's message."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def bfloat16_bits(x):
    """float32 array -> bfloat16 bit patterns (uint16), rounded to nearest even, NaN kept."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def float32_from_bfloat16(bits):
    """bfloat16 bit patterns (uint16) -> float32 array."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _e4m3_table():
    """The float32 value of each of the 256 OCP E4M3FN codes (0x7F and 0xFF: NaN)."""
    codes = np.arange(256)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 0x7).astype(np.float64)
    magnitude = np.where(exponent == 0, mantissa * 2.0 ** -9,
                         (1 + mantissa / 8) * 2.0 ** (exponent - 7.0))
    magnitude[(exponent == 0xF) & (mantissa == 7)] = np.nan
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)


_E4M3_VALUES = _e4m3_table()
E4M3_MAX = 448.0  # largest finite FLOAT8_E4M3 magnitude


def e4m3_decode(codes):
    """FLOAT8_E4M3 codes (uint8) -> float32 values (exact; NaN for 0x7F and 0xFF)."""
    return _E4M3_VALUES[np.asarray(codes, dtype=np.uint8)]


def e4m3_encode(x, descale=1.0):
    """float32 values -> the FLOAT8_E4M3 codes (uint8) nearest to x / descale, ties to even;
    magnitudes beyond 448 saturate to +-448, NaN gives 0x7F. `descale` (broadcast against x) is
    the factor the server multiplies each code by."""
    scaled = np.ascontiguousarray(np.asarray(x, np.float32) / np.asarray(descale, np.float32),
                                  dtype=np.float32)
    bits = scaled.view(np.uint32).astype(np.int64)
    sign = ((bits >> 24) & 0x80).astype(np.uint8)
    magnitude = bits & 0x7FFFFFFF
    # Normal range: rebias the exponent (127 -> 7) and round the mantissa to 3 bits, ties to even
    # (a carry may bump the exponent).
    rebased = magnitude - (120 << 23)
    normal = (rebased + 0x7FFFF + ((rebased >> 20) & 1)) >> 20
    # Below 2^-6: subnormal codes 0..8 (8 is the smallest normal), |x| / 2^-9 rounded half to even
    # (exact: the product is below 8).
    small = magnitude < 0x3C800000
    subnormal = np.rint(np.where(small, np.abs(scaled), 0).astype(np.float64) * 512.0)
    code = np.where(small, subnormal.astype(np.int64), normal)
    code = np.where(magnitude >= 0x43E80000, 0x7E, code)  # from 464 up: saturate at 448
    code = np.where(magnitude > 0x7F800000, 0x7F, code)  # NaN
    return (code.astype(np.uint8) | sign).reshape(np.shape(scaled))


def quantize_e4m3(x, per_head=False):
    """Quantizes float values laid out as q, k or v ([..., heads, head_dim]) to FLOAT8_E4M3.

    Returns (codes, descale): uint8 codes of x's shape and float32 factors, [1] for the whole
    tensor or [heads] with per_head=True, each max |x| / 448 over its values (1 for all zeros), so
    that each group uses e4m3's whole range. Pass codes as q (k, v) and descale as q_descale
    (k_descale, v_descale) to attention(); the server computes on codes x descale.
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise ValueError(f"quantize_e4m3: x must be [..., heads, head_dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("quantize_e4m3: x holds values that are not finite")
    if per_head:
        largest = np.abs(x).reshape(-1, x.shape[-2], x.shape[-1]).max(axis=(0, 2))
    else:
        largest = np.array([np.abs(x).max()], np.float32)
    descale = np.where(largest > 0, largest / np.float32(E4M3_MAX), 1).astype(np.float32)
    factors = descale[:, None] if per_head else descale[0]
    return e4m3_encode(x, factors), descale


def channel_target(target):
    """The gRPC target for `target`: a comma-separated list of IP:port becomes one ipv4: / ipv6:
    target spread over by round_robin; anything else is passed through."""
    if target.startswith(_SCHEMES) or "," not in target:
        return target
    families = set()
    for address in target.split(","):
        host, _, port = address.rpartition(":")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
            int(port)
        except ValueError:
            raise ValueError(f"target: '{address}' in an address list must be an IP literal with "
                             "a port; give a name resolving to several addresses as "
                             "dns:///name:port") from None
    if len(families) != 1:
        raise ValueError("target: an address list must be all IPv4 or all IPv6")
    return ("ipv4:" if families == {4} else "ipv6:") + target


def _dtype_of(array, name):
    if array.dtype == np.float32:
        return attention_pb2.FLOAT32
    if array.dtype == np.float16:
        return attention_pb2.FLOAT16
    if array.dtype == np.uint16 or (_BFLOAT16 is not None and array.dtype == _BFLOAT16):
        return attention_pb2.BFLOAT16
    if name in ("q", "k", "v") and (
            array.dtype == np.uint8 or (_FLOAT8_E4M3 is not None and array.dtype == _FLOAT8_E4M3)):
        return attention_pb2.FLOAT8_E4M3
    if array.dtype == np.bool_ and name == "mask":
        return attention_pb2.BOOL
    raise TypeError(f"{name}: dtype {array.dtype} is not float32, float16, bfloat16 "
                    "(ml_dtypes), uint16 (bfloat16 bits) or, for q, k and v, uint8 (float8_e4m3 "
                    "codes)")


def _set_tensor(tensor, array, name):
    array = np.asarray(array)
    tensor.dtype = _dtype_of(array, name)
    tensor.shape.extend(array.shape)
    # Little-endian, C order: one copy into the message.
    tensor.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_numpy(tensor, like=None):
    """A response tensor as numpy: BFLOAT16 as `like`'s bfloat16 type (ml_dtypes) when `like`
    (the request's q) is one, as ml_dtypes.bfloat16 for FP8 q when installed, else uint16 bits."""
    dtypes = {attention_pb2.FLOAT32: np.dtype("<f4"), attention_pb2.FLOAT16: np.dtype("<f2"),
              attention_pb2.BFLOAT16: np.dtype("<u2"), attention_pb2.FLOAT8_E4M3: np.dtype("u1")}
    dtype = dtypes[tensor.dtype]
    if tensor.dtype == attention_pb2.BFLOAT16 and like is not None:
        if _BFLOAT16 is not None and like.dtype == _BFLOAT16:
            dtype = like.dtype
        elif _BFLOAT16 is not None and (like.dtype == np.uint8 or like.dtype == _FLOAT8_E4M3):
            dtype = _BFLOAT16
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


class Client:
    """A channel to the attention service. Thread-safe; close() (or `with`) releases it.

    target: "host:port", a comma-separated list of IP:port (round robin), or any gRPC target.
    timeout: default deadline of a call in seconds (None: none).
    retry_attempts: attempts per call when the server answers UNAVAILABLE (1: no retries).
    tls_root_certs / tls_client_cert / tls_client_key: PEM bytes; any of them turns TLS on
    (tls_root_certs None: the system's roots). tls_server_name overrides the name checked.
    metadata: (key, value) pairs sent with every call, e.g. [("authorization", "Bearer ...")].
    """

    def __init__(self, target, *, max_message_bytes=1 << 30, timeout=None, retry_attempts=4,
                 round_robin=True, tls_root_certs=None, tls_client_cert=None,
                 tls_client_key=None, tls_server_name=None, metadata=()):
        config = {"loadBalancingConfig": [{"round_robin" if round_robin else "pick_first": {}}]}
        if retry_attempts > 1:
            config["methodConfig"] = [{
                "name": [{"service": "attention.v1.AttentionService"}],
                "retryPolicy": {"maxAttempts": retry_attempts, "initialBackoff": "0.1s",
                                "maxBackoff": "2s", "backoffMultiplier": 2,
                                "retryableStatusCodes": ["UNAVAILABLE"]},
            }]
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.service_config", json.dumps(config)),
                   ("grpc.enable_retries", 1 if retry_attempts > 1 else 0),
                   ("grpc.per_rpc_retry_buffer_size", 64 << 20)]
        target = channel_target(target)
        if tls_root_certs or tls_client_cert or tls_client_key or tls_server_name:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            credentials = grpc.ssl_channel_credentials(tls_root_certs, tls_client_key,
                                                       tls_client_cert)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_for_ready(self, timeout):
        """Blocks until the channel is connected; raises grpc.FutureTimeoutError after timeout s."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    @staticmethod
    def request(q, k, v, *, causal=False, softmax_scale=None, window=None, softcap=0.0,
                alibi_slopes=None, mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                return_lse=False, sinks=None, precision="full", q_descale=None, k_descale=None,
                v_descale=None):
        """The AttentionRequest message for these arrays and options (see attention())."""
        precisions = {"full": attention_pb2.PRECISION_FULL, "tf32": attention_pb2.PRECISION_TF32,
                      "bf16": attention_pb2.PRECISION_BF16}
        if precision not in precisions:
            raise ValueError(f"precision must be one of {sorted(precisions)}, got {precision!r}")
        request = attention_pb2.AttentionRequest(causal=causal, softcap=softcap,
                                                 return_lse=return_lse,
                                                 precision=precisions[precision])
        _set_tensor(request.q, q, "q")
        _set_tensor(request.k, k, "k")
        _set_tensor(request.v, v, "v")
        if softmax_scale is not None:
            request.softmax_scale = softmax_scale
        if window is not None and tuple(window) != (-1, -1):
            request.window.left, request.window.right = window
        if alibi_slopes is not None:
            _set_tensor(request.alibi_slopes, np.asarray(alibi_slopes, np.float32),
                        "alibi_slopes")
        if mask is not None:
            _set_tensor(request.mask, mask, "mask")
        if sinks is not None:
            _set_tensor(request.sinks, np.asarray(sinks, np.float32), "sinks")
        for field, factors in (("q_descale", q_descale), ("k_descale", k_descale),
                               ("v_descale", v_descale)):
            if factors is not None:
                _set_tensor(getattr(request, field), np.atleast_1d(np.asarray(factors, np.float32)),
                            field)
        if cu_seqlens_q is not None:
            request.cu_seqlens_q.extend(int(x) for x in cu_seqlens_q)
        if cu_seqlens_k is not None:
            request.cu_seqlens_k.extend(int(x) for x in cu_seqlens_k)
        return request

    def attention(self, q, k, v, *, timeout=None, **options):
        """Attention of q, k, v; returns o, or (o, lse) with return_lse=True.

        Dense: q [batch, seqlen_q, heads, head_dim], k and v [batch, seqlen_k, kv_heads,
        head_dim]; packed (cu_seqlens_q and cu_seqlens_k given): q [total_q, heads, head_dim].
        Options: causal, softmax_scale, window=(left, right), softcap, alibi_slopes, mask,
        cu_seqlens_q, cu_seqlens_k, return_lse, sinks ([heads] float32 logits), precision
        ("full", "tf32" or "bf16": how float32 inputs are computed), and for FP8 (uint8 e4m3
        codes as q, k, v; see quantize_e4m3) q_descale, k_descale, v_descale: a scalar or [1]
        (per tensor) or [heads] / [kv_heads] (per head) float32 factors. Raises AttentionError on
        failure.
        """
        request = self.request(q, k, v, **options)
        try:
            response = self._stub.Attention(request, timeout=self._deadline(timeout),
                                            metadata=self._metadata)
        except grpc.RpcError as error:
            raise AttentionError(error.code(), error.details()) from None
        return self._result(response, q, options.get("return_lse", False))

    @classmethod
    def backward_request(cls, q, k, v, o, lse, grad_o, *, deterministic=False, **options):
        """The backward AttentionRequest message (backward=True) for these arrays and options;
        deterministic=True asks for bit-identical gradients run to run."""
        options.pop("return_lse", None)
        request = cls.request(q, k, v, **options)
        request.backward = True
        request.deterministic = bool(deterministic)
        _set_tensor(request.o, o, "o")
        _set_tensor(request.lse, np.asarray(lse, np.float32), "lse")
        _set_tensor(request.grad_o, grad_o, "grad_o")
        return request

    def attention_backward(self, q, k, v, o, lse, grad_o, *, timeout=None, **options):
        """The backward pass: returns (dq, dk, dv), the gradients of sum(o * grad_o).

        q, k, v and options are the forward's (see attention()); o and lse are its answer with
        return_lse=True (lse float32, dense [batch, heads, seqlen_q], packed [heads, total_q]);
        grad_o (dLoss/do) has q's dtype and shape. dq has q's shape, dk and dv k's (a KV head's
        gradient summed over its query heads), all in q's dtype. A mask gets no gradient, and
        the sinks' own gradient is not returned. deterministic=True asks for bit-identical
        gradients run to run. Raises AttentionError on failure (UNIMPLEMENTED on a server whose
        backend has no backward kernel).
        """
        request = self.backward_request(q, k, v, o, lse, grad_o, **options)
        try:
            response = self._stub.AttentionBackward(request, timeout=self._deadline(timeout),
                                                    metadata=self._metadata)
        except grpc.RpcError as error:
            raise AttentionError(error.code(), error.details()) from None
        like = np.asarray(q)
        return (_to_numpy(response.dq, like=like), _to_numpy(response.dk, like=like),
                _to_numpy(response.dv, like=like))

    def attention_async(self, q, k, v, *, timeout=None, **options):
        """As attention(), without waiting: returns a future whose result() is o (or (o, lse))
        and raises AttentionError on failure."""
        request = self.request(q, k, v, **options)
        future = concurrent.futures.Future()
        call = self._stub.Attention.future(request, timeout=self._deadline(timeout),
                                           metadata=self._metadata)
        return_lse = options.get("return_lse", False)

        def done(call):
            try:
                future.set_result(self._result(call.result(), q, return_lse))
            except grpc.RpcError as error:
                future.set_exception(AttentionError(error.code(), error.details()))

        call.add_done_callback(done)
        return future

    def _deadline(self, timeout):
        return timeout if timeout is not None else self._timeout

    @staticmethod
    def _result(response, q, return_lse):
        o = _to_numpy(response.o, like=np.asarray(q))
        if return_lse:
            return o, _to_numpy(response.lse)
        return o
